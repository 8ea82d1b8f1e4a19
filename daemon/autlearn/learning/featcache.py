"""Persistent, content-addressed feature cache in SQLite.

Key = sha256(sample bytes) + base model sha256 + preprocessing version + augmentation variant, so a new base
invalidates old entries by key. Each entry carries a checksum: a corrupt entry is dropped and recomputed,
never trusted. Bounded in size with least-recently-used eviction. Deleting the file only costs time.

Storage: an int8 base's output (the activation at the cut, docs/tail.md) is stored as the int8 values the base
produced, with the base's own output scale and zero point, and dequantised when read: 1 byte per value instead of
4, and the same float32 values the extractor returns (the round trip is exact). Each row says its `dtype`
(`f32` rows, written before schema version 3 or for a float base, are read as they were written).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from .schema import migrate

# Ordered migration steps (PRAGMA user_version); version 1 is the first release's table (which kept no version).
MIGRATIONS = (
    """CREATE TABLE IF NOT EXISTS features (
        key TEXT PRIMARY KEY, dim INTEGER NOT NULL, data BLOB NOT NULL, checksum TEXT NOT NULL,
        bytes INTEGER NOT NULL, last_used REAL NOT NULL);
    CREATE INDEX IF NOT EXISTS features_lru ON features(last_used);""",
    # entries and bytes kept by triggers, so that `status` and each write read one row, not the whole cache
    """CREATE TABLE totals (id INTEGER PRIMARY KEY CHECK (id = 1), entries INTEGER NOT NULL, bytes INTEGER NOT NULL);
    INSERT INTO totals SELECT 1, COUNT(*), COALESCE(SUM(bytes), 0) FROM features;
    CREATE TRIGGER features_insert AFTER INSERT ON features BEGIN
        UPDATE totals SET entries = entries + 1, bytes = bytes + NEW.bytes WHERE id = 1; END;
    CREATE TRIGGER features_delete AFTER DELETE ON features BEGIN
        UPDATE totals SET entries = entries - 1, bytes = bytes - OLD.bytes WHERE id = 1; END;
    CREATE TRIGGER features_update AFTER UPDATE OF bytes ON features BEGIN
        UPDATE totals SET bytes = bytes - OLD.bytes + NEW.bytes WHERE id = 1; END;""",
    # int8 entries (the base's quantised output, with its scale and zero point); older rows are float32
    """ALTER TABLE features ADD COLUMN dtype TEXT NOT NULL DEFAULT 'f32';
    ALTER TABLE features ADD COLUMN scale REAL NOT NULL DEFAULT 0;
    ALTER TABLE features ADD COLUMN zero INTEGER NOT NULL DEFAULT 0;""",
)

# (scale, zero point) of an int8 base's output: entries are stored as those int8 values
Quant = tuple[float, int]

# Reading a round's features must not turn into one write per feature: the times of last use are kept in memory
# and written when the cache must evict (where the order matters), at close, or once this many are pending.
MAX_PENDING_TOUCHES = 20_000


def feature_key(sample_sha256: str, base_sha256: str, preprocessing_version: int, augmentation: str = "none") -> str:
    raw = f"{sample_sha256}|{base_sha256}|{preprocessing_version}|{augmentation}"
    return hashlib.sha256(raw.encode()).hexdigest()


def _checksum(data: bytes, dtype: str = "f32", scale: float = 0.0, zero: int = 0) -> str:
    h = hashlib.blake2b(data, digest_size=16)
    if dtype != "f32":  # the scale and zero point are part of the entry: a damaged one must not dequantise
        h.update(f"|{dtype}|{scale!r}|{zero}".encode())
    return h.hexdigest()


def quantize(vec: np.ndarray, quant: Quant) -> np.ndarray:
    """The int8 values an int8 base with output quantisation `quant` produced for its dequantised output `vec`."""
    scale, zero = quant
    return np.clip(np.round(np.asarray(vec, np.float32) / scale + zero), -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, quant: Quant) -> np.ndarray:
    """As the extractor dequantises the base's output (features.FeatureExtractor): bit-identical float32."""
    scale, zero = quant
    return ((q.astype(np.float32) - zero) * scale).astype(np.float32)


def _decode(dim: int, data: bytes, dtype: str, scale: float, zero: int) -> np.ndarray | None:
    if dtype == "f32":
        return np.frombuffer(data, dtype=np.float32).copy() if len(data) == 4 * dim else None
    if dtype == "i8" and len(data) == dim and scale > 0:
        return dequantize(np.frombuffer(data, dtype=np.int8), (scale, zero))
    return None


