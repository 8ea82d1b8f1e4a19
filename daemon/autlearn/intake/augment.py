"""On-device data augmentation (the paper's answer to too little data): images and text.

Images: random crop (resized back to the full size), small rotation and shift, composed into ONE affine
warp with bilinear sampling, in numpy, on the *preprocessed* image — the float32 [H, W, C] array that
`imaging.to_input` makes (a [H, W] array or another dtype works too; the output has the input's shape and
dtype). One resampling instead of three keeps digits sharp, and bilinear weights are a convex combination,
so every output value lies between the input's minimum and maximum. Pixels that come from outside the
image take the background value: the median of the image's border.

Every augmented copy is named by a variant seed. The parameters are derived from the seed with SHA-256 (not
numpy's generators), so the same seed gives bitwise the same output on every board and numpy version.
`variant_name(seed)` is the string that goes into the feature-cache key; it starts with the algorithm
version ("aug1"), so a change to this module changes every key. `image_variants` picks, from the sample's
hash, which seeds a sample gets: at most `n_copies` (the paper's cap: one copy per original).

Text (keyboard scenario): `synonym_replace` swaps words for synonyms from the bundle's synonym table.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import numpy as np

AUG_VERSION = "aug1"
SYN_VERSION = "syn1"
DEFAULT_COPIES = 1  # the paper's cap: at most one augmented copy per original


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random image transforms."""
    min_crop: float = 0.85  # the crop keeps this fraction of each side, at least
    max_rotation_deg: float = 12.0  # rotation uniformly in ±this
    max_shift: float = 0.08  # shift up to this fraction of each side, in whole pixels (±2 on 28)

    def tag(self) -> str:
        return f"{self.min_crop:g},{self.max_rotation_deg:g},{self.max_shift:g}"


DEFAULT_CONFIG = AugmentConfig()


@dataclass(frozen=True)
class AugmentParams:
    crop: float  # kept fraction of each side, in [min_crop, 1]
    crop_x: float  # crop centre, as a fraction of the free room: -1 (left) .. +1 (right)
    crop_y: float
    rotation_deg: float  # counter-clockwise as displayed (row 0 at the top)
    shift_x: float  # fraction of the width (positive: to the right)
    shift_y: float  # fraction of the height (positive: down)


def _uniforms(label: str, n: int) -> list[float]:
    """n reproducible uniforms in [0, 1) from SHA-256 of `label`."""
    out: list[float] = []
    counter = 0
    while len(out) < n:
        digest = hashlib.sha256(f"{label}#{counter}".encode()).digest()
        out.extend(v / 2.0 ** 64 for v in struct.unpack("<4Q", digest))
        counter += 1
    return out[:n]


def augment_params(seed: int, config: AugmentConfig = DEFAULT_CONFIG) -> AugmentParams:
    u = _uniforms(f"{AUG_VERSION}|{config.tag()}|{int(seed)}", 6)
    return AugmentParams(
        crop=config.min_crop + (1.0 - config.min_crop) * u[0],
        crop_x=2 * u[1] - 1, crop_y=2 * u[2] - 1,
        rotation_deg=config.max_rotation_deg * (2 * u[3] - 1),
        shift_x=config.max_shift * (2 * u[4] - 1), shift_y=config.max_shift * (2 * u[5] - 1),
    )


def variant_name(seed: int, config: AugmentConfig = DEFAULT_CONFIG) -> str:
    """The augmentation part of the feature-cache key, e.g. 'aug1:17:c0.929@+0.34,+1.00:r+8.28:t-0.029,-0.045'."""
    p = augment_params(seed, config)
    cfg = "" if config == DEFAULT_CONFIG else f"[{config.tag()}]"
    return (f"{AUG_VERSION}{cfg}:{int(seed)}:c{p.crop:.3f}@{p.crop_x:+.2f},{p.crop_y:+.2f}"
            f":r{p.rotation_deg:+.2f}:t{p.shift_x:+.3f},{p.shift_y:+.3f}")


def _seed_from(label: str) -> int:
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "little") >> 1  # 63-bit, non-negative


def image_variants(n_copies: int, base_seed: int, sample_sha: str,
                   config: AugmentConfig = DEFAULT_CONFIG) -> list[tuple[str, int]]:
    """The augmented copies one sample gets: [(variant_name, seed)], `n_copies` of them (default cap
    DEFAULT_COPIES = 1), deterministic from the sample's hash and `base_seed`."""
    if n_copies < 0:
        raise ValueError("n_copies must be >= 0")
    seeds = [_seed_from(f"{AUG_VERSION}|{int(base_seed)}|{sample_sha}|{i}") for i in range(n_copies)]
    return [(variant_name(s, config), s) for s in seeds]


