"""The trainable head as a `tf.Module` that converts to builtin-only TFLite (see docs/architecture.md, facts measured).

Signatures (docs/bundle-format.md):
  train(x[B,F], y[B] int32, mask[B], active[K], lr[]) -> {loss}   one Adam step, state inside the model
  infer(x[None,F], active[K]) -> {probs[N,K]}
  get_weights() -> {w0, b0, w1, b1}
  set_weights(w0, b0, w1, b1) -> {ok}                               also resets the Adam state

Rules kept so that no Flex op appears: plain tf.Variables (no Keras layers/optimisers), tf.maximum instead
of relu, a fixed train batch with a per-sample mask, labels through tf.one_hot, log_softmax cross-entropy,
no Save/Restore ops (weights travel through get_weights/set_weights).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .image_model import MASK_NEGATIVE

WEIGHT_NAMES = ("w0", "b0", "w1", "b1")
SIGNATURES = ("train", "infer", "get_weights", "set_weights")


def _adam_update(module, grads, lr) -> None:
    """One Adam step on module.params with the state in module.adam_m/adam_v/adam_step (written out by
    hand: Keras optimisers lose their variable initialisers in the converted model)."""
    step = module.adam_step.assign_add(1.0)
    lr_t = lr * tf.sqrt(1.0 - tf.pow(module.beta2, step)) / (1.0 - tf.pow(module.beta1, step))
    for var, grad, m, v in zip(module.params, grads, module.adam_m, module.adam_v):
        m_new = m.assign(module.beta1 * m + (1.0 - module.beta1) * grad)
        v_new = v.assign(module.beta2 * v + (1.0 - module.beta2) * tf.square(grad))
        var.assign_sub(lr_t * m_new / (tf.sqrt(v_new) + module.epsilon))


class HeadModule(tf.Module):
    def __init__(self, weights: dict[str, np.ndarray], train_batch: int,
                 beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7):
        super().__init__(name="head")
        shapes = {name: np.asarray(weights[name]).shape for name in WEIGHT_NAMES}
        feature_size, hidden = shapes["w0"]
        hidden1, class_capacity = shapes["w1"]
        if hidden1 != hidden or shapes["b0"] != (hidden,) or shapes["b1"] != (class_capacity,):
            raise ValueError(f"inconsistent head weight shapes: {shapes}")
        self.feature_size = int(feature_size)
        self.hidden = int(hidden)
        self.class_capacity = int(class_capacity)
        self.train_batch = int(train_batch)
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)

        self.w0 = tf.Variable(np.asarray(weights["w0"], np.float32), name="w0")
        self.b0 = tf.Variable(np.asarray(weights["b0"], np.float32), name="b0")
        self.w1 = tf.Variable(np.asarray(weights["w1"], np.float32), name="w1")
        self.b1 = tf.Variable(np.asarray(weights["b1"], np.float32), name="b1")
        self.params = [self.w0, self.b0, self.w1, self.b1]
        self.adam_m = [tf.Variable(tf.zeros_like(v), name=f"adam_m_{n}") for v, n in zip(self.params, WEIGHT_NAMES)]
        self.adam_v = [tf.Variable(tf.zeros_like(v), name=f"adam_v_{n}") for v, n in zip(self.params, WEIGHT_NAMES)]
        self.adam_step = tf.Variable(0.0, name="adam_step")

        F, H, K, B = self.feature_size, self.hidden, self.class_capacity, self.train_batch
        self.train = tf.function(self._train, input_signature=[
            tf.TensorSpec([B, F], tf.float32, name="x"),
            tf.TensorSpec([B], tf.int32, name="y"),
            tf.TensorSpec([B], tf.float32, name="mask"),
            tf.TensorSpec([K], tf.float32, name="active"),
            tf.TensorSpec([], tf.float32, name="lr"),
        ])
        self.infer = tf.function(self._infer, input_signature=[
            tf.TensorSpec([None, F], tf.float32, name="x"),
            tf.TensorSpec([K], tf.float32, name="active"),
        ])
        self.get_weights = tf.function(self._get_weights, input_signature=[])
        self.set_weights = tf.function(self._set_weights, input_signature=[
            tf.TensorSpec([F, H], tf.float32, name="w0"),
            tf.TensorSpec([H], tf.float32, name="b0"),
            tf.TensorSpec([H, K], tf.float32, name="w1"),
            tf.TensorSpec([K], tf.float32, name="b1"),
        ])

    def _logits(self, x, active):
        hidden = tf.maximum(tf.matmul(x, self.w0) + self.b0, 0.0)
        logits = tf.matmul(hidden, self.w1) + self.b1
        return logits + (active - 1.0) * MASK_NEGATIVE

    def _train(self, x, y, mask, active, lr):
        with tf.GradientTape() as tape:
            log_probs = tf.nn.log_softmax(self._logits(x, active), axis=-1)
            cross_entropy = -tf.reduce_sum(tf.one_hot(y, self.class_capacity) * log_probs, axis=-1)
            loss = tf.reduce_sum(mask * cross_entropy) / tf.maximum(tf.reduce_sum(mask), 1.0)
        grads = tape.gradient(loss, self.params)
        _adam_update(self, grads, lr)
        return {"loss": loss}

    def _infer(self, x, active):
        return {"probs": tf.nn.softmax(self._logits(x, active), axis=-1)}

    def _get_weights(self):
        return {name: tf.identity(var) for name, var in zip(WEIGHT_NAMES, self.params)}

    def _set_weights(self, w0, b0, w1, b1):
        for var, value in zip(self.params, (w0, b0, w1, b1)):
            var.assign(value)
        for m, v in zip(self.adam_m, self.adam_v):
            m.assign(tf.zeros_like(m))
            v.assign(tf.zeros_like(v))
        self.adam_step.assign(0.0)
        return {"ok": tf.ones([], tf.int32)}

    def concrete_signatures(self) -> dict:
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}


def train_head(module, features: np.ndarray, y: np.ndarray, active: np.ndarray, *, epochs: int, lr: float,
               seed: int) -> dict[str, np.ndarray]:
    """Train a head module on fixed features with its own `train` signature (the exact step the board runs:
    fixed batch, last batch padded and masked, Adam inside the module); return its weights.

    The module's Adam state is left advanced: build a fresh module from the returned weights to convert."""
    B = module.train_batch
    n = len(features)
    rng = np.random.default_rng(seed)
    active_t = tf.constant(active, tf.float32)
    lr_t = tf.constant(lr, tf.float32)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, B):
            rows = order[start:start + B]
            m = len(rows)
            x = np.zeros((B, features.shape[1]), np.float32)
            labels = np.zeros(B, np.int32)
            mask = np.zeros(B, np.float32)
            x[:m], labels[:m], mask[:m] = features[rows], y[rows], 1.0
            module.train(tf.constant(x), tf.constant(labels), tf.constant(mask), active_t, lr_t)
    return {name: value.numpy() for name, value in module.get_weights().items()}


