"""The keyboard scenario on the board: next-word prediction that learns the user's own words and phrasing.

Head fine-tuning alone does not personalise a keyboard (docs/architecture.md), so a round combines three parts:
- **personal words**: the user's frequent out-of-vocabulary words claim the head's spare output slots;
- **head fine-tuning** regularised toward the cloud head: the tuned weights are interpolated with the cloud
  head's, the interpolation chosen on the user's holdout, so general text does not suffer;
- **a memory of the user's contexts**: the base's per-position features of the user's own text (they come from
  the feature cache anyway) paired with the word that followed, used as a nearest-neighbour next-word model and
  mixed with the head's softmax; the mixing weight is chosen on the holdout.
The tokenizer follows the rules the bundle's manifest records, so the board splits text as the cloud did.

A round's memory is bounded by configuration (`KeyboardLimits`), not by the amount of text: files are streamed
sentence by sentence (kbtext), their windows' base features come from the cache in chunks of CHUNK_SENTENCES,
and only bounded samples are kept (knn): a uniform sample of the new training positions, one of the positions
learnt before (replayed), one of the holdout, and the most recent contexts for the memory. The optimiser makes
at most `max_steps` steps. A sentence learnt by an earlier round is recognised by its hash, so a growing notes
file costs base features (cache misses) only for its new sentences, and an edited file's old sentences, gone
from the text, are gone from what the next round learns.
"""

from __future__ import annotations

import array
import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ..intake import augment
from ..runtime.bundle import Bundle, Variant
from .featcache import FeatureCache, feature_key
from .features import FeatureExtractor
from .head import Head, Weights, load_weights, save_weights
from ..intake.ingest import holdout_of
from ..intake.kbtext import Tokenizer, read_pieces
from .kbsample import (BYTES_PER_WORD_KEY, LEARNT_BYTES_KEY, Collected, KeyboardLimits, fit_steps, is_in,
                       limits_of, pending_words, sentence_hash)
from .knn import SPECIAL_COUNT, Memory, score, topk_hits, unit
from .learner import Progress, RoundResult
from .store import Store

log = logging.getLogger(__name__)

__all__ = ["KeyboardLearner", "KeyboardPredictor", "KeyboardLimits", "Tokenizer", "topk_hits", "pending_words",
           "limits_of", "score", "SPECIAL_COUNT", "Memory", "unit"]
CHUNK_SENTENCES = 96  # sentences whose windows' features are fetched (or computed) together
MAX_COUNTED_WORDS = 200_000  # distinct out-of-vocabulary words counted at once (then words seen once are dropped)
LEARNT_FILE = "keyboard-learnt.npy"  # hashes of the sentences earlier rounds learnt from
MIX_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7)
INTERP_GRID = (0.25, 0.5, 0.75, 1.0)


