"""The keyboard's bounded parts: the context memory, bounded stream samples, chunked holdout scoring.

The keyboard's bounded parts: the context memory (capped, float16 keys), bounded samples of a text stream,
and holdout scoring in chunks.

Nothing here grows with the amount of text: the memory keeps at most `capacity` entries (policy: the most
recent contexts of the user's training text, in arrival order), a Reservoir keeps a uniform sample of at most
`capacity` positions of a stream of any length, and scores are computed SCORE_CHUNK rows at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..durable import write_atomic

SPECIAL_COUNT = 4  # <pad> <unk> <bos> <eos>, ids 0..3 (docs/bundle-format.md)
KNN_K, KNN_TEMPERATURE = 32, 0.05
KNN_CHUNK = 32  # queries compared with the memory at a time
SCORE_CHUNK = 128  # holdout rows scored at a time: [128, capacity] probabilities, never [N, capacity]


def entries_for(max_entries: int, max_mb: float, h: int) -> int:
    """Memory entries allowed by both caps: an entry is a float16 key of `h` values and an int32 target."""
    return max(0, min(int(max_entries), int(max_mb * (1 << 20)) // (2 * h + 4)))


@dataclass
class Memory:
    """Stored contexts (unit-length features, float16) and the word that followed each."""
    keys: np.ndarray  # [M, H] float16
    targets: np.ndarray  # [M] int32
    mix: float = 0.0
    _keys32: tuple | None = field(default=None, repr=False, compare=False)  # (the keys it was made of, float32)

    @classmethod
    def empty(cls, h: int) -> "Memory":
        return cls(np.zeros((0, h), np.float16), np.zeros(0, np.int32), 0.0)

    def probs(self, q: np.ndarray, capacity: int) -> np.ndarray:
        out = np.zeros((len(q), capacity), np.float32)
        if len(self.keys) == 0:
            return out
        qn = (q / (np.linalg.norm(q, axis=1, keepdims=True) + 1e-8)).astype(np.float32)
        k = min(KNN_K, len(self.keys))
        if self._keys32 is None or self._keys32[0] is not self.keys:
            self._keys32 = (self.keys, self.keys.astype(np.float32))  # once per set of keys, not per query
        keys32 = self._keys32[1]
        for i in range(0, len(qn), KNN_CHUNK):  # [32, M] similarities at a time
            sim = qn[i:i + KNN_CHUNK] @ keys32.T
            idx = np.argpartition(sim, len(self.keys) - k, axis=1)[:, -k:]
            top = np.take_along_axis(sim, idx, axis=1)
            del sim
            w = np.exp((top - top.max(axis=1, keepdims=True)) / KNN_TEMPERATURE)
            w /= w.sum(axis=1, keepdims=True)
            rows = np.repeat(np.arange(len(idx)), k)
            np.add.at(out[i:i + KNN_CHUNK], (rows, self.targets[idx].ravel()), w.ravel())
        return out

    def save(self, path: Path, extra: dict) -> None:
        write_atomic(path, lambda f: np.savez(f, keys=self.keys, targets=self.targets,
                                              params=np.array(json.dumps({"mix": self.mix, **extra}))))

    @classmethod
    def load(cls, path: Path, h: int) -> "Memory":
        if not path.exists():
            return cls.empty(h)
        with np.load(path) as z:
            params = json.loads(str(z["params"]))
            return cls(z["keys"].astype(np.float16), z["targets"], float(params.get("mix", 0.0)))


def unit(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float32)
    return (f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)).astype(np.float16)


def topk_hits(probs: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """Top-1 and top-3 hits as the keyboard suggests: special tokens (<unk>, <eos>, …) are never a suggestion,
    so a candidate that merely stops predicting <unk> gains nothing."""
    if len(y) == 0:
        return 0, 0
    ranked = np.array(probs, dtype=np.float32, copy=True)
    ranked[:, :SPECIAL_COUNT] = -np.inf
    rows = np.arange(len(ranked))
    top3 = np.zeros((len(ranked), min(3, ranked.shape[1])), np.int64)
    for j in range(top3.shape[1]):  # three arg-maxes: ~20x faster than a partition of every row
        top3[:, j] = np.argmax(ranked, axis=1)
        ranked[rows, top3[:, j]] = -np.inf
    return int(np.sum(top3[:, 0] == y)), int(np.sum(np.any(top3 == y[:, None], axis=1)))


class Reservoir:
    """A uniform sample of at most `capacity` (feature, target) pairs of a stream of any length (algorithm R),
    features stored as float16; `seen` counts the whole stream."""

    def __init__(self, capacity: int, h: int, seed: int):
        self.capacity, self.seen = int(capacity), 0
        self.f = np.zeros((self.capacity, h), np.float16)
        self.y = np.zeros(self.capacity, np.int32)
        self.rng = np.random.default_rng(seed)

    def add(self, f: np.ndarray, y: np.ndarray) -> None:
        n = len(y)
        if n == 0 or self.capacity == 0:
            self.seen += n
            return
        fill = max(0, min(n, self.capacity - self.seen))
        if fill:
            self.f[self.seen:self.seen + fill], self.y[self.seen:self.seen + fill] = f[:fill], y[:fill]
        if fill < n:
            counts = self.seen + np.arange(fill, n) + 1  # stream index + 1 of each remaining item
            j = (self.rng.random(n - fill) * counts).astype(np.int64)
            take = j < self.capacity
            src = np.arange(fill, n)[take]
            self.f[j[take]], self.y[j[take]] = f[src], y[src]
        self.seen += n

    def sample(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        k = min(self.seen, self.capacity) if n is None else min(n, self.seen, self.capacity)
        return self.f[:k], self.y[:k]

    def __len__(self) -> int:
        return min(self.seen, self.capacity)


class Recent:
    """The last `capacity` (unit feature, target) pairs of a stream, in arrival order: the memory's keep policy
    (features kept as they are with `normalise=False`)."""

    def __init__(self, capacity: int, h: int, normalise: bool = True):
        self.capacity, self.seen, self.normalise = int(capacity), 0, normalise
        self.f = np.zeros((self.capacity, h), np.float16)
        self.y = np.zeros(self.capacity, np.int32)

    def add(self, f: np.ndarray, y: np.ndarray) -> None:
        if self.capacity == 0:
            return
        f, y = f[-self.capacity:], y[-self.capacity:]
        at = (self.seen + np.arange(len(y))) % self.capacity
        self.f[at], self.y[at] = (unit(f) if self.normalise else f), y
        self.seen += len(y)

    def raw(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(self.seen, self.capacity)
        order = (self.seen - n + np.arange(n)) % self.capacity if self.capacity else np.zeros(0, np.int64)
        return self.f[order], self.y[order]

    def memory(self) -> Memory:
        return Memory(*self.raw())


def score(head, active: np.ndarray, f: np.ndarray, y: np.ndarray, memory: Memory | None = None,
          mixes=(0.0,)) -> list[tuple[float, float]]:
    """(top-1, top-3) on the holdout sample for each memory mixing weight, SCORE_CHUNK rows at a time
    (the head's and the memory's probabilities are computed once per chunk for all weights)."""
    hits = np.zeros((len(mixes), 2), np.int64)
    for i in range(0, len(y), SCORE_CHUNK):
        fb, yb = f[i:i + SCORE_CHUNK].astype(np.float32), y[i:i + SCORE_CHUNK]
        ph = head.predict(fb, active)
        pm = memory.probs(fb, ph.shape[1]) if memory is not None and len(memory.keys) and any(mixes) else None
        for j, mix in enumerate(mixes):
            p = ph if pm is None or mix == 0 else (1 - mix) * ph + mix * pm
            hits[j] += topk_hits(p, yb)
    return [(h1 / max(1, len(y)), h3 / max(1, len(y))) for h1, h3 in hits]

