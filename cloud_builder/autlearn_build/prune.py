"""Magnitude-based filter pruning: budgets, the prunable chain of a classifier, its costs, one pruning step.

prune_search.py runs the rounds that turn one pretrained classifier into a family of smaller variants (the
paper's model-layer compression).

One round: for every candidate layer — a regular/pointwise convolution or a dense layer whose outputs are
consumed by a later convolution/dense layer — remove the K filters (output channels, or units) with the
smallest L2 norm, briefly retrain the pruned model on a fraction of an epoch, recalibrate its BatchNorm
statistics and measure public-validation accuracy; keep the candidate that lost least. Every layer that
carries the removed channels is pruned consistently: the BatchNorm after the convolution, the depthwise
convolution of the next depthwise-separable block (and its BatchNorm), and the input channels of the next
convolution or dense layer. The channels that reach global pooling define the feature vector and are never
pruned, so every variant keeps the feature size of the full model.

K is chosen per layer NetAdapt-style: the fewest filters whose removal lowers the resource being pursued
(FLOPs or parameters; FLOPs stand in for latency) by at least one step (`step_fraction` of the full model's
cost). Candidates thus save comparable amounts and "loses least accuracy" compares like with like. Whenever
a budget is met the current model is fine-tuned briefly and emitted as a variant; the search continues from
it until every budget is met or no layer can be pruned further.

Costs (`params`, `flops`) here are of the whole classifier the board runs for one prediction: base + head
(BatchNorm folded, a multiply-add counts 2 FLOPs), computed analytically from the channel widths.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import InputError

METRICS = ("flops", "params", "latency_ms")
_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9}
MIN_FILTERS = 4


# --------------------------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """One resource budget from the command line; met when the model's metric ≤ limit."""

    metric: str  # flops | params | latency_ms
    limit: float
    text: str  # as the user wrote the value, e.g. "1.5M"

    @property
    def name(self) -> str:
        """Variant name: 'flops-1.5M', 'params-15k', 'latency-0.08ms'."""
        value = re.sub(r"[^A-Za-z0-9.]", "", self.text)
        return f"latency-{value}ms" if self.metric == "latency_ms" else f"{self.metric}-{value}"

    def to_manifest(self) -> dict:
        return {"metric": self.metric, "limit": self.limit}


