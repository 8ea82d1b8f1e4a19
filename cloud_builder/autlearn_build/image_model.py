"""The image model pretrained in the cloud: a small MobileNet-style CNN base and its classifier.

The image model pretrained in the cloud: a small MobileNet-style CNN base plus a classifier whose
architecture equals the trainable head (dense hidden → ReLU → class_capacity logits, unused classes masked).

The base is frozen on the board (int8); the classifier's weights initialise the head.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Logits of inactive classes get (active - 1) * MASK_NEGATIVE added: finite, and exp() of it is exactly 0
# in float32, so inactive classes take no probability mass (shared with head_module).
MASK_NEGATIVE = 1e4
HEAD_HIDDEN = 64


def _channels(n: int, width_mult: float) -> int:
    return max(8, int(round(n * width_mult / 8.0)) * 8)


def set_seed(seed: int) -> None:
    """Seed Python, numpy and TensorFlow, and ask TensorFlow for deterministic kernels."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF without it
        pass


def base_channels(width_mult: float = 1.0) -> tuple[int, int, int]:
    """Output channels of conv0, pw1 and pw2 (pw3 gives the features) at a width multiplier."""
    return _channels(32, width_mult), _channels(64, width_mult), _channels(128, width_mult)


def build_base(input_shape: tuple[int, int, int], feature_size: int = 64, width_mult: float = 1.0,
               channels: tuple[int, int, int] | None = None):
    """conv3x3/2 → 3 depthwise-separable blocks → global average pool → [None, feature_size].

    `channels` (conv0, pw1, pw2 filters) overrides `width_mult`; the pruning search uses it.
    BatchNorm folds into the convolutions at conversion; ReLU6 keeps activations in a range int8 likes.
    """
    import tensorflow as tf

    c0, c1, c2 = channels if channels is not None else base_channels(width_mult)
    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(int(c0), 3, strides=2, padding="same", use_bias=False, name="conv0")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="conv0_bn")(x)
    x = layers.ReLU(6.0, name="conv0_relu")(x)
    blocks = [(int(c1), 1), (int(c2), 2), (feature_size, 1)]
    for i, (filters, stride) in enumerate(blocks, start=1):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"dw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"dw{i}_relu")(x)
        x = layers.Conv2D(filters, 1, use_bias=False, name=f"pw{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"pw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"pw{i}_relu")(x)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    return tf.keras.Model(inputs, features, name="base")


def build_classifier(base, class_capacity: int, n_classes: int, hidden: int = HEAD_HIDDEN):
    """base → Dense(hidden, ReLU) → Dense(class_capacity) + mask of the classes not in use (logits)."""
    import tensorflow as tf

    layers = tf.keras.layers
    active = np.zeros(class_capacity, dtype=np.float32)
    active[:n_classes] = 1.0
    mask_bias = tf.constant((active - 1.0) * MASK_NEGATIVE, dtype=tf.float32)
    x = layers.Dense(hidden, activation="relu", name="head_hidden")(base.output)
    logits = layers.Dense(class_capacity, name="head_logits")(x)
    masked = layers.Lambda(lambda t: t + mask_bias, name="mask_inactive")(logits)
    return tf.keras.Model(base.input, masked, name="classifier")


def classifier_sizes(classifier) -> dict[str, int]:
    """The prunable widths of a classifier built here: conv0/pw1/pw2 filters and the head's hidden units."""
    sizes = {name: int(classifier.get_layer(name).filters) for name in ("conv0", "pw1", "pw2")}
    sizes["head_hidden"] = int(classifier.get_layer("head_hidden").units)
    return sizes


def classifier_factory(input_shape: tuple[int, int, int], feature_size: int, class_capacity: int, n_classes: int):
    """sizes (as `classifier_sizes` gives them) → a new, untrained classifier with those widths."""

    def make(sizes: dict[str, int]):
        base = build_base(input_shape, feature_size, channels=(sizes["conv0"], sizes["pw1"], sizes["pw2"]))
        return build_classifier(base, class_capacity, n_classes, hidden=sizes["head_hidden"])

    return make


def base_of(classifier):
    """The feature extractor inside a classifier built by `build_classifier` (shares its layers)."""
    import tensorflow as tf

    return tf.keras.Model(classifier.input, classifier.get_layer("features").output, name="base")


def head_weights(classifier) -> dict[str, np.ndarray]:
    """The classifier's dense weights under the head's variable names (w0, b0, w1, b1)."""
    w0, b0 = classifier.get_layer("head_hidden").get_weights()
    w1, b1 = classifier.get_layer("head_logits").get_weights()
    return {"w0": w0, "b0": b0, "w1": w1, "b1": b1}


@dataclass
class PretrainResult:
    epochs: int
    seconds: float
    train_loss: float
    train_accuracy: float
    val_accuracy: float


