"""The trainable head: its LiteRT signatures `train`, `infer`, `get_weights`, `set_weights`.

Head weights live inside the interpreter; versions are persisted as .npz files written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import AutlearnError
from ..runtime.bundle import Regularisation, Variant
from ..durable import write_atomic
from ..runtime.interpreter import make_cpu_interpreter

Weights = dict[str, np.ndarray]


class Head:
    """One head interpreter (a fresh optimiser state). Not thread-safe: one per thread.

    A tail whose `train` takes the pull toward the cloud weights as inputs (`l2`, `lr_scale`) steps with
    `setting`: one of its variant's `regularisation` (default the first, the builder's anchored one)."""

    def __init__(self, variant: Variant, capacity: int, train_batch: int, threads: int,
                 setting: Regularisation | None = None):
        self.variant = variant
        self.capacity = capacity
        self.batch = train_batch
        self.interp = make_cpu_interpreter(variant.head_path, threads)
        self._train = self.interp.get_signature_runner("train")
        self._infer = self.interp.get_signature_runner("infer")
        self._get = self.interp.get_signature_runner("get_weights")
        self._set = self.interp.get_signature_runner("set_weights")
        inputs = set(self.interp.get_signature_list()["train"]["inputs"])
        self.takes_pull = {"l2", "lr_scale"} <= inputs
        settings = variant.regularisation
        if self.takes_pull and not settings:
            raise AutlearnError("bad_bundle", f"variant {variant.name!r}: its train takes l2 and lr_scale, but the "
                                              "manifest states no tail.regularisation to pass")
        self.setting = setting or (settings[0] if self.takes_pull else None)
        if self.setting is not None and not self.takes_pull:
            raise AutlearnError("bad_bundle", f"variant {variant.name!r}: its train takes no l2/lr_scale inputs, "
                                              f"so it cannot train with setting {self.setting.name!r}")
        self._pull = {} if not self.takes_pull else {"l2": np.array(self.setting.l2, np.float32),
                                                     "lr_scale": np.array(self.setting.lr_scale, np.float32)}

    def get_weights(self) -> Weights:
        out = self._get()
        return {k: np.array(out[k], copy=True) for k in self.variant.head_weights}

    def set_weights(self, weights: Weights) -> None:
        self._set(**{k: np.asarray(weights[k], np.float32) for k in self.variant.head_weights})

    def step(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray, active: np.ndarray, lr: float) -> float:
        out = self._train(x=x.astype(np.float32), y=y.astype(np.int32), mask=mask.astype(np.float32),
                          active=active, lr=np.array(lr, np.float32), **self._pull)
        return float(out["loss"])

    def epochs_for(self, n: int, epochs: int, min_steps: int) -> int:
        return epochs_for(n, self.batch, epochs, min_steps)

    def fit(self, x: np.ndarray, y: np.ndarray, active: np.ndarray, epochs: int, lr: float,
            seed: int, checkpoint=lambda: False, on_epoch=lambda epoch, epochs, loss: None) -> list[float]:
        """Mini-batch training over cached features; the last batch is padded and masked. `checkpoint` is
        called after each epoch (it may block while training must pause); True stops the training."""
        rng = np.random.default_rng(seed)
        n, b = len(x), self.batch
        losses: list[float] = []
        if n == 0:
            return losses
        for _ in range(epochs):
            order = rng.permutation(n)
            total, count = 0.0, 0
            for i in range(0, n, b):
                idx = order[i:i + b]
                real = len(idx)
                xb = np.zeros((b, x.shape[1]), np.float32)
                yb = np.zeros(b, np.int32)
                mb = np.zeros(b, np.float32)
                xb[:real], yb[:real], mb[:real] = x[idx], y[idx], 1.0
                total += self.step(xb, yb, mb, active, lr) * real
                count += real
            losses.append(total / count)
            on_epoch(len(losses), epochs, losses[-1])
            if checkpoint():
                break
        return losses

    def predict(self, x: np.ndarray, active: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, self.capacity), np.float32)
        return np.array(self._infer(x=x.astype(np.float32), active=active)["probs"], copy=True)


def epochs_for(n: int, batch: int, epochs: int, min_steps: int) -> int:
    """`epochs` passes over `n` samples, or more when those would make fewer than `min_steps` optimiser steps
    (`batch` samples a step): a user with 80 images gets 3 batches an epoch, and 30 epochs of them leave the head
    underfit."""
    batches = -(-n // batch)
    return max(epochs, -(-min_steps // batches)) if batches else epochs


def active_mask(capacity: int, slots: Iterable[int], never: Iterable[int] = ()) -> np.ndarray:
    """The `active` input of `train` and `infer`: 1 for the output slots in use (`slots`), 0 for the spare ones
    and for `never` (the keyboard's <pad> and <bos>: never suggested, never a target)."""
    m = np.zeros(capacity, np.float32)
    m[list(slots)] = 1.0
    m[list(never)] = 0.0
    return m


def save_weights(weights: Weights, path: Path) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    write_atomic(path, lambda f: np.savez(f, **weights))


def load_weights(path: Path) -> Weights:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