def parse_budgets(specs: list[str] | str | None) -> list[Budget]:
    """'flops=1.5M,params=15k,latency_ms=0.08' (one or more, also as repeated options) → budgets.
    Suffixes k/M/G multiply by 1e3/1e6/1e9; latency is in milliseconds ('0.08' or '0.08ms')."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    budgets: list[Budget] = []
    for spec in specs:
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip().lower().replace("-", "_")
            key = {"latency": "latency_ms", "flop": "flops", "param": "params"}.get(key, key)
            if not sep or key not in METRICS:
                raise InputError(f"--budget {item!r}: expected flops=N, params=N or latency_ms=MS "
                                 "(e.g. flops=1.5M,params=15k,latency_ms=0.08)")
            value = value.strip()
            text = value[:-2] if key == "latency_ms" and value.endswith("ms") else value
            match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgG]?)", text)
            if not match or (key == "latency_ms" and match.group(2)):
                raise InputError(f"--budget {item!r}: {value!r} is not a number"
                                 + ("" if key != "latency_ms" else " of milliseconds"))
            limit = float(match.group(1)) * _SUFFIX[match.group(2)]
            if not limit > 0 or not math.isfinite(limit):
                raise InputError(f"--budget {item!r}: the limit must be positive")
            budget = Budget(key, limit, text.replace(" ", ""))
            if any(b.name == budget.name for b in budgets):
                raise InputError(f"--budget {item!r} is given twice")
            budgets.append(budget)
    return budgets


# ------------------------------------------------------------------------------------ chain analysis


@dataclass
class LayerInfo:
    name: str
    kind: str  # conv | depthwise | bn | dense | pool | pass
    in_group: str
    out_group: str
    kernel: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    in_hw: tuple[int, int] = (1, 1)
    use_bias: bool = False


@dataclass
class ChainInfo:
    """A chain-shaped Keras model seen as channel groups: a group is the set of channels one conv/dense
    layer produces, carried unchanged through BatchNorm, activations and depthwise convolutions."""

    layers: list[LayerInfo]
    sizes: dict[str, int]  # group → channels
    prunable: list[str]  # groups (named after the layer that produces them) that pruning may shrink
    feature_group: str | None

    def layer(self, name: str) -> LayerInfo:
        return next(layer for layer in self.layers if layer.name == name)


def analyse(model) -> ChainInfo:
    """Channel groups of a chain model (each layer feeds the next). Raises ValueError on other shapes."""
    import tensorflow as tf

    L = tf.keras.layers
    infos: list[LayerInfo] = []
    sizes: dict[str, int] = {}
    consumed: set[str] = set()
    current = "input"
    feature_group = None
    previous = None
    for layer in model.layers:
        if isinstance(layer, L.InputLayer):
            sizes["input"] = int(layer.output.shape[-1])
            previous = layer
            continue
        if previous is not None and layer.input is not previous.output:
            raise ValueError(f"pruning needs a chain model: layer {layer.name} does not take {previous.name}'s output")
        previous = layer
        hw = lambda shape: (int(shape[1]), int(shape[2])) if len(shape) == 4 else (1, 1)  # noqa: E731
        if isinstance(layer, L.DepthwiseConv2D):
            if int(layer.depth_multiplier) != 1:
                raise ValueError(f"{layer.name}: depth multiplier {layer.depth_multiplier} is not supported")
            infos.append(LayerInfo(layer.name, "depthwise", current, current, tuple(layer.kernel_size),
                                   hw(layer.output.shape), hw(layer.input.shape), bool(layer.use_bias)))
        elif isinstance(layer, L.Conv2D):
            if int(getattr(layer, "groups", 1)) != 1:
                raise ValueError(f"{layer.name}: grouped convolutions are not supported")
            consumed.add(current)
            infos.append(LayerInfo(layer.name, "conv", current, layer.name, tuple(layer.kernel_size),
                                   hw(layer.output.shape), hw(layer.input.shape), bool(layer.use_bias)))
            sizes[layer.name] = int(layer.filters)
            current = layer.name
        elif isinstance(layer, L.Dense):
            consumed.add(current)
            infos.append(LayerInfo(layer.name, "dense", current, layer.name, use_bias=bool(layer.use_bias)))
            sizes[layer.name] = int(layer.units)
            current = layer.name
        elif isinstance(layer, L.BatchNormalization):
            infos.append(LayerInfo(layer.name, "bn", current, current))
        elif isinstance(layer, L.GlobalAveragePooling2D):
            feature_group = current
            infos.append(LayerInfo(layer.name, "pool", current, current, in_hw=hw(layer.input.shape)))
        elif isinstance(layer, (L.ReLU, L.Activation, L.Lambda, L.Dropout)):
            infos.append(LayerInfo(layer.name, "pass", current, current))
        else:
            raise ValueError(f"pruning does not know how to carry channels through {type(layer).__name__} "
                             f"({layer.name})")
    prunable = [g for g in sizes if g != "input" and g in consumed and g != feature_group]
    return ChainInfo(infos, sizes, prunable, feature_group)


def chain_cost(info: ChainInfo, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """Parameters and FLOPs per sample for given group widths; equals image_model.count_params/count_flops
    of the model built with those widths (BatchNorm folded: one bias per channel; multiply-add = 2)."""
    size = dict(info.sizes, **(sizes or {}))
    params = flops = 0
    for layer in info.layers:
        cin, cout = size[layer.in_group], size[layer.out_group]
        kh, kw = layer.kernel
        h, w = layer.out_hw
        if layer.kind == "conv":
            params += kh * kw * cin * cout + (cout if layer.use_bias else 0)
            flops += 2 * h * w * cout * cin * kh * kw
        elif layer.kind == "depthwise":
            params += kh * kw * cin + (cin if layer.use_bias else 0)
            flops += 2 * h * w * cin * kh * kw
        elif layer.kind == "dense":
            params += cin * cout + (cout if layer.use_bias else 0)
            flops += 2 * cin * cout
        elif layer.kind == "bn":
            params += cin
        elif layer.kind == "pool":
            flops += layer.in_hw[0] * layer.in_hw[1] * cin
    return {"params": int(params), "flops": int(flops)}


# --------------------------------------------------------------------------------------- pruning step


def filter_norms(model, layer_name: str, info: ChainInfo | None = None) -> np.ndarray:
    """L2 norm of every filter (output channel) of a conv layer, or every unit (kernel column) of a dense
    layer. When a BatchNorm follows, its scale gamma/sqrt(var+eps) is folded in first, as the converter
    does: the norm is that of the filter the board actually runs."""
    info = info or analyse(model)
    layer = model.get_layer(layer_name)
    kernel = np.asarray(layer.get_weights()[0], np.float64)
    kind = info.layer(layer_name).kind
    if kind not in ("conv", "dense"):
        raise ValueError(f"{layer_name} is not a convolution or dense layer")
    flat = kernel.reshape(-1, kernel.shape[-1])
    scale = np.ones(kernel.shape[-1])
    names = [x.name for x in info.layers]
    following = info.layers[names.index(layer_name) + 1:]
    for nxt in following:
        if nxt.kind == "bn" and nxt.in_group == layer_name:
            bn = model.get_layer(nxt.name)
            gamma = np.asarray(bn.gamma.numpy() if bn.gamma is not None else np.ones_like(scale), np.float64)
            var = np.asarray(bn.moving_variance.numpy(), np.float64)
            scale = gamma / np.sqrt(var + bn.epsilon)
            break
        if nxt.kind != "pass":
            break
    return np.linalg.norm(flat, axis=0) * np.abs(scale)


def lowest_norm_filters(norms: np.ndarray, k: int) -> np.ndarray:
    """Indices (ascending) of the k smallest norms; ties go to the lower index (stable)."""
    order = np.argsort(np.asarray(norms), kind="stable")
    return np.sort(order[:k])


def _slice(array: np.ndarray, axis: int, keep: np.ndarray | None) -> np.ndarray:
    return array if keep is None else np.take(array, keep, axis=axis)


def copy_pruned_weights(source, target, info: ChainInfo, keep: dict[str, np.ndarray]) -> None:
    """Copy every weight of `source` into the narrower `target`, keeping channel indices `keep[group]`."""
    for layer in info.layers:
        src = source.get_layer(layer.name)
        weights = src.get_weights()
        if not weights:
            continue
        kin, kout = keep.get(layer.in_group), keep.get(layer.out_group)
        if layer.kind == "conv":
            out = [_slice(_slice(weights[0], 2, kin), 3, kout)] + [_slice(b, 0, kout) for b in weights[1:]]
        elif layer.kind == "depthwise":
            out = [_slice(weights[0], 2, kin)] + [_slice(b, 0, kin) for b in weights[1:]]
        elif layer.kind == "bn":
            out = [_slice(w, 0, kin) for w in weights]
        elif layer.kind == "dense":
            out = [_slice(_slice(weights[0], 0, kin), 1, kout)] + [_slice(b, 0, kout) for b in weights[1:]]
        else:
            raise ValueError(f"{layer.name} ({layer.kind}) has weights pruning does not know how to slice")
        target.get_layer(layer.name).set_weights(out)


def prune_layer(model, layer_name: str, k: int, factory: Callable[[dict[str, int]], object],
                info: ChainInfo | None = None):
    """A new model without the k lowest-norm filters of `layer_name` (and everything that carries their
    channels). Returns (model, removed indices)."""
    info = info or analyse(model)
    if layer_name not in info.prunable:
        raise ValueError(f"{layer_name} cannot be pruned (prunable: {', '.join(info.prunable)})")
    n = info.sizes[layer_name]
    if not 0 < k < n:
        raise ValueError(f"cannot remove {k} of the {n} filters of {layer_name}")
    removed = lowest_norm_filters(filter_norms(model, layer_name, info), k)
    keep = np.setdiff1d(np.arange(n), removed)
    sizes = {g: info.sizes[g] for g in info.prunable}
    sizes[layer_name] = n - k
    pruned = factory(sizes)
    copy_pruned_weights(model, pruned, info, {layer_name: keep})
    return pruned, removed
