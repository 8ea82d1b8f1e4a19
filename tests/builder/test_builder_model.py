"""`autlearn-build image --model`: a tiny MobileNet-shaped Keras classifier made here, trained briefly on RGB
photos made here and saved as .keras, legacy .h5 and a SavedModel directory; the bundle's int8 base + head,
run by the board's own code (autlearn.learning.features, autlearn.learning.head), reproduces the model's predictions before any
learning, and models that cannot be cut or converted are refused naming the layer and the operator (exit 3)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = ("blue", "green", "red")
SIZE = 32
# int8 tolerance of the board's first answers against the Keras model (tiny model, 60 calibration images):
# top-1 agreement at least 90 %, mean absolute probability difference at most 0.05.
MIN_AGREEMENT, MAX_MEAN_DIFF = 0.9, 0.05


def _photo(rng, c: int) -> Image.Image:
    w, h = int(rng.integers(40, 120)), int(rng.integers(40, 120))
    a = rng.normal(90, 40, (h, w, 3))
    a[:, :, 2 - c] += 90  # blue, green, red: the class's channel is brighter
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(24):
            img = _photo(rng, c)
            img.save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def _mobilenet_shaped(n_out: int, activation: str = "softmax"):
    import keras

    layers = keras.layers
    inp = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    x = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(16, 1, use_bias=False)(x)))
    backbone = keras.Model(inp, x, name="mobilenetv2_tiny")
    outer = keras.Input((SIZE, SIZE, 3))
    y = layers.Dropout(0.2)(layers.GlobalAveragePooling2D()(backbone(outer)))
    return keras.Model(outer, layers.Dense(n_out, activation=activation, name="predictions")(y))


def _inputs(root, spec):
    from autlearn.intake.imaging import load_input

    files = sorted(p for d in sorted(root.iterdir()) for p in sorted(d.iterdir()))
    x = np.stack([load_input(p.read_bytes(), p.name, spec, 1 << 24) for p in files])
    y = np.array([CLASSES.index(p.parent.name) for p in files])
    return x, y


@pytest.fixture(scope="module")
def saved_models(photos, tmp_path_factory):
    """The user's classifier, trained a few epochs on the photos in [-1, 1], in the three formats."""
    import keras

    keras.utils.set_random_seed(0)
    model = _mobilenet_shaped(len(CLASSES))
    x, y = _inputs(photos, {"width": SIZE, "height": SIZE, "color_mode": "RGB", "scale": 1 / 127.5, "offset": -1.0})
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    d = tmp_path_factory.mktemp("models")
    model.save(d / "user.keras")
    model.save(d / "user.h5")
    model.export(str(d / "user_savedmodel"), verbose=False)
    return {"keras": d / "user.keras", "h5": d / "user.h5", "savedmodel": d / "user_savedmodel", "model": model}


def _build(args, capsys=None) -> int:
    from autlearn_build.cli import main

    return main(["image", *map(str, args)])


def _board_probs(bundle_dir, files_root):
    """What the board answers before any learning: its decoding, its int8 base, its head interpreter."""
    from autlearn.runtime import bundle as bundle_mod
    from autlearn.learning.features import FeatureExtractor
    from autlearn.learning.head import Head, active_mask

    b = bundle_mod.load(bundle_dir)
    x, y = _inputs(files_root, b.input)
    variant = b.variant()
    head = Head(variant, b.class_capacity, b.train_batch, threads=1)
    probs = head.predict(FeatureExtractor(variant, threads=1)(x),
                         active_mask(b.class_capacity, range(len(b.labels))))
    return b, x, y, probs


@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel"])
def test_a_model_bundle_answers_as_the_users_model_before_any_learning(fmt, photos, saved_models, tmp_path):
    out = tmp_path / "bundle"
    extra = ["--preprocess", "mobilenet"] if fmt == "savedmodel" else []  # a SavedModel keeps no layer names
    assert _build(["--model", saved_models[fmt], "--data", photos, "--out", out, "--calibration", 60, *extra]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["input"]["color_mode"] == "RGB" and m["input"]["channels"] == 3
    assert (m["input"]["width"], m["input"]["height"]) == (SIZE, SIZE)
    assert m["input"]["scale"] == pytest.approx(1 / 127.5) and m["input"]["offset"] == -1.0
    assert m["input"]["source_preprocessing"] == "mobilenet"
    v = m["variants"][0]
    assert v["head_weights"] == ["w0", "b0"] and v["feature_size"] == 16
    assert v["head_source"].startswith("the model's own")
    b, x, y, probs = _board_probs(out, photos)
    keras_probs = saved_models["model"].predict(x, verbose=0)
    k = len(CLASSES)
    assert probs[:, k:].max() < 1e-6  # the free class slots take no probability
    agreement = float(np.mean(probs[:, :k].argmax(1) == keras_probs.argmax(1)))
    diff = float(np.abs(probs[:, :k] - keras_probs).mean())
    assert agreement >= MIN_AGREEMENT and diff <= MAX_MEAN_DIFF, (agreement, diff)
    assert float(np.mean(keras_probs.argmax(1) == y)) > 0.6  # the model (and so the board) learnt something


def test_a_last_layer_that_does_not_fit_the_labels_gets_a_head_trained_on_the_data(photos, tmp_path):
    from autlearn_build.image_options import ImageOptions
    from autlearn_build.model_build import build_model_bundle

    model = _mobilenet_shaped(5, activation="linear")  # 5 outputs, the data has 3 classes
    out = tmp_path / "bundle"
    result = build_model_bundle(ImageOptions(data=str(photos), out=out, model="in-memory", head_epochs=60,
                                             resize_policy="centre_crop", calibration=40),
                                progress=lambda line: None, keras_model=model)
    v = result.manifest["variants"][0]
    assert v["head_source"].startswith("trained") and any("5 outputs" in n for n in result.notes)
    assert result.manifest["input"]["resize_policy"] == "centre_crop"
    _, _, y, probs = _board_probs(out, photos)
    assert float(np.mean(probs.argmax(1) == y)) > 0.6  # a head trained on an untrained base's features


def _digamma_model():
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="autlearn_test")
    class Digamma(keras.layers.Layer):
        def call(self, x):
            return tf.math.digamma(x + 2.0)

    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = Digamma(name="odd_activation")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


