"""The keyboard scenario on the board: next-word prediction that learns the user's own words and phrasing.

Head fine-tuning alone does not personalise a keyboard (DESIGN.md), so a round combines three parts:
- **personal words**: the user's frequent out-of-vocabulary words claim the head's spare output slots;
- **head fine-tuning** regularised toward the cloud head: the tuned weights are interpolated with the cloud
  head's, the interpolation chosen on the user's holdout, so general text does not suffer;
- **a memory of the user's contexts**: the base's per-position features of the user's own text (they come from
  the feature cache anyway) paired with the word that followed, used as a nearest-neighbour next-word model and
  mixed with the head's softmax; the mixing weight is chosen on the holdout.
The tokenizer follows the rules the bundle's manifest records, so the board splits text as the cloud did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import augment
from .bundle import Bundle, Variant
from .featcache import FeatureCache, feature_key
from .features import FeatureExtractor
from .head import Head, Weights, load_weights, save_weights
from .ingest import holdout_of
from .learner import Progress, RoundResult, epoch_events, read_sample
from .store import Store

log = logging.getLogger(__name__)

SPECIAL_COUNT = 4  # <pad> <unk> <bos> <eos>, ids 0..3 (docs/bundle-format.md)
MEMORY_CAP = 20_000  # stored contexts per head version
KNN_K, KNN_TEMPERATURE = 32, 0.05
MIX_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7)
INTERP_GRID = (0.25, 0.5, 0.75, 1.0)


class Tokenizer:
    """The word tokenizer exactly as the manifest's `tokenizer` describes it."""

    def __init__(self, spec: dict):
        self.table = str.maketrans({c: "'" for c in spec.get("apostrophes", "")})
        self.word = re.compile(spec["word_pattern"])
        self.sentence_end = re.compile(spec["sentence_end_pattern"])
        self.paragraph = re.compile(spec["paragraph_break_pattern"])
        self.lower = bool(spec.get("lowercase", True))
        self.normalization = spec.get("normalization", "NFKC")
        ids = spec.get("special_ids", {})
        self.pad, self.unk, self.bos, self.eos = (ids.get(k, i) for i, k in enumerate(("pad", "unk", "bos", "eos")))

    def _norm(self, text: str) -> str:
        text = unicodedata.normalize(self.normalization, text) if self.normalization else text
        return (text.lower() if self.lower else text).translate(self.table)

    def sentences(self, text: str) -> list[list[str]]:
        out = []
        for paragraph in self.paragraph.split(self._norm(text)):
            for chunk in self.sentence_end.split(paragraph):
                words = self.word.findall(chunk)
                if words:
                    out.append(words)
        return out

    def context(self, text: str) -> list[str]:
        """The words of the sentence being typed (empty after a sentence end)."""
        norm = self._norm(text)
        last = self.paragraph.split(norm)[-1]
        parts = self.sentence_end.split(last)
        return self.word.findall(parts[-1]) if parts else []


def _windows(ids_in: list[int], ids_out: list[int], t: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    n = max(1, -(-len(ids_in) // t))
    x = np.full((n, t), pad, np.int32)
    y = np.full((n, t), pad, np.int32)
    for i in range(n):
        a, b = ids_in[i * t:(i + 1) * t], ids_out[i * t:(i + 1) * t]
        x[i, :len(a)], y[i, :len(b)] = a, b
    return x, y


@dataclass
class Memory:
    """Stored contexts (unit-length features) and the word that followed each."""
    keys: np.ndarray  # [M, H] float16
    targets: np.ndarray  # [M] int32
    mix: float = 0.0

    @classmethod
    def empty(cls, h: int) -> "Memory":
        return cls(np.zeros((0, h), np.float16), np.zeros(0, np.int32), 0.0)

    def probs(self, q: np.ndarray, capacity: int) -> np.ndarray:
        out = np.zeros((len(q), capacity), np.float32)
        if len(self.keys) == 0:
            return out
        keys = self.keys.astype(np.float32)
        qn = q / (np.linalg.norm(q, axis=1, keepdims=True) + 1e-8)
        k = min(KNN_K, len(keys))
        for i in range(0, len(qn), 256):
            sim = qn[i:i + 256] @ keys.T
            idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(sim, idx, axis=1)
            w = np.exp((top - top.max(axis=1, keepdims=True)) / KNN_TEMPERATURE)
            w /= w.sum(axis=1, keepdims=True)
            rows = np.repeat(np.arange(len(idx)), k)
            np.add.at(out[i:i + 256], (rows, self.targets[idx].ravel()), w.ravel())
        return out

    def save(self, path: Path, extra: dict) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, keys=self.keys, targets=self.targets, params=np.array(json.dumps({"mix": self.mix, **extra})))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, h: int) -> "Memory":
        if not path.exists():
            return cls.empty(h)
        with np.load(path) as z:
            params = json.loads(str(z["params"]))
            return cls(z["keys"], z["targets"], float(params.get("mix", 0.0)))


def unit(f: np.ndarray) -> np.ndarray:
    return (f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)).astype(np.float16)


