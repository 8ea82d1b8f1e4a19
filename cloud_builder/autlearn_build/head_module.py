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


class TrainableModule(tf.Module):
    """Base of every part the board trains (head, softmax head, tail): plain tf.Variables in `params` named
    `names`, a hand-written Adam state, the masked cross-entropy step, and the four signatures with fixed
    shapes. A subclass provides `_logits(x, active)` and may add a loss term in `_penalty()`."""

    def _setup(self, names, arrays, *, feature_size: int, class_capacity: int, train_batch: int,
               beta1: float, beta2: float, epsilon: float, lr_scale=None) -> None:
        self.names = tuple(names)
        self.feature_size, self.class_capacity = int(feature_size), int(class_capacity)
        self.train_batch = int(train_batch)
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)
        self.params = [tf.Variable(np.asarray(a, np.float32), name=n) for n, a in zip(self.names, arrays)]
        self.lr_scale = [float(x) for x in lr_scale] if lr_scale is not None else [1.0] * len(self.params)
        self.adam_m = [tf.Variable(tf.zeros_like(v), name=f"adam_m_{n}") for v, n in zip(self.params, self.names)]
        self.adam_v = [tf.Variable(tf.zeros_like(v), name=f"adam_v_{n}") for v, n in zip(self.params, self.names)]
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
            tf.TensorSpec(v.shape, tf.float32, name=n) for n, v in zip(self.names, self.params)])

    def _logits(self, x, active):
        raise NotImplementedError

    def _penalty(self):
        """An extra term of the training loss (not of the reported loss), or None."""
        return None

    def _train(self, x, y, mask, active, lr):
        return self._step(x, y, mask, active, lr, self._penalty, self.lr_scale)

    def _step(self, x, y, mask, active, lr, penalty, scales):
        """One step of the masked cross-entropy: `penalty()` (an extra term of the training loss, not of the
        reported loss, or None) is taken inside the tape; `scales` scale each variable's step (`_adam`)."""
        with tf.GradientTape() as tape:
            log_probs = tf.nn.log_softmax(self._logits(x, active), axis=-1)
            cross_entropy = -tf.reduce_sum(tf.one_hot(y, self.class_capacity) * log_probs, axis=-1)
            loss = tf.reduce_sum(mask * cross_entropy) / tf.maximum(tf.reduce_sum(mask), 1.0)
            extra = penalty()
            total = loss if extra is None else loss + extra
        self._adam(tape.gradient(total, self.params), lr, scales)
        return {"loss": loss}

    def _adam(self, grads, lr, scales) -> None:
        """One Adam step, written out by hand (Keras optimisers lose their variable initialisers in the
        converted model); `scales` scale the step of each variable: a float (1.0 adds no op) or a tensor (an
        input of the signature)."""
        step = self.adam_step.assign_add(1.0)
        lr_t = lr * tf.sqrt(1.0 - tf.pow(self.beta2, step)) / (1.0 - tf.pow(self.beta1, step))
        for var, grad, m, v, scale in zip(self.params, grads, self.adam_m, self.adam_v, scales):
            m_new = m.assign(self.beta1 * m + (1.0 - self.beta1) * grad)
            v_new = v.assign(self.beta2 * v + (1.0 - self.beta2) * tf.square(grad))
            unscaled = isinstance(scale, float) and scale == 1.0
            var.assign_sub((lr_t if unscaled else lr_t * scale) * m_new / (tf.sqrt(v_new) + self.epsilon))

    def _infer(self, x, active):
        return {"probs": tf.nn.softmax(self._logits(x, active), axis=-1)}

    def _get_weights(self):
        return {n: tf.identity(v) for n, v in zip(self.names, self.params)}

    def _set_weights(self, *values):
        """Also resets the Adam state: a restored version starts a fresh optimiser."""
        for var, value in zip(self.params, values):
            var.assign(value)
        for m, v in zip(self.adam_m, self.adam_v):
            m.assign(tf.zeros_like(m))
            v.assign(tf.zeros_like(v))
        self.adam_step.assign(0.0)
        return {"ok": tf.ones([], tf.int32)}

    def concrete_signatures(self) -> dict:
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}


class HeadModule(TrainableModule):
    """The image head: dense + ReLU (as tf.maximum) + dense over `class_capacity` slots."""

    def __init__(self, weights: dict[str, np.ndarray], train_batch: int,
                 beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7):
        super().__init__(name="head")
        shapes = {name: np.asarray(weights[name]).shape for name in WEIGHT_NAMES}
        feature_size, hidden = shapes["w0"]
        hidden1, class_capacity = shapes["w1"]
        if hidden1 != hidden or shapes["b0"] != (hidden,) or shapes["b1"] != (class_capacity,):
            raise ValueError(f"inconsistent head weight shapes: {shapes}")
        self.hidden = int(hidden)
        self._setup(WEIGHT_NAMES, [weights[n] for n in WEIGHT_NAMES], feature_size=feature_size,
                    class_capacity=class_capacity, train_batch=train_batch, beta1=beta1, beta2=beta2, epsilon=epsilon)
        self.w0, self.b0, self.w1, self.b1 = self.params

    def _logits(self, x, active):
        hidden = tf.maximum(tf.matmul(x, self.w0) + self.b0, 0.0)
        logits = tf.matmul(hidden, self.w1) + self.b1
        return logits + (active - 1.0) * MASK_NEGATIVE


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


class SoftmaxHead(TrainableModule):
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
        self.top_k = int(top_k)
        self._setup(SOFTMAX_WEIGHT_NAMES, [w0, b0], feature_size=w0.shape[0], class_capacity=w0.shape[1],
                    train_batch=train_batch, beta1=beta1, beta2=beta2, epsilon=epsilon)
        self.w0, self.b0 = self.params

    def _logits(self, x, active):
        return tf.matmul(x, self.w0) + self.b0 + (active - 1.0) * MASK_NEGATIVE

    def _infer(self, x, active):
        probs = tf.nn.softmax(self._logits(x, active), axis=-1)
        top_probs, top_ids = tf.math.top_k(probs, k=self.top_k)
        return {"probs": probs, "top_ids": tf.cast(top_ids, tf.int32), "top_probs": top_probs}