def test_a_layer_without_a_builtin_operator_is_refused_naming_it_exit_3(photos, tmp_path, capsys):
    path = tmp_path / "odd.keras"
    _digamma_model().save(path)
    assert _build(["--model", path, "--data", photos, "--out", tmp_path / "b", "--calibration", 8]) == 3
    err = capsys.readouterr().err
    assert "odd_activation" in err and "Digamma" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_a_model_that_cannot_be_cut_is_refused_exit_3(photos, tmp_path, capsys):
    import keras

    path = tmp_path / "m.keras"
    _mobilenet_shaped(3).save(path)
    assert _build(["--model", path, "--cut", "no_such_layer", "--data", photos, "--out", tmp_path / "b"]) == 3
    assert "no_such_layer" in capsys.readouterr().err
    inp = keras.Input((SIZE, SIZE, 3))
    keras.Model(inp, keras.layers.Conv2D(3, 3, name="only_conv")(inp)).save(tmp_path / "conv.keras")
    assert _build(["--model", tmp_path / "conv.keras", "--data", photos, "--out", tmp_path / "b"]) == 3
    assert "no Dense layer" in capsys.readouterr().err
    assert _build(["--model", path, "--cut", "mobilenetv2_tiny", "--data", photos, "--out", tmp_path / "b"]) == 3
    assert "not one feature vector" in capsys.readouterr().err


