"""A simulated private user: the UCI handwritten digits as PNG files (or bytes), one folder per label.

The UCI handwritten digits (scikit-learn's load_digits), other writers and another
scanner than MNIST, written as PNG files in one folder per label and resized to the base's input size.

Used by the demo, the tests and the evaluation; the board never runs this (it needs scikit-learn).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """UCI digits as uint8 images [N, 8, 8] (0 = background, 255 = ink) and labels, shuffled by `seed`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order], d.target[order]


def write_png(image: np.ndarray, path: Path, size: int = 28) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "L").resize((size, size), Image.BILINEAR).save(path)


def png_bytes(image: np.ndarray, size: int = 28) -> bytes:
    """One image as the bytes of the PNG file write_png would write."""
    buf = io.BytesIO()
    Image.fromarray(image, "L").resize((size, size), Image.BILINEAR).save(buf, "PNG")
    return buf.getvalue()


def write_user(out: Path, images: np.ndarray, labels: np.ndarray, size: int = 28, prefix: str = "u") -> list[Path]:
    """Write `<out>/<label>/<prefix>NNNNN.png`; returns the paths in order."""
    paths = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        p = out / str(int(lab)) / f"{prefix}{i:05d}.png"
        write_png(img, p, size)
        paths.append(p)
    return paths