# ------------------------------------------------------------------------------------------ image warps

def _as_hwc(img: np.ndarray) -> tuple[np.ndarray, bool]:
    a = np.asarray(img)
    if a.ndim == 2:
        return a[:, :, None], True
    if a.ndim != 3:
        raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {a.shape}")
    return a, False


def background(img: np.ndarray) -> np.ndarray:
    """Per-channel median of the border pixels: what fills the area a transform brings in."""
    a, _ = _as_hwc(img)
    border = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]]).astype(np.float64)
    return np.median(border, axis=0)


def warp(img: np.ndarray, matrix: np.ndarray, fill: np.ndarray | float | None = None) -> np.ndarray:
    """Resample `img` with bilinear interpolation: output pixel (x, y) = input at `matrix @ (x, y, 1)`,
    coordinates of pixel centres (column x, row y). Outside the input: `fill` (default: `background`).
    One channel at a time, on contiguous float64 planes gathered by flat index: the same operations in the
    same order as the per-pixel formula (bitwise the same output), about 3x faster at 160x160x3."""
    a, flat = _as_hwc(img)
    h, w, c = a.shape
    if fill is None:
        fill = background(a)
    fill = np.broadcast_to(np.asarray(fill, np.float64), (c,))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    m = np.asarray(matrix, np.float64)
    sx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    sy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    # into the coordinates of the plane padded by one pixel of fill; anything beyond samples the fill border only
    sx += 1.0
    sy += 1.0
    np.minimum(np.maximum(sx, 0.0, out=sx), w + 1.0, out=sx)
    np.minimum(np.maximum(sy, 0.0, out=sy), h + 1.0, out=sy)
    x0 = np.minimum(np.floor(sx).astype(np.intp), w)
    y0 = np.minimum(np.floor(sy).astype(np.intp), h)
    fx, fy = (sx - x0).ravel(), (sy - y0).ravel()
    gx, gy = 1 - fx, 1 - fy
    i00 = (y0 * (w + 2) + x0).ravel()  # flat index of the top-left neighbour in the padded plane
    i01, i10, i11 = i00 + 1, i00 + (w + 2), i00 + (w + 3)
    plane = np.empty((h + 2, w + 2), np.float64)
    flat_plane = plane.reshape(-1)
    top, bottom, t = np.empty(h * w), np.empty(h * w), np.empty(h * w)
    out = np.empty((h, w, c), a.dtype)
    integer = np.issubdtype(a.dtype, np.integer)
    for k in range(c):
        ch = a[:, :, k]
        plane[...] = fill[k]
        plane[1:-1, 1:-1] = ch
        _lerp(flat_plane, i00, i01, gx, fx, top, t)
        top *= gy
        _lerp(flat_plane, i10, i11, gx, fx, bottom, t)
        bottom *= fy
        top += bottom
        lo, hi = np.minimum(ch.min(), fill[k]), np.maximum(ch.max(), fill[k])
        np.minimum(np.maximum(top, lo, out=top), hi, out=top)  # guards rounding only: bilinear is convex
        if integer:
            np.rint(top, out=top)
        out[:, :, k] = top.reshape(h, w)
    return out[:, :, 0] if flat else out


def _centre(h: int, w: int) -> np.ndarray:
    return np.array([(w - 1) / 2.0, (h - 1) / 2.0])


