"""The daemon's state in SQLite: samples and labels, class slots, head versions, training rounds."""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .schema import migrate

# Version 1: the schema of the first release (which kept no version: such a store reads 0 and gains nothing).
SCHEMA_V1 = """
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

# What `status` and the scheduler count, per kind of sample; `new`: usable and not yet learnt (`new_train`: of
# them, the training ones). Kept by triggers in the same transaction as the change, so `status` reads one row
# however many samples there are, and the counts cannot drift. (Rows must change by INSERT, UPDATE or DELETE:
# `INSERT OR REPLACE` would delete without firing the delete trigger.)
_COUNTED = {
    "ok": "{r}.status = 'ok'", "quarantined": "{r}.status = 'quarantined'", "ignored": "{r}.status = 'ignored'",
    "waiting": "{r}.status = 'waiting'", "holdout": "{r}.status = 'ok' AND {r}.holdout = 1",
    "new": "{r}.status = 'ok' AND {r}.trained_round IS NULL",
    "new_train": "{r}.status = 'ok' AND {r}.holdout = 0 AND {r}.trained_round IS NULL",
}


def _count_sets(sign: str, r: str) -> str:
    return ", ".join(f"{k} = {k} {sign} ({cond.format(r=r)})" for k, cond in _COUNTED.items())


SCHEMA_V2 = f"""
CREATE TABLE sample_counts (id INTEGER PRIMARY KEY CHECK (id = 1),
    {", ".join(f"{k} INTEGER NOT NULL DEFAULT 0" for k in _COUNTED)});
INSERT INTO sample_counts(id, {", ".join(_COUNTED)})
    SELECT 1, {", ".join(f"COALESCE(SUM({cond.format(r='samples')}), 0)" for cond in _COUNTED.values())}
    FROM samples;
CREATE TRIGGER samples_counted_insert AFTER INSERT ON samples BEGIN
    UPDATE sample_counts SET {_count_sets("+", "NEW")} WHERE id = 1;
END;
CREATE TRIGGER samples_counted_delete AFTER DELETE ON samples BEGIN
    UPDATE sample_counts SET {_count_sets("-", "OLD")} WHERE id = 1;
END;
CREATE TRIGGER samples_counted_update AFTER UPDATE OF status, holdout, trained_round ON samples BEGIN
    UPDATE sample_counts SET {_count_sets("-", "OLD")} WHERE id = 1;
    UPDATE sample_counts SET {_count_sets("+", "NEW")} WHERE id = 1;
