"""Pruned LSTM widths for the keyboard: the ranking, the kept weights copied into a smaller LSTM (checked against
the full one numerically, Keras), the options, and a real bundle with two widths read as the board reads it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

VOCAB, CAPACITY, SEQ, EMBED, HIDDEN = 20, 24, 6, 5, 10


def _factory():
    from autlearn_build import text_model

    def make(hidden: int):
        base = text_model.build_text_base(VOCAB, SEQ, EMBED, hidden)
        return text_model.build_text_classifier(base, CAPACITY, VOCAB)

    return make


def _randomised(model, seed: int = 0):
    """Weights of a trained-looking size (Keras' zero bias and orthogonal recurrent kernel would hide slicing
    mistakes in the gate blocks)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in ws])
    return model


def _tokens(n: int = 7, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (n, SEQ)).astype(np.int32)


def _run(model, x):
    import tensorflow as tf

    return model(tf.constant(x), training=False).numpy()


def test_pruned_lstm_equals_the_full_one_when_the_removed_units_say_nothing():
    """Units cut off from the rest (no recurrent feedback out of them, no softmax row) change nothing the kept
    units compute: the full model's logits and kept features must then equal the pruned model's exactly (to float
    rounding), which fails if any gate block, the recurrent rows or the softmax rows are sliced wrongly."""
    from autlearn_build import text_model, text_prune

    make = _factory()
    full = _randomised(make(HIDDEN))
    keep = np.array([0, 2, 3, 7, 9])
    removed = np.setdiff1d(np.arange(HIDDEN), keep)
    kernel, recurrent, bias = text_prune.lstm_weights(full)
    recurrent[removed] = 0.0  # what the removed units feed back into every gate
    full.get_layer("lstm").set_weights([kernel, recurrent, bias])
    w, b = full.get_layer("softmax").get_weights()
    w[removed] = 0.0
    full.get_layer("softmax").set_weights([w, b])

    small = text_prune.prune_classifier(full, keep, make)
    assert small.get_layer("lstm").units == len(keep)
    x = _tokens()
    np.testing.assert_allclose(_run(small, x), _run(full, x), atol=1e-5)
    feats_full = _run(text_model.text_base_of(full), x)
    feats_small = _run(text_model.text_base_of(small), x)
    assert feats_small.shape == (len(x), SEQ, len(keep))
    np.testing.assert_allclose(feats_small, feats_full[..., keep], atol=1e-5)


def test_pruned_weights_are_the_kept_slices_of_each_gate_block():
    from autlearn_build import text_prune

    full = _randomised(_factory()(HIDDEN))
    keep = np.array([1, 4, 8])
    got = text_prune.pruned_weights(full, keep)
    kernel, recurrent, bias = text_prune.lstm_weights(full)
    for g in range(4):  # gates i, f, c, o: columns g*H + kept units
        np.testing.assert_array_equal(got["lstm"][0][:, g * 3:(g + 1) * 3], kernel[:, g * HIDDEN + keep])
        np.testing.assert_array_equal(got["lstm"][1][:, g * 3:(g + 1) * 3], recurrent[keep][:, g * HIDDEN + keep])
        np.testing.assert_array_equal(got["lstm"][2][g * 3:(g + 1) * 3], bias[g * HIDDEN + keep])
    np.testing.assert_array_equal(got["softmax"][0], full.get_layer("softmax").get_weights()[0][keep])
    np.testing.assert_array_equal(got["embedding"][0], full.get_layer("embedding").get_weights()[0])


def test_ranking_keeps_the_units_that_speak_to_the_softmax_and_are_driven():
    from autlearn_build import text_prune

    full = _randomised(_factory()(HIDDEN))
    w, b = full.get_layer("softmax").get_weights()
    w[3] = 0.0  # says nothing to the softmax
    w[5] *= 10.0  # says a lot
    full.get_layer("softmax").set_weights([w, b])
    kernel, recurrent, bias = text_prune.lstm_weights(full)
    kernel[:, 6::HIDDEN] = 0.0  # unit 6 is driven by nothing
    recurrent[:, 6::HIDDEN] = 0.0
    full.get_layer("lstm").set_weights([kernel, recurrent, bias])
    score = text_prune.unit_importance(full)
    assert score[3] == 0.0 and score[6] == 0.0 and int(np.argmax(score)) == 5
    keep = text_prune.kept_units(full, HIDDEN - 2)
    assert list(keep) == [u for u in range(HIDDEN) if u not in (3, 6)]  # sorted, the two silent units gone
    with pytest.raises(ValueError):
        text_prune.kept_units(full, HIDDEN + 1)


