"""Progress lines for long builder steps: a text bar inside long epochs, one line per epoch."""

from __future__ import annotations

import time
from typing import Callable


def bar(fraction: float, width: int = 24) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:3.0f}%"


def _keras_callback_base():
    import tensorflow as tf

    return tf.keras.callbacks.Callback


class KerasProgress(_keras_callback_base()):
    """Keras callback: `  epoch e/E [####....]  25%  loss … ` at each quarter of an epoch of ≥ 200 steps,
    and one summary line per epoch with the chosen metrics and the epoch's time."""

    def __init__(self, epochs: int, steps_per_epoch: int, progress: Callable[[str], None],
                 metrics: tuple[str, ...] = ("loss",), quarter_min_steps: int = 200):
        super().__init__()
        self.epochs, self.steps = epochs, max(1, steps_per_epoch)
        self.progress, self.metrics = progress, metrics
        self.marks = {int(self.steps * q) for q in (0.25, 0.5, 0.75)} if self.steps >= quarter_min_steps else set()
        self.t0 = time.perf_counter()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 in self.marks:
            loss = (logs or {}).get("loss")
            loss_text = f"  loss {float(loss):.4f}" if loss is not None else ""
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / (batch + 1) * (self.steps - batch - 1)
            self.progress(f"  epoch {self.epoch + 1:>3}/{self.epochs} {bar((batch + 1) / self.steps)}{loss_text}"
                          f"  {elapsed:.0f}s, ~{eta:.0f}s left in this epoch")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        values = "  ".join(f"{name} {float(logs[name]):.4f}" for name in self.metrics if name in logs)
        self.progress(f"  epoch {epoch + 1:>3}/{self.epochs}  {values}  {time.perf_counter() - self.t0:.1f}s")
