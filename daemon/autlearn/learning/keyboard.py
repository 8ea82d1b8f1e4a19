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
sentence by sentence (kbtext), their windows' base features come from the cache in chunks (kbcollect),
and only bounded samples are kept (knn): a uniform sample of the new training positions, one of the positions
learnt before (replayed), one of the holdout, and the most recent contexts for the memory. The optimiser makes
at most `max_steps` steps. A sentence learnt by an earlier round is recognised by its hash, so a growing notes
file costs base features (cache misses) only for its new sentences, and an edited file's old sentences, gone
from the text, are gone from what the next round learns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from ..intake import augment
from ..intake.ingest import holdout_of
from ..intake.kbtext import Tokenizer, read_pieces
from ..runtime.bundle import Bundle, Variant
from .featcache import FeatureCache, feature_key
from .features import FeatureExtractor
from .head import Head, Weights, active_mask, load_weights, save_weights
from .kbcollect import collect, survey, windows
from .kbpredict import KeyboardModel, KeyboardPredictor
from .kbsample import (BYTES_PER_WORD_KEY, LEARNT_BYTES_KEY, Collected, KeyboardLimits, fit_steps, is_in, limits_of,
                       pending_words, sentence_hash)
from .knn import SPECIAL_COUNT, Memory, score, topk_hits, unit
from .round import (Checkpoint, KeyboardExtras, Prepared, Progress, RoundContext, RoundResult, RoundScenario, Skip,
                    run_round)
from .store import Store

log = logging.getLogger(__name__)

# what callers import from here (the service, tools)
__all__ = ["KeyboardLearner", "KeyboardRound", "KeyboardPredictor", "KeyboardLimits", "Tokenizer", "limits_of",
           "pending_words", "load_synonyms", "memory_file"]
LEARNT_FILE = "keyboard-learnt-{variant}.npy"  # hashes of the sentences the variant's earlier rounds learnt from
MIX_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7)
INTERP_GRID = (0.25, 0.5, 0.75, 1.0)


