"""The SQLite files carry a schema version and migrate in order; a store written by the previous release opens,
migrates and keeps every sample; the counts `status` shows are kept by the database, not recounted."""

import hashlib
import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from autlearn.errors import AutlearnError
from autlearn.learning.featcache import FeatureCache
from autlearn.learning.schema import migrate
from autlearn.learning.store import SCHEMA_VERSION, Store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _rows(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(str(db))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


ALL = "SELECT id, path, size, mtime_ns, sha256, label, kind, holdout, status, reason, added, trained_round " \
      "FROM samples ORDER BY id"


def test_a_store_written_by_the_previous_release_migrates_and_keeps_every_sample(tmp_path):
    db = tmp_path / "state.db"
    shutil.copy(FIXTURES / "store_v0.db", db)
    before = {t: _rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in ("meta", "classes", "heads", "rounds")}
    samples_before = _rows(db, ALL)
    assert _rows(db, "PRAGMA user_version") == [(0,)] and len(samples_before) == 40
    store = Store(db)
    assert _rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert _rows(db, ALL) == samples_before
    for table, rows in before.items():
        after = _rows(db, f"SELECT * FROM {table} ORDER BY 1")
        if table == "heads":  # step 3 added the cut each version trained at: every old one the head only
            assert [r[-2:] for r in after] == [("head", None)] * len(rows)
            after = [r[:-2] for r in after]
        assert after == rows, table
    # the counts the migration filled in match the fixture's rows: 34 ok (7 holdout, 4 not learnt), ...
    assert store.sample_counts() == {"ok": 34, "quarantined": 3, "ignored": 2, "waiting": 1, "holdout": 7, "new": 4}
    assert store.counts() == store.recount()
    assert store.head(2)["accuracy"] == 0.8 and store.initial_head("b0") == 1
    assert len(store.usable_samples()) == 34 and len(store.new_samples()) == 4
    # and it keeps working: a new sample counts, reopening migrates nothing again
    store.upsert_sample("/inbox/cat/new.png", 1, 1, "ff" * 32, "cat", "image", False, "ok")
    store.close()
    store = Store(db)
    assert store.count_new() == 5 and store.counts() == store.recount()
    store.close()


def test_a_feature_cache_written_by_the_previous_release_migrates_and_keeps_its_entries(tmp_path):
    path = tmp_path / "features.db"
    shutil.copy(FIXTURES / "featcache_v0.db", path)
    cache = FeatureCache(path)
    assert cache.count() == 12 and cache.size_bytes() == 12 * 64 * 4
    got = cache.get_many([f"{i:064x}" for i in range(12)])
    assert all(np.array_equal(got[f"{i:064x}"], np.full(64, i, np.float32)) for i in range(12))
    cache.put_many({"new": np.zeros(64, np.float32), f"{3:064x}": np.zeros(32, np.float32)})  # one new, one replaced
    assert cache.count() == 13 and cache.size_bytes() == 12 * 256 + 128
    cache.close()


def test_a_store_from_a_newer_release_is_refused_untouched(tmp_path):
    db = tmp_path / "state.db"
    Store(db).close()
    con = sqlite3.connect(str(db))
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(AutlearnError, match="newer than this release"):
        Store(db)
    assert _rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]


def test_migration_steps_run_in_order_once_and_a_failed_step_keeps_the_last_good_version(tmp_path):
    con = sqlite3.connect(str(tmp_path / "x.db"), isolation_level=None)
    ran = []
    steps = ["CREATE TABLE a (x);", lambda db: ran.append("second") or db.execute("INSERT INTO a VALUES (1)")]
    assert migrate(con, steps, "x.db", "test") == 0
    assert migrate(con, steps, "x.db", "test") == 2 and ran == ["second"]
    bad = [*steps, "INSERT INTO a VALUES (2);", "INSERT INTO nowhere VALUES (3);"]
    with pytest.raises(sqlite3.OperationalError):
        migrate(con, bad, "x.db", "test")
    assert con.execute("PRAGMA user_version").fetchone() == (3,)
    assert con.execute("SELECT x FROM a ORDER BY x").fetchall() == [(1,), (2,)]