def test_finetune_rows_cover_fractional_epochs():
    from autlearn_build.text_prune import finetune_rows

    rows = finetune_rows(10, 1.5, 0)
    assert len(rows) == 15 and sorted(rows[:10]) == list(range(10))
    assert len(finetune_rows(10, 0.0, 0)) == 0 and len(finetune_rows(0, 2.0, 0)) == 0


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "32", "--hidden-widths", "32"], "--hidden-widths 32 must be at least 2 and below --hidden 32"),
    (["--hidden", "32", "--hidden-widths", "16,1"], "--hidden-widths 1 must be at least 2"),
    (["--hidden", "32", "--hidden-widths", "16,16"], "names a width twice"),
    (["--hidden-widths", "16", "--prune-finetune", "-1"], "--prune-finetune must be between 0 and 100"),
])
def test_bad_widths_are_refused_before_any_work(tmp_path, capsys, argv, message):
    from autlearn_build.cli import main

    rc = main(["text", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), *argv])
    assert rc != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_widths_that_are_not_numbers_are_a_usage_error(tmp_path, capsys):
    from autlearn_build.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["text", "--data", "x", "--out", str(tmp_path / "o"), "--hidden-widths", "16,half"])
    assert exc.value.code == 2 and "not a comma-separated list of whole numbers" in capsys.readouterr().err


def test_a_bundle_with_two_widths_loads_and_each_variant_runs_with_its_own_head(text_variant_bundle):
    from autlearn.learning.head import Head, active_mask
    from autlearn.learning.features import FeatureExtractor
    from autlearn.runtime.bundle import load

    bundle = load(text_variant_bundle)  # verifies every sha256, as the board does
    m = bundle.manifest
    assert bundle.variant_names == ["full", "h16"] and m["default_variant"] == "full"
    info = {v["name"]: v for v in m["variants"]}
    assert (info["full"]["feature_size"], info["h16"]["feature_size"]) == (32, 16)
    assert info["h16"]["pruned_from"] == "full" and info["h16"]["params"] < info["full"]["params"]
    assert info["h16"]["size_bytes"] < info["full"]["size_bytes"]
    for v in info.values():  # measured on the held-out text like the full one
        assert 0 < v["top3_int8"] <= 1 and v["latency_ms_per_token"] > 0 and v["accuracy_int8"] > 0
    assert m["build"]["pruning"]["variants"]["h16"]["finetune"]["sequences"] > 0
    assert "softmax row" in m["build"]["pruning"]["ranking"]

    x = np.full((3, m["seq_len"]), 0, np.int32)
    x[:, 0] = 2  # <bos>
    x[:, 1:4] = [[10, 11, 12], [20, 21, 22], [30, 31, 32]]
    active = active_mask(bundle.class_capacity, range(len(m["vocabulary"])), never=(0, 2))
    for name in bundle.variant_names:
        variant = bundle.variant(name)
        f = FeatureExtractor(variant, 1, "cpu")(x).reshape(3, m["seq_len"], -1)  # flattened per window
        assert f.shape == (3, m["seq_len"], variant.feature_size)
        head = Head(variant, bundle.class_capacity, bundle.train_batch, 1)
        assert head.get_weights()["w0"].shape == (variant.feature_size, bundle.class_capacity)
        p = head.predict(f[:, 3].astype(np.float32), active)
        assert p.shape == (3, bundle.class_capacity) and np.allclose(p.sum(axis=1), 1.0, atol=1e-4)
    assert json.loads((text_variant_bundle / "manifest.json").read_text())["vocabulary"] == m["vocabulary"]