class KeyboardLearner:
    """The keyboard scenario's learner: the user's text, its encoding and features, personal words, head versions
    with their memories; `run` plays one round of the template (round.run_round) with a KeyboardRound."""

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
        # per variant, like its heads, memories and cached features: another width has learnt nothing yet
        self.learnt_path = heads_dir / LEARNT_FILE.format(variant=variant.name)

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
        return active_mask(self.bundle.class_capacity, self.store.classes(self.bundle_id).values(),
                           never=(self.tok.pad, self.tok.bos))  # never suggested, never a target

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
            x, y = windows(ids_in, ids_out, self.t, self.tok.pad)
            xs.append(x)
            ys.append(y)
        if not xs:
            return np.zeros((0, self.t), np.int32), np.zeros((0, self.t), np.int32)
        return np.concatenate(xs), np.concatenate(ys)

    def positions(self, sentences, slots) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Flattened features and targets of every position whose target is learnt (not <pad>/<bos>).
        Holds all of them: for tools and small texts; a round streams instead (kbcollect.collect)."""
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
            return np.load(self.learnt_path)
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

    def run(self, version: int, trigger: str, epochs: int, learning_rate: float, tolerance: float, seed: int,
            progress: Progress, checkpoint: Checkpoint, augment_copies: int = 0, mode: str = "offline",
            online_steps: int = 3, min_steps: int = 0) -> RoundResult:
        """One keyboard round. `min_steps` is not applied here: a text gives hundreds of positions an epoch,
        and with it (1000) the test user of tests/learning/test_keyboard.py no longer saw a personal word suggested;
        `limits.max_steps` caps the optimiser steps instead. `checkpoint` is called at step boundaries and may
        block while training must pause (round.Checkpoint)."""
        sc = KeyboardRound(self, epochs, learning_rate, seed, augment_copies, mode, online_steps)
        return run_round(sc, version, trigger, tolerance, progress, checkpoint)


class KeyboardRound(RoundScenario):
    """The keyboard scenario's steps of one round: personal words, the bounded samples of the user's text, the
    candidate head fine-tuned (offline, step-bounded) or online, interpolated toward the cloud head and paired
    with the memory of the user's contexts, both chosen on the holdout (top-1 over held-out words)."""

    def __init__(self, learner: KeyboardLearner, epochs: int, learning_rate: float, seed: int, augment_copies: int,
                 mode: str, online_steps: int):
        super().__init__(learner.store, learner.bundle_id, learner.variant.name, learner.heads_dir, mode)
        self.learner, self.epochs, self.learning_rate, self.seed = learner, epochs, learning_rate, seed
        self.augment_copies, self.online_steps = augment_copies, online_steps

    def prepare(self, ctx: RoundContext):
        kl, lim, round_id = self.learner, self.learner.limits, ctx.round_id
        self.samples = kl.text_files()
        counts, self.info = survey(kl, self.samples)
        personal = kl.claim_personal_words(counts)
        del counts
        self.active = kl.active()
        col = Collected(lim, kl.variant.feature_size, self.seed + round_id, self.mode == "online")
        collect(kl, self.samples, kl.store.classes(kl.bundle_id), self.info, col,
                self.augment_copies if self.mode == "offline" else 0, self.seed)
        computed, cached = col.computed, col.cached
        ctx.progress("features", {"round_id": round_id, "computed": computed, "cached": cached,
                                  "personal_words": personal})
        fnew, ynew = col.new.sample()
        replay = min(len(col.old), max(0, lim.positions - len(ynew)), max(len(ynew), lim.positions // 4))
        fold, yold = col.old.sample(replay)
        faug, yaug = col.aug.sample()
        self.ftr, self.ytr = np.concatenate([fnew, fold, faug]), np.concatenate([ynew, yold, yaug])
        self.n_new = len(ynew) + len(yaug)
        sampled = {"new": len(ynew), "replayed": len(yold), "augmented": len(yaug)}
        aug_seen = col.aug.seen
        del fnew, fold, faug, ynew, yold, yaug
        col.new = col.old = col.aug = None  # their sample is in ftr now
        self.fhw, self.yhw = col.hold.sample()
        info = self.info
        self.report = KeyboardExtras(personal, info["sentences"], info["holdout_sentences"], info["new_sentences"],
                                     info["words"], col.train_positions,
                                     {**sampled, "holdout": len(self.yhw), "holdout_seen": col.hold.seen}, aug_seen,
                                     min(col.recent.seen, col.recent.capacity))
        self.col = col
        yield None  # waits here while training must pause
        yield Prepared(len(self.ytr), len(self.yhw), computed, cached)

    def not_ready(self) -> str | None:
        if len(self.ytr) == 0 or len(self.yhw) == 0:
            return "not enough text yet (need sentences for training and for the holdout)"
        return None

    def score_current(self, ctx: RoundContext) -> float | None:
        kl, rep = self.learner, self.report
        # one head interpreter for the whole round (each holds its weights, optimiser slots and arenas)
        self.head = head = kl.new_head()
        row = self.store.head(ctx.version)
        self.current_w = load_weights(self.heads_dir / row["file"])
        self.current_mem = Memory.load(self.heads_dir / memory_file(row["file"]), kl.variant.feature_size)
        head.set_weights(self.current_w)
        before1, self.before3 = score(head, self.active, self.fhw, self.yhw, self.current_mem,
                                      (self.current_mem.mix,))[0]
        self.cloud_w = kl.cloud_weights()
        head.set_weights(self.cloud_w)
        rep.pretrained = dict(zip(("top1", "top3"), score(head, self.active, self.fhw, self.yhw)[0]))
        rep.current = {"top1": before1, "top3": self.before3}
        head.set_weights(self.current_w)  # scoring ran no optimiser step: its state is still fresh
        if self.mode != "online":
            self.current_mem = None  # only online mode starts from the current memory
        return before1

    def train(self, ctx: RoundContext) -> Skip | None:
        head, active, rep, b = self.head, self.active, self.report, self.learner.bundle.train_batch
        if self.mode == "online":
            fs, ys = self.col.stream.raw()
            memory = self.current_mem
            online = KeyboardModel(head, memory, active)
            cap = self.col.recent.capacity
            for i in range(0, len(ys), b):  # predict first, then learn
                fb, yb = fs[i:i + b].astype(np.float32), ys[i:i + b]
                w = yb >= SPECIAL_COUNT
                h1, h3 = topk_hits(online.probs(fb[w]), yb[w])
                ctx.prequential.append((h1, int(w.sum())))
                rep.prequential_top3_hits = (rep.prequential_top3_hits or 0) + h3
                memory.keys = np.concatenate([memory.keys, unit(fb)])[-cap:]
                memory.targets = np.concatenate([memory.targets, yb])[-cap:]
                if memory.mix == 0:
                    memory.mix = 0.3
                for _ in range(self.online_steps):
                    head.fit(fb, yb, active, 1, self.learning_rate, self.seed + i)
            if not ctx.prequential:
                return Skip("no new sentences to learn from online", judged=False)
        else:
            rep.steps = min(self.learner.limits.max_steps, max(1, self.epochs * -(-self.n_new // b)))
            fit_steps(head, self.ftr, self.ytr, active, rep.steps, self.learning_rate, self.seed + ctx.round_id,
                      ctx.checkpoint, ctx.progress, ctx.round_id)
        return None

    def score_candidate(self, ctx: RoundContext) -> float | None:
        head, active, rep, cloud_w = self.head, self.active, self.report, self.cloud_w
        tuned = head.get_weights()
        # regularise toward the cloud head: interpolate, choose on the holdout
        self.current_w = self.current_mem = None
        best = None
        for a in INTERP_GRID:
            head.set_weights({k: cloud_w[k] + a * (tuned[k] - cloud_w[k]) for k in tuned})
            sc = score(head, active, self.fhw, self.yhw)[0]
            if best is None or sc > best[0]:
                best = (sc, a)
        (ft1, ft3), self.interp = best
        self.weights = {k: cloud_w[k] + self.interp * (tuned[k] - cloud_w[k]) for k in tuned}
        del tuned, cloud_w
        self.cloud_w = None
        head.set_weights(self.weights)
        rep.fine_tuned = {"top1": ft1, "top3": ft3, "interpolation": self.interp}
        # the memory of the user's contexts (the most recent ones), mixed in with a weight chosen on the holdout
        self.ftr = None
        self.memory = self.col.recent.memory()
        self.col = None
        scores = score(head, active, self.fhw, self.yhw, self.memory, MIX_GRID)
        (after1, self.after3), self.memory.mix = max(zip(scores, MIX_GRID), key=lambda sm: sm[0])
        rep.with_memory = {"top1": after1, "top3": self.after3, "mix": self.memory.mix}
        return after1

    def promotes(self, before: float, after: float, tolerance: float) -> bool:
        """A keyboard candidate must gain on the holdout: top-1 above the current head's minus `tolerance`, or
        top-1 within it and top-3 strictly above. A candidate that only ties (no gain in either) is rejected: on a
        few hundred held-out words a tie is no evidence, and promoting it made every round a promotion."""
        if after > before - tolerance:
            return True
        return after >= before - tolerance and self.after3 > self.before3

    def save(self, path: Path) -> None:
        save_weights(self.weights, path)
        self.memory.save(path.parent / memory_file(path.name), {"interpolation": self.interp})

    def describe(self, ctx: RoundContext, before: float | None, after: float | None) -> str:
        pre = self.report.pretrained
        return (f"next-word top-1 {before:.3f} → {after:.3f}, top-3 {self.before3:.3f} → {self.after3:.3f} on "
                f"{len(self.yhw)} held-out words (pretrained {pre['top1']:.3f}/{pre['top3']:.3f}); "
                f"{len(self.report.personal_words)} new personal words; ")

    def learnt(self, round_id: int) -> None:
        """After a round that learnt: the sentences it learnt (by hash) and each file's size then, what the next
        round's `pending_words` and novelty are measured against; the text's bytes per word."""
        info = self.info
        path = self.learner.learnt_path
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, info["hashes"])
        os.replace(tmp, path)
        total = sum(info["bytes"].values())
        if info["words"]:
            self.store.set_meta(BYTES_PER_WORD_KEY, repr(max(1.0, total / info["words"])))
        self.store.set_meta(LEARNT_BYTES_KEY.format(variant=self.variant_name), json.dumps(info["bytes"]))
        self.store.mark_trained([s.id for s in self.samples], round_id)

    def extras(self) -> KeyboardExtras:
        return self.report


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