SOFTMAX_WEIGHT_NAMES = ("w0", "b0")
TOP_K = 3


class SoftmaxHead(tf.Module):
    """The keyboard head: one softmax layer over `class_capacity` slots (vocabulary + spare slots).

    Same signatures and rules as HeadModule (one_hot labels, log_softmax cross-entropy, fixed train batch
    with a mask, hand-written Adam, no Save/Restore); `infer` additionally returns the `top_k` (3) most
    probable active slots, `top_ids` int32[N, 3] and `top_probs` float32[N, 3] (TOPK_V2, builtin)."""

    def __init__(self, weights: dict[str, np.ndarray], train_batch: int, top_k: int = TOP_K,
                 beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7):
        super().__init__(name="softmax_head")
        w0, b0 = np.asarray(weights["w0"], np.float32), np.asarray(weights["b0"], np.float32)
        if w0.ndim != 2 or b0.shape != (w0.shape[1],):
            raise ValueError(f"inconsistent softmax head shapes: w0 {w0.shape}, b0 {b0.shape}")
        self.feature_size, self.class_capacity = (int(d) for d in w0.shape)
        self.train_batch, self.top_k = int(train_batch), int(top_k)
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)
        self.w0 = tf.Variable(w0, name="w0")
        self.b0 = tf.Variable(b0, name="b0")
        self.params = [self.w0, self.b0]
        self.adam_m = [tf.Variable(tf.zeros_like(v), name=f"adam_m_{n}") for v, n in zip(self.params, SOFTMAX_WEIGHT_NAMES)]
        self.adam_v = [tf.Variable(tf.zeros_like(v), name=f"adam_v_{n}") for v, n in zip(self.params, SOFTMAX_WEIGHT_NAMES)]
        self.adam_step = tf.Variable(0.0, name="adam_step")

        F, K, B = self.feature_size, self.class_capacity, self.train_batch
        self.train = tf.function(self._train, input_signature=[
            tf.TensorSpec([B, F], tf.float32, name="x"),
            tf.TensorSpec([B], tf.int32, name="y"),
            tf.TensorSpec([B], tf.float32, name="mask"),
            tf.TensorSpec([K], tf.float32, name="active"),
            tf.TensorSpec([], tf.float32, name="lr"),
        ])
        self.infer = tf.function(self._infer, input_signature=[
            tf.TensorSpec([None, F], tf.float32, name="x"),
            tf.TensorSpec([K], tf.float32, name="active"),
        ])
        self.get_weights = tf.function(self._get_weights, input_signature=[])
        self.set_weights = tf.function(self._set_weights, input_signature=[
            tf.TensorSpec([F, K], tf.float32, name="w0"),
            tf.TensorSpec([K], tf.float32, name="b0"),
        ])

    def _logits(self, x, active):
        return tf.matmul(x, self.w0) + self.b0 + (active - 1.0) * MASK_NEGATIVE

    def _train(self, x, y, mask, active, lr):
        with tf.GradientTape() as tape:
            log_probs = tf.nn.log_softmax(self._logits(x, active), axis=-1)
            cross_entropy = -tf.reduce_sum(tf.one_hot(y, self.class_capacity) * log_probs, axis=-1)
            loss = tf.reduce_sum(mask * cross_entropy) / tf.maximum(tf.reduce_sum(mask), 1.0)
        _adam_update(self, tape.gradient(loss, self.params), lr)
        return {"loss": loss}

    def _infer(self, x, active):
        probs = tf.nn.softmax(self._logits(x, active), axis=-1)
        top_probs, top_ids = tf.math.top_k(probs, k=self.top_k)
        return {"probs": probs, "top_ids": tf.cast(top_ids, tf.int32), "top_probs": top_probs}

    def _get_weights(self):
        return {name: tf.identity(var) for name, var in zip(SOFTMAX_WEIGHT_NAMES, self.params)}

    def _set_weights(self, w0, b0):
        for var, value in zip(self.params, (w0, b0)):
            var.assign(value)
        for m, v in zip(self.adam_m, self.adam_v):
            m.assign(tf.zeros_like(m))
            v.assign(tf.zeros_like(v))
        self.adam_step.assign(0.0)
        return {"ok": tf.ones([], tf.int32)}

    def concrete_signatures(self) -> dict:
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}