def test_a_missing_or_foreign_model_file_is_bad_input_exit_2(photos, tmp_path, capsys):
    assert _build(["--model", tmp_path / "nope.keras", "--data", photos, "--out", tmp_path / "b"]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert _build(["--model", tmp_path / "junk.h5", "--data", photos, "--out", tmp_path / "b"]) == 2
    assert "junk.h5" in capsys.readouterr().err


def test_rgb_folders_load_with_the_boards_decoding(photos):
    from autlearn_build.datasets import ImageSpec, load_image_folder

    data = load_image_folder(photos, ImageSpec(height=SIZE, width=SIZE, channels=3, color_mode="RGB"))
    assert data.x.shape == (72, SIZE, SIZE, 3) and data.labels == list(CLASSES)
    means = data.x.mean(axis=(1, 2))  # [N, 3] per-channel brightness follows the class
    for c in range(3):
        assert np.all(np.argmax(means[data.y == c], axis=1) == 2 - c)


# ------------------------------------------------------------------------- input resolution as a variant axis

SMALL = 24  # the second resolution of the two-resolution bundle (the model's own is SIZE)


@pytest.fixture(scope="module")
def two_resolutions(photos, saved_models, tmp_path_factory):
    """The user's model built at its own 32 px and at 24 px (`--resolutions 24,32`): two variants."""
    out = tmp_path_factory.mktemp("resolutions") / "bundle"
    assert _build(["--model", saved_models["keras"], "--data", photos, "--out", out, "--calibration", 40,
                   "--resolutions", f"{SMALL},{SIZE}"]) == 0
    return out


def test_each_resolution_is_a_variant_with_its_own_input_and_measurements(two_resolutions):
    from autlearn.runtime import bundle as bundle_mod

    m = json.loads((two_resolutions / "manifest.json").read_text())
    names = [v["name"] for v in m["variants"]]
    assert names == [f"{SIZE}px", f"{SMALL}px"] and m["default_variant"] == f"{SIZE}px"  # largest first
    assert (m["input"]["width"], m["input"]["height"]) == (SIZE, SIZE)  # the bundle's: the default variant's
    assert m["build"]["resolutions"] == [SIZE, SMALL]
    for v, side in zip(m["variants"], (SIZE, SMALL)):
        assert v["input"] == {"width": side, "height": side}
        assert v["latency_ms"] > 0 and v["accuracy_int8"] is not None and v["feature_size"] == 16
        assert v["head_source"].startswith("the model's own")  # the model's last layer, at every size
    assert m["files"][m["variants"][0]["base"]]["sha256"] != m["files"][m["variants"][1]["base"]]["sha256"]
    b = bundle_mod.load(two_resolutions)
    small = b.variant(f"{SMALL}px")
    assert (small.input["width"], small.input["height"]) == (SMALL, SMALL)
    assert {k: small.input[k] for k in b.input if k not in ("width", "height")} == \
        {k: b.input[k] for k in b.input if k not in ("width", "height")}  # the rest is the bundle's
    assert b.variant().input == b.input


def test_each_resolution_decodes_a_photo_at_its_own_size(two_resolutions, photos, tmp_path):
    """The board's feature source decodes for a variant at that variant's size: the same features as decoding
    at that size directly and running its base; the two sizes give different features."""
    from autlearn.intake.imaging import load_input
    from autlearn.learning.featcache import FeatureCache
    from autlearn.learning.features import FeatureExtractor
    from autlearn.learning.featsource import FeatureSource
    from autlearn.runtime import bundle as bundle_mod

    b = bundle_mod.load(two_resolutions)
    data = sorted((photos / "red").glob("*.jpg"))[0].read_bytes()
    cache = FeatureCache(tmp_path / "cache.sqlite", 1 << 20)
    got = {}
    for side in (SIZE, SMALL):
        variant = b.variant(f"{side}px")
        extractor = FeatureExtractor(variant, threads=1)
        features, cached = FeatureSource(b, variant, extractor, cache, 1 << 24).for_bytes(data, "p.jpg")
        x = load_input(data, "p.jpg", {**b.input, "width": side, "height": side}, 1 << 24)
        assert x.shape == (side, side, 3) and not cached  # the cache key holds the base: no sharing
        assert features.shape == (16,)
        np.testing.assert_allclose(features, extractor(x[None])[0], atol=1e-6)
        got[side] = features
    assert not np.allclose(got[SIZE], got[SMALL])
    cache.close()


def test_a_budget_the_large_resolution_misses_selects_the_smaller_one(two_resolutions, tmp_path):
    from autlearn.runtime import bundle as bundle_mod
    from autlearn.runtime import measure as M, variants as V

    b = bundle_mod.load(two_resolutions)
    assert [M.probe_shape(b, b.variant(n)) for n in b.variant_names] == [(SIZE, SIZE, 3), (SMALL, SMALL, 3)]
    measured = {m.name: m for m in M.measure_variants(b, threads=1, repeats=5, target_s=0.02)}
    large, small = measured[f"{SIZE}px"], measured[f"{SMALL}px"]
    assert large.tensor_bytes_batch > small.tensor_bytes_batch  # activations grow with the input's area
    between = (large.memory_bytes + small.memory_bytes) / 2 / (1 << 20)
    choice = V.choose_variant(b, "b1", tmp_path, 1, "cpu", V.Budget(max_memory_mb=between),
                              repeats=5, target_s=0.02)
    assert choice.name == f"{SMALL}px" and choice.fits
    assert V.choose(b, list(measured.values()), V.Budget(max_memory_mb=large.memory_bytes / (1 << 20))).fits


def test_resolutions_of_a_model_whose_weights_fix_its_input_size_are_refused_naming_it(photos, tmp_path, capsys):
    import keras

    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, strides=4, name="conv")(inp))
    keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "flat.keras")
    out = tmp_path / "b"
    assert _build(["--model", tmp_path / "flat.keras", "--data", photos, "--out", out, "--resolutions", "24"]) == 2
    err = capsys.readouterr().err
    assert f"fixed at {SIZE}x{SIZE}" in err and "24x24" in err and not out.exists()
    assert _build(["--data", "mnist5k", "--out", out, "--resolutions", "24"]) == 2
    assert "--model or --backbone" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _build(["--model", tmp_path / "flat.keras", "--data", photos, "--out", out, "--resolutions", "96,96"])
    assert "twice" in capsys.readouterr().err
    assert _build(["--model", tmp_path / "flat.keras", "--data", photos, "--out", out, "--resolutions", "24",
                   "--tail", "last_conv"]) == 2
    assert "--tail last_conv" in capsys.readouterr().err


def test_a_model_of_variable_input_size_is_built_at_the_resolutions_given(photos, tmp_path, capsys):
    import keras

    inp = keras.Input((None, None, 3))
    x = keras.layers.ReLU(6.0)(keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(inp))
    keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))).save(
        tmp_path / "any.keras")
    args = ["--model", tmp_path / "any.keras", "--data", photos, "--calibration", 20]
    assert _build([*args, "--out", tmp_path / "b"]) == 2
    assert "--resolutions gives it sizes" in capsys.readouterr().err
    assert _build([*args, "--out", tmp_path / "b", "--resolutions", "20"]) == 0
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [v["name"] for v in m["variants"]] == ["20px"] and m["variants"][0]["input"] == {"width": 20, "height": 20}
    assert (m["input"]["width"], m["input"]["height"]) == (20, 20)
