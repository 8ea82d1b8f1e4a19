"""tools/eval_tail_whole.py's own logic: time to the round's accuracy, the ratio's verdict, the class slots, the
round's training set rebuilt as the daemon makes it, and whole-model training through the TFLite signature."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

import eval_tail_whole as etw


def test_reach_charges_set_up_and_every_epoch_up_to_the_first_that_reaches_the_target():
    walls, cpus, accs = [2.0, 3.0, 4.0, 5.0], [1.0, 1.5, 2.0, 2.5], [0.5, 0.9, 0.8, 0.95]
    r = etw.reach(walls, cpus, accs, 0.85, fixed_s=1.0, fixed_cpu_s=0.5)
    assert (r["reached"], r["epochs"], r["seconds"], r["cpu_seconds"]) == (True, 2, 6.0, 3.0)
    assert etw.reach(walls, cpus, accs, 0.9)["epochs"] == 2  # equal to the target counts as reached
    later = etw.reach(walls, cpus, accs, 0.92)  # the dip at epoch 3 does not count: the first epoch at >= 0.92
    assert (later["epochs"], later["seconds"]) == (4, 14.0)
    never = etw.reach(walls, cpus, accs, 0.99, fixed_s=1.0)
    assert (never["reached"], never["epochs"], never["seconds"], never["cpu_seconds"]) == (False, None, 15.0, 7.0)
    with pytest.raises(ValueError):
        etw.reach(walls, cpus[:3], accs, 0.5)
    with pytest.raises(ValueError):
        etw.reach(walls, cpus, accs[:3], 0.5)


def test_ratio_verdict_treats_a_target_never_reached_as_a_lower_bound():
    assert etw.ratio({"seconds": 100.0, "reached": True}, 10.0) == {"ratio": 10.0, "lower_bound": False,
                                                                     "verdict": "met"}
    assert etw.ratio({"seconds": 99.0, "reached": True}, 10.0)["verdict"] == "missed"
    bound = etw.ratio({"seconds": 50.0, "reached": False}, 10.0)
    assert bound["lower_bound"] and bound["verdict"] == "not shown (lower bound)" and bound["ratio"] == 5.0
    assert etw.ratio({"seconds": 200.0, "reached": False}, 10.0)["verdict"] == "met"  # even the bound is >= 10
    assert etw.ratio({"seconds": 5.0, "reached": True}, 0.0)["verdict"] == "not measured"


def test_slot_map_keeps_the_bundles_labels_and_gives_new_ones_the_next_slots():
    slots = etw.slot_map(["0", "1", "2", "3", "4"], [7, 5, 10, 5, 2, 9])
    assert slots == {"0": 0, "1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "7": 6, "9": 7, "10": 8}
    assert etw.slot_map([str(i) for i in range(10)], [3, 1]) == {str(i): i for i in range(10)}


def _pngs(tmp_path, n):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = np.zeros((28, 28), np.uint8)
        img[rng.integers(2, 10):rng.integers(14, 26), rng.integers(2, 10):rng.integers(14, 26)] = 255
        p = tmp_path / f"f{i:02d}.png"
        Image.fromarray(img, "L").save(p)
        paths.append(p)
    return paths


def test_round_training_set_leaves_out_the_holdout_and_adds_the_daemons_own_copies(tmp_path):
    from autlearn.intake import augment
    from autlearn.intake.ingest import holdout_of
    from autlearn_build.datasets import ImageSpec
    from reference import decode_pngs

    spec = ImageSpec().to_manifest()
    files = _pngs(tmp_path, 16)
    shas = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    hold = [holdout_of(s, 0.5) for s in shas]
    assert 0 < sum(hold) < len(files)  # both kinds present, so the test can tell them apart
    x, y, info = etw.round_training_set(files, list(range(16)), spec, 1, 0, 0.5)
    kept = [i for i in range(16) if not hold[i]]
    assert info == {"n_originals": len(kept), "n_holdout": sum(hold), "n_samples": 2 * len(kept)}
    assert y.tolist() == [i for i in kept for _ in range(2)]  # each original followed by its copy
    originals = decode_pngs([files[i] for i in kept], spec)
    np.testing.assert_array_equal(x[0::2], originals)
    first_copy = augment.augment_image(originals[0], augment.image_variants(1, 0, shas[kept[0]])[0][1])
    np.testing.assert_array_equal(x[1], first_copy)  # the very copy the daemon's round (seed 0) trains on
    assert not np.array_equal(x[1], x[0])
    x0, _, info0 = etw.round_training_set(files, list(range(16)), spec, 0, 0, 0.5)
    assert info0["n_samples"] == len(kept) and np.array_equal(x0, originals)


@pytest.mark.slow
def test_tflite_whole_training_lowers_the_loss_and_stops_once_the_target_is_reached():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from autlearn_build import image_model

    import tflite_whole

    tf.keras.utils.set_random_seed(1)
    base = image_model.build_base((28, 28, 1), feature_size=16, channels=(8, 16, 16))
    clf = image_model.build_classifier(base, class_capacity=8, n_classes=2)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 0.05, (48, 28, 28, 1)).astype(np.float32)
    y = np.arange(48) % 3  # a third class the pretrained model masks: a new class in a free slot
    for i in range(48):  # class c: a bright bar at a place of its own
        x[i, 4 + 8 * y[i]:10 + 8 * y[i], 4:24] = 1.0
    image_model.recalibrate_batchnorm(clf, x)
    model = tflite_whole.convert(tflite_whole.make_module(tflite_whole.folded_weights(clf), (28, 28, 1), 8))
    run = etw.tflite_whole(model, 8, 8, 3, x, y, x[:12], y[:12], max_epochs=5, lr=3e-3, target=1.01, seed=0)
    losses = run["train_loss_per_epoch"]
    assert len(losses) == len(run["epoch_s"]) == len(run["test_accuracy_per_epoch"]) == 5  # never reached: all 5
    assert losses[-1] < losses[2] < losses[0] and losses[-1] < 0.75 * losses[0], losses
    assert run["test_accuracy_per_epoch"][-1] > run["test_accuracy_per_epoch"][0] or run["best_accuracy"] == 1.0
    t = run["to_target"]
    assert not t["reached"] and t["seconds"] == pytest.approx(run["fixed_s"] + sum(run["epoch_s"]), abs=0.01)
    early = etw.tflite_whole(model, 8, 8, 3, x, y, x[:12], y[:12], max_epochs=5, lr=3e-3, target=0.0, seed=0)
    assert len(early["epoch_s"]) == 1 and early["to_target"]["epochs"] == 1  # reached after epoch 1: stops
    more = etw.tflite_whole(model, 8, 8, 3, x, y, x[:12], y[:12], max_epochs=5, lr=3e-3, target=0.0, seed=0,
                            extra_epochs=2)
    assert len(more["epoch_s"]) == 3 and more["train_loss_per_epoch"][0] == pytest.approx(losses[0], rel=1e-4)
