"""Randomly transformed copies of the public training images (--augment-public K, --augment-ops …).

Each copy of a public image goes through the enabled operations, in this order, each with its own random draw:
`affine` (rotation, per-axis scale, shear, shift), `stroke` (thinner or thicker strokes: PIL MinFilter/MaxFilter,
i.e. erode/dilate), `lowres` (re-sampled through a small square, as --degrade does), `contrast` (fainter ink and a
gamma curve). With the input's MNIST framing (manifest input.fit_box > 0) every copy is framed again the way the
board frames the user's files (autlearn.intake.imaging.fit_content), so a copy looks like what the board will
feed the base. Only the training split gets copies: the held-out images that measure the bundle's public
accuracy stay as they are. Deterministic by the build seed; labels are kept.
"""

from __future__ import annotations

import numpy as np

from .datasets import DEGRADE_SIZES, ImageDataset, low_resolution, low_resolution_copies
from .errors import InputError

AUGMENT_OPS = ("affine", "stroke", "lowres", "contrast")
DEFAULT_OPS = ",".join(AUGMENT_OPS)
# The random ranges of each operation.
ROTATION_DEG = 15.0
SCALE_RANGE = (0.85, 1.15)  # each axis on its own: the aspect ratio changes too
SHEAR = 0.3  # x += SHEAR * y at most (either sign)
SHIFT_PX = 2.0
STROKE_KERNEL = 3  # MinFilter/MaxFilter size
STROKE_P = (0.25, 0.4)  # probability of thinner, of thicker (else unchanged)
LOWRES_P = 0.5
INK_RANGE = (0.75, 1.0)  # brightest ink as a fraction of full scale
GAMMA_RANGE = (0.5, 1.3)  # < 1 brightens the grey edge of a stroke, > 1 darkens it
# The copies' random stream is the seed's, salted so it does not repeat --degrade's choices.
SEED_SALT = 0xA6


def parse_ops(text: str) -> tuple[str, ...]:
    """`affine,stroke,…` → the operations in the canonical order; an unknown or repeated name is an error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError(f"--augment-ops {text!r} names no operation (known: {DEFAULT_OPS})")
    for n in names:
        if n not in AUGMENT_OPS:
            raise InputError(f"--augment-ops: unknown operation {n!r} (known: {DEFAULT_OPS})")
        if names.count(n) > 1:
            raise InputError(f"--augment-ops lists {n!r} twice")
    return tuple(n for n in AUGMENT_OPS if n in names)


def _border_fill(pixels: np.ndarray) -> int | tuple[int, ...]:
    """The background the affine transform fills in: the median of the image's border pixels."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).reshape(-1, *pixels.shape[2:])
    median = np.median(border, axis=0).astype(np.uint8)
    return int(median) if median.ndim == 0 else tuple(int(v) for v in median)


def _affine(img, rng: np.random.Generator, fill):
    """Rotation, per-axis scale, shear and shift about the image's centre (bilinear)."""
    from PIL import Image

    w, h = img.size
    a = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    sx, sy = rng.uniform(*SCALE_RANGE, size=2)
    shear = rng.uniform(-SHEAR, SHEAR)
    tx, ty = rng.uniform(-SHIFT_PX, SHIFT_PX, size=2)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    forward = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([sx, sy])
    inverse = np.linalg.inv(forward)  # PIL maps each output pixel back to an input pixel
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    offset = c - inverse @ (c + np.array([tx, ty]))
    coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    return img.transform((w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=fill)


def _stroke(img, rng: np.random.Generator):
    from PIL import ImageFilter

    r = rng.random()
    if r < STROKE_P[0]:
        return img.filter(ImageFilter.MinFilter(STROKE_KERNEL))
    if r < STROKE_P[0] + STROKE_P[1]:
        return img.filter(ImageFilter.MaxFilter(STROKE_KERNEL))
    return img


def _lowres(img, rng: np.random.Generator):
    if rng.random() >= LOWRES_P:
        return img
    return low_resolution(img, int(rng.integers(DEGRADE_SIZES[0], DEGRADE_SIZES[1] + 1)))


def _contrast(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fainter ink and a gamma curve; 0 stays 0, so a dark background stays dark."""
    ink = rng.uniform(*INK_RANGE)
    gamma = rng.uniform(*GAMMA_RANGE)
    return 255.0 * ink * (pixels / 255.0) ** gamma


def transformed_copy(pixels: np.ndarray, ops: tuple[str, ...], rng: np.random.Generator, fit_box: int) -> np.ndarray:
    """One randomly transformed copy of a uint8 image [H, W] or [H, W, 3] (same shape, uint8)."""
    from PIL import Image

    from autlearn.intake.imaging import fit_content

    h, w = pixels.shape[:2]
    mode = "L" if pixels.ndim == 2 else "RGB"
    img = Image.fromarray(pixels, mode)
    if "affine" in ops:
        img = _affine(img, rng, _border_fill(pixels))
    if "stroke" in ops:
        img = _stroke(img, rng)
    if "lowres" in ops:
        img = _lowres(img, rng)
    out = np.asarray(img, np.float32)
    if "contrast" in ops:
        out = _contrast(out, rng)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if fit_box:
        out = np.asarray(fit_content(Image.fromarray(out, mode), fit_box, w, h), np.uint8)
    return out


def augmented_copies(data: ImageDataset, copies: int, ops: tuple[str, ...], seed: int,
                     originals: int | None = None) -> ImageDataset:
    """`data` plus `copies` transformed copies of each of its first `originals` images (default: all), appended
    in image order (copy 1 of every image, then copy 2, …). Values stay inside the input's range."""
    if copies <= 0:
        return data
    spec = data.spec
    n = len(data) if originals is None else originals
    rng = np.random.default_rng([seed, SEED_SALT])
    grey = spec.channels == 1
    src = np.clip(np.rint((data.x[:n] - spec.offset) / spec.scale), 0, 255).astype(np.uint8)
    out = np.empty((copies * n, *data.x.shape[1:]), np.float32)
    for k in range(copies):
        for i in range(n):
            pixels = transformed_copy(src[i, :, :, 0] if grey else src[i], ops, rng, spec.fit_box)
            out[k * n + i] = (pixels[:, :, None] if grey else pixels) * np.float32(spec.scale) + np.float32(spec.offset)
    x = np.concatenate([data.x, out]).astype(np.float32)
    y = np.concatenate([data.y, np.tile(data.y[:n], copies)])
    return ImageDataset(x, y, data.labels, f"{data.description} + {copies * n} augmented copies ({','.join(ops)})",
                        spec)


def pretraining_set(train: ImageDataset, degrade: float, augment: int, ops: tuple[str, ...],
                    seed: int) -> ImageDataset:
    """The public training split as the base is pretrained on it: the images, their --degrade low-resolution
    copies, then --augment-public transformed copies of the original images. Shared by the builder and the
    tools that re-create its classifier (tools/reference.py) or its public data (tools/eval_image.py)."""
    n = len(train)
    if degrade > 0:
        train = low_resolution_copies(train, degrade, seed)
    return augmented_copies(train, augment, ops, seed, originals=n)


def augmentation_record(degrade: float, augment: int, ops: tuple[str, ...], train_images: int,
                        originals: int) -> dict:
    """The manifest's `build.public_augmentation` (only written when either kind of copy is on)."""
    return {"degrade": degrade, "augment_public": augment, "augment_ops": list(ops) if augment else [],
            "original_train_images": originals, "copies": train_images - originals}