def test_kept_counts_match_a_full_recount_after_random_changes(tmp_path):
    store = Store(tmp_path / "state.db")
    rnd = random.Random(7)
    paths = [f"/inbox/{rnd.choice('abc')}/{i}.png" for i in range(120)]
    for step in range(600):
        op = rnd.random()
        p = rnd.choice(paths)
        if op < 0.5:
            store.upsert_sample(p, 1, step, f"{rnd.getrandbits(256):064x}", p.split("/")[2], "image",
                                rnd.random() < 0.3, rnd.choice(["ok", "ok", "ok", "quarantined", "ignored", "waiting"]))
        elif op < 0.65:
            store.forget_missing(set(rnd.sample(paths, 100)), ["/inbox"])
        elif op < 0.8:
            ids = [r[0] for r in store.db.execute("SELECT id FROM samples ORDER BY random() LIMIT 10")]
            store.mark_trained(ids, step)
        elif op < 0.9:
            store.set_status_for_label(rnd.choice("abc"), rnd.choice(["ok", "waiting"]), rnd.choice(["ok", "waiting"]),
                                       None)
        else:
            with pytest.raises(RuntimeError), store.batch():  # a rolled-back change leaves the counts as they were
                store.upsert_sample(p + ".x", 1, 1, "00" * 32, "a", "image", False, "ok")
                raise RuntimeError("rolled back")
        if step % 50 == 0:
            assert store.counts() == store.recount()
    assert store.counts() == store.recount() and store.counts()["ok"] > 0
    store.close()


def test_what_status_reads_from_the_store_does_not_depend_on_the_number_of_samples(tmp_path):
    """The queries behind status (counts, new samples, current and initial head) visit the same number of rows
    with 10 samples as with 5,000 (SQLite's own virtual-machine step counter, not a clock)."""
    def steps_for(n: int) -> int:
        store = Store(tmp_path / f"s{n}.db")
        with store.batch():
            for i in range(n):
                store.upsert_sample(f"/inbox/a/{i}.png", 1, i, f"{i:064x}", "a", "image", i % 5 == 0, "ok")
        store.add_head("b", "full", "initial", "head-v1.npz")
        counter = [0]

        def tick():
            counter[0] += 1
            return 0
        store.db.set_progress_handler(tick, 1)  # called every virtual-machine instruction
        store.sample_counts(), store.count_new(), store.head(1), store.initial_head("b")
        store.db.set_progress_handler(None, 1)
        store.close()
        return counter[0]

    assert steps_for(5000) == steps_for(10)


def test_a_round_reads_a_bounded_number_of_samples_from_a_large_store(tmp_path):
    store = Store(tmp_path / "state.db")
    with store.batch():
        for i in range(3000):
            sha = hashlib.sha256(str(i).encode()).hexdigest()
            store.upsert_sample(f"/inbox/a/{i}.png", 1, i, sha, "a", "image", i % 5 == 0, "ok")
    store.mark_trained([r[0] for r in store.db.execute("SELECT id FROM samples WHERE id <= 2900")], 1)
    assert len(store.new_samples()) == 100
    hold = store.holdout_sample(200)
    assert len(hold) == 200 and all(s.holdout for s in hold)
    assert [s.id for s in store.holdout_sample(200)] == [s.id for s in hold]  # stable
    replay = store.learnt_training_sample(500, seed=1)
    assert len(replay) == 500 and all(s.trained and not s.holdout for s in replay)
    assert len({s.id for s in replay}) == len(replay)
    other = store.learnt_training_sample(500, seed=2)
    assert {s.id for s in other} != {s.id for s in replay}  # a different draw per round
    store.close()


def test_the_cache_summary_status_shows_does_not_depend_on_the_number_of_entries(tmp_path):
    def steps_for(n: int) -> int:
        cache = FeatureCache(tmp_path / f"c{n}.db")
        cache.put_many({f"k{i}": np.zeros(8, np.float32) for i in range(n)})
        assert cache.count() == n and cache.size_bytes() == 32 * n
        counter = [0]
        cache.db.set_progress_handler(lambda: counter.__setitem__(0, counter[0] + 1), 1)
        cache.summary()
        cache.db.set_progress_handler(None, 1)
        cache.close()
        return counter[0]

    assert steps_for(3000) == steps_for(10)
