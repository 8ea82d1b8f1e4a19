"""A user's own Keras classifier for `autlearn-build image --model`: loading, cutting, conventions.

A user's own Keras classifier for `autlearn-build image --model`: loading (.keras, legacy .h5, SavedModel
directory), the cut at the feature layer, the model's input convention, and its last layer as head weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConversionError, InputError
from .image_model import all_layers

# The model's own input convention → (scale, offset) applied to 8-bit pixels (manifest input.scale/offset).
PREPROCESSING = {
    "unit": (1.0 / 255.0, 0.0),         # [0, 1]
    "mobilenet": (1.0 / 127.5, -1.0),   # [-1, 1]: keras.applications.mobilenet_v2.preprocess_input
    "raw": (1.0, 0.0),                  # [0, 255]: the model rescales itself (a Rescaling layer first)
}
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
RESOLUTION_RANGE = (16, 1024)  # --resolutions: square input sides in pixels
# Layers that may sit between the feature layer and the last Dense without changing inference.
PASS_THROUGH = ("Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout")


@dataclass
class UserModel:
    model: object           # the whole Keras classifier
    base: object            # Keras model: the classifier's input → the feature vector (everything below the cut)
    cut: str                # the layer whose output is the feature vector
    dense: object | None    # the classifier's last Dense layer when it reads the features directly, else None
    dense_is_output: bool   # ... and the model's output is that layer (softmax or logits), nothing after it
    source: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.model.input_shape[1:4])


def load_keras_model(path: str | Path):
    """keras.models.load_model(compile=False) for .keras and .h5; a SavedModel directory through tf_keras
    when it was written by Keras 2 (keras_metadata.pb), which keeps its layers. Unreadable: InputError."""
    import keras

    p = Path(path)
    if not p.exists():
        raise InputError(f"--model {p}: no such file or directory")
    if p.is_dir():
        if not (p / "saved_model.pb").is_file():
            raise InputError(f"--model {p}: a directory but not a SavedModel (no saved_model.pb)")
        return _load_saved_model(p)
    if p.suffix.lower() not in KERAS_SUFFIXES:
        raise InputError(f"--model {p}: not a Keras model file (.keras, .h5) or a SavedModel directory")
    try:
        return keras.models.load_model(p, compile=False)
    except Exception as exc:  # Keras raises many types for a foreign or damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"--model {p}: Keras cannot load it ({type(exc).__name__}: {first[:300]})") from None


def _load_saved_model(p: Path):
    """A SavedModel directory: its serving signature cut in the graph (saved_model_graph)."""
    from .saved_model_graph import load_saved_model

    return load_saved_model(p)


def detect_preprocessing(model) -> str:
    """The model's own input convention: `raw` when it starts with a Rescaling layer, `mobilenet` ([-1, 1])
    when it holds a MobileNet, else `unit` ([0, 1]). `--preprocess` overrides it."""
    names = [type(layer).__name__ for layer in all_layers(model)]
    if names[:3] and "Rescaling" in names[:3]:
        return "raw"
    if any(layer.name.lower().startswith("mobilenet") for layer in _nested(model)):
        return "mobilenet"
    return "unit"


def _nested(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _nested(layer)


def cut_model(model, cut: str | None, source: str) -> UserModel:
    """Cut the classifier at its feature layer: by default the input of its last Dense layer; with `cut`, the
    output of that (top-level) layer. The features must be a vector per image ([None, F])."""
    import keras

    layers = list(model.layers)
    dense_index = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Dense)]
    if cut is None:
        if not dense_index:
            raise ConversionError(f"{source}: no Dense layer to cut at (its layers: {_names(layers)}); "
                                  "name the feature layer with --cut")
        j = dense_index[-1]
        i = j - 1
        while i >= 0 and type(layers[i]).__name__ in PASS_THROUGH:
            i -= 1
        cut_layer = layers[i] if i >= 0 else None
        features = layers[j].input
        name = cut_layer.name if cut_layer is not None else layers[j].name + ":input"
    else:
        try:
            cut_layer = model.get_layer(cut)
        except ValueError:
            raise ConversionError(f"{source}: no layer named {cut!r} to cut at (its layers: {_names(layers)})") from None
        i = layers.index(cut_layer)
        features, name = cut_layer.output, cut
        later = [k for k in dense_index if k > i]
        j = later[-1] if later and all(type(x).__name__ in PASS_THROUGH for x in layers[i + 1:later[-1]]) else None
    if len(features.shape) != 2:
        raise ConversionError(f"{source}: the cut at layer {name!r} gives {tuple(features.shape)}, not one feature "
                              "vector per image; cut after a pooling or flatten layer (--cut LAYER_NAME)")
    dense = layers[j] if j is not None else None
    after = layers[j + 1:] if j is not None else []
    is_output = dense is not None and all(_is_softmax(x) for x in after)
    base = keras.Model(model.inputs, features, name="base")
    return UserModel(model, base, name, dense, is_output, source)


def _is_softmax(layer) -> bool:
    kind = type(layer).__name__
    if kind == "Softmax":
        return True
    return kind == "Activation" and layer.get_config().get("activation") == "softmax"


def _names(layers) -> str:
    shown = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in layers[-8:])
    return ("…, " if len(layers) > 8 else "") + shown


def head_from_dense(user: UserModel, n_classes: int, class_capacity: int) -> tuple[dict | None, str]:
    """The softmax head's weights (w0 [F, K], b0 [K], padded to the class capacity) taken from the classifier's
    last Dense layer when it fits the bundle's labels, else None; and the reason in words."""
    dense = user.dense
    if dense is None:
        return None, f"no Dense layer reads the features at the cut {user.cut!r}"
    if not user.dense_is_output:
        return None, f"layer {dense.name!r} is not the model's output (layers follow it)"
    activation = dense.get_config().get("activation")
    if activation not in ("softmax", "linear"):
        return None, f"layer {dense.name!r} has activation {activation!r}, not softmax or linear"
    kernel, bias = (np.asarray(w, np.float32) for w in dense.get_weights()) if dense.use_bias else (
        np.asarray(dense.get_weights()[0], np.float32), np.zeros(dense.units, np.float32))
    if kernel.shape[1] != n_classes:
        return None, f"layer {dense.name!r} has {kernel.shape[1]} outputs, the data {n_classes} classes"
    w0 = np.zeros((kernel.shape[0], class_capacity), np.float32)
    b0 = np.zeros(class_capacity, np.float32)
    w0[:, :n_classes], b0[:n_classes] = kernel, bias
    return {"w0": w0, "b0": b0}, f"layer {dense.name!r} ({n_classes} outputs, {activation})"


