"""Pruned hidden widths of the keyboard's LSTM: rank the units, copy the kept weights, fine-tune briefly.

The LSTM's H is also the feature size the board's head and context memory consume, so every width is its own
bundle variant with its own softmax head (the kept rows); vocabulary, tokenizer and synonym table are shared.

Removing unit j removes column j of each of the four gate blocks (i, f, c, o: Keras' order) of the kernel [E, 4H],
of the recurrent kernel [H, 4H] and of the bias [4H], row j of the recurrent kernel (what unit j feeds back into
every gate) and row j of the softmax weights [H, C]. The embedding is unchanged.

Ranking (`unit_importance`): a unit matters by what it says to the softmax and by how strongly it is driven,
    importance_j = ‖softmax row j‖₂ × ‖gate columns j of [kernel; recurrent kernel]‖₂ (all four gates),
and the `width` most important units are kept (ties: the lower index). One shot per width, from the full
pretrained model, then a short fine-tune on the public training text (`finetune`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

RANKING = ("importance_j = L2 norm of softmax row j x L2 norm of unit j's columns in the four gate blocks of "
           "[kernel; recurrent kernel]; the most important units are kept")
FINETUNE_LR_SCALE = 0.5  # fine-tuning starts at this share of --learning-rate (cosine decay, like pretraining)


def gate_columns(hidden: int, keep: np.ndarray) -> np.ndarray:
    """Column indices of units `keep` in each of the four gate blocks of an LSTM of `hidden` units, gate by gate."""
    keep = np.asarray(keep, np.int64)
    return np.concatenate([g * hidden + keep for g in range(4)])


def lstm_weights(classifier) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kernel, recurrent, bias = (np.asarray(a, np.float32) for a in classifier.get_layer("lstm").get_weights())
    return kernel, recurrent, bias


def unit_importance(classifier) -> np.ndarray:
    """[H] importance of every hidden unit (the module docstring's ranking)."""
    kernel, recurrent, _ = lstm_weights(classifier)
    hidden = recurrent.shape[0]
    softmax = np.asarray(classifier.get_layer("softmax").get_weights()[0], np.float32)  # [H, C]
    stacked = np.concatenate([kernel, recurrent])  # [E + H, 4H]
    per_column = np.sum(stacked * stacked, axis=0).reshape(4, hidden)  # [gate, unit]
    return np.linalg.norm(softmax, axis=1) * np.sqrt(per_column.sum(axis=0))


def kept_units(classifier, width: int) -> np.ndarray:
    """The `width` most important units, in their original order."""
    score = unit_importance(classifier)
    if not 1 <= width <= len(score):
        raise ValueError(f"cannot keep {width} of {len(score)} LSTM units")
    order = np.lexsort((np.arange(len(score)), -score))  # most important first, ties by index
    return np.sort(order[:width])


def pruned_weights(classifier, keep: np.ndarray) -> dict[str, list[np.ndarray]]:
    """The weights of the smaller classifier (per layer name) that keeps only units `keep`."""
    kernel, recurrent, bias = lstm_weights(classifier)
    cols = gate_columns(recurrent.shape[0], keep)
    w, b = classifier.get_layer("softmax").get_weights()
    return {"embedding": [np.asarray(a) for a in classifier.get_layer("embedding").get_weights()],
            "lstm": [kernel[:, cols], recurrent[keep][:, cols], bias[cols]],
            "softmax": [np.asarray(w)[keep], np.asarray(b)]}


def prune_classifier(classifier, keep: np.ndarray, make_classifier: Callable[[int], object]):
    """A new classifier of len(keep) units (built by `make_classifier(hidden)`) holding the kept weights."""
    small = make_classifier(len(keep))
    for name, weights in pruned_weights(classifier, keep).items():
        small.get_layer(name).set_weights(weights)
    return small


def finetune_rows(n: int, epochs: float, seed: int) -> np.ndarray:
    """Training-sequence indices for `epochs` (fractional) passes over n sequences: whole shuffled passes, then a
    shuffled part of one more."""
    total = int(round(epochs * n))
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(n) for _ in range(-(-total // n))] if n else []
    return np.concatenate(rows)[:total] if rows else np.zeros(0, np.int64)


def finetune(model, x_train, y_train, w_train, x_val, y_val, w_val, *, epochs: float, batch_size: int,
             learning_rate: float, seed: int, progress: Callable[[str], None]) -> dict:
    """Retrain a pruned classifier on `epochs` (fractional) passes of the public training text; the record of it."""
    from .text_model import pretrain_text

    rows = finetune_rows(len(x_train), epochs, seed)
    if epochs <= 0 or len(rows) == 0:
        return {"epochs": 0.0, "sequences": 0, "seconds": 0.0}
    result = pretrain_text(model, x_train[rows], y_train[rows], w_train[rows], x_val, y_val, w_val, epochs=1,
                           batch_size=batch_size, learning_rate=learning_rate * FINETUNE_LR_SCALE,
                           progress=progress)
    return {"epochs": float(epochs), "sequences": int(len(rows)), "seconds": round(result.seconds, 2),
            "train_loss": _rounded(result.train_loss), "val_loss": _rounded(result.val_loss)}


def _rounded(value: float):
    return None if value != value else round(float(value), 4)


def variant_name(width: int) -> str:
    return f"h{width}"
