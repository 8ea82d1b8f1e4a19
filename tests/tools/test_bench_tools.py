"""The benchmark's own code (tools/bench*.py, tools/tflite_whole.py) on tiny sizes: bookkeeping, the daemon's
round as the bench times it, and the flex-free whole-model train signature. No timing is asserted."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import bench_baselines
import bench_measure
import bench_report
import bench_summary
from conftest import no_tensorflow_env


# ------------------------------------------------------------------------------------------ statistics

def test_percentiles_median_and_spread_ignore_missing_values():
    xs = list(range(1, 101))  # 1..100
    assert bench_summary.percentile(xs, 50) == pytest.approx(50.5)
    assert bench_summary.percentile(xs, 99) == pytest.approx(99.01)  # linear interpolation between 99 and 100
    assert bench_summary.percentile([5.0], 99) == 5.0
    assert bench_summary.percentile([], 99) is None
    assert bench_summary.median([3.0, None, 1.0, 2.0]) == 2.0
    assert bench_summary.median([None]) is None
    sp = bench_summary.spread([2.0, None, 1.0, 4.0])
    assert (sp["median"], sp["min"], sp["max"], sp["n"]) == (2.0, 1.0, 4.0, 3)
    assert sp["values"] == [2.0, 1.0, 4.0]
    assert bench_summary.spread([])["median"] is None and bench_summary.spread([])["n"] == 0


def test_ratio_and_verdict():
    assert bench_summary._ratio(6.0, 2.0) == 3.0
    assert bench_summary._ratio(None, 2.0) is None and bench_summary._ratio(1.0, None) is None and bench_summary._ratio(1.0, 0) is None
    assert bench_summary._verdict(30.0, ">=", 30.0) == "met"
    assert bench_summary._verdict(29.9, ">=", 30.0) == "missed"
    assert bench_summary._verdict(0.2, "<=", 0.2) == "met"
    assert bench_summary._verdict(0.21, "<=", 0.2) == "missed"
    assert bench_summary._verdict(None, "<=", 0.2) == "not measured"


# ------------------------------------------------------------------------------------------ time to target

def test_time_to_target_counts_fixed_cost_and_epochs_up_to_the_first_hit():
    t = bench_baselines.time_to_target(1.0, [0.5, 0.25, 0.25, 0.25], [0.40, 0.70, 0.90, 0.95], 0.7)
    assert t == {"seconds": pytest.approx(1.75), "reached": True, "epochs": 2}
    t = bench_baselines.time_to_target(1.0, [0.5, 0.25], [0.80, 0.90], 0.7)  # already there after the first epoch
    assert t["epochs"] == 1 and t["seconds"] == pytest.approx(1.5)


def test_time_to_target_never_reached_charges_the_whole_run_as_a_lower_bound():
    t = bench_baselines.time_to_target(1.0, [0.5, 0.25, 0.25], [0.40, 0.60, 0.65], 0.7)
    assert t == {"seconds": pytest.approx(2.0), "reached": False, "epochs": None}
    with pytest.raises(ValueError):
        bench_baselines.time_to_target(0.0, [0.1, 0.1], [0.5], 0.4)


def test_baseline_result_bookkeeping():
    r = bench_baselines._baseline_result(0.5, [2.0, 0.25, 0.25, 0.25], [0.3, 0.6, 0.8, 0.75], 0.79, 3.0,
                               [1.0, 1.5, 2.0, 2.5], {"load_s": 0.1})
    assert r["load_s"] == 0.1 and r["fixed_s"] == 0.5
    assert r["reached"] and r["epochs_to_target"] == 3
    assert r["time_to_target_s"] == pytest.approx(0.5 + 2.5)
    # the first epoch (tracing) counted at the median of the later ones
    assert r["time_to_target_warm_s"] == pytest.approx(0.5 + 0.75)
    assert r["full_s"] == pytest.approx(3.25)
    assert (r["best_accuracy"], r["final_accuracy"], r["cpu_s"]) == (0.8, 0.75, 3.0)
    assert r["cpu_to_target_s"] == 2.0  # CPU up to the end of the third epoch
    never = bench_baselines._baseline_result(0.5, [1.0, 1.0], [0.1, 0.2], 0.9, 3.0, [1.0, 2.5], {})
    assert not never["reached"] and never["cpu_to_target_s"] == 2.5  # the whole run, as for the time
    with pytest.raises(ValueError):
        bench_baselines._baseline_result(0.5, [1.0, 1.0], [0.1, 0.2], 0.9, 3.0, [1.0], {})


# ------------------------------------------------------------------------------------------ the report

def _measurements(**over):
    m = {
        "daemon_round_s": [1.0, 2.0, 1.5],
        "daemon_round2_s": [0.1, 0.4, 0.3],  # per repetition: 0.1, 0.2, 0.2
        "daemon_round_internal_s": [0.5, 0.5, 0.5],
        "daemon_round2_internal_s": [0.1, 0.1, 0.1],
        "daemon_cpu_s": [0.5, 0.6, 0.7],
        "daemon_cpu2_s": [0.1, 0.1, 0.1],
        "daemon_accuracy": [0.80, 0.80, 0.80],
        "daemon_peak_rss_mb": [70.0, 130.0, 71.0],
        "ready_s": [0.3, 0.4, 2.0],
        "ready_restart_s": [0.2, 0.2],
        "status_ms": [1.0] * 98 + [50.0, 60.0],
        "daemon_more_epochs_s": [2.0, 2.0, 2.0],
        "daemon_more_epochs_accuracy": [0.9, 0.9, 0.9],
        "baselines": {
            "keras_head": {"time_to_target_s": [3.0, 6.0, 4.5], "accuracy": [0.6, 0.6, 0.6],
                           "reached": [False, False, False], "cpu_s": [1.4, 1.4, 1.4],
                           "cpu_to_target_s": [1.4, 1.4, 1.4],
                           "time_to_more_epochs_target_s": [5.0, 5.0, 5.0],
                           "reached_more_epochs_target": [False, False, False]},
            "keras_whole": {"time_to_target_s": [45.0, 60.0, 50.0], "accuracy": [0.95, 0.96, 0.94],
                            "reached": [True, True, True], "cpu_s": [9.0, 9.0, 9.0],
                            "cpu_to_target_s": [6.0, 6.0, 6.0],
                            "time_to_more_epochs_target_s": [8.0, 8.0, 8.0],
                            "reached_more_epochs_target": [True, True, True]},
        },
    }
    m.update(over)
    return m


def test_bench_report_figures_and_verdicts():
    r = bench_summary.bench_report(_measurements())
    for key in bench_summary.REQUIRED_KEYS:
        assert key in r and key in r["targets"]
    assert r["daemon_round_s"] == 1.5
    assert r["speedup_vs_keras_whole"] == pytest.approx(50.0 / 1.5, abs=1e-4)
    assert r["speedup_vs_keras_head"] == pytest.approx(3.0)
    assert r["incremental_round_ratio"] == pytest.approx(0.2)  # median of per-repetition ratios, not of sums
    assert r["incremental_round_ratio_internal"] == pytest.approx(0.2)
    assert r["daemon_peak_rss_mb"] == 130.0  # the worst repetition, not the median
    assert r["status_p50_ms"] == 1.0
    assert r["status_p99_ms"] == pytest.approx(np.percentile([1.0] * 98 + [50.0, 60.0], 99))
    assert r["ready_s"] == 0.4
    assert r["cpu_ratio_vs_keras_whole"] == pytest.approx(10.0)
    assert r["speedup_more_epochs_vs_keras_whole"] == pytest.approx(4.0)
    assert r["keras_whole_reached_more_epochs_target"] and not r["keras_head_reached_more_epochs_target"]
    t = r["targets"]
    # fast enough, but the daemon's 0.80 is below whole-model fine-tuning's 0.95: not a plain "met"
    assert t["speedup_vs_keras_whole"]["verdict"] == "met on time, missed on accuracy"
    assert "below keras_whole" in t["speedup_vs_keras_whole"]["note"]
    # exactly 3x, against a baseline that never got there: met, and flagged as a lower bound
    assert t["speedup_vs_keras_head"]["verdict"] == "met"
    assert "lower bound" in t["speedup_vs_keras_head"]["note"]
    assert t["incremental_round_ratio"]["verdict"] == "met"
    assert t["daemon_peak_rss_mb"]["verdict"] == "missed"
    assert t["status_p99_ms"]["verdict"] == "missed"
    assert t["ready_s"]["verdict"] == "met"


def test_bench_report_marks_missing_measurements():
    r = bench_summary.bench_report({"daemon_round_s": [1.0]})
    assert r["speedup_vs_keras_whole"] is None
    assert r["targets"]["speedup_vs_keras_whole"]["verdict"] == "not measured"
    assert r["targets"]["status_p99_ms"]["verdict"] == "not measured"


def test_a_lower_bound_below_the_target_is_not_called_a_miss():
    m = _measurements()
    m["baselines"]["keras_head"]["time_to_target_s"] = [2.0, 2.0, 2.0]  # never reached: 2.0 / 1.5 = 1.33x at least
    t = bench_summary.bench_report(m)["targets"]["speedup_vs_keras_head"]
    assert t["verdict"].startswith("undetermined") and "lower bound" in t["note"]
    m["baselines"]["keras_head"]["reached"] = [True, True, True]  # reached: the same 1.33x is a plain miss
    assert bench_summary.bench_report(m)["targets"]["speedup_vs_keras_head"]["verdict"] == "missed"


# ------------------------------------------------------------------------------------------ the daemon's round

def test_the_daemon_round_as_the_bench_times_it(tmp_path, tiny_bundle, user_digits, monkeypatch):
    """A real autlearnd (TensorFlow blocked in it), READY through its notify socket, two rounds through the
    bench's own code: event timestamps in order, features computed once and then taken from the cache."""
    from userdata import write_user

    monkeypatch.setenv("PYTHONPATH", no_tensorflow_env()["PYTHONPATH"])
    images, labels = user_digits
    first = write_user(tmp_path / "user" / "first", images[:60], labels[:60], prefix="a")
    write_user(tmp_path / "user" / "later", images[60:80], labels[60:80], prefix="b")  # >= min_new_samples
    test_paths = write_user(tmp_path / "user" / "test", images[100:140], labels[100:140], prefix="t")
    assert len(first) == 60
    root = tmp_path / "d"
    run = bench_measure.DaemonRun(root, tiny_bundle, epochs=3, debounce_s=0.1, min_steps=0)
    staging = tmp_path / "user"
    try:
        ready = run.start()
        assert 0 < ready < 120
        pid = run.proc.pid

        def move_first():
            for d in sorted((staging / "first").iterdir()):
                os.rename(d, run.inbox / d.name)

        def move_later():
            for d in sorted((staging / "later").iterdir()):
                (run.inbox / d.name).mkdir(exist_ok=True)
                for f in sorted(d.iterdir()):
                    os.rename(f, run.inbox / d.name / f.name)

        r1 = bench_measure.timed_round(run, move_first, test_paths, labels[100:140])
        r2 = bench_measure.timed_round(run, move_later, test_paths, labels[100:140])
        assert run.proc.pid == pid and run.proc.poll() is None
    finally:
        code = run.stop()
    assert code == 0
    for r in (r1, r2):
        assert r["outcome"] in ("promoted", "rejected")
        names = [e["event"] for e in r["events"]]
        for name in ("import", "round_started", "features", "trained", "round_finished"):
            assert name in names
        assert "epoch" not in names
        t = [e["t_s"] for e in r["events"]]
        assert t == sorted(t) and t[0] > 0  # the daemon's own clock, after the files landed
        assert 0 < r["landing_to_import_s"] < r["landing_to_round_started_s"] <= r["landing_to_promoted_s"]
        assert r["landing_to_promoted_s"] <= r["landing_to_finished_s"]
        # receipt comes after the event happened (same clock, plus delivery through the PUB socket)
        assert r["landing_to_finished_received_s"] >= r["landing_to_finished_s"] - 0.01
        assert r["cpu_s"] > 0 and r["peak_rss_mb"] > 10
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["epochs_trained"] == 3
    assert (r1["features_computed"], r1["features_cached"]) == (60, 0)
    assert r1["n_train"] + r1["n_holdout"] == 60
    assert (r2["features_computed"], r2["features_cached"]) == (20, 60)
    assert r2["n_train"] + r2["n_holdout"] == 80
    assert r2["augmented_cached"] == r1["augmented_computed"] > 0
    log = (root / "autlearnd.log").read_text()
    assert "round 2" in log