def blame_layer(base) -> str | None:
    """After the base failed to convert builtin-only: convert each of its layers alone (float, builtin
    operators only) and name the first one that fails with the operators it needs; None if none fails alone."""
    import keras
    import tensorflow as tf

    from .convert import _converter_failure

    for layer in all_layers(base):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            shapes = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
            inputs = [keras.Input(shape=tuple(s.shape[1:]), batch_size=1) for s in shapes]
            probe = keras.Model(inputs, layer(inputs if len(inputs) > 1 else inputs[0]))
        except Exception:  # a layer that cannot be called alone: not the one to blame
            continue
        converter = tf.lite.TFLiteConverter.from_keras_model(probe)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            converter.convert()
        except Exception as exc:  # noqa: BLE001 - its message is what we report
            detail = _converter_failure("", exc).message.lstrip(": ")
            return f"layer {layer.name!r} ({type(layer).__name__}): {detail}"
    return None


def parse_resolutions(text: str) -> tuple[int, ...]:
    """--resolutions '96,128,160' → (96, 128, 160): square input sides, each once, within RESOLUTION_RANGE."""
    import argparse

    lo, hi = RESOLUTION_RANGE
    sides: list[int] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if not item.isdigit() or not lo <= int(item) <= hi:
            raise argparse.ArgumentTypeError(f"{item!r} is not a whole number of pixels between {lo} and {hi}")
        if int(item) in sides:
            raise argparse.ArgumentTypeError(f"{item} is given twice")
        sides.append(int(item))
    if not sides:
        raise argparse.ArgumentTypeError(f"no resolution in {text!r} (e.g. 96,128,160)")
    return tuple(sides)


def at_resolution(model, side: int, source: str):
    """The classifier rebuilt for square `side` x `side` inputs with the same weights (its own object when it
    already has that size). Works for a fully convolutional model up to its global pooling (MobileNetV2); a
    model whose weights depend on its input size (Flatten → Dense, a fixed Reshape) or that Keras cannot rebuild
    from its config (a SavedModel's graph) is refused (InputError) naming the model's own input size."""
    shape = tuple(model.input_shape)
    if tuple(shape[1:3]) == (side, side):
        return model
    size = "variable" if shape[1] is None or shape[2] is None else f"{shape[2]}x{shape[1]}"
    try:
        config = model.get_config()
        _set_input_side(config, side)
        rebuilt = type(model).from_config(config)
        rebuilt.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001 - Keras raises many types; its message is what we report
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{source}: its input size is fixed at {size} (channels {shape[3]}); it cannot be rebuilt "
                         f"for {side}x{side} inputs with the same weights ({type(exc).__name__}: {first[:200]}); "
                         f"drop --resolutions or give only sizes it accepts") from None
    return rebuilt


def _set_input_side(config, side: int) -> None:
    """Every InputLayer of a model config (nested models too) set to [None, side, side, channels]."""
    if isinstance(config, dict):
        if config.get("class_name") == "InputLayer" and isinstance(config.get("config"), dict):
            inner = config["config"]
            shape = inner.get("batch_shape") or inner.get("batch_input_shape")
            if shape is None or len(shape) != 4:
                raise ValueError(f"input layer {inner.get('name')!r} has shape {shape}, not [None, H, W, C]")
            inner["batch_shape"] = [shape[0], side, side, shape[3]]
            inner.pop("batch_input_shape", None)
        for value in config.values():
            _set_input_side(value, side)
    elif isinstance(config, list):
        for value in config:
            _set_input_side(value, side)
