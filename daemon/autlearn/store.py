"""The daemon's state in SQLite: samples and labels, class slots, head versions, training rounds."""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    label TEXT,
    kind TEXT NOT NULL,
    holdout INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,          -- ok | quarantined | ignored | waiting
    reason TEXT,
    added REAL NOT NULL,
    trained_round INTEGER
);
CREATE INDEX IF NOT EXISTS samples_status ON samples(status);
CREATE TABLE IF NOT EXISTS classes (
    bundle TEXT NOT NULL, name TEXT NOT NULL, slot INTEGER NOT NULL, public INTEGER NOT NULL,
    PRIMARY KEY (bundle, name), UNIQUE (bundle, slot)
);
CREATE TABLE IF NOT EXISTS heads (
    version INTEGER PRIMARY KEY,
    bundle TEXT NOT NULL,
    variant TEXT NOT NULL,
    created REAL NOT NULL,
    status TEXT NOT NULL,          -- initial | promoted | rejected
    accuracy REAL,
    previous_accuracy REAL,
    n_train INTEGER NOT NULL DEFAULT 0,
    n_holdout INTEGER NOT NULL DEFAULT 0,
    round_id INTEGER,
    file TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL,
    trigger TEXT NOT NULL,
    n_train INTEGER, n_holdout INTEGER,
    features_computed INTEGER, features_cached INTEGER,
    accuracy_before REAL, accuracy_after REAL,
    outcome TEXT,                  -- promoted | rejected | skipped | failed | stopped
    detail TEXT,
    seconds REAL
);
"""


@dataclass(frozen=True)
class Sample:
    id: int
    path: str
    sha256: str
    label: str
    kind: str
    holdout: bool
    trained: bool = False


class Store:
    """One connection per thread: create a Store in each thread that needs one."""

    def __init__(self, path: Path):
        self.path = path
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def batch(self, commit_every_s: float = 0.25):
        """Group many writes into few commits (each commit is a disk sync: 500 rows one by one cost ~100× one
        transaction). Yields `checkpoint()`, which commits what is pending once `commit_every_s` has passed, so
        the write lock is never held long and a power cut loses at most that much work (a scan redoes it).
        Within an open transaction it adds nothing: the outer one commits."""
        if self.db.in_transaction:
            yield lambda: None
            return
        last = time.monotonic()

        def checkpoint() -> None:
            nonlocal last
            if time.monotonic() - last >= commit_every_s:
                self.db.execute("COMMIT")
                self.db.execute("BEGIN IMMEDIATE")
                last = time.monotonic()

        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield checkpoint
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- meta ---
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (key, value))

    # --- samples ---
    def known(self, path: str) -> tuple[int, int] | None:
        row = self.db.execute("SELECT size, mtime_ns FROM samples WHERE path=?", (path,)).fetchone()
        return (row[0], row[1]) if row else None

    def upsert_sample(self, path: str, size: int, mtime_ns: int, sha256: str | None, label: str | None,
                      kind: str, holdout: bool, status: str, reason: str | None = None) -> None:
        self.db.execute(
            """INSERT INTO samples(path, size, mtime_ns, sha256, label, kind, holdout, status, reason, added)
               VALUES(?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns,
                 sha256=excluded.sha256, label=excluded.label, kind=excluded.kind, holdout=excluded.holdout,
                 status=excluded.status, reason=excluded.reason, added=excluded.added, trained_round=NULL""",
            (path, size, mtime_ns, sha256, label, kind, int(holdout), status, reason, time.time()))

    def forget_missing(self, present: set[str], under: Iterable[str]) -> int:
        """Drop rows of files that no longer exist below the watched roots (the user removed them)."""
        gone = []
        for root in under:
            prefix = root.rstrip("/") + "/"
            for (path,) in self.db.execute("SELECT path FROM samples WHERE path LIKE ? ESCAPE '\\'",
                                           (prefix.replace("%", "\\%").replace("_", "\\_") + "%",)):
                if path not in present:
                    gone.append(path)
        self.db.executemany("DELETE FROM samples WHERE path=?", [(p,) for p in gone])
        return len(gone)

    def usable_samples(self) -> list[Sample]:
        rows = self.db.execute(
            "SELECT id, path, sha256, label, kind, holdout, trained_round IS NOT NULL FROM samples "
            "WHERE status='ok' ORDER BY mtime_ns, id").fetchall()  # arrival order, for online learning
        return [Sample(r[0], r[1], r[2], r[3], r[4], bool(r[5]), bool(r[6])) for r in rows]

    def waiting_labels(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT label FROM samples WHERE status='waiting'")]

    def set_status_for_label(self, label: str, old: str, new: str, reason: str | None) -> None:
        self.db.execute("UPDATE samples SET status=?, reason=? WHERE label=? AND status=?", (new, reason, label, old))

    def count_new(self) -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM samples WHERE status='ok' AND trained_round IS NULL").fetchone()[0]

    def mark_trained(self, ids: list[int], round_id: int) -> None:
        with self.batch():
            self.db.executemany("UPDATE samples SET trained_round=? WHERE id=?", [(round_id, i) for i in ids])

    def sample_counts(self) -> dict[str, int]:
        counts = {"ok": 0, "quarantined": 0, "ignored": 0, "waiting": 0}
        for status, n in self.db.execute("SELECT status, COUNT(*) FROM samples GROUP BY status"):
            counts[status] = n
        counts["holdout"] = self.db.execute(
            "SELECT COUNT(*) FROM samples WHERE status='ok' AND holdout=1").fetchone()[0]
        counts["new"] = self.count_new()
        return counts

    def problems(self, limit: int = 20) -> list[dict]:
        rows = self.db.execute("SELECT path, status, reason FROM samples WHERE status IN ('quarantined','ignored',"
                               "'waiting') ORDER BY id DESC LIMIT ?", (limit,))
        return [{"path": p, "status": s, "reason": r} for p, s, r in rows]

    # --- classes (output slots of the head) ---
    def classes(self, bundle: str) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, slot FROM classes WHERE bundle=?", (bundle,)))

    def ensure_public_classes(self, bundle: str, labels: list[str]) -> None:
        for slot, name in enumerate(labels):
            self.db.execute("INSERT OR IGNORE INTO classes(bundle, name, slot, public) VALUES(?,?,?,1)",
                            (bundle, name, slot))

    def add_class(self, bundle: str, name: str, capacity: int) -> int | None:
        """Give `name` the next free output slot; None when the head has no free slot left."""
        existing = self.classes(bundle)
        if name in existing:
            return existing[name]
        slot = len(existing)
        if slot >= capacity:
            return None
        self.db.execute("INSERT INTO classes(bundle, name, slot, public) VALUES(?,?,?,0)", (bundle, name, slot))
        return slot

    def add_classes(self, bundle: str, names: list[str], capacity: int) -> list[str]:
        """Give each new name of `names` the next free slot, in order, in one transaction, until the head is full;
        returns the names added."""
        existing = self.classes(bundle)
        slot, added = len(existing), []
        with self.batch():
            for name in names:
                if name in existing or slot >= capacity:
                    continue
                self.db.execute("INSERT INTO classes(bundle, name, slot, public) VALUES(?,?,?,0)", (bundle, name, slot))
                existing[name] = slot
                added.append(name)
                slot += 1
        return added

    # --- head versions ---
    def add_head(self, bundle: str, variant: str, status: str, file: str, accuracy: float | None = None,
                 previous_accuracy: float | None = None, n_train: int = 0, n_holdout: int = 0,
                 round_id: int | None = None) -> int:
        cur = self.db.execute(
            """INSERT INTO heads(bundle, variant, created, status, accuracy, previous_accuracy, n_train, n_holdout,
               round_id, file) VALUES(?,?,?,?,?,?,?,?,?,?)""",
            (bundle, variant, time.time(), status, accuracy, previous_accuracy, n_train, n_holdout, round_id, file))
        return int(cur.lastrowid)

    def next_head_version(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM heads").fetchone()[0])

    def heads(self, bundle: str | None = None) -> list[dict]:
        q = "SELECT version, bundle, variant, created, status, accuracy, previous_accuracy, n_train, n_holdout, " \
            "round_id, file FROM heads"
        args: tuple = ()
        if bundle is not None:
            q += " WHERE bundle=?"
            args = (bundle,)
        keys = ("version", "bundle", "variant", "created", "status", "accuracy", "previous_accuracy", "n_train",
                "n_holdout", "round_id", "file")
        return [dict(zip(keys, r)) for r in self.db.execute(q + " ORDER BY version", args)]

    def head(self, version: int) -> dict | None:
        rows = [h for h in self.heads() if h["version"] == version]
        return rows[0] if rows else None

    # --- rounds ---
    def start_round(self, trigger: str) -> int:
        cur = self.db.execute("INSERT INTO rounds(started, trigger) VALUES(?, ?)", (time.time(), trigger))
        return int(cur.lastrowid)

    def finish_round(self, round_id: int, **fields) -> None:
        fields.setdefault("finished", time.time())
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE rounds SET {cols} WHERE id=?", (*fields.values(), round_id))

    def rounds(self, limit: int = 20) -> list[dict]:
        keys = ("id", "started", "finished", "trigger", "n_train", "n_holdout", "features_computed",
                "features_cached", "accuracy_before", "accuracy_after", "outcome", "detail", "seconds")
        limit = max(0, min(int(limit), 1 << 62))  # SQLite integers are 64-bit: a larger limit means "all"
        rows = self.db.execute(f"SELECT {', '.join(keys)} FROM rounds ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(zip(keys, r)) for r in rows]

    def fail_unfinished_rounds(self, outcome: str = "interrupted", detail: str | None = None) -> None:
        """Rounds cut short (by a crash or power loss: `interrupted`; by an error: `failed`): mark them so that
        history is honest."""
        self.db.execute("UPDATE rounds SET outcome=?, detail=COALESCE(?, detail), finished=? WHERE finished IS NULL",
                        (outcome, detail, time.time()))