class Stats:
    """Hit/miss counters shared by every thread's cache handle."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.evicted = 0

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt, "evicted": self.evicted}


class FeatureCache:
    """One handle per thread (SQLite connections are per thread); share a Stats between them."""

    def __init__(self, path: Path, max_bytes: int = 256 << 20, stats: Stats | None = None):
        self.path = path
        self.max_bytes = max_bytes
        self.stats = stats or Stats()
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # a lost entry only costs time
        migrate(self.db, MIGRATIONS, path, "feature cache")
        self._touched: dict[str, float] = {}

    def close(self) -> None:
        try:
            self._write_touches()
        except sqlite3.Error:
            pass  # only the eviction order is lost
        self.db.close()

    def _write_touches(self) -> None:
        if self._touched:
            with self.db:
                self.db.executemany("UPDATE features SET last_used=? WHERE key=?",
                                    [(t, k) for k, t in self._touched.items()])
            self._touched.clear()

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        """Entries found and intact; corrupt ones are deleted (and so recomputed by the caller)."""
        found: dict[str, np.ndarray] = {}
        bad: list[str] = []
        now = time.time()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for key, dim, data, checksum, dtype, scale, zero in self.db.execute(
                    f"SELECT key, dim, data, checksum, dtype, scale, zero FROM features WHERE key IN ({marks})",
                    chunk):
                vec = _decode(dim, data, dtype, scale, zero) if _checksum(data, dtype, scale, zero) == checksum \
                    else None
                if vec is None:
                    bad.append(key)
                    continue
                found[key] = vec
                self._touched[key] = now
        if bad:
            with self.db:
                self.db.executemany("DELETE FROM features WHERE key=?", [(k,) for k in bad])
        if len(self._touched) > MAX_PENDING_TOUCHES:
            self._write_touches()
        self.stats.add(hits=len(found), misses=len(keys) - len(found), corrupt=len(bad))
        return found

    def put_many(self, items: dict[str, np.ndarray], quant: Quant | None = None) -> None:
        """Store float32 features; with `quant` (the int8 base's output scale and zero point) as int8."""
        now = time.time()
        rows = []
        for key, vec in items.items():
            if quant is None:
                data, dtype, scale, zero = np.ascontiguousarray(vec, dtype=np.float32).tobytes(), "f32", 0.0, 0
                dim = len(data) // 4
            else:
                scale, zero, dtype = float(quant[0]), int(quant[1]), "i8"
                data = quantize(vec, (scale, zero)).tobytes()
                dim = len(data)
            rows.append((key, dim, data, _checksum(data, dtype, scale, zero), len(data), now, dtype, scale, zero))
        with self.db:  # one transaction: a crash leaves all of it or none
            self.db.executemany("INSERT INTO features(key, dim, data, checksum, bytes, last_used, dtype, scale, zero) "
                                "VALUES(?,?,?,?,?,?,?,?,?) "
                                "ON CONFLICT(key) DO UPDATE SET dim=excluded.dim, data=excluded.data, "
                                "checksum=excluded.checksum, bytes=excluded.bytes, last_used=excluded.last_used, "
                                "dtype=excluded.dtype, scale=excluded.scale, zero=excluded.zero",
                                rows)
        self._evict()

    def _evict(self) -> None:
        total = self.size_bytes()
        if total <= self.max_bytes:
            return
        self._write_touches()
        removed = 0
        with self.db:
            while total > self.max_bytes:  # the oldest first, a page of them at a time (never the whole cache)
                page = self.db.execute("SELECT key, bytes FROM features ORDER BY last_used LIMIT 256").fetchall()
                if not page:
                    break
                for key, nbytes in page:
                    if total <= self.max_bytes:
                        break
                    self.db.execute("DELETE FROM features WHERE key=?", (key,))
                    total -= nbytes
                    removed += 1
        self.stats.add(evicted=removed)

    def _totals(self) -> tuple[int, int]:
        return self.db.execute("SELECT entries, bytes FROM totals WHERE id=1").fetchone()

    def size_bytes(self) -> int:
        return int(self._totals()[1])

    def count(self) -> int:
        return int(self._totals()[0])

    def summary(self) -> dict:
        entries, nbytes = self._totals()
        return {**self.stats.as_dict(), "entries": entries, "bytes": nbytes,
                "max_bytes": self.max_bytes}
