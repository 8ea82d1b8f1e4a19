"""The builder's --augment-public copies: validated options, deterministic per seed, labels kept, images changed but
inside the input's value range, only the training split enlarged, and recorded in the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autlearn_build.cli import main
from autlearn_build.datasets import ImageDataset, ImageSpec, load_mnist5k, load_split
from autlearn_build.public_augment import (AUGMENT_OPS, augmented_copies, parse_ops, pretraining_set,
                                           transformed_copy)


@pytest.fixture(scope="module")
def mnist40() -> ImageDataset:
    return load_mnist5k(ImageSpec().with_fit_box(20)).take(np.arange(40))


@pytest.mark.parametrize("args, error", [
    (["--augment-public", "21"], "autlearn-build: error: --augment-public must be between 0 and 20"),
    (["--augment-ops", "affine,blur"], "autlearn-build: error: --augment-ops: unknown operation 'blur' (known: "
                                       "affine,stroke,lowres,contrast)"),
    (["--augment-ops", "stroke,stroke"], "autlearn-build: error: --augment-ops lists 'stroke' twice"),
    (["--augment-ops", ","], "autlearn-build: error: --augment-ops ',' names no operation"),
])
def test_a_bad_augment_option_is_one_line_exit_2_naming_it(tmp_path, capsys, args, error):
    out = tmp_path / "out"
    assert main(["image", "--data", "mnist5k", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(error), err
    assert not out.exists()


def test_a_negative_count_is_refused_by_the_parser_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["image", "--data", "mnist5k", "--out", str(tmp_path / "o"), "--augment-public", "-1"])
    assert exc.value.code == 2
    assert "argument --augment-public: must not be negative: '-1'" in capsys.readouterr().err


def test_ops_come_back_in_the_canonical_order():
    assert parse_ops("contrast, affine") == ("affine", "contrast")
    assert parse_ops(",".join(reversed(AUGMENT_OPS))) == AUGMENT_OPS


def test_copies_are_deterministic_per_seed_keep_labels_and_differ_from_the_originals(mnist40):
    out = augmented_copies(mnist40, 2, AUGMENT_OPS, seed=3)
    n = len(mnist40)
    assert len(out) == 3 * n and out.x.dtype == np.float32 and out.x.shape[1:] == mnist40.x.shape[1:]
    assert np.array_equal(out.x[:n], mnist40.x) and np.array_equal(out.y[:n], mnist40.y)
    assert np.array_equal(out.y[n:2 * n], mnist40.y) and np.array_equal(out.y[2 * n:], mnist40.y)
    again = augmented_copies(mnist40, 2, AUGMENT_OPS, seed=3)
    assert np.array_equal(again.x, out.x) and np.array_equal(again.y, out.y)
    other = augmented_copies(mnist40, 2, AUGMENT_OPS, seed=4)
    assert not np.array_equal(other.x[n:], out.x[n:])
    for k in (1, 2):  # every copy differs from its own original, and the two copies of an image differ
        diff = np.abs(out.x[k * n:(k + 1) * n] - mnist40.x).reshape(n, -1).max(axis=1)
        assert diff.min() > 0.1, diff
    assert np.abs(out.x[n:2 * n] - out.x[2 * n:]).reshape(n, -1).max(axis=1).min() > 0.1
    assert out.x.min() >= 0.0 and out.x.max() <= 1.0
    assert "80 augmented copies (affine,stroke,lowres,contrast)" in out.description
    assert augmented_copies(mnist40, 0, AUGMENT_OPS, seed=3) is mnist40


def test_copies_stay_in_the_input_range_of_another_scale_and_offset(mnist40):
    spec = ImageSpec(scale=2 / 255, offset=-1.0)  # [-1, 1], plain resize (no framing)
    x = mnist40.x * 2 - 1
    data = ImageDataset(x.astype(np.float32), mnist40.y, mnist40.labels, "mnist40 in [-1, 1]", spec)
    out = augmented_copies(data, 1, AUGMENT_OPS, seed=0)
    copies = out.x[len(data):]
    assert copies.min() >= -1.0 - 1e-6 and copies.max() <= 1.0 + 1e-6
    assert np.isclose(copies.min(), -1.0)  # the dark background is still the darkest value
    assert np.abs(copies - x).max() > 0.5


def test_each_operation_alone_changes_an_image_and_framing_keeps_the_ink_in_the_box(mnist40):
    pixels = np.rint(mnist40.x[0, :, :, 0] * 255).astype(np.uint8)
    changed = {op: 0 for op in AUGMENT_OPS}
    for seed in range(8):
        for op in AUGMENT_OPS:
            copy = transformed_copy(pixels, (op,), np.random.default_rng(seed), fit_box=0)
            assert copy.shape == pixels.shape and copy.dtype == np.uint8
            changed[op] += int(not np.array_equal(copy, pixels))
    assert all(v >= 2 for v in changed.values()), changed  # stroke and lowres leave some copies as they are
    framed = transformed_copy(pixels, AUGMENT_OPS, np.random.default_rng(0), fit_box=20)
    rows, cols = np.nonzero(framed > 0.1 * framed.max())
    assert rows.max() - rows.min() < 21 and cols.max() - cols.min() < 21


def test_rgb_copies_keep_their_shape():
    rng = np.random.default_rng(0)
    x = np.zeros((4, 16, 16, 3), np.float32)
    x[:, 4:12, 6:10] = rng.random((4, 1, 1, 3))  # a coloured bar on black
    data = ImageDataset(x, np.arange(4) % 2, ["a", "b"], "bars", ImageSpec(16, 16, 3, "RGB"))
    out = augmented_copies(data, 1, AUGMENT_OPS, seed=0)
    assert out.x.shape == (8, 16, 16, 3) and 0 <= out.x.min() and out.x.max() <= 1.0
    assert not np.array_equal(out.x[4:], x)


def test_pretraining_set_copies_only_the_originals(mnist40):
    out = pretraining_set(mnist40, 1.0, 1, AUGMENT_OPS, seed=0)
    n = len(mnist40)
    assert len(out) == 3 * n  # originals, their low-resolution copies, one augmented copy of each original
    assert np.array_equal(out.y[2 * n:], mnist40.y)
    assert np.array_equal(pretraining_set(mnist40, 0.0, 0, AUGMENT_OPS, seed=0).x, mnist40.x)


@pytest.mark.slow
def test_a_build_augments_only_the_training_split_and_records_it(tmp_path):
    out = tmp_path / "bundle"
    assert main(["image", "--data", "mnist5k", "--limit", "120", "--epochs", "1", "--head-epochs", "0",
                 "--augment-public", "2", "--augment-ops", "affine,stroke", "--degrade", "0.5", "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    _, train, val = load_split("mnist5k", ImageSpec().with_fit_box(20), 16, 120, 0.1, lambda s: None)
    n = len(train)
    assert m["build"]["val_images"] == len(val)  # the held-out split that measures accuracy_int8 is untouched
    assert m["build"]["train_images"] == n + round(0.5 * n) + 2 * n
    assert m["build"]["public_augmentation"] == {"degrade": 0.5, "augment_public": 2,
                                                 "augment_ops": ["affine", "stroke"], "original_train_images": n,
                                                 "copies": round(0.5 * n) + 2 * n}


@pytest.mark.slow  # 13,500 MNIST images loaded and 4,500 copied
def test_the_eval_tools_build_with_the_option_and_centralised_gets_the_bundles_public_data():
    from eval_image import public_train
    from reference import BuildSpec

    assert BuildSpec().tag() == "e8-s0-flops1.4M-d1"  # bundles built before the option keep their names
    spec = BuildSpec(budget=None, augment_public=2, augment_ops="stroke,affine")
    assert spec.tag() == "e8-s0-none-d1-a2-as"
    assert spec.build_args() == ["--epochs", "8", "--seed", "0", "--degrade", "1", "--augment-public", "2",
                                 "--augment-ops", "stroke,affine"]
    manifest = {"input": {"fit_box": 20}, "build": {"seed": 5, "public_augmentation": {
        "degrade": 0.0, "augment_public": 1, "augment_ops": ["affine"], "original_train_images": 4500,
        "copies": 4500}}}
    x, y = public_train(manifest)
    _, train, _ = load_split("mnist5k", ImageSpec().with_fit_box(20), 16, None, 0.1, lambda s: None)
    expected = augmented_copies(train, 1, ("affine",), seed=5)
    assert np.array_equal(x, expected.x) and np.array_equal(y, expected.y)
    x_plain, _ = public_train({"input": {"fit_box": 20}, "build": {"seed": 0}})
    assert np.array_equal(x_plain, train.x)