END;
-- what a round reads without walking every sample: the new ones, a stable holdout sample, a replay sample
CREATE INDEX samples_new ON samples(mtime_ns, id) WHERE status = 'ok' AND trained_round IS NULL;
CREATE INDEX samples_holdout ON samples(sha256) WHERE status = 'ok' AND holdout = 1;
CREATE INDEX samples_learnt ON samples(sha256) WHERE status = 'ok' AND holdout = 0 AND trained_round IS NOT NULL;
"""

# The cut each head version was trained at (docs/tail.md, "Choosing the cut by holdout") and why it was chosen.
SCHEMA_V3 = """
ALTER TABLE heads ADD COLUMN cut TEXT NOT NULL DEFAULT 'head';
ALTER TABLE heads ADD COLUMN cut_reason TEXT;
"""

# Ordered: step i takes a store from version i to i+1. Append, never edit a released step.
MIGRATIONS = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3)
SCHEMA_VERSION = len(MIGRATIONS)

_SAMPLE_COLUMNS = "id, path, sha256, label, kind, holdout, trained_round IS NOT NULL"


@dataclass(frozen=True)
class Sample:
    id: int
    path: str
    sha256: str
    label: str
    kind: str
    holdout: bool
    trained: bool = False


def _sample(r) -> Sample:
    return Sample(r[0], r[1], r[2], r[3], r[4], bool(r[5]), bool(r[6]))


class Store:
    """One connection per thread: create a Store in each thread that needs one."""

    def __init__(self, path: Path):
        self.path = path
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        migrate(self.db, MIGRATIONS, path, "state database")

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
            self.db.execute("COMMIT")
        except BaseException:
            # SQLite may have ended the transaction itself (SQLITE_FULL at COMMIT rolls it back): a ROLLBACK then
            # would raise "no transaction is active" and hide the error that matters (e.g. the full disk).
            if self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

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

    def forget_under(self, path: str) -> int:
        """Drop the row of `path` and of everything below it (a file or a directory the user removed)."""
        below = path.rstrip("/") + "/"
        end = below[:-1] + "0"  # the first text after every path that starts with `below` ('0' follows '/')
        cur = self.db.execute("DELETE FROM samples WHERE path=? OR (path >= ? AND path < ?)", (path, below, end))
        return cur.rowcount

    def usable_samples(self) -> list[Sample]:
        rows = self.db.execute(
            f"SELECT {_SAMPLE_COLUMNS} FROM samples "
            "WHERE status='ok' ORDER BY mtime_ns, id").fetchall()  # arrival order, for online learning
        return [_sample(r) for r in rows]

    def new_samples(self) -> list[Sample]:
        """Usable samples not learnt yet, in arrival order (an index holds just these)."""
        rows = self.db.execute(f"SELECT {_SAMPLE_COLUMNS} FROM samples INDEXED BY samples_new "
                               "WHERE status='ok' AND trained_round IS NULL ORDER BY mtime_ns, id")
        return [_sample(r) for r in rows]

    def holdout_sample(self, limit: int) -> list[Sample]:
        """At most `limit` holdout samples, the same ones round after round (the lowest content hashes: a new
        holdout file joins the sample only when it sorts among them), read through an index."""
        rows = self.db.execute(f"SELECT {_SAMPLE_COLUMNS} FROM samples INDEXED BY samples_holdout "
                               "WHERE status='ok' AND holdout=1 ORDER BY sha256 LIMIT ?", (int(limit),))
        return [_sample(r) for r in rows]

    def learnt_training_sample(self, limit: int, seed: int, parts: int = 16) -> list[Sample]:
        """`limit` training samples already learnt (all of them when fewer), drawn at random without reading the
        others: runs of consecutive content hashes after `parts` random points of the hash space (content hashes
        are uniform, so a run is a random set of samples). Reads at most 2 × `limit` + 1 rows, through an index."""
        def run(op: str, bound: str, n: int) -> list:
            return self.db.execute(
                f"SELECT {_SAMPLE_COLUMNS} FROM samples INDEXED BY samples_learnt WHERE status='ok' AND holdout=0 "
                f"AND trained_round IS NOT NULL AND sha256 {op} ? ORDER BY sha256 LIMIT ?", (bound, n)).fetchall()

        everything = run(">=", "", int(limit) + 1)
        if len(everything) <= limit:
            return [_sample(r) for r in everything]
        rng = np.random.default_rng(seed)
        per = -(-int(limit) // parts)
        starts = sorted(f"{int(v):016x}" for v in rng.integers(0, 1 << 64, size=parts, dtype=np.uint64))
        seen: dict[int, Sample] = {}
        reached = ""  # runs do not overlap: one that starts inside the previous one goes on after it
        for start in starts:
            rows = run(">=", start, per) if start > reached else run(">", reached, per)
            if rows:
                reached = rows[-1][2]
            seen.update((r[0], _sample(r)) for r in rows)
        for r in everything:  # the last runs hit the end of the hash space: go on from its start
            if len(seen) >= limit:
                break
            seen.setdefault(r[0], _sample(r))
        return list(seen.values())[:int(limit)]

    def waiting_labels(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT label FROM samples WHERE status='waiting'")]

    def set_status_for_label(self, label: str, old: str, new: str, reason: str | None) -> None:
        self.db.execute("UPDATE samples SET status=?, reason=? WHERE label=? AND status=?", (new, reason, label, old))

    def count_new(self) -> int:
        return self.counts()["new"]

    def mark_trained(self, ids: list[int], round_id: int) -> None:
        with self.batch():
            self.db.executemany("UPDATE samples SET trained_round=? WHERE id=?", [(round_id, i) for i in ids])

    def counts(self) -> dict[str, int]:
        """Samples per status, holdout, new and new training ones: one row kept by triggers, not a count."""
        row = self.db.execute(f"SELECT {', '.join(_COUNTED)} FROM sample_counts WHERE id=1").fetchone()
        return dict(zip(_COUNTED, row or (0,) * len(_COUNTED)))

    def sample_counts(self) -> dict[str, int]:
        """What `status` shows: samples per status, holdout and new."""
        counts = self.counts()
        del counts["new_train"]
        return counts

    def recount(self) -> dict[str, int]:
        """The same counts from every row (what the kept ones must equal)."""
        sums = ", ".join(f"COALESCE(SUM({c.format(r='samples')}), 0)" for c in _COUNTED.values())
        return dict(zip(_COUNTED, self.db.execute(f"SELECT {sums} FROM samples").fetchone()))

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
                 round_id: int | None = None, cut: str = "head", cut_reason: str | None = None) -> int:
        cur = self.db.execute(
            """INSERT INTO heads(bundle, variant, created, status, accuracy, previous_accuracy, n_train, n_holdout,
               round_id, file, cut, cut_reason) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)""",
            (bundle, variant, time.time(), status, accuracy, previous_accuracy, n_train, n_holdout, round_id, file,
             cut, cut_reason))
        return int(cur.lastrowid)

    def next_head_version(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM heads").fetchone()[0])

    def heads(self, bundle: str | None = None) -> list[dict]:
        return self._heads(*((" WHERE bundle=?", (bundle,)) if bundle is not None else ("", ())))

    def _heads(self, where: str, args: tuple) -> list[dict]:
        q = "SELECT version, bundle, variant, created, status, accuracy, previous_accuracy, n_train, n_holdout, " \
            "round_id, file, cut, cut_reason FROM heads" + where
        keys = ("version", "bundle", "variant", "created", "status", "accuracy", "previous_accuracy", "n_train",
                "n_holdout", "round_id", "file", "cut", "cut_reason")
        return [dict(zip(keys, r)) for r in self.db.execute(q + " ORDER BY version", args)]

    def head(self, version: int) -> dict | None:
        rows = self._heads(" WHERE version=?", (version,))
        return rows[0] if rows else None

    def initial_head(self, bundle: str) -> int | None:
        row = self.db.execute("SELECT MIN(version) FROM heads WHERE bundle=? AND status='initial'", (bundle,))
        return row.fetchone()[0]

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
