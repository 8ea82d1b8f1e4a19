"""Versioned SQLite schemas: ordered migration steps, the version reached kept in `PRAGMA user_version`."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable, Sequence

from ..errors import AutlearnError

# One step: the SQL (or a function of the connection) that takes a database from version N-1 to N.
Step = str | Callable[[sqlite3.Connection], None]


def migrate(db: sqlite3.Connection, steps: Sequence[Step], path: Path | str, what: str) -> int:
    """Bring `db` to version len(steps), running each missing step in order, each in its own transaction with
    the version it reaches (a crash leaves the database at the last completed step, and the next open goes on
    from there). Two connections opening at once are serialised by BEGIN IMMEDIATE: the second finds the work
    done. A database written by a newer release is refused (its rows may mean something this code misreads).
    Returns the version the database had before."""
    latest = len(steps)
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found == latest:
        return found
    if found > latest:
        raise AutlearnError("internal", f"{path}: {what} schema version {found} is newer than this release knows "
                                         f"(up to {latest}); install the newer autlearnd again or move the file "
                                         "away to start afresh")
    before = found
    while found < latest:
        db.execute("BEGIN IMMEDIATE")
        try:
            found = db.execute("PRAGMA user_version").fetchone()[0]  # another connection may have done it
            if found < latest:
                step = steps[found]
                if callable(step):
                    step(db)
                else:
                    for statement in _statements(step):
                        db.execute(statement)
                found += 1
                db.execute(f"PRAGMA user_version = {found}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return before


def _statements(script: str) -> list[str]:
    """Split a script into complete statements (executescript would commit the open transaction)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out