def _matrix(h: int, w: int, crop: float = 1.0, crop_centre: tuple[float, float] | None = None,
            rotation_deg: float = 0.0, shift_px: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Output → input map of: crop (a box of `crop` × the size around `crop_centre`, resized back to the
    full size), then rotation by `rotation_deg` about the centre, then a shift by `shift_px` = (dx, dy)."""
    c = _centre(h, w)
    u = c if crop_centre is None else np.asarray(crop_centre, np.float64)
    t = np.asarray(shift_px, np.float64)
    th = math.radians(rotation_deg)
    # a counter-clockwise rotation as displayed (y down) maps input q to c + R(q - c) with R below;
    # its inverse takes output points back
    r_inv = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    # input = u + crop * (c + r_inv @ (out - t - c) - c) = A @ out + b
    a = crop * r_inv
    b = u + crop * (r_inv @ (-t - c))
    return np.array([[a[0, 0], a[0, 1], b[0]], [a[1, 0], a[1, 1], b[1]]])


def shift(img: np.ndarray, dx: float, dy: float, fill=None) -> np.ndarray:
    """Move the content `dx` pixels right and `dy` pixels down (whole pixels are copied exactly)."""
    a, _ = _as_hwc(img)
    return warp(img, _matrix(a.shape[0], a.shape[1], shift_px=(dx, dy)), fill)


def rotate(img: np.ndarray, degrees: float, fill=None) -> np.ndarray:
    """Rotate the content counter-clockwise (as displayed) by `degrees` about the image centre."""
    a, _ = _as_hwc(img)
    return warp(img, _matrix(a.shape[0], a.shape[1], rotation_deg=degrees), fill)


def crop_resize(img: np.ndarray, keep: float, centre: tuple[float, float] | None = None, fill=None) -> np.ndarray:
    """Crop a box of `keep` × each side around `centre` (x, y in pixels; default the middle) and resize it
    back to the full size."""
    a, _ = _as_hwc(img)
    if not 0 < keep <= 1:
        raise ValueError("keep must be in (0, 1]")
    return warp(img, _matrix(a.shape[0], a.shape[1], crop=keep, crop_centre=centre), fill)


def augment_image(img: np.ndarray, variant_seed: int, config: AugmentConfig = DEFAULT_CONFIG) -> np.ndarray:
    """One augmented copy of a preprocessed image: random crop + rotation + shift, from `variant_seed`.
    Same seed, same output, bitwise; shape and dtype are kept."""
    a, _ = _as_hwc(img)
    h, w = a.shape[:2]
    p = augment_params(variant_seed, config)
    c = _centre(h, w)
    room = (1.0 - p.crop) / 2.0  # the crop box stays inside the image
    crop_centre = (c[0] + p.crop_x * room * (w - 1), c[1] + p.crop_y * room * (h - 1))
    shift_px = (float(round(p.shift_x * w)), float(round(p.shift_y * h)))
    m = _matrix(h, w, crop=p.crop, crop_centre=crop_centre, rotation_deg=p.rotation_deg, shift_px=shift_px)
    return warp(img, m)


# ------------------------------------------------------------------------------------------------- text

def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def synonym_replace(tokens: list[str], synonyms: dict[str, list[str]], rate: float, seed: int) -> list[str]:
    """Replace each word that has a synonym (exact entry, else its lower-case entry) with probability
    `rate`, by a synonym chosen from the seed. Words without synonyms are never touched; rate 0 returns the
    tokens unchanged. A multi-word synonym ("a lot") becomes several tokens. Decisions are per position, so
    the same (tokens, seed) always gives the same result."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError("rate must be in [0, 1]")
    out: list[str] = []
    for i, tok in enumerate(tokens):
        key = tok if tok in synonyms else tok.lower()
        choices = [s for s in synonyms.get(key, ()) if s and s != key and s != tok]
        if rate > 0.0 and choices:
            u_take, u_pick = _uniforms(f"{SYN_VERSION}|{int(seed)}|{i}|{tok}", 2)
            if u_take < rate:
                word = choices[min(int(u_pick * len(choices)), len(choices) - 1)]
                if key != tok:
                    word = _match_case(word, tok)
                out.extend(word.split())
                continue
        out.append(tok)
    return out


def text_variants(n_copies: int, base_seed: int, sample_sha: str, rate: float = 0.15) -> list[tuple[str, int]]:
    """Like `image_variants`, for synonym replacement: [(variant_name, seed)]."""
    if n_copies < 0:
        raise ValueError("n_copies must be >= 0")
    seeds = [_seed_from(f"{SYN_VERSION}|{int(base_seed)}|{sample_sha}|{i}") for i in range(n_copies)]
    return [(f"{SYN_VERSION}:{rate:g}:{s}", s) for s in seeds]


def _lerp(flat: np.ndarray, ia: np.ndarray, ib: np.ndarray, wa: np.ndarray, wb: np.ndarray, out: np.ndarray,
          tmp: np.ndarray) -> None:
    """out = flat[ia] * wa + flat[ib] * wb, in place (one row of the bilinear blend; `tmp` is scratch)."""
    flat.take(ia, out=out)
    out *= wa
    flat.take(ib, out=tmp)
    tmp *= wb
    out += tmp
