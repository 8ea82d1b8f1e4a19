"""What a keyboard round keeps of the user's text, and when one is due.

What a keyboard round keeps of the user's text and when one is due: the limits that bound a round, the
bounded samples one pass over the text leaves, sentence hashes (what earlier rounds learnt), the new-words
count that triggers a round, and the step-bounded fine-tuning loop."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from .knn import Recent, Reservoir, entries_for

# each text file's size when the variant's last round learnt it (per variant, like its heads and learnt hashes)
LEARNT_BYTES_KEY, BYTES_PER_WORD_KEY = "keyboard:learnt_bytes:{variant}", "keyboard:bytes_per_word"
DEFAULT_BYTES_PER_WORD = 6.0  # English with spaces and punctuation; measured on the user's text by each round


@dataclass(frozen=True)
class KeyboardLimits:
    """What bounds a keyboard round (training.text_* settings)."""
    positions: int = 16_000  # training positions kept (new first; the rest of the sample replays learnt text)
    holdout_positions: int = 1_000
    memory_entries: int = 10_000
    memory_mb: float = 4.0
    max_steps: int = 200


def limits_of(config) -> KeyboardLimits:
    return KeyboardLimits(config["training.text_positions"], config["training.text_holdout_positions"],
                          config["training.memory_entries"], config["training.memory_mb"],
                          config["training.text_max_steps"])


def sentence_hash(words: list[str]) -> int:
    return int.from_bytes(hashlib.sha256(" ".join(words).encode()).digest()[:8], "little")


def is_in(sorted_hashes: np.ndarray, h: int) -> bool:
    i = int(np.searchsorted(sorted_hashes, np.uint64(h)))
    return i < len(sorted_hashes) and int(sorted_hashes[i]) == h


def pending_words(store, variant: str) -> int:
    """About how many words of text the next round of `variant` would learn that none of its rounds has: bytes
    added to each text file since the variant's round that last learnt it, over the bytes per word measured on
    the user's text. A file the variant never learnt (a new file, or any file after a switch to another
    variant), one that shrank, or one rewritten since a round learnt it counts whole. Cheap: it reads no file."""
    learnt = json.loads(store.get_meta(LEARNT_BYTES_KEY.format(variant=variant)) or "{}")
    per_word = float(store.get_meta(BYTES_PER_WORD_KEY) or DEFAULT_BYTES_PER_WORD)
    total = 0
    for path, size, trained in store.db.execute("SELECT path, size, trained_round IS NOT NULL FROM samples "
                                                "WHERE status='ok' AND kind='text'"):
        old = learnt.get(path)
        if old is None or size < old or (size == old and not trained):
            total += size
        else:
            total += size - old
    return int(total / per_word)


class Collected:
    """The bounded samples one pass over the user's text leaves (keyboard.py says what each holds)."""

    def __init__(self, lim: KeyboardLimits, h: int, seed: int, online: bool):
        self.new = Reservoir(lim.positions, h, seed)
        self.old = Reservoir(lim.positions, h, seed + 1)
        self.aug = Reservoir(lim.positions // 4, h, seed + 2)
        self.hold = Reservoir(lim.holdout_positions, h, seed + 3)
        self.recent = Recent(entries_for(lim.memory_entries, lim.memory_mb, h), h)
        self.stream = Recent(lim.positions, h, normalise=False) if online else None  # new positions, in order
        self.computed = self.cached = 0
        self.train_positions = 0


def fit_steps(head, f: np.ndarray, y: np.ndarray, active: np.ndarray, steps: int, lr: float, seed: int,
              checkpoint, progress, round_id: int) -> None:
    """`steps` optimiser steps over shuffled passes of the training sample; `epoch` events per pass."""
    rng = np.random.default_rng(seed)
    b, n, done, passes = head.batch, len(y), 0, -(-steps * head.batch // max(1, len(y)))
    xb, yb, mb = np.zeros((b, f.shape[1]), np.float32), np.zeros(b, np.int32), np.zeros(b, np.float32)
    for e in range(1, passes + 1):
        order, total, count = rng.permutation(n), 0.0, 0
        for i in range(0, n, b):
            if done >= steps:
                break
            idx = order[i:i + b]
            xb[:], yb[:], mb[:] = 0.0, 0, 0.0
            xb[:len(idx)], yb[:len(idx)], mb[:len(idx)] = f[idx], y[idx], 1.0
            total += head.step(xb, yb, mb, active, lr) * len(idx)
            count += len(idx)
            done += 1
            if done % 100 == 0 and checkpoint():
                return
        if count:
            progress("epoch", {"round_id": round_id, "epoch": e, "epochs": passes, "loss": total / count})
        if done >= steps:
            break

