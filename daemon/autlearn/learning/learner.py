"""One training round, in the order data flows: samples → features (cache first) → head training →
holdout evaluation → promote the candidate head or keep the current one.

Runs in the worker thread; everything it touches (interpreters, SQLite handles) belongs to that thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..intake import augment, imaging
from ..runtime.bundle import Bundle, Variant
from ..durable import read_regular_file
from ..errors import AutlearnError
from .featcache import FeatureCache, feature_key
from .features import FeatureExtractor
from .head import Head, Weights, load_weights, save_weights
from ..intake.ingest import shown
from .store import Sample, Store

log = logging.getLogger(__name__)

# `epoch` events per round at most: every epoch up to this many, then every k-th and the last.
MAX_EPOCH_EVENTS = 100
# A round from a head that has learnt from the store replays at most REPLAY_MAX of the training samples it learnt
# (a random draw, new each round) next to all the new ones, and judges on a stable sample of at most HOLDOUT_MAX
# holdout samples plus the new holdout ones: its cost follows the new files, not how many the board holds.
REPLAY_MAX = 2048
HOLDOUT_MAX = 2048
# Inputs decoded and run through the base at a time when features are missing (memory: 1,024 28×28 inputs ≈ 3 MB).
FEATURE_CHUNK = 1024


def epoch_events(progress: Progress, round_id: int, epochs: int) -> Callable[[int, int, float], None]:
    """Head.fit's on_epoch callback that publishes `epoch` events, thinned so that a long round cannot flood
    the PUB socket's queue (past it, later events — the round's outcome — would be dropped)."""
    every = -(-epochs // MAX_EPOCH_EVENTS)

    def on_epoch(e: int, n: int, loss: float) -> None:
        if e % every == 0 or e == n:
            progress("epoch", {"round_id": round_id, "epoch": e, "epochs": n, "loss": loss})

    return on_epoch

Progress = Callable[[str, dict], None]


def read_sample(path: str, max_bytes: int) -> bytes | None:
    """A stored sample's bytes as a round reads them again, or None (logged) when the file is gone, is no
    longer a regular file (a FIFO put in its place would block the worker forever) or grew past the limit
    (it is not read whole: the next scan judges it again)."""
    try:
        data, _ = read_regular_file(path, max_bytes)
    except OSError as e:
        log.info("sample %s cannot be read again (%s); it waits for the next scan", shown(path), e.strerror or e)
        return None
    if len(data) > max_bytes:
        log.info("sample %s grew past data.max_file_mb since it was ingested; it waits for the next scan",
                 shown(path))
        return None
    return data


@dataclass
class RoundResult:
    round_id: int
    outcome: str
    detail: str
    n_train: int
    n_holdout: int
    features_computed: int
    features_cached: int
    accuracy_before: float | None
    accuracy_after: float | None
    version: int | None
    seconds: float
    n_augmented: int = 0
    augmented_computed: int = 0
    augmented_cached: int = 0
    mode: str = "offline"
    prequential: list[tuple[int, int]] | None = None  # online mode: (hits, seen) per chunk, predicted before training

    @property
    def prequential_accuracy(self) -> float | None:
        seen = sum(n for _, n in self.prequential or [])
        return sum(h for h, _ in self.prequential) / seen if seen else None

    def as_dict(self) -> dict:
        return {**self.__dict__, "prequential_accuracy": self.prequential_accuracy}


def accuracy(probs: np.ndarray, y: np.ndarray) -> float | None:
    if len(y) == 0:
        return None
    return float(np.mean(np.argmax(probs, axis=1) == y))


class FeatureSource:
    """Features of stored samples: from the cache when present, else computed by the base and cached."""

    # Decoded inputs kept inside `sharing_inputs` for the round's augmented copies (a file is read once a round).
    SHARED_INPUT_BYTES = 8 << 20
    # Decoded inputs held at once while their features are computed (then the next chunk is decoded).
    DECODED_CHUNK_BYTES = 8 << 20

    def __init__(self, bundle: Bundle, variant: Variant, extractor: FeatureExtractor, cache: FeatureCache,
                 max_pixels: int, max_file_bytes: int = 64 << 20):
        self.bundle = bundle
        self.variant = variant
        self.extractor = extractor
        self.cache = cache
        self.max_pixels = max_pixels
        self.max_file_bytes = max_file_bytes
        self.prep_version = int(bundle.input.get("preprocessing_version", 1))
        self._shared: dict[str, np.ndarray] | None = None
        self._shared_bytes = 0

    @contextlib.contextmanager
    def sharing_inputs(self):
        """Inside the block an input decoded for its features is kept (up to SHARED_INPUT_BYTES in all) and
        reused for the augmented copies: a new file is read, hash-checked and decoded once per round, not once
        per copy. Released when the block ends."""
        self._shared, self._shared_bytes = {}, 0
        try:
            yield
        finally:
            self._shared, self._shared_bytes = None, 0

    def key(self, sha256: str, augmentation: str = "none") -> str:
        return feature_key(sha256, self.variant.base_sha256, self.prep_version, augmentation)

    def for_samples(self, samples: list[Sample]) -> tuple[np.ndarray, list[Sample], int, int]:
        """Features for the samples still readable and unchanged; (features, kept samples, computed, cached)."""
        return self.for_items([(s, "none", None) for s in samples])

    def augmented(self, samples: list[Sample], copies: int, seed: int) -> tuple[np.ndarray, list[Sample], int, int]:
        """Features of up to `copies` augmented copies per sample, each cached under its own variant key."""
        items = [(s, name, vseed) for s in samples for name, vseed in augment.image_variants(copies, seed, s.sha256)]
        return self.for_items(items)

    def for_items(self, items: list[tuple[Sample, str, int | None]]) -> tuple[np.ndarray, list[Sample], int, int]:
        keys = [self.key(s.sha256, name) for s, name, _ in items]
        found = self.cache.get_many(keys)
        computed: dict[str, np.ndarray] = {}
        inputs, todo_keys, pending = [], [], set()

        def extract() -> None:  # a chunk at a time: 500 decoded photos at 160 px would be 150 MB of inputs
            if inputs:
                chunk = dict(zip(todo_keys, self.extractor(np.stack(inputs))))
                self.cache.put_many(chunk, self.extractor.cache_quant)  # cut: int8 cache
                computed.update(chunk)
                inputs.clear()
                todo_keys.clear()

        for (s, _, vseed), k in zip(items, keys):
            if k in found or k in computed or k in pending:
                continue
            x = self._read(s)
            if x is not None:
                inputs.append(x if vseed is None else augment.augment_image(x, vseed))
                todo_keys.append(k)
                pending.add(k)
                if len(inputs) >= FEATURE_CHUNK or len(inputs) * x.nbytes >= self.DECODED_CHUNK_BYTES:
                    extract()
        extract()
        kept, rows = [], []
        for (s, _, _), k in zip(items, keys):
            v = found.get(k)
            if v is None:
                v = computed.get(k)
            if v is not None:
                kept.append(s)
                rows.append(v)
        x = np.stack(rows) if rows else np.zeros((0, self.variant.feature_size), np.float32)
        return x, kept, len(computed), len(found)

    def _read(self, s: Sample) -> np.ndarray | None:
        shared = self._shared
        if shared is not None and s.sha256 in shared:
            return shared[s.sha256]
        x = self._decode(s)
        if x is not None and shared is not None and self._shared_bytes + x.nbytes <= self.SHARED_INPUT_BYTES:
            shared[s.sha256] = x
            self._shared_bytes += x.nbytes
        return x

    def _decode(self, s: Sample) -> np.ndarray | None:
        data = read_sample(s.path, self.max_file_bytes)
        if data is None or hashlib.sha256(data).hexdigest() != s.sha256:
            log.info("sample %s changed since it was ingested; it waits for the next scan", shown(s.path))
            return None
        try:
            return imaging.load_input(data, s.path, self.bundle.input, self.max_pixels)
        except AutlearnError as e:
            log.warning("%s", shown(e.message))
            return None

    def for_bytes(self, data: bytes, name: str) -> tuple[np.ndarray, bool]:
        """Features of one file's bytes, through the cache (the inference–training cache)."""

        key = self.key(hashlib.sha256(data).hexdigest())
        found = self.cache.get_many([key])
        if key in found:
            return found[key], True
        x = imaging.load_input(data, name, self.bundle.input, self.max_pixels)
        f = self.extractor(x[None])[0]
        self.cache.put_many({key: f}, self.extractor.cache_quant)  # cut: int8 cache
        return f, False


