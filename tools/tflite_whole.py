"""Whole-model training through a flex-free TFLite `train` signature (the bench's third baseline).

The image classifier of `autlearn_build.image_model` (conv 3x3/2 → three depthwise-separable blocks → global
average pool → dense 64 + ReLU → class_capacity logits, unused classes masked) rebuilt as a `tf.Module` whose
`train` signature updates *every* weight, and which converts with TFLITE_BUILTINS only (docs/architecture.md, "Facts"):

* convolutions as im2col: `tf.pad` + `tf.slice` per kernel tap (their gradients are SLICE and PAD; Python
  slicing would bring StridedSliceGrad, a Flex op). Stride 2 reads the taps from a [B, H/2, 2, W/2, 2, C]
  reshape of the padded input, so no strided slice is needed either;
  - the 3x3 convolution (conv0): the 9 taps concatenated on the channel axis, then one matmul;
  - depthwise 3x3: the 9 taps multiplied by the per-channel kernel and summed;
  - pointwise 1x1: a matmul;
* BatchNorm folded into the convolutions with the pretrained statistics (frozen statistics: BN as in
  inference mode; scale and shift train as the folded weights and biases);
* ReLU6 as min(max(x, 0), 6), ReLU as max(x, 0), cross-entropy through log_softmax and one_hot, a fixed train
  batch with a mask, and Adam written out by hand with plain tf.Variables.

Signatures: train(x[B,H,W,C], y[B], mask[B], active[K], lr[]) -> loss; infer(x[B,H,W,C], active[K]) -> probs;
get_weights() -> every variable. The same folded model also runs in numpy-free TF (`__call__`) so a test can
compare it with the Keras classifier it came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MASK_NEGATIVE = 1e4
BN_EPS_DEFAULT = 1e-3


def fold_bn(kernel, bn, eps):
    """See autlearn_build.tail_module.fold_bn (one definition, shared with the board's trainable tail)."""
    from autlearn_build.tail_module import fold_bn as fold

    return fold(kernel, bn, eps)


def folded_weights(classifier) -> dict[str, np.ndarray]:
    """Folded float weights of a classifier built by autlearn_build.image_model (names c0_w, c0_b, dw1_w, …)."""
    w: dict[str, np.ndarray] = {}

    def bn(name):
        layer = classifier.get_layer(name)
        return [np.asarray(a) for a in layer.get_weights()], float(getattr(layer, "epsilon", BN_EPS_DEFAULT))

    weights, eps = bn("conv0_bn")
    w["c0_w"], w["c0_b"] = fold_bn(np.asarray(classifier.get_layer("conv0").get_weights()[0]), weights, eps)
    for i in (1, 2, 3):
        weights, eps = bn(f"dw{i}_bn")
        w[f"dw{i}_w"], w[f"dw{i}_b"] = fold_bn(np.asarray(classifier.get_layer(f"dw{i}").get_weights()[0]),
                                               weights, eps)
        weights, eps = bn(f"pw{i}_bn")
        w[f"pw{i}_w"], w[f"pw{i}_b"] = fold_bn(np.asarray(classifier.get_layer(f"pw{i}").get_weights()[0]),
                                               weights, eps)
    w["h0_w"], w["h0_b"] = (np.asarray(a, np.float32) for a in classifier.get_layer("head_hidden").get_weights())
    w["h1_w"], w["h1_b"] = (np.asarray(a, np.float32) for a in classifier.get_layer("head_logits").get_weights())
    return w


ORDER = ("c0_w", "c0_b", "dw1_w", "dw1_b", "pw1_w", "pw1_b", "dw2_w", "dw2_b", "pw2_w", "pw2_b",
         "dw3_w", "dw3_b", "pw3_w", "pw3_b", "h0_w", "h0_b", "h1_w", "h1_b")
STRIDES = {"c0": 2, "dw1": 1, "dw2": 2, "dw3": 1}
SIGNATURES = ("train", "infer", "get_weights")


def make_module(weights: dict[str, np.ndarray], input_shape: tuple[int, int, int], train_batch: int,
                beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7):
    import tensorflow as tf

    def relu6(x):
        return tf.minimum(tf.maximum(x, 0.0), 6.0)

    from autlearn_build.tail_module import taps  # the flex-free 3x3 taps, shared with the board's tail

    class WholeModel(tf.Module):
        def __init__(self):
            super().__init__(name="whole_model")
            self.names = list(ORDER)
            self.params = [tf.Variable(np.asarray(weights[n], np.float32), name=n) for n in ORDER]
            self.p = dict(zip(ORDER, self.params))
            self.adam_m = [tf.Variable(tf.zeros_like(v), name=f"m_{n}") for v, n in zip(self.params, ORDER)]
            self.adam_v = [tf.Variable(tf.zeros_like(v), name=f"v_{n}") for v, n in zip(self.params, ORDER)]
            self.adam_step = tf.Variable(0.0, name="adam_step")
            self.class_capacity = int(weights["h1_b"].shape[0])
            H, W, C = input_shape
            B, K = train_batch, self.class_capacity
            self.train = tf.function(self._train, input_signature=[
                tf.TensorSpec([B, H, W, C], tf.float32, name="x"), tf.TensorSpec([B], tf.int32, name="y"),
                tf.TensorSpec([B], tf.float32, name="mask"), tf.TensorSpec([K], tf.float32, name="active"),
                tf.TensorSpec([], tf.float32, name="lr")])
            self.infer = tf.function(self._infer, input_signature=[
                tf.TensorSpec([B, H, W, C], tf.float32, name="x"), tf.TensorSpec([K], tf.float32, name="active")])
            self.get_weights = tf.function(self._get_weights, input_signature=[])

        def logits(self, x, active):
            p = self.p
            t = taps(x, STRIDES["c0"])
            _, ho, wo, c = (int(d) for d in t[0].shape)
            cols = tf.reshape(tf.concat(t, axis=-1), [-1, 9 * c])
            k = tf.reshape(p["c0_w"], [9 * c, -1])
            x = relu6(tf.reshape(tf.matmul(cols, k), [-1, ho, wo, int(k.shape[-1])]) + p["c0_b"])
            for i in (1, 2, 3):
                t = taps(x, STRIDES[f"dw{i}"])
                dk = p[f"dw{i}_w"]
                acc = None
                for j, tap in enumerate(t):
                    # tf.slice, not dk[j // 3, j % 3]: its gradient is PAD, not StridedSliceGrad (Flex)
                    term = tap * tf.reshape(tf.slice(dk, [j // 3, j % 3, 0, 0], [1, 1, -1, 1]), [1, 1, 1, -1])
                    acc = term if acc is None else acc + term
                x = relu6(acc + p[f"dw{i}_b"])
                _, h, w, c = (int(d) for d in x.shape)
                pk = tf.reshape(p[f"pw{i}_w"], [c, -1])
                x = relu6(tf.reshape(tf.matmul(tf.reshape(x, [-1, c]), pk), [-1, h, w, int(pk.shape[-1])])
                          + p[f"pw{i}_b"])
            feats = tf.reduce_mean(x, axis=[1, 2])
            hidden = tf.maximum(tf.matmul(feats, p["h0_w"]) + p["h0_b"], 0.0)
            return tf.matmul(hidden, p["h1_w"]) + p["h1_b"] + (active - 1.0) * MASK_NEGATIVE

        def _train(self, x, y, mask, active, lr):
            with tf.GradientTape() as tape:
                log_probs = tf.nn.log_softmax(self.logits(x, active), axis=-1)
                ce = -tf.reduce_sum(tf.one_hot(y, self.class_capacity) * log_probs, axis=-1)
                loss = tf.reduce_sum(mask * ce) / tf.maximum(tf.reduce_sum(mask), 1.0)
            grads = tape.gradient(loss, self.params)
            step = self.adam_step.assign_add(1.0)
            lr_t = lr * tf.sqrt(1.0 - tf.pow(beta2, step)) / (1.0 - tf.pow(beta1, step))
            for var, g, m, v in zip(self.params, grads, self.adam_m, self.adam_v):
                m_new = m.assign(beta1 * m + (1.0 - beta1) * g)
                v_new = v.assign(beta2 * v + (1.0 - beta2) * tf.square(g))
                var.assign_sub(lr_t * m_new / (tf.sqrt(v_new) + epsilon))
            return {"loss": loss}

        def _infer(self, x, active):
            return {"probs": tf.nn.softmax(self.logits(x, active), axis=-1)}

        def _get_weights(self):
            return {n: tf.identity(v) for n, v in zip(ORDER, self.params)}

        def concrete_signatures(self) -> dict:
            return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}

    return WholeModel()


def convert(module) -> bytes:
    """TFLITE_BUILTINS only (the builder's converter and its check: a Flex op fails loudly)."""
    from autlearn_build.convert import convert_head

    return convert_head(module, SIGNATURES)


class TFLiteWholeTrainer:
    """Runs the converted model's signatures with the LiteRT interpreter as the board runs a head's: through the
    daemon's runtime seam (`autlearn.runtime.interpreter.make_cpu_interpreter`, whose signature runners do not
    resize the scalar `lr` input, which crashes every aarch64 build of the stock runner: reports/arm64.md)."""

    def __init__(self, model: bytes, train_batch: int, class_capacity: int, threads: int = 2):
        import tempfile

        from autlearn.runtime.interpreter import make_cpu_interpreter

        with tempfile.TemporaryDirectory(prefix="tflite_whole-") as tmp:  # the seam takes a path; once loaded,
            path = Path(tmp) / "whole.tflite"  # the interpreter keeps the model, the file can go
            path.write_bytes(model)
            self.interp = make_cpu_interpreter(path, threads)
        self._train = self.interp.get_signature_runner("train")
        self._infer = self.interp.get_signature_runner("infer")
        self.batch = train_batch
        self.capacity = class_capacity

    def fit_epoch(self, x: np.ndarray, y: np.ndarray, active: np.ndarray, lr: float, rng) -> float:
        n, b = len(x), self.batch
        order = rng.permutation(n)
        total = 0.0
        lr_a = np.array(lr, np.float32)
        for i in range(0, n, b):
            idx = order[i:i + b]
            real = len(idx)
            xb = np.zeros((b, *x.shape[1:]), np.float32)
            yb = np.zeros(b, np.int32)
            mb = np.zeros(b, np.float32)
            xb[:real], yb[:real], mb[:real] = x[idx], y[idx], 1.0
            total += float(self._train(x=xb, y=yb, mask=mb, active=active, lr=lr_a)["loss"]) * real
        return total / max(n, 1)

    def predict(self, x: np.ndarray, active: np.ndarray) -> np.ndarray:
        out = []
        b = self.batch
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            real = len(chunk)
            if real < b:
                chunk = np.concatenate([chunk, np.zeros((b - real, *x.shape[1:]), np.float32)])
            out.append(np.array(self._infer(x=chunk.astype(np.float32), active=active)["probs"])[:real])
        return np.concatenate(out) if out else np.zeros((0, self.capacity), np.float32)