def _windows(ids_in: list[int], ids_out: list[int], t: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    n = max(1, -(-len(ids_in) // t))
    x = np.full((n, t), pad, np.int32)
    y = np.full((n, t), pad, np.int32)
    for i in range(n):
        a, b = ids_in[i * t:(i + 1) * t], ids_out[i * t:(i + 1) * t]
        x[i, :len(a)], y[i, :len(b)] = a, b
    return x, y


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
                 min_word_count: int = 2, max_file_bytes: int = 64 << 20, limits: KeyboardLimits | None = None):
        self.bundle, self.bundle_id, self.variant = bundle, bundle_id, variant
        self.store, self.extractor, self.cache = store, extractor, cache
        self.heads_dir, self.threads = heads_dir, threads
        self.holdout_fraction = holdout_fraction
        self.min_word_count = min_word_count
        self.max_file_bytes = max_file_bytes
        self.limits = limits or KeyboardLimits()
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
        """Flattened features and targets of every position whose target is learnt (not <pad>/<bos>).
        Holds all of them: for tools and small texts; a round streams instead (`_collect`)."""
        x, y = self.encode(sentences, slots)
        f, computed, cached = self.features(x)
        keep = (y != self.tok.pad) & (y != self.tok.bos)
        return f[keep], y[keep], computed, cached

    def text_files(self) -> list:
        return [s for s in self.store.usable_samples() if s.kind == "text"]

    def stream_sentences(self, samples):
        """(sample, words) for every sentence of the user's text files, in arrival order, streamed."""
        for s in samples:
            try:
                for words in self.tok.stream(read_pieces(s.path, self.max_file_bytes)):
                    yield s, words
            except OSError as e:
                log.info("text %s cannot be read again (%s); it waits for the next scan", s.path, e.strerror or e)

    def user_sentences(self) -> list[tuple[list[str], bool, bool]]:
        """(words, holdout, already learnt) for every sentence of the user's text files, all held (for tools)."""
        learnt = self.learnt()
        return [(w, holdout_of(hashlib.sha256(" ".join(w).encode()).hexdigest(), self.holdout_fraction),
                 is_in(learnt, sentence_hash(w))) for _, w in self.stream_sentences(self.text_files())]

    def learnt(self) -> np.ndarray:
        try:
            return np.load(self.heads_dir / LEARNT_FILE)
        except (OSError, ValueError):
            return np.zeros(0, np.uint64)

    def claim_personal_words(self, counts: Counter) -> list[str]:
        """Frequent out-of-vocabulary words of the user take the head's spare output slots."""
        known = self.store.classes(self.bundle_id)
        free = self.bundle.class_capacity - len(known)
        wanted = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                  if n >= self.min_word_count and w not in known][:max(0, free)]
        return self.store.add_classes(self.bundle_id, wanted, self.bundle.class_capacity)

    def model(self, version: int, active: np.ndarray) -> KeyboardModel:
        row = self.store.head(version)
        head = self.new_head()
        head.set_weights(load_weights(self.heads_dir / row["file"]))
        return KeyboardModel(head, Memory.load(self.heads_dir / memory_file(row["file"]), self.variant.feature_size),
                             active)

    def cloud_weights(self) -> Weights:
        initial = [h for h in self.store.heads(self.bundle_id) if h["status"] == "initial"]
        return load_weights(self.heads_dir / initial[0]["file"])

    # --- the two passes over the text -----------------------------------------------------------------
    def _survey(self, samples) -> tuple[Counter, dict]:
        """Pass 1: out-of-vocabulary word counts of the training text; sentence and position counts (held out,
        new, learnt before), hashes, file sizes."""
        counts: Counter = Counter()
        learnt = self.learnt()
        hashes = array.array("Q")
        info = {"sentences": 0, "holdout_sentences": 0, "new_sentences": 0, "words": 0, "bytes": {},
                "positions": {"hold": 0, "new": 0, "old": 0}}
        for s in samples:
            try:
                info["bytes"][s.path] = os.stat(s.path).st_size
            except OSError:
                pass
        pos = info["positions"]
        for _, words in self.stream_sentences(samples):
            info["words"] += len(words)
            if holdout_of(hashlib.sha256(" ".join(words).encode()).hexdigest(), self.holdout_fraction):
                info["holdout_sentences"] += 1
                pos["hold"] += len(words) + 1
                continue
            info["sentences"] += 1
            h = sentence_hash(words)
            hashes.append(h)
            new = not is_in(learnt, h)
            info["new_sentences"] += new
            pos["new" if new else "old"] += len(words) + 1
            counts.update(w for w in words if w not in self.base_index)
            if len(counts) > MAX_COUNTED_WORDS:
                counts = Counter({w: n for w, n in counts.items() if n > 1})
        info["hashes"] = np.unique(np.frombuffer(hashes, np.uint64)) if hashes else np.zeros(0, np.uint64)
        info["learnt"] = learnt
        return counts, info

    def _collect(self, samples, slots: dict, info: dict, col: Collected, augment_copies: int, seed: int) -> None:
        """Pass 2: windows → base features (cache first) → the bounded samples, CHUNK_SENTENCES at a time.

        Only the sentences a sample can use are fetched: each kind (held out, new, learnt before) is drawn
        with the probability that fills its sample twice over (the position-level reservoir then trims it),
        plus the training text's tail that the memory keeps; the rest costs no features at all."""
        lim, learnt, pos = self.limits, info["learnt"], info["positions"]
        new_expected = min(pos["new"], lim.positions)
        replay = min(pos["old"], max(0, lim.positions - new_expected), max(new_expected, lim.positions // 4))
        p = {"hold": min(1.0, 2 * lim.holdout_positions / max(1, pos["hold"])),
             "new": min(1.0, 2 * lim.positions / max(1, pos["new"])),
             "old": min(1.0, 2 * replay / max(1, pos["old"]))}
        tail_from = pos["new"] + pos["old"] - col.recent.capacity
        rng = np.random.default_rng(seed)
        batch: list[tuple[list[str], bool, bool, bool]] = []  # (words, held out, new, sampled)

        def flush() -> None:
            x, y = self.encode([w for w, _, _, _ in batch], slots)
            rows = np.repeat(np.arange(len(batch)), [max(1, -(-(len(w) + 1) // self.t)) for w, _, _, _ in batch])
            f, c, k = self.features(x)
            col.computed, col.cached = col.computed + c, col.cached + k
            flags = np.array([(h, n, s) for _, h, n, s in batch], bool).reshape(-1, 3)[rows]
            keep = (y != self.tok.pad) & (y != self.tok.bos)
            hold, new, sel = (flags[:, i:i + 1] & keep for i in range(3))
            new &= ~hold
            words_hold = hold & sel & (y >= SPECIAL_COUNT)  # accuracy counts real words (vocabulary or personal)
            col.hold.add(f[words_hold], y[words_hold])
            train = keep & ~hold  # positions in arrival order: the memory keeps the most recent
            col.recent.add(f[train], y[train])
            col.new.add(f[new & sel], y[new & sel])
            col.old.add(f[train & ~new & sel], y[train & ~new & sel])
            if col.stream is not None:
                col.stream.add(f[new & sel], y[new & sel])
            fresh = [w for w, h, n, s in batch if n and s and not h]
            if augment_copies > 0 and fresh and self.synonyms and col.stream is None:
                fa, ya, c2, k2 = self.positions(self.augmented(fresh, augment_copies, seed), slots)
                col.computed, col.cached = col.computed + c2, col.cached + k2
                col.aug.add(fa, ya)
            batch.clear()

        at = 0  # training positions so far
        for _, words in self.stream_sentences(samples):
            hold = holdout_of(hashlib.sha256(" ".join(words).encode()).hexdigest(), self.holdout_fraction)
            new = not hold and not is_in(learnt, sentence_hash(words))
            sel = bool(rng.random() < p["hold" if hold else "new" if new else "old"])
            tail = False
            if not hold:
                at += len(words) + 1
                tail = at > tail_from
            if sel or tail:
                batch.append((words, hold, new, sel))
            if len(batch) >= CHUNK_SENTENCES:
                flush()
        if batch:
            flush()
        col.train_positions = at

    # --- the round ------------------------------------------------------------------------------------
    def run(self, version: int, trigger: str, epochs: int, lr: float, tolerance: float, seed: int,
            progress: Progress, should_stop, augment_copies: int = 0, mode: str = "offline",
            online_steps: int = 3, min_steps: int = 0) -> RoundResult:
        """One keyboard round. `min_steps` is not applied here: a text gives hundreds of positions an epoch,
        and with it (1000) the test user of tests/learning/test_keyboard.py no longer saw a personal word suggested;
        `limits.max_steps` caps the optimiser steps instead."""
        t0 = time.monotonic()
        round_id = self.store.start_round(trigger)
        progress("round_started", {"round_id": round_id, "trigger": trigger})
        h, lim, b = self.variant.feature_size, self.limits, self.bundle.train_batch
        samples = self.text_files()
        counts, info = self._survey(samples)
        personal = self.claim_personal_words(counts)
        del counts
        slots = self.store.classes(self.bundle_id)
        active = self.active()
        col = Collected(lim, h, seed + round_id, mode == "online")
        self._collect(samples, slots, info, col, augment_copies if mode == "offline" else 0, seed)
        computed, cached = col.computed, col.cached
        progress("features", {"round_id": round_id, "computed": computed, "cached": cached,
                              "personal_words": personal})
        fnew, ynew = col.new.sample()
        replay = min(len(col.old), max(0, lim.positions - len(ynew)), max(len(ynew), lim.positions // 4))
        fold, yold = col.old.sample(replay)
        faug, yaug = col.aug.sample()
        ftr, ytr = np.concatenate([fnew, fold, faug]), np.concatenate([ynew, yold, yaug])
        n_new = len(ynew) + len(yaug)
        report_sampled = {"new": len(ynew), "replayed": len(yold), "augmented": len(yaug)}
        aug_seen = col.aug.seen
        del fnew, fold, faug, ynew, yold, yaug
        col.new = col.old = col.aug = None  # their sample is in ftr now
        fhw, yhw = col.hold.sample()
        stopping = should_stop()
        report: dict = {"personal_words": personal, "sentences": info["sentences"],
                        "holdout_sentences": info["holdout_sentences"], "new_sentences": info["new_sentences"],
                        "words": info["words"], "train_positions": col.train_positions,
                        "sampled": {**report_sampled, "holdout": len(yhw), "holdout_seen": col.hold.seen},
                        "augmented_positions": aug_seen,
                        "memory_entries": min(col.recent.seen, col.recent.capacity)}
        prequential: list[tuple[int, int]] = []

        def finish(outcome, detail, before=None, after=None, new_version=None) -> RoundResult:
            secs = time.monotonic() - t0
            self.store.finish_round(round_id, n_train=len(ytr), n_holdout=len(yhw), features_computed=computed,
                                    features_cached=cached, accuracy_before=before, accuracy_after=after,
                                    outcome=outcome, detail=detail, seconds=secs)
            if outcome in ("promoted", "rejected"):
                self._remember_learnt(samples, info, round_id)
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

        # one head interpreter for the whole round (each holds its weights, optimiser slots and arenas)
        head = self.new_head()
        row = self.store.head(version)
        current_w = load_weights(self.heads_dir / row["file"])
        current_mem = Memory.load(self.heads_dir / memory_file(row["file"]), h)
        head.set_weights(current_w)
        before1, before3 = score(head, active, fhw, yhw, current_mem, (current_mem.mix,))[0]
        cloud_w = self.cloud_weights()
        head.set_weights(cloud_w)
        report["pretrained"] = dict(zip(("top1", "top3"), score(head, active, fhw, yhw)[0]))
        report["current"] = {"top1": before1, "top3": before3}

        head.set_weights(current_w)  # scoring ran no optimiser step: its state is still fresh
        if mode != "online":
            del current_mem  # only online mode starts from the current memory
        if mode == "online":
            fs, ys = col.stream.raw()
            memory = current_mem
            online = KeyboardModel(head, memory, active)
            cap = col.recent.capacity
            for i in range(0, len(ys), b):  # predict first, then learn
                fb, yb = fs[i:i + b].astype(np.float32), ys[i:i + b]
                w = yb >= SPECIAL_COUNT
                h1, h3 = topk_hits(online.probs(fb[w]), yb[w])
                prequential.append((h1, int(w.sum())))
                report["prequential_top3_hits"] = report.get("prequential_top3_hits", 0) + h3
                memory.keys = np.concatenate([memory.keys, unit(fb)])[-cap:]
                memory.targets = np.concatenate([memory.targets, yb])[-cap:]
                if memory.mix == 0:
                    memory.mix = 0.3
                for _ in range(online_steps):
                    head.fit(fb, yb, active, 1, lr, seed + i)
            if not prequential:
                return finish("skipped", "no new sentences to learn from online")
        else:
            steps = min(lim.max_steps, max(1, epochs * -(-n_new // b)))
            report["steps"] = steps
            fit_steps(head, ftr, ytr, active, steps, lr, seed + round_id, should_stop, progress, round_id)
        if should_stop():
            return finish("stopped", "the daemon is stopping; the candidate was discarded", before1)
        tuned = head.get_weights()
        # regularise toward the cloud head: interpolate, choose on the holdout
        del current_w
        best = None
        for a in INTERP_GRID:
            head.set_weights({k: cloud_w[k] + a * (tuned[k] - cloud_w[k]) for k in tuned})
            sc = score(head, active, fhw, yhw)[0]
            if best is None or sc > best[0]:
                best = (sc, a)
        (ft1, ft3), interp = best
        weights = {k: cloud_w[k] + interp * (tuned[k] - cloud_w[k]) for k in tuned}
        del tuned, cloud_w
        head.set_weights(weights)
        report["fine_tuned"] = {"top1": ft1, "top3": ft3, "interpolation": interp}
        # the memory of the user's contexts (the most recent ones), mixed in with a weight chosen on the holdout
        del ftr
        memory = col.recent.memory()
        del col
        scores = score(head, active, fhw, yhw, memory, MIX_GRID)
        (after1, after3), memory.mix = max(zip(scores, MIX_GRID), key=lambda sm: sm[0])
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

    def _remember_learnt(self, samples, info: dict, round_id: int) -> None:
        """After a round that learnt: the sentences it learnt (by hash) and each file's size then, what the next
        round's `pending_words` and novelty are measured against; the text's bytes per word."""
        tmp = self.heads_dir / (LEARNT_FILE + ".tmp.npy")
        np.save(tmp, info["hashes"])
        os.replace(tmp, self.heads_dir / LEARNT_FILE)
        total = sum(info["bytes"].values())
        if info["words"]:
            self.store.set_meta(BYTES_PER_WORD_KEY, repr(max(1.0, total / info["words"])))
        self.store.set_meta(LEARNT_BYTES_KEY, json.dumps(info["bytes"]))
        self.store.mark_trained([s.id for s in samples], round_id)


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
