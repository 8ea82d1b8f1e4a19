"""The board's image preprocessing (autlearn.imaging): plain resize, and MNIST's framing when the bundle asks
for it (input.fit_box)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from autlearn import bundle as bundle_mod
from autlearn.errors import AutlearnError
from autlearn.imaging import fit_content, load_input, to_input

PLAIN = {"width": 28, "height": 28, "color_mode": "L", "scale": 1 / 255, "offset": 0.0}
FITTED = {**PLAIN, "fit_box": 20}


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a.astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def _ink_box(x: np.ndarray, frac: float = 0.1) -> tuple[int, int]:
    ink = x > frac * x.max()
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def _centre_of_mass(x: np.ndarray) -> tuple[float, float]:
    total = x.sum()
    return float((x.sum(1) * np.arange(x.shape[0])).sum() / total), float((x.sum(0) * np.arange(x.shape[1])).sum() / total)


def test_a_small_off_centre_stroke_is_framed_like_mnist():
    a = np.zeros((60, 80), np.uint8)
    a[5:20, 60:66] = 255  # a tall bar in the top-right corner: 15 x 6 pixels of ink
    x = load_input(_png(a), "bar.png", FITTED, 1 << 20)[:, :, 0]
    assert x.shape == (28, 28)
    h, w = _ink_box(x)
    assert 19 <= h <= 21 and w < h  # the longer side fills the box, the aspect ratio is kept
    cy, cx = _centre_of_mass(x)
    assert abs(cy - 13.5) <= 1.0 and abs(cx - 13.5) <= 1.0
    plain = load_input(_png(a), "bar.png", PLAIN, 1 << 20)[:, :, 0]
    pcy, pcx = _centre_of_mass(plain)
    assert pcy < 8 and pcx > 19  # without fit_box the bar stays where it was


def test_without_fit_box_the_input_is_a_plain_resize():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 30)).astype(np.uint8)
    img = Image.fromarray(a, "L")
    expected = np.asarray(img.resize((28, 28), Image.BILINEAR), np.float32) / 255
    for spec in (PLAIN, {**PLAIN, "fit_box": 0}):
        assert np.allclose(to_input(img, spec)[:, :, 0], expected, atol=1e-6)


def test_an_image_without_ink_is_resized_plainly():
    img = Image.new("L", (10, 10), 0)
    out = fit_content(img, 20, 28, 28)
    assert out.size == (28, 28) and not np.asarray(out).any()


def test_a_bundle_with_an_impossible_fit_box_is_refused_naming_it(tmp_path, tiny_bundle):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    (copy / "manifest.sha256").unlink()  # an older-style bundle: the manifest itself is not covered
    m = json.loads((copy / "manifest.json").read_text())
    m["input"]["fit_box"] = 40
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AutlearnError) as e:
        bundle_mod.load(copy)
    assert e.value.code == "bad_bundle" and "fit_box" in e.value.message and "40" in e.value.message


def test_the_mnist_bundle_asks_for_mnist_framing(tiny_bundle):
    spec = bundle_mod.load(tiny_bundle).input
    assert spec["fit_box"] == 20 and spec["preprocessing_version"] == 2
