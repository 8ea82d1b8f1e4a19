"""A SavedModel directory as a Keras classifier the builder can cut.

A SavedModel directory as a Keras classifier the builder can cut: Keras 3 cannot rebuild layers from a
SavedModel, so its serving graph is cut at the input of its last MatMul (the classifier's Dense layer) and
re-wrapped as `features layer → Dense` with that layer's weights read from the graph's variables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConversionError, InputError


def _producer(tensor, kinds=("Identity",)):
    op = tensor.op
    while op.type in kinds and op.inputs:
        op = op.inputs[0].op
    return op


def load_saved_model(path: Path):
    """Keras model: Input → SavedModelFeatures (the graph below the last MatMul) → Dense(+ softmax when the
    graph applies one), equal to the SavedModel's serving signature."""
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"--model {path}: TensorFlow cannot load the SavedModel ({type(exc).__name__})") from None
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ConversionError(f"--model {path}: the SavedModel has no serving_default signature to cut")
    specs = list(signature.structured_input_signature[1].values())
    if len(specs) != 1 or len(signature.structured_outputs) != 1:
        raise ConversionError(f"--model {path}: the serving signature must take one image tensor and give one "
                              f"output (it takes {len(specs)}, gives {len(signature.structured_outputs)})")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(signature)  # variables → constants, nested calls inlined
    graph = frozen.graph
    matmuls = [op for op in graph.get_operations() if op.type == "MatMul"]
    if not matmuls:
        raise ConversionError(f"--model {path}: no MatMul (Dense layer) in the serving graph to cut at")
    matmul = matmuls[-1]
    features = matmul.inputs[0]

    def value(tensor) -> np.ndarray:
        op = _producer(tensor)
        if op.type != "Const":
            raise ConversionError(f"--model {path}: the weights of {matmul.name!r} are not constant ({op.type})")
        return tf.make_ndarray(op.get_attr("value")).astype(np.float32)

    kernel = value(matmul.inputs[1])
    bias = np.zeros(kernel.shape[1], np.float32)
    last = matmul.outputs[0]
    consumers = last.consumers()
    if consumers and consumers[0].type in ("BiasAdd", "AddV2", "Add"):
        bias = value(consumers[0].inputs[1])
        last = consumers[0].outputs[0]
    softmax = [op for op in last.consumers() if op.type == "Softmax"]
    out_op = _producer(frozen.outputs[0])
    if softmax and out_op is softmax[0]:
        activation = "softmax"
    elif out_op is last.op:
        activation = "linear"
    else:  # something else follows the Dense: the cut holds, the Dense is not the model's output
        activation = None
    graph_def = graph.as_graph_def()
    input_name = frozen.inputs[0].name
    feature_name = features.name

    @tf.function
    def run(x):
        return tf.graph_util.import_graph_def(graph_def, input_map={input_name: x},
                                              return_elements=[feature_name], name="saved_model")[0]

    class SavedModelFeatures(keras.layers.Layer):
        """The SavedModel's graph from its input to the features (the input of its last Dense)."""

        def call(self, x):
            return run(x)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], int(features.shape[-1]))

    spec = specs[0]
    inp = keras.Input(shape=tuple(spec.shape[1:]), name="image")
    feats = SavedModelFeatures(name="saved_model_features")(inp)
    dense = keras.layers.Dense(kernel.shape[1], activation=activation or "linear", name="saved_model_dense")
    out = dense(feats)
    if activation is None:  # not the model's output: mark it so that the head is not taken from it
        out = keras.layers.Identity(name="saved_model_rest")(out)
    model = keras.Model(inp, out, name=Path(path).name)
    dense.set_weights([kernel, bias])
    return model
