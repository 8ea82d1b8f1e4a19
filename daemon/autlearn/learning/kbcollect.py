"""The keyboard round's two passes over the user's text, and the windows of token ids the base reads.

Pass 1, the survey: out-of-vocabulary word counts, sentence hashes, file sizes. Pass 2, the collection: base
features (cache first) of the sentences the bounded samples can use.
"""

from __future__ import annotations

import array
import hashlib
import os
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from ..intake.ingest import holdout_of
from .kbsample import Collected, is_in, sentence_hash
from .knn import SPECIAL_COUNT

if TYPE_CHECKING:
    from .keyboard import KeyboardLearner

CHUNK_SENTENCES = 96  # sentences whose windows' features are fetched (or computed) together
MAX_COUNTED_WORDS = 200_000  # distinct out-of-vocabulary words counted at once (then words seen once are dropped)


def windows(ids_in: list[int], ids_out: list[int], t: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """One sentence's input and target ids cut into rows of `t` (the last padded with `pad`)."""
    n = max(1, -(-len(ids_in) // t))
    x = np.full((n, t), pad, np.int32)
    y = np.full((n, t), pad, np.int32)
    for i in range(n):
        a, b = ids_in[i * t:(i + 1) * t], ids_out[i * t:(i + 1) * t]
        x[i, :len(a)], y[i, :len(b)] = a, b
    return x, y


def survey(kl: KeyboardLearner, samples) -> tuple[Counter, dict]:
    """Pass 1: out-of-vocabulary word counts of the training text; sentence and position counts (held out,
    new, learnt before), hashes, file sizes."""
    counts: Counter = Counter()
    learnt = kl.learnt()
    hashes = array.array("Q")
    info = {"sentences": 0, "holdout_sentences": 0, "new_sentences": 0, "words": 0, "bytes": {},
            "positions": {"hold": 0, "new": 0, "old": 0}}
    for s in samples:
        try:
            info["bytes"][s.path] = os.stat(s.path).st_size
        except OSError:
            pass
    pos = info["positions"]
    for _, words in kl.stream_sentences(samples):
        info["words"] += len(words)
        if holdout_of(hashlib.sha256(" ".join(words).encode()).hexdigest(), kl.holdout_fraction):
            info["holdout_sentences"] += 1
            pos["hold"] += len(words) + 1
            continue
        info["sentences"] += 1
        h = sentence_hash(words)
        hashes.append(h)
        new = not is_in(learnt, h)
        info["new_sentences"] += new
        pos["new" if new else "old"] += len(words) + 1
        counts.update(w for w in words if w not in kl.base_index)
        if len(counts) > MAX_COUNTED_WORDS:
            counts = Counter({w: n for w, n in counts.items() if n > 1})
    info["hashes"] = np.unique(np.frombuffer(hashes, np.uint64)) if hashes else np.zeros(0, np.uint64)
    info["learnt"] = learnt
    return counts, info


def collect(kl: KeyboardLearner, samples, slots: dict, info: dict, col: Collected, augment_copies: int,
            seed: int) -> None:
    """Pass 2: windows → base features (cache first) → the bounded samples, CHUNK_SENTENCES at a time.

    Only the sentences a sample can use are fetched: each kind (held out, new, learnt before) is drawn
    with the probability that fills its sample twice over (the position-level reservoir then trims it),
    plus the training text's tail that the memory keeps; the rest costs no features at all."""
    lim, learnt, pos = kl.limits, info["learnt"], info["positions"]
    new_expected = min(pos["new"], lim.positions)
    replay = min(pos["old"], max(0, lim.positions - new_expected), max(new_expected, lim.positions // 4))
    p = {"hold": min(1.0, 2 * lim.holdout_positions / max(1, pos["hold"])),
         "new": min(1.0, 2 * lim.positions / max(1, pos["new"])),
         "old": min(1.0, 2 * replay / max(1, pos["old"]))}
    tail_from = pos["new"] + pos["old"] - col.recent.capacity
    rng = np.random.default_rng(seed)
    batch: list[tuple[list[str], bool, bool, bool]] = []  # (words, held out, new, sampled)

    def flush() -> None:
        x, y = kl.encode([w for w, _, _, _ in batch], slots)
        rows = np.repeat(np.arange(len(batch)), [max(1, -(-(len(w) + 1) // kl.t)) for w, _, _, _ in batch])
        f, c, k = kl.features(x)
        col.computed, col.cached = col.computed + c, col.cached + k
        flags = np.array([(h, n, s) for _, h, n, s in batch], bool).reshape(-1, 3)[rows]
        keep = (y != kl.tok.pad) & (y != kl.tok.bos)
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
        if augment_copies > 0 and fresh and kl.synonyms and col.stream is None:
            fa, ya, c2, k2 = kl.positions(kl.augmented(fresh, augment_copies, seed), slots)
            col.computed, col.cached = col.computed + c2, col.cached + k2
            col.aug.add(fa, ya)
        batch.clear()

    at = 0  # training positions so far
    for _, words in kl.stream_sentences(samples):
        hold = holdout_of(hashlib.sha256(" ".join(words).encode()).hexdigest(), kl.holdout_fraction)
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