def pretrain(classifier, x_train, y_train, x_val, y_val, *, epochs: int, batch_size: int = 32,
             learning_rate: float = 2e-3, progress: Callable[[str], None] = print, strategy=None,
             finish: bool = True) -> PretrainResult:
    """Adam with cosine decay on sparse cross-entropy; one progress line per epoch. With a distribution
    `strategy` (the model built in its scope) training runs in `distribute.fit_distributed`. With
    `finish` (default) the BatchNorm statistics are recalibrated afterwards (see `finish_pretrain`)."""
    import tensorflow as tf

    start = time.perf_counter()
    if strategy is not None:
        from .distribute import fit_distributed

        losses = fit_distributed(classifier, x_train, y_train, strategy=strategy, epochs=epochs,
                                 batch_size=batch_size, learning_rate=learning_rate, seed=0, progress=progress)
        result = PretrainResult(epochs, time.perf_counter() - start, losses[-1], float("nan"), float("nan"))
        if finish:
            finish_pretrain(classifier, x_train, x_val, y_val, result, progress)
        return result
    steps = epochs * int(np.ceil(len(x_train) / batch_size))
    schedule = tf.keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1), alpha=0.05)
    classifier.compile(optimizer=tf.keras.optimizers.Adam(schedule),
                       loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"])

    class _Progress(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.t0 = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            val = f"  val_acc {logs['val_accuracy']:.4f}" if "val_accuracy" in logs else ""
            progress(f"  epoch {epoch + 1:>3}/{epochs}  loss {logs.get('loss', float('nan')):.4f}  "
                     f"acc {logs.get('accuracy', float('nan')):.4f}{val}  {time.perf_counter() - self.t0:.1f}s")

    validation = (x_val, y_val) if len(x_val) else None
    history = classifier.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, shuffle=True,
                             validation_data=validation, verbose=0, callbacks=[_Progress()])
    h = history.history
    result = PretrainResult(epochs=epochs, seconds=time.perf_counter() - start,
                            train_loss=float(h["loss"][-1]), train_accuracy=float(h["accuracy"][-1]),
                            val_accuracy=float(h["val_accuracy"][-1]) if "val_accuracy" in h else float("nan"))
    if finish:
        finish_pretrain(classifier, x_train, x_val, y_val, result, progress)
    return result


def finish_pretrain(classifier, x_train, x_val, y_val, result: PretrainResult,
                    progress: Callable[[str], None] = print) -> None:
    """Recalibrate BatchNorm statistics and re-measure validation accuracy (on a model outside any
    distribution strategy: a local copy after distributed pretraining)."""
    import tensorflow as tf

    recalibrate_batchnorm(classifier, x_train)
    if len(x_val):
        logits = np.concatenate([classifier(tf.constant(x_val[i:i + 512]), training=False).numpy()
                                 for i in range(0, len(x_val), 512)])
        result.val_accuracy = float(np.mean(np.argmax(logits, axis=-1) == y_val))
        progress(f"  batch-norm statistics recalibrated: val_acc {result.val_accuracy:.4f}")


def recalibrate_batchnorm(model, x: np.ndarray, max_images: int = 1024) -> None:
    """Set every BatchNorm's moving mean/variance to the statistics of one large batch of training images.

    Moving averages lag behind during short trainings (a tiny build with a handful of steps would keep
    near-initial statistics and give collapsed features in inference mode); one pass with momentum 0 makes
    inference-mode statistics match the trained weights.
    """
    import tensorflow as tf

    norms = [layer for layer in all_layers(model) if isinstance(layer, tf.keras.layers.BatchNormalization)]
    if not norms or len(x) == 0:
        return
    saved = [layer.momentum for layer in norms]
    try:
        for layer in norms:
            layer.momentum = 0.0
        model(tf.constant(x[:max_images], dtype=tf.float32), training=True)
    finally:
        for layer, momentum in zip(norms, saved):
            layer.momentum = momentum


def all_layers(model):
    """Every leaf layer, nested models flattened, in order."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from all_layers(layer)
        else:
            yield layer


def count_params(model) -> int:
    """Parameters the board keeps after conversion: BatchNorm folds into the convolutions, so its
    moving statistics and scale/offset are not counted (its offsets become the conv biases)."""
    import tensorflow as tf

    total = 0
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            total += int(layer.gamma.shape[0])  # one folded bias per channel
        else:
            total += int(sum(np.prod(w.shape) for w in layer.weights))
    return total


def count_flops(model) -> int:
    """Floating-point operations for one image (a multiply-add counts 2): convolutions, dense layers,
    pooling. BatchNorm folds away; activations are not counted."""
    import tensorflow as tf

    layers = tf.keras.layers
    flops = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * c * kh * kw
        elif isinstance(layer, layers.Conv2D):
            _, h, w, cout = layer.output.shape
            cin = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            flops += 2 * h * w * cout * cin * kh * kw
        elif isinstance(layer, layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
        elif isinstance(layer, layers.GlobalAveragePooling2D):
            _, h, w, c = layer.input.shape
            flops += h * w * c
    return int(flops)
