"""The learning pipeline on a real tiny bundle: rounds, cache reuse, holdout gate, new classes."""

import numpy as np
import pytest

from autlearn.learning.head import load_weights
from eval_board import engine_of, make_service, never, no_progress


@pytest.fixture
def svc(tmp_path, tiny_bundle):
    s = make_service(tmp_path / "root", tiny_bundle)
    yield s
    s.stop()


def test_round_improves_holdout_and_second_round_reuses_cache(svc, user_digits, write_user):
    images, labels = user_digits
    inbox = svc.paths.state.parent / "inbox"
    write_user(inbox, images[:600], labels[:600], prefix="a")
    eng = engine_of(svc)
    rep = eng.scan()
    assert rep.added == 600 and rep.quarantined == 0
    ev1, ev2 = [], []
    r1 = eng.round("test", lambda name, data: ev1.append((name, data)), never)
    assert r1.outcome == "promoted"
    assert r1.accuracy_after > r1.accuracy_before + 0.05  # the user differs from MNIST; the head adapts
    assert r1.features_computed == 600 and r1.features_cached == 0
    assert eng.current_version() == r1.version

    write_user(inbox, images[600:660], labels[600:660], prefix="b")  # 10 % new files
    assert eng.scan().added == 60
    r2 = eng.round("test", lambda name, data: ev2.append((name, data)), never)
    assert r2.features_computed == 60  # only the new files went through the base model
    assert r2.features_cached == 600
    # the head continues from the promoted one: epochs in proportion to the unlearnt samples, not all again
    e1, e2 = (next(d["epochs"] for name, d in ev if name == "trained") for ev in (ev1, ev2))
    batches = -(-(r2.n_train + r2.n_augmented) // eng.learner.bundle.train_batch)
    full = max(svc.config["training.epochs"], -(-svc.config["training.min_steps"] // batches))
    new_share = (r2.n_train - r1.n_train) / r2.n_train
    assert e2 == max(1, int(np.ceil(full * new_share))) and e2 < e1 / 4
    # one augmented copy per training image (the paper's cap), cached under its own key like the originals
    assert r1.extras.n_augmented == r1.n_train and r1.extras.augmented_computed == r1.n_train
    assert r2.extras.augmented_cached == r1.n_train and r2.extras.augmented_computed == r2.n_train - r1.n_train
    eng.close()


def test_corrupted_cache_row_is_recomputed(svc, user_digits, write_user):
    images, labels = user_digits
    write_user(svc.paths.state.parent / "inbox", images[:100], labels[:100])
    eng = engine_of(svc)
    eng.scan()
    eng.round("test", no_progress, never)
    key = eng.cache.db.execute("SELECT key FROM features LIMIT 1").fetchone()[0]
    good = eng.cache.get_many([key])[key]
    eng.cache.db.execute("UPDATE features SET data=? WHERE key=?", (np.zeros_like(good).tobytes(), key))
    r = eng.round("test", no_progress, never)
    assert r.features_computed == 1 and r.features_cached == 99
    np.testing.assert_allclose(eng.cache.get_many([key])[key], good, rtol=0, atol=1e-6)
    eng.close()


def test_rejected_candidate_leaves_promoted_head_untouched(tmp_path, tiny_bundle, user_digits, write_user):
    svc = make_service(tmp_path / "root", tiny_bundle)
    images, labels = user_digits
    inbox = svc.paths.state.parent / "inbox"
    write_user(inbox, images[:300], labels[:300])
    eng = engine_of(svc)
    eng.scan()
    good = eng.round("test", no_progress, never)
    assert good.outcome == "promoted"
    before = load_weights(svc.paths.heads / f"head-v{good.version}.npz")
    # A round with a learning rate far too high: the candidate diverges and the holdout gate notices.
    write_user(inbox, images[300:400], labels[300:400], prefix="b")
    eng.scan()
    svc.config = svc.config.with_overrides(**{"training.learning_rate": 10.0})
    reckless = engine_of(svc)
    bad = reckless.round("test", no_progress, never)
    assert bad.outcome == "rejected"
    assert bad.detail.endswith(f"candidate v{bad.version} rejected, kept the current head (v{good.version})")
    assert bad.accuracy_after < bad.accuracy_before
    assert eng.current_version() == good.version
    assert [v["status"] for v in eng.store.heads()] == ["initial", "promoted", "rejected"]
    after = load_weights(svc.paths.heads / f"head-v{good.version}.npz")
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    svc.stop()
    eng.close()
    reckless.close()


def test_new_label_folder_becomes_a_class_up_to_capacity(svc, user_digits, write_user):
    images, labels = user_digits
    inbox = svc.paths.state.parent / "inbox"
    capacity = svc.bundle.class_capacity
    n_free = capacity - len(svc.bundle.labels)
    for k in range(n_free + 1):  # one more new label than there are free slots
        write_user(inbox / f"new{k}", images[k * 5:(k + 1) * 5], np.zeros(5, int), prefix=f"n{k}_")
    eng = engine_of(svc)
    rep = eng.scan()
    assert len(rep.new_classes) == n_free
    assert rep.waiting == 5  # the last label's samples wait, not lost
    counts = eng.store.sample_counts()
    assert counts["waiting"] == 5 and counts["ok"] == 5 * n_free
    assert len(eng.store.classes(svc.bundle_id)) == capacity
    eng.close()


def test_online_mode_predicts_each_chunk_before_training_on_it(tmp_path, tiny_bundle, user_digits, write_user):
    from autlearn.learning.head import Head
    svc = make_service(tmp_path / "root", tiny_bundle, **{"training.mode": "online"})
    images, labels = user_digits
    write_user(svc.paths.state.parent / "inbox", images[:400], labels[:400])
    eng = engine_of(svc)
    eng.scan()
    start = eng.current_version()
    events = []
    r = eng.round("test", lambda name, data: events.append((name, data)), never)
    assert r.mode == "online" and r.prequential and sum(n for _, n in r.prequential) == r.n_train
    # each chunk gets online_steps, raised (with replay of the stream so far) until the round makes min_steps
    chunks = len(r.prequential)
    per_chunk = max(svc.config["training.online_steps"], -(-svc.config["training.min_steps"] // chunks))
    assert next(d for name, d in events if name == "trained")["epochs"] == chunks * per_chunk
    # The first chunk's score is what the head scored *before* any training in this round.
    slots = eng.store.classes(svc.bundle_id)
    stream = [s for s in eng.store.usable_samples() if not s.holdout][:svc.bundle.train_batch]
    x, kept, _, _ = eng.features.for_samples(stream)
    head = Head(svc.variant, svc.bundle.class_capacity, svc.bundle.train_batch, 1)
    head.set_weights(eng.learner.current_weights(start))
    y = np.array([slots[s.label] for s in kept])
    expected = int(np.sum(np.argmax(head.predict(x, eng.learner.active()), axis=1) == y))
    assert r.prequential[0] == (expected, len(y))
    # and learning happened along the stream: later chunks score better than the first ones
    first, last = r.prequential[:3], r.prequential[-3:]
    assert sum(h for h, _ in last) / sum(n for _, n in last) > sum(h for h, _ in first) / sum(n for _, n in first)
    # a second round has nothing new to learn online
    assert eng.round("test", no_progress, never).outcome == "skipped"
    svc.stop()
    eng.close()


def test_a_long_round_publishes_at_most_a_hundred_epoch_events_and_always_the_last(tmp_path, tiny_bundle,
                                                                                    user_digits, write_user):
    from autlearn.learning.round import MAX_EPOCH_EVENTS

    svc = make_service(tmp_path / "root", tiny_bundle, **{"training.epochs": 250, "training.min_steps": 0})
    images, labels = user_digits
    write_user(svc.paths.state.parent / "inbox", images[:60], labels[:60])
    eng = engine_of(svc)
    eng.scan()
    events = []
    r = eng.round("test", lambda name, data: events.append((name, data)), never)
    epochs = [d["epoch"] for name, d in events if name == "epoch"]
    assert r.outcome in ("promoted", "rejected")
    assert len(epochs) <= MAX_EPOCH_EVENTS
    assert epochs[-1] == 250 and epochs == sorted(epochs) and epochs[0] == 3  # every 3rd epoch, then the last
    assert [name for name, _ in events][-1] == "round_finished"  # what follows the epochs still goes out
    eng.close()
    svc.stop()


def test_few_samples_get_more_epochs_to_reach_the_minimum_number_of_steps(tmp_path, tiny_bundle, user_digits,
                                                                          write_user):
    svc = make_service(tmp_path / "root", tiny_bundle, **{"training.epochs": 5, "training.min_steps": 90,
                                                           "training.augment_copies": 0})
    images, labels = user_digits
    write_user(svc.paths.state.parent / "inbox", images[:50], labels[:50])
    eng = engine_of(svc)
    eng.scan()
    events = []
    r = eng.round("test", lambda name, data: events.append((name, data)), never)
    batch = eng.learner.bundle.train_batch
    batches = -(-r.n_train // batch)
    assert batches * 5 < 90  # 5 epochs alone would make too few steps
    trained = next(d for name, d in events if name == "trained")
    assert trained["epochs"] == -(-90 // batches)  # raised just enough
    eng.close()
    svc.stop()


def test_a_round_that_fails_is_recorded_and_automatic_rounds_back_off(tmp_path, tiny_bundle, user_digits,
                                                                      write_user):
    import time

    svc = make_service(tmp_path / "root", tiny_bundle, **{"training.auto": True, "training.min_new_samples": 10})
    images, labels = user_digits
    write_user(svc.paths.state.parent / "inbox", images[:60], labels[:60])
    svc.request_scan()
    head = svc.store.head(svc.current_version())
    (svc.paths.heads / head["file"]).write_bytes(b"not a weights file")  # the current head cannot be read
    deadline = time.monotonic() + 60
    while (svc.store.count_new() < 10 or svc._get()["activity"] != "idle") and time.monotonic() < deadline:
        time.sleep(0.05)  # the scan commits as it goes: wait until it has ended, or tick() starts nothing
    svc.tick()  # a round is due: it starts and fails
    while not svc.store.rounds(1) or svc.store.rounds(1)[0]["outcome"] is None:
        assert time.monotonic() < deadline, "the round did not end"
        time.sleep(0.05)
    first = svc.store.rounds(1)[0]
    assert first["outcome"] == "failed" and first["finished"] is not None and first["detail"]
    for _ in range(5):  # ticks keep coming; the failing round does not start again at once
        svc.tick()
        time.sleep(0.1)
    assert len(svc.store.rounds(100)) == 1
    why = svc.status({})["why_not_training"]
    assert "the last round failed" in why and "resume in" in why
    svc.stop()


def _rchar() -> int:
    """Bytes this process has read through read(2) and friends, as the kernel counts them (/proc/self/io)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_a_round_reads_and_decodes_each_new_file_once_for_its_features_and_augmented_copies(
        tmp_path, tiny_bundle, user_digits, write_user, monkeypatch):
    """Two augmented copies per training sample, decoded inputs held 3 at a time (chunk boundaries fall between a
    sample's features and its copies): each new file is still read, hash-checked and decoded once in the round
    (the `features` event's files_read, and the bytes the kernel counts as read: each PNG carries 96 kB of text
    so the photos' bytes dwarf the databases' reads). A file changed since it was ingested is refused for the copies
    its features have not got yet."""
    from PIL import Image, PngImagePlugin

    from autlearn.learning.featsource import FeatureSource

    svc = make_service(tmp_path / "root", tiny_bundle, **{"training.augment_copies": 2})
    images, labels = user_digits
    paths = write_user(svc.paths.state.parent / "inbox", images[:40], labels[:40])
    pad = PngImagePlugin.PngInfo()
    pad.add_text("padding", "x" * 96_000)
    for p in paths:
        with Image.open(p) as im:
            im.load()
        im.save(p, pnginfo=pad)
    eng = engine_of(svc)
    assert eng.scan().added == 40
    monkeypatch.setattr(FeatureSource, "DECODED_CHUNK_BYTES", 3 * 28 * 28 * 4)
    photo_bytes = sum(p.stat().st_size for p in paths)
    events = []
    before = _rchar()
    r = eng.round("test", lambda name, data: events.append((name, data)), never)
    read = _rchar() - before
    feats = next(d for name, d in events if name == "features")
    assert (feats["computed"], feats["cached"], feats["files_read"]) == (40, 0, 40)
    assert r.outcome == "promoted" and r.extras.augmented_computed == 2 * r.n_train == r.extras.n_augmented
    assert photo_bytes <= read < 1.5 * photo_bytes  # each photo's bytes once (twice would be >= 2x)

    fs = eng.learner.features
    changed = eng.learner.store.usable_samples()[:5]
    for s in changed:
        with open(s.path, "ab") as f:
            f.write(b"\0")  # the files change after they were ingested
    read0 = fs.files_read
    (x, kept, computed, cached), (xa, kept_a, aug_computed, aug_cached) = fs.with_copies(changed, [True] * 5, 3, 9)
    # the features come from the cache (keyed by the ingested content); the new copies needed the file: refused
    assert fs.files_read - read0 == 5 and (len(kept), computed, cached) == (5, 0, 5)
    assert kept_a == [] and aug_computed == 0 and len(xa) == 0
    eng.close()
    svc.stop()


def test_decoded_inputs_held_in_a_round_stay_bounded_by_the_chunk_not_the_number_of_photos(
        tmp_path, tiny_bundle, user_digits, write_user, monkeypatch):
    """With one augmented copy each, 300 samples are 600 decoded inputs (28x28 float32: 1.9 MB). With the chunk at
    16 inputs, the Python heap's peak while their features are computed (tracemalloc, which sees numpy's buffers)
    grows from 100 to 300 samples by far less than the 1.25 MB more inputs would take if they were held (it grows
    with the features kept, 256 bytes a row); the chunked features are those of a single-chunk pass."""
    import tracemalloc

    from autlearn.learning.featsource import FeatureSource

    svc = make_service(tmp_path / "root", tiny_bundle)
    images, labels = user_digits
    write_user(svc.paths.state.parent / "inbox", images[:300], labels[:300])
    eng = engine_of(svc)
    assert eng.scan().added == 300
    fs = eng.learner.features
    samples = eng.learner.store.usable_samples()
    monkeypatch.setattr(FeatureSource, "DECODED_CHUNK_BYTES", 16 * 28 * 28 * 4)

    def peak(n: int):
        eng.cache.db.execute("DELETE FROM features")  # every feature computed again
        tracemalloc.start()
        try:
            got = fs.with_copies(samples[:n], [True] * n, 1, 5)
            return tracemalloc.get_traced_memory()[1], got
        finally:
            tracemalloc.stop()

    small, _ = peak(100)
    large, ((x, kept, computed, _), (xa, kept_a, aug_computed, _)) = peak(300)
    assert computed == aug_computed == 300 and len(kept) == len(kept_a) == 300
    more_inputs = 2 * 200 * 28 * 28 * 4
    assert large - small < more_inputs / 3, (small, large, more_inputs)
    monkeypatch.setattr(FeatureSource, "DECODED_CHUNK_BYTES", 1 << 30)
    _, ((x1, _, c1, _), (xa1, _, ca1, _)) = peak(300)
    assert c1 == ca1 == 300
    np.testing.assert_array_equal(x, x1)
    np.testing.assert_array_equal(xa, xa1)
    eng.close()
    svc.stop()


def test_holdout_fraction_zero_means_no_holdout_gate(tmp_path, tiny_bundle, user_digits, write_user):
    images, labels = user_digits
    svc = make_service(tmp_path / "root", tiny_bundle, **{"training.holdout_fraction": 0.0})
    try:
        write_user(svc.paths.state.parent / "inbox", images[:60], labels[:60])
        eng = engine_of(svc)
        assert eng.scan().added == 60
        r = eng.round("test", no_progress, never)
        assert r.outcome == "promoted" and "without a holdout check" in r.detail
        assert (r.n_train, r.n_holdout, r.accuracy_after) == (60, 0, None)
        assert eng.current_version() == r.version
        eng.close()
    finally:
        svc.stop()


def test_a_skipped_round_backs_off_instead_of_starting_again_at_every_tick(tmp_path, tiny_bundle, user_digits,
                                                                          write_user):
    import time

    from harness import wait_until
    images, labels = user_digits
    svc = make_service(tmp_path / "root", tiny_bundle, **{"training.holdout_fraction": 0.001, "training.auto": True,
                                                          "training.min_new_samples": 3})
    try:
        write_user(svc.paths.state.parent / "inbox", images[:3], labels[:3])
        svc.request_scan()
        wait_until(lambda: svc.store.count_new() == 3 and svc._get()["activity"] == "idle", 30, "the scan")
        assert svc.store.sample_counts()["holdout"] == 0  # nothing to judge a candidate on
        svc.tick()
        wait_until(lambda: (lr := svc._get()["last_round"]) and lr["outcome"] == "skipped", 60, "the round")
        for _ in range(6):  # ticks of the control loop (every 0.5 s)
            time.sleep(0.5)
            svc.tick()
        assert len(svc.store.rounds(10)) == 1
        why = svc.status({})["why_not_training"]
        assert "was skipped (no holdout samples yet" in why and "resume in" in why
    finally:
        svc.stop()
