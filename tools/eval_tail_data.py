"""The new-classes users of `make eval-tail` (tools/eval_tail.py): a public folder of MNIST-5k digits 0-4, users 5-9."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def mnist_pixels():
    """MNIST-5k as uint8 [N, 28, 28] and labels, in the builder's fixed public order."""
    from autlearn_build.datasets import ImageSpec, load_mnist5k

    pub = load_mnist5k(ImageSpec())
    return np.clip(np.round(pub.x[..., 0] * 255.0), 0, 255).astype(np.uint8), pub.y


def write_pngs(images: np.ndarray, paths: list[Path]) -> None:
    from PIL import Image

    for img, p in zip(images, paths):
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(p)


def new_class_data(work: Path, n_users: int, per_class: int, test_per_class: int = 50):
    """The public folder of digits 0-4 (for the base) and users holding digits 5-9 (PNG files)."""
    from eval_image import ImageUsers

    pixels, labels = mnist_pixels()
    public = work / "mnist04"
    low = np.flatnonzero(labels < 5)
    write_pngs(pixels[low], [public / str(labels[i]) / f"m{i:05d}.png" for i in low])
    high = np.flatnonzero(labels >= 5)
    files = [work / "mnist59" / f"m{i:05d}.png" for i in range(len(labels))]
    write_pngs(pixels[high], [files[i] for i in high])
    users = []
    rng = np.random.default_rng(0)
    for u in range(n_users):
        train, test = [], []
        for c in range(5, 10):
            idx = np.flatnonzero(labels == c)
            need = per_class + test_per_class
            part = idx[u * need:(u + 1) * need]
            if len(part) < need:
                raise SystemExit(f"MNIST-5k has too few images of digit {c} for {n_users} users x {need}")
            train.append(part[:per_class])
            test.append(part[per_class:])
        stream = np.concatenate(train)
        users.append({"name": f"new{u:02d}", "train": stream[rng.permutation(len(stream))],
                      "test": np.concatenate(test)})
    return public, ImageUsers(x=np.zeros(0), labels=labels.astype(np.int64), files=files, users=users)


def decode(data, spec: dict) -> None:
    from reference import decode_pngs

    idx = np.unique(np.concatenate([np.concatenate([u["train"], u["test"]]) for u in data.users]))
    x = np.zeros((len(data.labels), 28, 28, 1), np.float32)
    x[idx] = decode_pngs([data.files[i] for i in idx], spec)
    data.x = x
