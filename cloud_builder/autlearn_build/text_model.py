"""The keyboard model pretrained in the cloud: a word-level LSTM language model.

Base (frozen on the board, int8): token ids int32[N, T] → Embedding(E) → LSTM(H, unroll=True,
return_sequences=True) → features float[N, T, H]. The feature at position t is the LSTM output after tokens
0..t, so it only depends on them (a causal model): right-padding with <pad> does not change earlier positions.
`unroll=True` is what converts builtin-only for any batch, int8 included (see docs/architecture.md).

Classifier = base → Dense(class_capacity) per position, spare slots masked: exactly the trainable head
(`SoftmaxHead`), whose weights it initialises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .image_model import MASK_NEGATIVE


def build_text_base(vocab_size: int, seq_len: int, embed: int, hidden: int):
    import tensorflow as tf

    layers = tf.keras.layers
    tokens = tf.keras.Input(shape=(seq_len,), dtype="int32", name="tokens")
    x = layers.Embedding(vocab_size, embed, name="embedding")(tokens)
    x = layers.LSTM(hidden, return_sequences=True, unroll=True, name="lstm")(x)
    return tf.keras.Model(tokens, x, name="text_base")


def build_text_classifier(base, class_capacity: int, n_active: int):
    """base → Dense(class_capacity) logits at every position; slots ≥ n_active (the spare ones) masked."""
    import tensorflow as tf

    active = np.zeros(class_capacity, np.float32)
    active[:n_active] = 1.0
    mask_bias = tf.constant((active - 1.0) * MASK_NEGATIVE, dtype=tf.float32)
    logits = tf.keras.layers.Dense(class_capacity, name="softmax")(base.output)
    masked = tf.keras.layers.Lambda(lambda t: t + mask_bias, name="mask_inactive")(logits)
    return tf.keras.Model(base.input, masked, name="text_classifier")


def text_base_of(classifier):
    import tensorflow as tf

    return tf.keras.Model(classifier.input, classifier.get_layer("lstm").output, name="text_base")


def softmax_weights(classifier, n_active: int) -> dict[str, np.ndarray]:
    """The softmax layer as head weights. Spare slots (≥ n_active) were masked during pretraining and never
    trained: they ship with zero weights and the bias of the least likely vocabulary slot, so a slot the
    board gives to a new word starts as a rare word instead of with a random share of probability."""
    w0, b0 = (np.array(a, np.float32) for a in classifier.get_layer("softmax").get_weights())
    if n_active < len(b0):
        w0[:, n_active:] = 0.0
        b0[n_active:] = b0[:n_active].min()
    return {"w0": w0, "b0": b0}


def embedding_matrix(classifier) -> np.ndarray:
    return np.asarray(classifier.get_layer("embedding").get_weights()[0], np.float32)


def text_base_cost(vocab_size: int, seq_len: int, embed: int, hidden: int) -> dict[str, int]:
    """Parameters of the base, and FLOPs for one sequence of seq_len tokens: the LSTM's matrix products
    (2 per multiply-add) plus its bias and gate arithmetic (~9 per unit and step); the lookup costs none."""
    params = vocab_size * embed + 4 * hidden * (embed + hidden + 1)
    flops = seq_len * (8 * hidden * (embed + hidden) + 9 * hidden)
    return {"params": int(params), "flops": int(flops)}


@dataclass
class TextPretrainResult:
    epochs: int
    seconds: float
    train_loss: float
    val_loss: float


def pretrain_text(classifier, x_train, y_train, w_train, x_val, y_val, w_val, *, epochs: int, batch_size: int,
                  learning_rate: float, progress: Callable[[str], None] = print,
                  strategy=None) -> TextPretrainResult:
    """Adam (cosine decay) on next-token cross-entropy, per-position weights (0 for <bos>/<pad> targets).
    One progress line per epoch, plus a progress bar line at each quarter of a long epoch. With a distribution
    `strategy` (the model built in its scope) training runs in `distribute.fit_distributed`."""
    import tensorflow as tf

    from .progress import KerasProgress

    start = time.perf_counter()
    if strategy is not None:  # custom loop; validation loss is measured afterwards on the chief
        from .distribute import fit_distributed

        losses = fit_distributed(classifier, x_train, y_train, w_train, strategy=strategy, epochs=epochs,
                                 batch_size=batch_size, learning_rate=learning_rate, seed=0, clipnorm=5.0,
                                 progress=progress)
        return TextPretrainResult(epochs, time.perf_counter() - start, losses[-1], float("nan"))
    steps = epochs * int(np.ceil(len(x_train) / batch_size))
    schedule = tf.keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1), alpha=0.05)
    classifier.compile(optimizer=tf.keras.optimizers.Adam(schedule, clipnorm=5.0),
                       loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       weighted_metrics=[])
    validation = (x_val, y_val, w_val) if len(x_val) else None
    history = classifier.fit(x_train, y_train, sample_weight=w_train, batch_size=batch_size, epochs=epochs,
                             shuffle=True, validation_data=validation, verbose=0,
                             callbacks=[KerasProgress(epochs, int(np.ceil(len(x_train) / batch_size)), progress,
                                                      metrics=("loss", "val_loss"))])
    h = history.history
    return TextPretrainResult(epochs, time.perf_counter() - start, float(h["loss"][-1]),
                              float(h["val_loss"][-1]) if "val_loss" in h else float("nan"))
