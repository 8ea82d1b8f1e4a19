"""The SQLite state: many writes grouped into few commits, without losing what was committed."""

import sqlite3

import pytest

from autlearn.store import Store


def _rows(path) -> int:
    con = sqlite3.connect(str(path))  # another connection: sees only what is committed
    try:
        return con.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    finally:
        con.close()


def _add(store: Store, i: int) -> None:
    store.upsert_sample(f"/inbox/a/{i}.png", 1, 1, "h", "a", "image", False, "ok")


def test_a_batch_commits_at_its_checkpoints_and_at_the_end(tmp_path):
    db = tmp_path / "state.db"
    store = Store(db)
    with store.batch(commit_every_s=3600) as checkpoint:
        for i in range(5):
            _add(store, i)
            checkpoint()  # not yet due: nothing committed
        assert _rows(db) == 0
    assert _rows(db) == 5
    with store.batch(commit_every_s=0) as checkpoint:
        _add(store, 5)
        checkpoint()  # due at once: committed
        assert _rows(db) == 6
        _add(store, 6)
    assert _rows(db) == 7
    store.close()


def test_a_failure_inside_a_batch_keeps_what_was_committed_before_it(tmp_path):
    db = tmp_path / "state.db"
    store = Store(db)
    with pytest.raises(RuntimeError):
        with store.batch(commit_every_s=0) as checkpoint:
            _add(store, 1)
            checkpoint()
            _add(store, 2)
            raise RuntimeError("power cut stand-in")
    assert _rows(db) == 1
    with store.batch():  # the store is usable afterwards, and batches nest into the outer one
        with store.batch() as inner:
            _add(store, 3)
            inner()
        assert _rows(db) == 1
    assert _rows(db) == 2
    store.close()