def topk_hits(probs: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """Top-1 and top-3 hits as the keyboard suggests: special tokens (<unk>, <eos>, …) are never a suggestion,
    so a candidate that merely stops predicting <unk> gains nothing."""
    if len(y) == 0:
        return 0, 0
    ranked = np.array(probs, dtype=np.float32, copy=True)
    ranked[:, :SPECIAL_COUNT] = -np.inf
    top3 = np.argsort(-ranked, axis=1)[:, :3]
    return int(np.sum(top3[:, 0] == y)), int(np.sum(np.any(top3 == y[:, None], axis=1)))


class KeyboardModel:
    """A head version plus its context memory: what answers `predict --text`."""

    def __init__(self, head: Head, memory: Memory, active: np.ndarray):
        self.head, self.memory, self.active = head, memory, active

    def probs(self, f: np.ndarray) -> np.ndarray:
        p = self.head.predict(f, self.active)
        if self.memory.mix > 0 and len(self.memory.keys):
            p = (1 - self.memory.mix) * p + self.memory.mix * self.memory.probs(f, p.shape[1])
        return p


class KeyboardLearner:
    """Same contract as learner.Learner.run: one round, candidate head, holdout gate, promote or keep."""

    def __init__(self, bundle: Bundle, bundle_id: str, variant: Variant, store: Store, extractor: FeatureExtractor,
                 cache: FeatureCache, heads_dir: Path, threads: int, holdout_fraction: float,
                 min_word_count: int = 2, max_file_bytes: int = 64 << 20):
        self.bundle, self.bundle_id, self.variant = bundle, bundle_id, variant
        self.store, self.extractor, self.cache = store, extractor, cache
        self.heads_dir, self.threads = heads_dir, threads
        self.holdout_fraction = holdout_fraction
        self.min_word_count = min_word_count
        self.max_file_bytes = max_file_bytes
        self.tok = Tokenizer(bundle.manifest["tokenizer"])
        self.vocab = list(bundle.manifest["vocabulary"])
        self.base_index = {w: i for i, w in enumerate(self.vocab)}
        self.t = int(bundle.manifest["seq_len"])
        self.prep = int(bundle.input.get("preprocessing_version", 1))
        self.synonyms = load_synonyms(bundle)

    def augmented(self, sentences: list[list[str]], copies: int, seed: int, rate: float = 0.15) -> list[list[str]]:
        """The paper's text augmentation: synonym replacement from the bundle's table, seeded per sentence;
        only copies that differ from their original are kept."""
        out = []
        for words in sentences:
            sha = hashlib.sha256(" ".join(words).encode()).hexdigest()
            for _, vseed in augment.text_variants(copies, seed, sha, rate):
                new = augment.synonym_replace(words, self.synonyms, rate, vseed)
                if new != words:
                    out.append(new)
        return out

    # --- pieces ---------------------------------------------------------------------------------------
    def active(self) -> np.ndarray:
        m = np.zeros(self.bundle.class_capacity, np.float32)
        for slot in self.store.classes(self.bundle_id).values():
            m[slot] = 1.0
        m[[self.tok.pad, self.tok.bos]] = 0.0  # never suggested, never a target
        return m

    def new_head(self) -> Head:
        return Head(self.variant, self.bundle.class_capacity, self.bundle.train_batch, self.threads)

    def features(self, x: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Per-position features [N, T, H] of windows, through the cache (one entry per window)."""
        keys = [feature_key(hashlib.sha256(row.tobytes()).hexdigest(), self.variant.base_sha256, self.prep)
                for row in x]
        found = self.cache.get_many(keys)
        todo = [i for i, k in enumerate(keys) if k not in found]
        computed = {}
        if todo:
            f = self.extractor(x[todo]).reshape(len(todo), self.t, -1)
            computed = {keys[i]: f[j].ravel() for j, i in enumerate(todo)}
            self.cache.put_many(computed)
        h = self.variant.feature_size
        out = np.stack([(found.get(k) if k in found else computed[k]).reshape(self.t, h) for k in keys]) \
            if keys else np.zeros((0, self.t, h), np.float32)
        return out, len(computed), len(found)

    def encode(self, sentences: list[list[str]], slots: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for words in sentences:
            ids_in = [self.tok.bos] + [self.base_index.get(w, self.tok.unk) for w in words]
            ids_out = [slots.get(w, self.tok.unk) for w in words] + [self.tok.eos]
            x, y = _windows(ids_in, ids_out, self.t, self.tok.pad)
            xs.append(x)
            ys.append(y)
        if not xs:
            return np.zeros((0, self.t), np.int32), np.zeros((0, self.t), np.int32)
        return np.concatenate(xs), np.concatenate(ys)

    def positions(self, sentences, slots) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Flattened features and targets of every position whose target is learnt (not <pad>/<bos>)."""
        x, y = self.encode(sentences, slots)
        f, computed, cached = self.features(x)
        keep = (y != self.tok.pad) & (y != self.tok.bos)
        return f[keep], y[keep], computed, cached

    def user_sentences(self) -> list[tuple[list[str], bool, bool]]:
        """(words, holdout, already trained) for every sentence of the user's text files, in arrival order."""
        out = []
        for s in self.store.usable_samples():
            if s.kind != "text":
                continue
            data = read_sample(s.path, self.max_file_bytes)
            try:
                text = data.decode("utf-8") if data is not None else None
            except UnicodeDecodeError:
                text = None
            if text is None:
                continue
            for words in self.tok.sentences(text):
                sha = hashlib.sha256(" ".join(words).encode()).hexdigest()
                out.append((words, holdout_of(sha, self.holdout_fraction), s.trained))
        return out

    def claim_personal_words(self, sentences: list[list[str]]) -> list[str]:
        """Frequent out-of-vocabulary words of the user take the head's spare output slots."""
        counts = Counter(w for s in sentences for w in s if w not in self.base_index)
        added = []
        for word, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            if n < self.min_word_count:
                break
            known = word in self.store.classes(self.bundle_id)
            if self.store.add_class(self.bundle_id, word, self.bundle.class_capacity) is None:
                break
            if not known:
                added.append(word)
        return added

    def model(self, version: int, active: np.ndarray) -> KeyboardModel:
        row = self.store.head(version)
        head = self.new_head()
        head.set_weights(load_weights(self.heads_dir / row["file"]))
        return KeyboardModel(head, Memory.load(self.heads_dir / memory_file(row["file"]), self.variant.feature_size),
                             active)

    def cloud_weights(self) -> Weights:
        initial = [h for h in self.store.heads(self.bundle_id) if h["status"] == "initial"]
        return load_weights(self.heads_dir / initial[0]["file"])

    # --- the round ------------------------------------------------------------------------------------
    def run(self, version: int, trigger: str, epochs: int, lr: float, tolerance: float, seed: int,
            progress: Progress, should_stop, augment_copies: int = 0, mode: str = "offline",
            online_steps: int = 3, min_steps: int = 0) -> RoundResult:
        """One keyboard round. `min_steps` is not applied here: a text gives hundreds of positions an epoch,
        and with it (1000) the test user of tests/test_keyboard.py no longer saw a personal word suggested."""
        t0 = time.monotonic()
        round_id = self.store.start_round(trigger)
        progress("round_started", {"round_id": round_id, "trigger": trigger})
        sents = self.user_sentences()
        train = [w for w, h, _ in sents if not h]
        new = [w for w, h, done in sents if not h and not done]
        hold = [w for w, h, _ in sents if h]
        personal = self.claim_personal_words(train)
        slots = self.store.classes(self.bundle_id)
        active = self.active()
        ftr, ytr, c1, k1 = self.positions(train, slots)
        faug = np.zeros((0, ftr.shape[1]), np.float32)
        yaug = np.zeros(0, np.int32)
        if augment_copies > 0 and mode == "offline" and self.synonyms:
            aug = self.augmented(train, augment_copies, seed)
            if aug:
                faug, yaug, _, _ = self.positions(aug, slots)
        fho, yho, c2, k2 = self.positions(hold, slots)
        computed, cached = c1 + c2, k1 + k2
        progress("features", {"round_id": round_id, "computed": computed, "cached": cached,
                              "personal_words": personal})
        words_only = yho >= SPECIAL_COUNT  # accuracy counts real words (vocabulary or personal), as the cloud did
        fhw, yhw = fho[words_only], yho[words_only]
        stopping = should_stop()
        report: dict = {"personal_words": personal, "sentences": len(train), "holdout_sentences": len(hold),
                        "augmented_positions": int(len(yaug))}
        prequential: list[tuple[int, int]] = []

        def finish(outcome, detail, before=None, after=None, new_version=None) -> RoundResult:
            secs = time.monotonic() - t0
            self.store.finish_round(round_id, n_train=len(ytr), n_holdout=len(yhw), features_computed=computed,
                                    features_cached=cached, accuracy_before=before, accuracy_after=after,
                                    outcome=outcome, detail=detail, seconds=secs)
            if outcome in ("promoted", "rejected"):
                self.store.mark_trained([s.id for s in self.store.usable_samples() if s.kind == "text"], round_id)
            res = RoundResult(round_id, outcome, detail, len(ytr), len(yhw), computed, cached, before, after,
                              new_version, secs, mode=mode, prequential=prequential or None)
            res.keyboard = report  # type: ignore[attr-defined]
            progress("round_finished", {**res.as_dict(), "keyboard": report})
            log.info("round %d %s: %s (%.2fs)", round_id, outcome, detail, secs)
            return res

        if stopping:
            return finish("stopped", "the daemon is stopping")
        if len(ytr) == 0 or len(yhw) == 0:
            return finish("skipped", "not enough text yet (need sentences for training and for the holdout)")

        def score(m: KeyboardModel) -> tuple[float, float]:
            h1, h3 = topk_hits(m.probs(fhw), yhw)
            return h1 / len(yhw), h3 / len(yhw)

        current = self.model(version, active)
        before1, before3 = score(current)
        cloud_w = self.cloud_weights()
        cloud = KeyboardModel(self.new_head(), Memory.empty(self.variant.feature_size), active)
        cloud.head.set_weights(cloud_w)
        report["pretrained"] = dict(zip(("top1", "top3"), score(cloud)))
        report["current"] = {"top1": before1, "top3": before3}

        head = self.new_head()
        head.set_weights(load_weights(self.heads_dir / self.store.head(version)["file"]))
        if mode == "online":
            fnew, ynew, _, _ = self.positions(new, slots)
            memory = Memory(current.memory.keys, current.memory.targets, current.memory.mix)
            online = KeyboardModel(head, memory, active)
            for i in range(0, len(ynew), self.bundle.train_batch):  # predict first, then learn
                fb, yb = fnew[i:i + self.bundle.train_batch], ynew[i:i + self.bundle.train_batch]
                w = yb >= SPECIAL_COUNT
                h1, h3 = topk_hits(online.probs(fb[w]), yb[w])
                prequential.append((h1, int(w.sum())))
                report.setdefault("prequential_top3_hits", 0)
                report["prequential_top3_hits"] += h3
                memory.keys = np.concatenate([memory.keys, unit(fb)])[-MEMORY_CAP:]
                memory.targets = np.concatenate([memory.targets, yb])[-MEMORY_CAP:]
                if memory.mix == 0:
                    memory.mix = 0.3
                for _ in range(online_steps):
                    head.fit(fb, yb, active, 1, lr, seed + i)
            if not prequential:
                return finish("skipped", "no new sentences to learn from online")
        else:
            head.fit(np.concatenate([ftr, faug]), np.concatenate([ytr, yaug]), active, epochs, lr, seed + round_id,
                     should_stop, epoch_events(progress, round_id, epochs))
        if should_stop():
            return finish("stopped", "the daemon is stopping; the candidate was discarded", before1)
        tuned = head.get_weights()
        # regularise toward the cloud head: interpolate, choose on the holdout
        best = None
        for a in INTERP_GRID:
            w = {k: cloud_w[k] + a * (tuned[k] - cloud_w[k]) for k in tuned}
            head.set_weights(w)
            s = score(KeyboardModel(head, Memory.empty(self.variant.feature_size), active))
            if best is None or s > best[0]:
                best = (s, a, w)
        (ft1, ft3), interp, weights = best
        head.set_weights(weights)
        report["fine_tuned"] = {"top1": ft1, "top3": ft3, "interpolation": interp}
        # the memory of the user's contexts, mixed in with a weight chosen on the holdout
        memory = Memory(unit(ftr[-MEMORY_CAP:]), ytr[-MEMORY_CAP:].astype(np.int32))
        best = None
        for mix in MIX_GRID:
            memory.mix = mix
            s = score(KeyboardModel(head, memory, active))
            if best is None or s > best[0]:
                best = (s, mix)
        (after1, after3), memory.mix = best
        report["with_memory"] = {"top1": after1, "top3": after3, "mix": memory.mix}
        new_version = self.store.next_head_version()
        fname = f"head-v{new_version}.npz"
        save_weights(weights, self.heads_dir / fname)
        memory.save(self.heads_dir / memory_file(fname), {"interpolation": interp})
        promote = after1 >= before1 - tolerance
        status = "promoted" if promote else "rejected"
        self.store.add_head(self.bundle_id, self.variant.name, status, fname, after1, before1, len(ytr), len(yhw),
                            round_id)
        detail = (f"next-word top-1 {before1:.3f} → {after1:.3f}, top-3 {before3:.3f} → {after3:.3f} on "
                  f"{len(yhw)} held-out words (pretrained {report['pretrained']['top1']:.3f}/"
                  f"{report['pretrained']['top3']:.3f}); {len(personal)} new personal words; "
                  + (f"promoted (v{new_version})" if promote else
                     f"candidate v{new_version} rejected, kept the current head (v{version})"))
        progress("version_" + status, {"version": new_version, "accuracy": after1, "previous_accuracy": before1})
        return finish(status, detail, before1, after1, new_version)


def load_synonyms(bundle: Bundle) -> dict[str, list[str]]:
    """The bundle's synonym table as word → synonyms (its scores dropped); empty when the bundle has none."""
    spec = bundle.manifest.get("synonyms") or {}
    name = spec.get("file")
    if not name or name not in bundle.manifest.get("files", {}):
        return {}
    try:
        raw = json.loads((bundle.root / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("synonym table %s unreadable (%s): text augmentation is off", name, e)
        return {}
    table = raw.get("synonyms", raw) if isinstance(raw, dict) else {}
    out = {}
    for word, entries in table.items():
        if isinstance(entries, list):
            out[word] = [e[0] if isinstance(e, list) else e for e in entries if e]
    return out


def memory_file(head_file: str) -> str:
    return head_file.replace("head-", "memory-")


class KeyboardPredictor:
    """`predict --text`: the next three words after what was typed."""

    def __init__(self, learner: KeyboardLearner):
        self.learner = learner
        self._cached: tuple[int, KeyboardModel] | None = None

    def suggest(self, text: str, version: int, top: int = 3) -> dict:
        lr = self.learner
        if self._cached is None or self._cached[0] != version:
            self._cached = (version, lr.model(version, lr.active()))
        model = self._cached[1]
        words = lr.tok.context(text)
        ids = ([lr.tok.bos] + [lr.base_index.get(w, lr.tok.unk) for w in words])[-lr.t:]
        x = np.full((1, lr.t), lr.tok.pad, np.int32)
        x[0, :len(ids)] = ids
        f = lr.extractor(x).reshape(1, lr.t, -1)[:, len(ids) - 1]
        p = model.probs(f)[0]
        p[:SPECIAL_COUNT] = 0.0  # suggestions are words
        names = {slot: name for name, slot in lr.store.classes(lr.bundle_id).items()}
        order = [int(i) for i in np.argsort(-p) if int(i) in names][:top]
        return {"context": words, "suggestions": [{"word": names[i], "p": round(float(p[i]), 6)} for i in order]}
