"""Costs that must not grow with the number of stored samples: what a round reads, what status reads, what a
change in a watched directory makes the daemon look at. Counts, never times."""

import numpy as np
import pytest

from autlearn.learning import featsource, learner
from eval_board import engine_of, make_service, never, no_progress


@pytest.fixture
def svc(tmp_path, tiny_bundle):
    s = make_service(tmp_path / "root", tiny_bundle)
    yield s
    s.stop()


def test_a_round_after_new_files_reads_a_bounded_number_of_features(svc, user_digits, write_user, monkeypatch):
    monkeypatch.setattr(learner, "REPLAY_MAX", 100)
    monkeypatch.setattr(learner, "HOLDOUT_MAX", 40)
    monkeypatch.setattr(featsource, "FEATURE_CHUNK", 64)  # the first round runs the base over 600 images in chunks
    images, labels = user_digits
    inbox = svc.paths.state.parent / "inbox"
    write_user(inbox, images[:600], labels[:600], prefix="a")
    eng = engine_of(svc)
    eng.scan()
    r1 = eng.round("test", no_progress, never)
    assert r1.outcome == "promoted" and r1.features_computed == 600 and eng.cache.count() == 600 + r1.n_train
    holdout_total = eng.store.counts()["holdout"]
    assert holdout_total > 40

    write_user(inbox, images[600:630], labels[600:630], prefix="b")
    assert eng.scan().added == 30
    new = eng.store.new_samples()
    new_hold = sum(s.holdout for s in new)
    judged = {s.id for s in eng.store.holdout_sample(40)} | {s.id for s in new if s.holdout}
    stats0 = eng.cache.stats.as_dict()
    r2 = eng.round("test", no_progress, never)
    stats1 = eng.cache.stats.as_dict()
    looked_up = sum(stats1[k] - stats0[k] for k in ("hits", "misses"))
    assert r2.outcome in ("promoted", "rejected")
    assert r2.features_computed == 30  # only the new files through the base
    assert r2.n_train == 100 + 30 - new_hold  # the replay draw and the new training files
    assert r2.n_holdout == len(judged) <= 40 + new_hold  # the stable holdout sample and the new holdout files
    # originals of all of those, plus one augmented copy of each training sample: not the 630 stored
    assert looked_up == r2.n_train + r2.n_holdout + r2.n_augmented <= 2 * (100 + 30) + 40
    assert eng.store.count_new() == 0  # every new file is learnt, so the next round is not due at once
    assert "replayed 100 of" in r2.detail and f"of {holdout_total + new_hold} holdout samples" in r2.detail

    # the next round replays a different draw and judges on the same holdout sample
    write_user(inbox, images[630:650], labels[630:650], prefix="c")
    eng.scan()
    hold_before = {s.id for s in eng.store.holdout_sample(40)}
    chosen, _ = eng.learner.round_samples(eng.current_version(), seed=99)
    chosen2, _ = eng.learner.round_samples(eng.current_version(), seed=100)
    assert {s.id for s in chosen if s.holdout} >= hold_before
    assert {s.id for s in chosen if s.trained and not s.holdout} != {s.id for s in chosen2 if s.trained and not s.holdout}
    eng.close()


def test_a_small_store_still_trains_on_everything(svc, user_digits, write_user):
    images, labels = user_digits
    write_user(svc.paths.state.parent / "inbox", images[:200], labels[:200])
    eng = engine_of(svc)
    eng.scan()
    eng.round("test", no_progress, never)
    write_user(svc.paths.state.parent / "inbox", images[200:220], labels[200:220], prefix="b")
    eng.scan()
    r = eng.round("test", no_progress, never)
    assert r.n_train + r.n_holdout == 220 and "replayed" not in r.detail
    eng.close()


INPUT = {"kind": "image", "height": 28, "width": 28, "channels": 1, "color_mode": "L", "scale": 1 / 255,
         "offset": 0.0, "fit_box": 20, "preprocessing_version": 2}


