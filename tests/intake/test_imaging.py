"""The board's image preprocessing (autlearn.intake.imaging): plain resize, MNIST's framing when the bundle asks for it
(input.fit_box), camera photos (EXIF orientation, JPEG draft decoding, RGB, centre crop and letterbox) and the
odd files cameras and people produce (truncated, CMYK, 16-bit, 1 pixel, animated)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from autlearn.runtime import bundle as bundle_mod
from autlearn.errors import AutlearnError
from autlearn.intake.imaging import decode, draft_size, fit_content, load_input, to_input

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


# ------------------------------------------------------------------------------------------- camera photos

RGB160 = {"width": 160, "height": 160, "channels": 3, "color_mode": "RGB", "scale": 1 / 127.5, "offset": -1.0,
          "resize_policy": "centre_crop"}


def _photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth colour 'photo' (gradients and blobs: what JPEG keeps well) with a bright marker top-left."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        fx, fy = rng.uniform(1, 4, 2)
        a[:, :, c] = 127 + 100 * np.sin(xx / w * fx * np.pi + c) * np.cos(yy / h * fy * np.pi)
    a[: h // 5, : w // 5] = (250, 240, 10)
    return np.clip(a, 0, 255).astype(np.uint8)


def _jpeg(a: np.ndarray, orientation=None, mode: str = "RGB", quality: int = 92) -> bytes:
    img = Image.fromarray(a, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(a, "RGB")
    buf = io.BytesIO()
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    img.save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def test_a_photo_sized_jpeg_with_an_exif_rotation_gives_the_features_of_the_rotated_pixels(tiny_bundle):
    from autlearn.learning.features import FeatureExtractor

    stored = _photo(2400, 1800)  # as the sensor stored it, landscape; EXIF 6: turn 90 degrees clockwise to view
    data = _jpeg(stored, orientation=6)
    # The reference: the same file decoded at full size, turned by hand (numpy), then preprocessed.
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    viewed = Image.fromarray(np.ascontiguousarray(np.rot90(full, k=-1)))
    assert viewed.size == (1800, 2400)
    spec_grey = {**bundle_mod.load(tiny_bundle).input, "fit_box": 0}
    for spec in (RGB160, {**RGB160, "resize_policy": "letterbox"}, {**RGB160, "resize_policy": "resize"}, spec_grey):
        x = load_input(data, "photo.jpg", spec, 50_000_000)
        ref = to_input(viewed, spec)
        assert x.shape == ref.shape
        tol = 8 * float(spec["scale"])  # draft (DCT-scaled) decoding vs full decoding + resize: a few grey levels
        assert np.mean(np.abs(x - ref)) < tol / 4 and np.percentile(np.abs(x - ref), 99) < 3 * tol
        unturned = to_input(Image.fromarray(full), spec)
        assert np.mean(np.abs(x - ref)) < 0.2 * np.mean(np.abs(unturned - ref))  # the rotation was applied
    marker = load_input(data, "photo.jpg", {**RGB160, "resize_policy": "resize"}, 50_000_000)
    assert marker[5, -5, 0] > 0.8 and marker[5, -5, 2] < -0.7  # the top-left marker is now top-right (yellow)
    ext = FeatureExtractor(bundle_mod.load(tiny_bundle).variant(), threads=1)
    f = ext(np.stack([load_input(data, "photo.jpg", spec_grey, 50_000_000)]))
    f_ref = ext(np.stack([to_input(viewed, spec_grey)]))
    f_unturned = ext(np.stack([to_input(Image.fromarray(full), spec_grey)]))
    assert np.abs(f - f_ref).mean() < 0.25 * np.abs(f_unturned - f_ref).mean()


def test_a_large_jpeg_is_decoded_in_draft_mode_not_at_full_size():
    data = _jpeg(_photo(2400, 1800))
    img = decode(data, "big.jpg", 50_000_000, draft_size(RGB160))
    assert img.size == (300, 225)  # 1/8 scale: still at least 160 px on both sides
    assert decode(data, "big.jpg", 50_000_000).size == (2400, 1800)
    assert draft_size({**PLAIN, "fit_box": 20}) is None  # MNIST framing crops to the ink at full resolution


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_a_bad_exif_orientation_leaves_the_pixels_as_stored(orientation):
    a = _photo(64, 48)
    x = load_input(_jpeg(a, orientation=orientation), "odd.jpg", RGB160, 1 << 24)
    ref = load_input(_jpeg(a), "plain.jpg", RGB160, 1 << 24)
    assert np.allclose(x, ref)


def test_centre_crop_and_letterbox_keep_the_aspect_ratio():
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, 100:200] = 255  # a white square in the middle of a wide black image
    img = Image.fromarray(a)
    spec = {**RGB160, "width": 50, "height": 50, "scale": 1 / 255, "offset": 0.0}
    crop = to_input(img, {**spec, "resize_policy": "centre_crop"})
    assert crop[:, 1:-1].min() > 0.95  # only the white centre is left (the outer columns blend in its edge)
    box = to_input(img, {**spec, "resize_policy": "letterbox"})[:, :, 0]
    assert box[:15].max() == 0 and box[-15:].max() == 0  # black bars above and below
    assert box[25, 25] > 0.95 and box[25, 2] < 0.05  # the square in the middle, black either side of it
    stretched = to_input(img, {**spec, "resize_policy": "resize"})[:, :, 0]
    assert stretched[25, 25] > 0.95 and stretched[25, 5] < 0.05 and stretched[2, 25] > 0.95


def test_cmyk_jpeg_16bit_png_one_pixel_and_animated_gif_decode_as_a_person_sees_them():
    spec = {**RGB160, "width": 8, "height": 8, "scale": 1.0, "offset": 0.0, "resize_policy": "resize"}
    red = np.zeros((40, 40, 3), np.uint8)
    red[:, :, 0] = 220
    cmyk = load_input(_jpeg(red, mode="CMYK"), "cmyk.jpg", spec, 1 << 20)
    assert cmyk[:, :, 0].mean() > 180 and cmyk[:, :, 1:].mean() < 50
    buf = io.BytesIO()
    Image.fromarray(np.full((10, 10), 32896, np.uint16)).save(buf, "PNG")  # 16-bit grey at half scale
    grey16 = load_input(buf.getvalue(), "deep.png", {**spec, "color_mode": "L", "channels": 1}, 1 << 20)
    assert np.allclose(grey16, 128, atol=1)  # not clipped to white
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (10, 200, 30)).save(buf, "PNG")
    for policy in ("resize", "centre_crop", "letterbox"):
        one = load_input(buf.getvalue(), "dot.png", {**spec, "resize_policy": policy}, 1 << 20)
        assert one.shape == (8, 8, 3) and np.allclose(one[4, 4], (10, 200, 30), atol=1)
    frames = [Image.new("RGB", (20, 20), c) for c in ((0, 0, 255), (255, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gif = load_input(buf.getvalue(), "anim.gif", spec, 1 << 20)
    assert gif[:, :, 2].mean() > 200 and gif[:, :, 0].mean() < 30  # the first frame


def test_a_truncated_jpeg_is_refused_with_its_reason():
    data = _jpeg(_photo(200, 150))
    with pytest.raises(AutlearnError) as e:
        load_input(data[: len(data) // 2], "cut.jpg", RGB160, 1 << 24)
    assert e.value.code == "bad_input" and "cut.jpg" in e.value.message and "truncated" in e.value.message


def test_an_over_large_photo_is_refused_before_decoding():
    with pytest.raises(AutlearnError) as e:
        load_input(_jpeg(_photo(400, 300)), "huge.jpg", RGB160, 100_000)
    assert "400x300" in e.value.message and "100000" in e.value.message


def test_odd_camera_files_never_stop_ingestion(tmp_path, tiny_bundle):
    from autlearn.intake.ingest import Ingestor
    from autlearn.learning.store import Store

    b = bundle_mod.load(tiny_bundle)
    store = Store(tmp_path / "state.sqlite")
    try:
        ing = Ingestor(store, tmp_path / "quarantine", "b", b.labels, b.class_capacity, 0.2, 8 << 20, 50_000_000,
                       b.input)
        d = tmp_path / "inbox" / "cat"
        d.mkdir(parents=True)
        good = _jpeg(_photo(640, 480), orientation=6)
        (d / "a-truncated.jpg").write_bytes(good[: len(good) // 3])
        (d / "b-cmyk.jpg").write_bytes(_jpeg(_photo(64, 48), mode="CMYK"))
        buf = io.BytesIO()
        Image.fromarray(np.full((9, 9), 40000, np.uint16)).save(buf, "PNG")
        (d / "c-16bit.png").write_bytes(buf.getvalue())
        buf = io.BytesIO()
        Image.new("RGB", (1, 1), (1, 2, 3)).save(buf, "PNG")
        (d / "d-dot.png").write_bytes(buf.getvalue())
        (d / "e-bad-orientation.jpg").write_bytes(_jpeg(_photo(64, 48), orientation=42))
        frames = [Image.new("RGB", (20, 20), c) for c in ((0, 0, 255), (255, 0, 0))]
        buf = io.BytesIO()
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
        (d / "f-anim.gif").write_bytes(buf.getvalue())
        (d / "g-photo.jpg").write_bytes(good)
        rep = ing.scan([str(tmp_path / "inbox")])
        assert (rep.added, rep.quarantined) == (6, 1)
        (problem,) = store.problems()
        assert "a-truncated.jpg" in problem["path"] and "truncated" in problem["reason"]
        assert (d / "a-truncated.jpg").exists()  # the user's file is never deleted
    finally:
        store.close()


@pytest.mark.parametrize("change, named", [
    ({"resize_policy": "squash"}, "resize_policy"),
    ({"color_mode": "CMYK"}, "color_mode"),
    ({"color_mode": "RGB"}, "channels"),  # the tiny bundle declares 1 channel
    ({"scale": "1/255"}, "scale"),
    ({"resize_policy": "letterbox"}, "fit_box"),  # MNIST framing with another policy
])
def test_a_bundle_with_an_unknown_input_policy_or_colour_mode_is_refused(tmp_path, tiny_bundle, change, named):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    (copy / "manifest.sha256").unlink()
    m = json.loads((copy / "manifest.json").read_text())
    m["input"].update(change)
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AutlearnError) as e:
        bundle_mod.load(copy)
    assert e.value.code == "bad_bundle" and named in e.value.message