# ------------------------------------------------------------------------------------------ TFLite whole model

def _rects(n, rng, lo=0.0, hi=1.0, smin=4, smax=24):
    """Images with one rectangle each (random place, size and brightness) on faint noise: global content that
    differs from image to image, so pooled features and logits differ too (uniform noise would average out)."""
    x = rng.uniform(0, 0.05, (n, 28, 28, 1)).astype(np.float32)
    for i in range(n):
        h, w = rng.integers(smin, smax + 1, 2)
        t, left = rng.integers(0, 28 - h + 1), rng.integers(0, 28 - w + 1)
        x[i, t:t + h, left:left + w] += rng.uniform(lo, hi)
    return x


@pytest.fixture(scope="module")
def whole_model():
    """A small classifier of the builder's architecture with BatchNorm statistics from data (as the builder
    recalibrates them) and then scrambled scales, shifts and variances, its folded weights, and the flex-free
    TFLite model made from them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from autlearn_build import image_model

    import tflite_whole

    tf.keras.utils.set_random_seed(3)
    base = image_model.build_base((28, 28, 1), feature_size=16, channels=(8, 16, 16))
    clf = image_model.build_classifier(base, class_capacity=8, n_classes=5)
    rng = np.random.default_rng(3)
    image_model.recalibrate_batchnorm(clf, _rects(64, rng))
    for layer in clf.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape), mean,
                               var * rng.uniform(0.8, 1.25, var.shape)])
    weights = tflite_whole.folded_weights(clf)
    batch = 8
    module = tflite_whole.make_module(weights, (28, 28, 1), batch)
    model = tflite_whole.convert(module)
    return {"clf": clf, "weights": weights, "module": module, "model": model, "batch": batch,
            "active": np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)}


def _images(n, seed=0):
    return _rects(n, np.random.default_rng(seed))


def test_folded_whole_model_matches_the_keras_classifier(whole_model):
    import tflite_whole

    clf, module, active = whole_model["clf"], whole_model["module"], whole_model["active"]
    x = _images(whole_model["batch"], seed=1)
    keras_logits = clf(x, training=False).numpy()
    assert keras_logits[:, :5].std(0).min() > 1e-2  # the images really give different outputs
    folded = module.logits(x, active).numpy()
    # the same function: conv/depthwise via im2col slices, BatchNorm folded, SAME padding at stride 2
    np.testing.assert_allclose(folded[:, :5], keras_logits[:, :5], rtol=1e-4, atol=1e-4)
    assert np.all(folded[:, 5:] < -1e3) and np.all(keras_logits[:, 5:] < -1e3)  # inactive classes masked
    # and the same again through the converted model in the LiteRT interpreter (builtin operators only)
    trainer = tflite_whole.TFLiteWholeTrainer(whole_model["model"], whole_model["batch"], 8, threads=1)
    probs = trainer.predict(x[:5], active)  # a partial batch: padded inside, only 5 rows back
    assert probs.shape == (5, 8)
    ref = np.exp(keras_logits[:5] - keras_logits[:5].max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, ref, atol=1e-4)
    assert np.allclose(probs[:, 5:], 0.0)


def test_fold_bn_depthwise_and_pointwise():
    import tflite_whole

    rng = np.random.default_rng(0)
    bn = [rng.uniform(0.5, 1.5, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)]
    scale = bn[0] / np.sqrt(bn[3] + 1e-3)
    dk = rng.normal(size=(3, 3, 4, 1))
    k, b = tflite_whole.fold_bn(dk, bn, 1e-3)
    np.testing.assert_allclose(k[..., 0], dk[..., 0] * scale, rtol=1e-5)
    np.testing.assert_allclose(b, bn[1] - bn[2] * scale, rtol=1e-5)
    pk = rng.normal(size=(1, 1, 3, 4))
    k, _ = tflite_whole.fold_bn(pk, bn, 1e-3)
    np.testing.assert_allclose(k, pk * scale, rtol=1e-5)


def test_one_train_step_in_litert_lowers_the_loss_and_changes_every_weight(whole_model):
    from ai_edge_litert.interpreter import Interpreter

    import tflite_whole

    b, active = whole_model["batch"], whole_model["active"]
    interp = Interpreter(model_content=whole_model["model"], num_threads=1)
    assert set(interp.get_signature_list()) == set(tflite_whole.SIGNATURES)
    train = interp.get_signature_runner("train")
    get = interp.get_signature_runner("get_weights")
    before = {k: np.array(v) for k, v in get().items()}
    assert set(before) == set(tflite_whole.ORDER)
    for name, w in whole_model["weights"].items():  # starts from the folded Keras weights
        np.testing.assert_allclose(before[name], w, rtol=1e-6)
    x = _images(b, seed=2)
    y = np.array([0, 1, 2, 3, 4, 0, 1, 0], np.int32)
    mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)  # two padded rows
    lr = np.array(1e-3, np.float32)
    loss0 = float(train(x=x, y=y, mask=mask, active=active, lr=lr)["loss"])
    after = {k: np.array(v) for k, v in get().items()}
    unchanged = [k for k in tflite_whole.ORDER if np.array_equal(after[k], before[k])]
    assert not unchanged, f"weights the train step did not update: {unchanged}"
    for _ in range(4):
        loss = float(train(x=x, y=y, mask=mask, active=active, lr=lr)["loss"])
    assert math.isfinite(loss0) and loss < loss0
    # the masked rows do not count: changing their labels leaves a fresh model's first loss unchanged
    fresh = Interpreter(model_content=whole_model["model"], num_threads=1).get_signature_runner("train")
    y2 = y.copy()
    y2[6:] = [4, 4]
    assert float(fresh(x=x, y=y2, mask=mask, active=active, lr=lr)["loss"]) == pytest.approx(loss0, rel=1e-5)


def test_the_trainer_learns_a_separable_toy_task(whole_model):
    import tflite_whole

    rng = np.random.default_rng(5)
    active = whole_model["active"]
    n = 40
    y = rng.integers(0, 2, n).astype(np.int32)  # class 0: a dim rectangle, class 1: a bright one
    x = np.concatenate([_rects(1, rng, 0.15, 0.3, 12, 16) if c == 0 else _rects(1, rng, 0.8, 1.0, 12, 16) for c in y])
    trainer = tflite_whole.TFLiteWholeTrainer(whole_model["model"], whole_model["batch"], 8, threads=1)
    losses = [trainer.fit_epoch(x, y, active, 3e-3, rng) for _ in range(8)]
    assert losses[-1] < losses[0]
    acc = float(np.mean(np.argmax(trainer.predict(x, active), 1) == y))
    assert acc >= 0.9


# ------------------------------------------------------------------------------------------ the report files

def test_markdown_and_plots_from_a_small_result(tmp_path):
    """The report writers on a result shaped as main() builds it (two repetitions, hand-made numbers)."""
    pytest.importorskip("matplotlib")
    m = _measurements(daemon_round_s=[1.0, 2.0], daemon_round2_s=[0.5, 0.5],
                      daemon_round_internal_s=[0.3, 0.3], daemon_round2_internal_s=[0.1, 0.1],
                      daemon_cpu_s=[0.5, 0.5], daemon_cpu2_s=[0.2, 0.2], daemon_accuracy=[0.8, 0.8],
                      daemon_peak_rss_mb=[70.0, 71.0], ready_s=[0.3, 0.3], ready_restart_s=[0.2])
    for b in m["baselines"].values():
        for k, v in b.items():
            b[k] = v[:2]
        b["full_s"] = [x * 2 for x in b["time_to_target_s"]]
        b["time_to_target_warm_s"] = b["time_to_target_s"]
    report = bench_summary.bench_report(m)

    def base_run(acc):
        return {"fixed_s": 0.1, "load_s": 0.05, "compile_setup_s": 0.05, "epoch_s": [1.0, 0.2],
                "test_accuracy_per_epoch": acc, "epochs_to_target": 1, "reached": True}

    rounds = {"landing_to_import_s": 0.3, "landing_to_round_started_s": 0.5, "landing_to_promoted_s": 1.0,
              "test_accuracy": 0.8, "features_computed": 500, "augmented_computed": 389}
    daemon = {"round1": rounds, "round2": dict(rounds, features_computed=50, augmented_computed=39),
              "status": {"long_round_epochs": 500}, "long_round_holdout_accuracy": 0.9,
              "long_round_test_accuracy": 0.91, "pretrained_accuracy": 0.2, "loadavg": [1.0, 1.0, 1.0]}
    result = {
        **{k: report[k] for k in bench_summary.REQUIRED_KEYS}, "summary": report,
        "spread": {k: bench_summary.spread(v) for k, v in m.items() if k not in ("baselines", "status_ms")},
        "baselines": {n: {k: bench_summary.spread(v) for k, v in vals.items() if not k.startswith("reached")}
                      | {k: v for k, v in vals.items() if k.startswith("reached")} for n, vals in m["baselines"].items()},
        "status_ms": {"p50": 1.0, "p99": 50.0, "max": 60.0, "calls_during_training": 100},
        "per_variant_feature_latency": {"full": {"ms_per_sample_batch1": bench_summary.spread([0.01]),
                                                 "ms_per_sample_batch32": bench_summary.spread([0.005]),
                                                 "memory_bytes": 135000, "delegate": "xnnpack"}},
        "pretrained_accuracy": 0.2,
        "setup": {"n_first": 500, "n_trained": 389, "n_daemon_holdout": 111, "n_test": 500, "repeats": 2,
                  "baseline_max_epochs": 2, "daemon_epochs": 30, "daemon_epochs_high": 300, "tolerance": 0.01,
                  "debounce_s": 0.25, "tensorflow_import_s": 2.0, "bundle_build_s": None},
        "machine": {"cpus": 2, "loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [2.0, 2.0, 2.0],
                    "loadavg_per_repetition": [[1.0, 1.0, 1.0]], "note": "test"},
        "raw": {"daemon": [daemon, daemon], "keras_head": [base_run([0.5, 0.6])] * 2,
                "keras_whole": [base_run([0.9, 0.95])] * 2},
        "seconds": 12.0,
    }
    md = bench_report.bench_markdown(result)
    assert "| speed-up vs Keras whole-model fine-tuning |" in md
    assert "**met on time, missed on accuracy**" in md
    assert "**missed**" in md  # status p99 (50 ms) and the incremental ratio (0.375) miss their targets
    assert "Incremental round:" in md
    assert "## Machine" in md and "[2.0, 2.0, 2.0]" in md
    assert "| full |" in md
    for plot, name in ((bench_report.plot_cost, "cost.png"), (bench_report.plot_curve, "curve.png")):
        plot(result, tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
