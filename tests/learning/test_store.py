"""The SQLite state: many writes grouped into few commits, without losing what was committed."""

import sqlite3

import pytest

from autlearn.learning.store import Store


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


def _limit_pages(store: Store, extra: int) -> None:
    """A real SQLITE_FULL: the database may grow only `extra` pages more (what a full disk does to it)."""
    n = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {n + extra}")


def test_a_full_database_inside_a_batch_is_reported_as_full_and_the_store_stays_usable(tmp_path):
    db = tmp_path / "state.db"
    store = Store(db)
    _limit_pages(store, 2)
    with pytest.raises(sqlite3.OperationalError) as e:
        with store.batch(commit_every_s=0) as checkpoint:
            for i in range(1000):
                store.upsert_sample(f"/inbox/a/{i}.png" + "x" * 400, 1, 1, "h", "a", "image", False, "ok")
                checkpoint()
    # SQLite rolled the transaction back by itself: the error is the full disk, not a failed ROLLBACK
    assert e.value.sqlite_errorname == "SQLITE_FULL" and "full" in str(e.value)
    assert not store.db.in_transaction
    kept = _rows(db)
    assert 0 < kept < 1000  # what the checkpoints committed before the disk filled stays
    store.db.execute("PRAGMA max_page_count = 1073741823")  # space returns
    with store.batch():
        _add(store, 5000)
    assert _rows(db) == kept + 1
    store.close()


@pytest.fixture
def small_disk(tmp_path):
    from faults import mount_tmpfs, umount
    where = tmp_path / "disk"
    why = mount_tmpfs(where, 2)
    if why:
        pytest.skip(why)
    yield where
    umount(where)


def test_the_disk_filling_exactly_at_a_checkpoint_commit_is_reported_as_full(small_disk):
    """The rows wait in SQLite's page cache; the disk fills to the last byte; the checkpoint's COMMIT is the
    write that meets the full disk (SQLite then rolls the transaction back by itself)."""
    from faults import fill
    db = small_disk / "state.db"
    store = Store(db)
    with store.batch():
        _add(store, 0)
    with pytest.raises(sqlite3.OperationalError) as e:
        with store.batch(commit_every_s=0) as checkpoint:
            for i in range(1, 300):
                store.upsert_sample(f"/inbox/a/{i}.png" + "x" * 200, 1, 1, "h", "a", "image", False, "ok")
            ballast = fill(small_disk)
            checkpoint()
    assert e.value.sqlite_errorname == "SQLITE_FULL", e.value
    assert not store.db.in_transaction
    ballast.unlink()  # space returns: the same connection writes again, and nothing was half kept
    assert _rows(db) == 1
    with store.batch():
        _add(store, 1000)
    assert _rows(db) == 2
    store.close()
