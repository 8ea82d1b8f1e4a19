"""Persistent, content-addressed feature cache in SQLite.

Key = sha256(sample bytes) + base model sha256 + preprocessing version + augmentation variant, so a new base
invalidates old entries by key. Each entry carries a checksum: a corrupt entry is dropped and recomputed,
never trusted. Bounded in size with least-recently-used eviction. Deleting the file only costs time.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np


def feature_key(sample_sha256: str, base_sha256: str, preprocessing_version: int, augmentation: str = "none") -> str:
    raw = f"{sample_sha256}|{base_sha256}|{preprocessing_version}|{augmentation}"
    return hashlib.sha256(raw.encode()).hexdigest()


def _checksum(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


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
        self.db.execute("""CREATE TABLE IF NOT EXISTS features (
            key TEXT PRIMARY KEY, dim INTEGER NOT NULL, data BLOB NOT NULL, checksum TEXT NOT NULL,
            bytes INTEGER NOT NULL, last_used REAL NOT NULL)""")
        self.db.execute("CREATE INDEX IF NOT EXISTS features_lru ON features(last_used)")

    def close(self) -> None:
        self.db.close()

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        """Entries found and intact; corrupt ones are deleted (and so recomputed by the caller)."""
        found: dict[str, np.ndarray] = {}
        bad: list[str] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for key, dim, data, checksum in self.db.execute(
                    f"SELECT key, dim, data, checksum FROM features WHERE key IN ({marks})", chunk):
                data = bytes(data)
                if _checksum(data) != checksum or len(data) != 4 * dim:
                    bad.append(key)
                    continue
                found[key] = np.frombuffer(data, dtype=np.float32).copy()
        now = time.time()
        with self.db:
            self.db.executemany("UPDATE features SET last_used=? WHERE key=?", [(now, k) for k in found])
            self.db.executemany("DELETE FROM features WHERE key=?", [(k,) for k in bad])
        self.stats.add(hits=len(found), misses=len(keys) - len(found), corrupt=len(bad))
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        now = time.time()
        rows = []
        for key, vec in items.items():
            data = np.ascontiguousarray(vec, dtype=np.float32).tobytes()
            rows.append((key, len(data) // 4, data, _checksum(data), len(data), now))
        with self.db:  # one transaction: a crash leaves all of it or none
            self.db.executemany("INSERT OR REPLACE INTO features(key, dim, data, checksum, bytes, last_used) "
                                "VALUES(?,?,?,?,?,?)", rows)
        self._evict()

    def _evict(self) -> None:
        total = self.size_bytes()
        if total <= self.max_bytes:
            return
        removed = 0
        with self.db:
            for key, nbytes in self.db.execute("SELECT key, bytes FROM features ORDER BY last_used").fetchall():
                if total <= self.max_bytes:
                    break
                self.db.execute("DELETE FROM features WHERE key=?", (key,))
                total -= nbytes
                removed += 1
        self.stats.add(evicted=removed)

    def size_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM features").fetchone()[0])

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM features").fetchone()[0])

    def summary(self) -> dict:
        return {**self.stats.as_dict(), "entries": self.count(), "bytes": self.size_bytes(),
                "max_bytes": self.max_bytes}