class Learner:
    def __init__(self, bundle: Bundle, bundle_id: str, variant: Variant, store: Store, features: FeatureSource,
                 heads_dir: Path, threads: int):
        self.bundle = bundle
        self.bundle_id = bundle_id
        self.variant = variant
        self.store = store
        self.features = features
        self.heads_dir = heads_dir
        self.threads = threads

    def new_head(self) -> Head:
        return Head(self.variant, self.bundle.class_capacity, self.bundle.train_batch, self.threads)

    def active(self) -> np.ndarray:
        m = np.zeros(self.bundle.class_capacity, np.float32)
        for slot in self.store.classes(self.bundle_id).values():
            m[slot] = 1.0
        return m

    def unlearnt_share(self, version: int, kept: list, hold: np.ndarray) -> float:
        """The share of this round's training samples the current head has not learnt yet. A round trains its
        candidate from the current head, so after a round that learnt most of the samples a budget in proportion
        to the new ones is enough (10 % new files: a tenth of the epochs, at least one): the cached features
        already save the base's work, this saves the head's. The bundle's own head (it learnt none of them) and
        a head rolled back to one that learnt fewer get the full budget."""
        n_train = int((~hold).sum())
        row = self.store.head(version)
        learnt = int(row.get("n_train") or 0) if row else 0
        if n_train == 0 or learnt == 0:
            return 1.0
        unseen = sum(1 for s, h in zip(kept, hold) if not h and not s.trained)
        return min(1.0, max(unseen, n_train - learnt) / n_train)

    def round_samples(self, version: int, seed: int) -> tuple[list[Sample], str]:
        """The samples a round reads, and a note on what it left out. Few samples: all of them (new ones in
        arrival order). Many, from a head that has learnt from the store: every new sample, a random draw of
        REPLAY_MAX learnt training samples and a stable sample of HOLDOUT_MAX holdout ones, read through indexes."""
        counts = self.store.counts()
        learnt = counts["ok"] - counts["holdout"] - counts["new_train"]
        row = self.store.head(version)
        replay = bool(row and row.get("n_train")) and learnt > REPLAY_MAX
        if not replay and counts["holdout"] <= HOLDOUT_MAX:
            return self.store.usable_samples(), ""
        new = self.store.new_samples()
        ids = {s.id for s in new}
        hold = [s for s in self.store.holdout_sample(HOLDOUT_MAX) if s.id not in ids]
        if replay:
            old = self.store.learnt_training_sample(REPLAY_MAX, seed)
        else:
            old = [s for s in self.store.usable_samples() if not s.holdout and s.trained]
        notes = []
        if replay:
            notes.append(f"replayed {len(old)} of {learnt} learnt samples")
        if counts["holdout"] > HOLDOUT_MAX:
            notes.append(f"judged on {len(hold) + sum(s.holdout for s in new)} of {counts['holdout']} holdout samples")
        return old + hold + new, "; ".join(notes) + "; " if notes else ""

    def current_weights(self, version: int) -> Weights:
        row = self.store.head(version)
        if row is None:
            raise AutlearnError("not_found", f"head version {version} is not recorded")
        return load_weights(self.heads_dir / row["file"])

    def _online(self, head: Head, xs: np.ndarray, ys: np.ndarray, active: np.ndarray, lr: float, steps: int,
                min_steps: int, seed: int, prequential: list[tuple[int, int]], should_stop) -> list[float]:
        """The paper's online mode: each chunk of new samples (in arrival order) is first predicted with the
        head as it stands — that is the prequential score — and only then learnt: one step on the chunk, the
        rest on batches replayed from everything the stream has brought so far (the samples stay on the board,
        so revisiting them costs only time, and a chunk alone would pull the head toward its few labels).
        `steps` per chunk, raised so that the round makes `min_steps` in all."""
        b = head.batch
        chunks = -(-len(xs) // b)
        per_chunk = max(steps, -(-min_steps // chunks)) if chunks else steps
        rng = np.random.default_rng(seed)
        losses = []
        xb = np.zeros((b, xs.shape[1]), np.float32)
        yb = np.zeros(b, np.int32)
        mb = np.zeros(b, np.float32)
        for i in range(0, len(xs), b):
            xc, yc = xs[i:i + b], ys[i:i + b]
            hits = int(np.sum(np.argmax(head.predict(xc, active), axis=1) == yc))
            prequential.append((hits, len(yc)))
            seen = i + len(yc)
            for k in range(per_chunk):
                rows = np.arange(i, seen) if k == 0 else rng.choice(seen, size=min(b, seen), replace=False)
                xb[:], yb[:], mb[:] = 0.0, 0, 0.0
                xb[:len(rows)], yb[:len(rows)], mb[:len(rows)] = xs[rows], ys[rows], 1.0
                losses.append(head.step(xb, yb, mb, active, lr))
            if should_stop():
                break
        return losses

    def run(self, version: int, trigger: str, epochs: int, lr: float, tolerance: float, seed: int,
            progress: Progress, should_stop: Callable[[], bool], augment_copies: int = 0, mode: str = "offline",
            online_steps: int = 3, min_steps: int = 0, holdout: bool = True) -> RoundResult:
        """One round. With `holdout` false (training.holdout_fraction = 0) there is no holdout gate: every
        sample trains and the candidate is promoted without a holdout check (its accuracy is not measured)."""
        t0 = time.monotonic()
        round_id = self.store.start_round(trigger)
        progress("round_started", {"round_id": round_id, "trigger": trigger})
        slots = self.store.classes(self.bundle_id)
        chosen, bounded = self.round_samples(version, seed + round_id)
        samples = [s for s in chosen if s.label in slots]
        augmenting = augment_copies > 0 and mode == "offline"
        with self.features.sharing_inputs() if augmenting else contextlib.nullcontext():
            x, kept, computed, cached = self.features.for_samples(samples)
            progress("features", {"round_id": round_id, "computed": computed, "cached": cached})
            stopping = should_stop()  # a step boundary: waits here while training must pause
            y = np.array([slots[s.label] for s in kept], np.int32)
            hold = np.array([s.holdout and holdout for s in kept], bool)
            xtr, ytr, xho, yho = x[~hold], y[~hold], x[hold], y[hold]
            aug_computed = aug_cached = 0
            if augmenting and len(ytr):  # training samples only: the holdout judges real data
                train_samples = [s for s, h in zip(kept, hold) if not h]
                xa, kept_a, aug_computed, aug_cached = self.features.augmented(train_samples, augment_copies, seed)
                if len(kept_a):
                    xtr = np.concatenate([xtr, xa])
                    ytr = np.concatenate([ytr, np.array([slots[s.label] for s in kept_a], np.int32)])
                progress("augmented", {"round_id": round_id, "computed": aug_computed, "cached": aug_cached})
        n_original = int((~hold).sum())
        active = self.active()
        prequential: list[tuple[int, int]] = []

        def finish(outcome: str, detail: str, before=None, after=None, new_version=None) -> RoundResult:
            secs = time.monotonic() - t0
            self.store.finish_round(round_id, n_train=n_original, n_holdout=len(yho), features_computed=computed,
                                    features_cached=cached, accuracy_before=before, accuracy_after=after,
                                    outcome=outcome, detail=detail, seconds=secs)
            if outcome in ("promoted", "rejected"):
                self.store.mark_trained([s.id for s in kept], round_id)
            res = RoundResult(round_id, outcome, detail, n_original, len(yho), computed, cached, before, after,
                              new_version, secs, len(ytr) - n_original, aug_computed, aug_cached, mode,
                              prequential)
            progress("round_finished", res.as_dict())
            log.info("round %d %s: %s (%.2fs)", round_id, outcome, detail, secs)
            return res

        if stopping:
            return finish("stopped", "the daemon is stopping")
        if len(ytr) == 0:
            return finish("skipped", "no training samples yet")
        if len(yho) == 0 and holdout:
            return finish("skipped", "no holdout samples yet: a candidate could not be judged")
        base_w = self.current_weights(version)
        head = self.new_head()
        head.set_weights(base_w)
        before = accuracy(head.predict(xho, active), yho)
        if mode == "online":
            stream = [i for i, s in enumerate(kept) if not s.holdout and not s.trained]
            losses = self._online(head, x[stream], y[stream], active, lr, online_steps, min_steps, seed + round_id,
                                  prequential, should_stop)
        else:
            epochs = head.epochs_for(len(xtr), epochs, min_steps)
            share = self.unlearnt_share(version, kept, hold)
            if share < 1.0:  # the incremental round: the head continues from what it already knows
                epochs = max(1, math.ceil(epochs * share))
            losses = head.fit(xtr, ytr, active, epochs, lr, seed + round_id, should_stop,
                              epoch_events(progress, round_id, epochs))
        if not losses:
            return finish("skipped", "no new samples to learn from online", before)
        if should_stop():
            return finish("stopped", "the daemon is stopping; the candidate was discarded", before)
        progress("trained", {"round_id": round_id, "epochs": len(losses), "loss_first": losses[0],
                             "loss_last": losses[-1]})
        after = accuracy(head.predict(xho, active), yho)
        cand = head.get_weights()
        new_version = self.store.next_head_version()
        fname = f"head-v{new_version}.npz"
        save_weights(cand, self.heads_dir / fname)
        promote = not holdout or after >= before - tolerance
        status = "promoted" if promote else "rejected"
        self.store.add_head(self.bundle_id, self.variant.name, status, fname, after, before, n_original, len(yho),
                            round_id)
        online = ""
        if prequential:
            seen = sum(n for _, n in prequential)
            online = f"online: {sum(h for h, _ in prequential) / seen:.3f} predicted right before learning {seen}; "
        if not holdout:
            detail = online + bounded + f"promoted without a holdout check (training.holdout_fraction = 0) (v{new_version})"
        else:
            detail = (online + bounded + f"holdout accuracy {before:.3f} → {after:.3f} on {len(yho)} samples; "
                      + (f"promoted (v{new_version})" if promote else
                         f"candidate v{new_version} rejected, kept the current head (v{version})"))
        progress("version_" + status, {"version": new_version, "accuracy": after, "previous_accuracy": before})
        return finish(status, detail, before, after, new_version)