def _ingestor(tmp_path):
    from autlearn.intake.ingest import Ingestor
    from autlearn.learning.store import Store
    store = Store(tmp_path / "state.db")
    return Ingestor(store, tmp_path / "quarantine", "b", [str(i) for i in range(10)], 16, 0.2, 1 << 20, 1 << 20,
                    INPUT), store


def test_a_change_is_ingested_by_looking_only_at_the_paths_it_named(tmp_path, user_digits, write_user):
    images, labels = user_digits
    inbox = tmp_path / "inbox"
    write_user(inbox, images[:200], labels[:200], prefix="a")
    ing, store = _ingestor(tmp_path)
    assert ing.scan([str(inbox)]).added == 200
    new = write_user(inbox, images[200:203], labels[200:203], prefix="b")
    moved_in = write_user(tmp_path / "staging", images[203:208], labels[203:208], prefix="c")
    folder = moved_in[0].parent
    folder.rename(inbox / "cats")  # a whole folder moved in: one event names it
    n_cats = sum(1 for p in moved_in if p.parent == folder)
    gone = sorted((inbox / "1").iterdir())[0]
    gone.unlink()
    (inbox / "1" / ".hidden.png").write_bytes(b"x")
    changed = [str(p) for p in new] + [str(inbox / "cats"), str(gone), str(inbox / "1" / ".hidden.png")]
    rep = ing.scan_paths([str(inbox)], changed)
    # the 197 files nobody touched were not looked at (a full scan counts each as unchanged)
    assert rep.unchanged == 0 and rep.added == 3 + n_cats and rep.removed == 1
    assert store.known(str(gone)) is None and store.classes("b")["cats"] >= 10
    full = ing.scan([str(inbox)])  # and a full scan agrees: nothing was missed
    assert full.added == 0 and full.removed == 0 and full.unchanged == 202 + n_cats
    # a label folder removed: every row below it goes, and only those
    import shutil
    shutil.rmtree(inbox / "cats")
    assert ing.scan_paths([str(inbox)], [str(inbox / "cats")]).removed == n_cats
    assert store.counts() == store.recount() and store.counts()["ok"] == 202
    store.close()


def test_the_watcher_names_what_changed_and_asks_for_a_full_scan_only_when_events_were_lost(tmp_path):
    import logging
    import time

    from autlearn.intake.watcher import MAX_PENDING, DebouncedWatcher

    inbox = tmp_path / "inbox"
    (inbox / "a").mkdir(parents=True)
    w = DebouncedWatcher([str(inbox)], 0.05)
    w.start()

    def wait():
        end = time.monotonic() + 20
        while time.monotonic() < end:
            c = w.due()
            if c is not None:
                return c
            time.sleep(0.02)
        raise AssertionError("no scan became due")

    try:
        assert wait().full  # the first scan, at start
        (inbox / "a" / "x.png").write_bytes(b"1")
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "y.png").write_bytes(b"2")
        (tmp_path / "d").rename(inbox / "b")
        c = wait()
        assert not c.full and {str(inbox / "a" / "x.png"), str(inbox / "b")} <= c.paths
        assert all(p.startswith(str(inbox)) for p in c.paths)
        assert w.due() is None  # once per burst
        w.touch([f"/x/{i}" for i in range(MAX_PENDING + 1)])
        assert wait().full
    finally:
        w.stop()


def test_the_scale_bench_merges_its_section_and_writes_distinct_images(tmp_path):
    import hashlib
    import json

    import bench_scale
    report = tmp_path / "bench.json"
    report.write_text(json.dumps({"summary": {"kept": 1}, "scale": {"old": True}}))
    bench_scale.merge_into(report, {"samples": 3})
    assert json.loads(report.read_text()) == {"summary": {"kept": 1}, "scale": {"samples": 3}}
    bench_scale.make_images(tmp_path / "imgs", 60, 0, "a")
    files = list((tmp_path / "imgs").rglob("*.png"))
    assert len(files) == 60 and len({hashlib.sha256(f.read_bytes()).hexdigest() for f in files}) == 60

