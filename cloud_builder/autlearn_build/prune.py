"""Magnitude-based filter pruning and the budget search that turns one pretrained classifier into a family
of smaller variants (the paper's model-layer compression).

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
import time
from dataclasses import dataclass, field
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


# ------------------------------------------------------------------------------------------- search


@dataclass
class SearchOptions:
    step_fraction: float = 0.05  # resource removed per round, as a fraction of the full model's cost
    retrain_fraction: float = 0.25  # of an epoch, per candidate
    retrain_lr: float = 5e-4
    finetune_epochs: float = 1.0  # before a variant is emitted
    batch_size: int = 32
    max_rounds: int = 100
    min_filters: int = MIN_FILTERS
    seed: int = 0


@dataclass
class RoundRecord:
    round: int
    layer: str
    removed: int
    width: int
    params: int
    flops: int
    accuracy: float
    candidates: dict[str, float]
    seconds: float

    def to_manifest(self) -> dict:
        return {"round": self.round, "layer": self.layer, "removed": self.removed, "width": self.width,
                "params": self.params, "flops": self.flops, "val_accuracy": round(self.accuracy, 4),
                "candidates": {k: round(v, 4) for k, v in self.candidates.items()},
                "seconds": round(self.seconds, 2)}


@dataclass
class Emitted:
    budget: Budget
    model: object  # the pruned Keras classifier (float), fine-tuned
    sizes: dict[str, int]
    cost: dict[str, int]
    val_accuracy: float
    latency_ms: float | None
    round: int


@dataclass
class SearchResult:
    emitted: list[Emitted]
    met_by_full: list[Budget]
    unmet: list[tuple[Budget, float]]  # budget, smallest value reached
    rounds: list[RoundRecord] = field(default_factory=list)
    seconds: float = 0.0


def _accuracy(model, x: np.ndarray, y: np.ndarray, batch: int = 512) -> float:
    import tensorflow as tf

    if len(y) == 0:
        return float("nan")
    correct = 0
    for start in range(0, len(x), batch):
        logits = model(tf.constant(x[start:start + batch]), training=False)
        correct += int(np.sum(np.argmax(logits.numpy(), axis=-1) == y[start:start + batch]))
    return correct / len(y)


def retrain(model, x: np.ndarray, y: np.ndarray, *, samples: int, lr: float, batch_size: int, seed: int) -> None:
    """Adam on about `samples` training samples (whole batches, drawn without replacement and repeating when
    more than one epoch) from (x, y), then BatchNorm recalibration. Cross-entropy on the logits.

    A plain loop rather than Keras `fit`: a pruning round retrains several new models for a few steps
    each, where `fit`'s set-up would cost more than the steps; long retrainings are compiled."""
    import tensorflow as tf

    from .image_model import recalibrate_batchnorm

    if samples <= 0 or len(x) == 0:
        return
    batch = min(batch_size, len(x))
    steps = max(1, int(round(samples / batch)))
    rng = np.random.default_rng(seed)
    reps = int(np.ceil(steps * batch / len(x)))
    idx = np.concatenate([rng.permutation(len(x)) for _ in range(reps)])[:steps * batch]
    optimizer = tf.keras.optimizers.Adam(lr)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables

    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    if steps >= 20:
        step = tf.function(step)
    for i in range(steps):
        rows = idx[i * batch:(i + 1) * batch]
        step(tf.constant(x[rows]), tf.constant(y[rows]))
    recalibrate_batchnorm(model, x[rng.permutation(len(x))])


def _metric_value(budget: Budget, cost: dict[str, int], latency: float | None) -> float:
    return latency if budget.metric == "latency_ms" else float(cost[budget.metric])


def search(classifier, factory: Callable[[dict[str, int]], object], x_train: np.ndarray, y_train: np.ndarray,
           x_val: np.ndarray, y_val: np.ndarray, budgets: list[Budget], opts: SearchOptions,
           latency_fn: Callable[[object], float] | None = None,
           progress: Callable[[str], None] = print) -> SearchResult:
    """Prune `classifier` round by round until every budget is met (see the module docstring)."""
    start = time.perf_counter()
    if any(b.metric == "latency_ms" for b in budgets) and latency_fn is None:
        raise ValueError("a latency budget needs a latency_fn")
    info = analyse(classifier)
    full_cost = chain_cost(info)
    model = classifier
    cost = dict(full_cost)
    latency = latency_fn(model) if latency_fn and any(b.metric == "latency_ms" for b in budgets) else None
    accuracy = _accuracy(model, x_val, y_val)
    result = SearchResult([], [], [])
    pending = []
    for b in budgets:
        if _metric_value(b, cost, latency) <= b.limit:
            result.met_by_full.append(b)
            progress(f"  budget {b.metric}={b.text}: already met by the full model")
        else:
            pending.append(b)
    if not pending:
        return result
    lat = f", {latency:.4f} ms" if latency is not None else ""
    progress(f"pruning search: {len(pending)} budget(s) to meet; full model {cost['params']} params, "
             f"{cost['flops'] / 1e6:.3f} MFLOPs{lat}, val_acc {accuracy:.4f}; "
             f"prunable layers: {', '.join(info.prunable)}")
    samples = max(opts.batch_size, int(round(opts.retrain_fraction * len(x_train))))
    for rnd in range(1, opts.max_rounds + 1):
        t0 = time.perf_counter()
        # pursue the pending budget that is closest to being met; FLOPs stand in for latency
        driver = min(pending, key=lambda b: _metric_value(b, cost, latency) / b.limit)
        proxy = "flops" if driver.metric == "latency_ms" else driver.metric
        target = cost[proxy] - opts.step_fraction * full_cost[proxy]
        plans = []
        for layer in info.prunable:
            n = info.sizes[layer]
            max_k = n - max(opts.min_filters, 1)
            if max_k < 1:
                continue
            chosen = None
            for k in range(1, max_k + 1):
                if chain_cost(info, {layer: n - k})[proxy] <= target:
                    chosen = k
                    break
            plans.append((layer, chosen, max_k))
        reaching = [(layer, k) for layer, k, _ in plans if k is not None]
        if not reaching:  # no single layer can save a whole step: take what each can still give
            reaching = [(layer, max_k) for layer, _, max_k in plans
                        if chain_cost(info, {layer: info.sizes[layer] - max_k})[proxy] < cost[proxy]]
        if not reaching:
            progress(f"  round {rnd}: no layer can be pruned further (every layer is at {opts.min_filters} filters)")
            break
        candidates: dict[str, float] = {}
        best = None
        for i, (layer, k) in enumerate(reaching):
            pruned, _ = prune_layer(model, layer, k, factory, info)
            retrain(pruned, x_train, y_train, samples=samples, lr=opts.retrain_lr, batch_size=opts.batch_size,
                    seed=opts.seed * 1000 + rnd * 17 + i)
            acc = _accuracy(pruned, x_val, y_val)
            candidates[f"{layer}-{k}"] = acc
            saving = cost[proxy] - chain_cost(info, {layer: info.sizes[layer] - k})[proxy]
            if best is None or (acc, saving) > (best[2], best[3]):
                best = (layer, k, acc, saving, pruned)
        layer, k, accuracy, _, model = best
        info = analyse(model)
        cost = chain_cost(info)
        record = RoundRecord(rnd, layer, k, info.sizes[layer], cost["params"], cost["flops"], accuracy, candidates,
                             time.perf_counter() - t0)
        result.rounds.append(record)
        if latency_fn and any(b.metric == "latency_ms" for b in pending):
            latency = latency_fn(model)
        tried = "  ".join(f"{name} {acc:.3f}" for name, acc in candidates.items())
        lat = f"  {latency:.4f} ms" if latency is not None else ""
        progress(f"  round {rnd:>2}: prune {layer} -{k} → {info.sizes[layer]:>3}  params {cost['params']:>7}  "
                 f"MFLOPs {cost['flops'] / 1e6:7.3f}{lat}  val_acc {accuracy:.4f}  [{tried}]  "
                 f"{record.seconds:.1f}s")
        met = [b for b in pending if _metric_value(b, cost, latency) <= b.limit]
        if met:
            if opts.finetune_epochs > 0:
                t1 = time.perf_counter()
                retrain(model, x_train, y_train, samples=int(round(opts.finetune_epochs * len(x_train))),
                        lr=opts.retrain_lr, batch_size=opts.batch_size, seed=opts.seed * 1000 + rnd * 17 + 999)
                accuracy = _accuracy(model, x_val, y_val)
                progress(f"    fine-tuned {opts.finetune_epochs:g} epoch(s): val_acc {accuracy:.4f}  "
                         f"{time.perf_counter() - t1:.1f}s")
            for b in met:
                pending.remove(b)
                sizes = {g: info.sizes[g] for g in info.prunable}
                result.emitted.append(Emitted(b, model, sizes, dict(cost), accuracy, latency, rnd))
                progress(f"    budget {b.metric}={b.text} met → variant {b.name} "
                         f"({', '.join(f'{g} {s}' for g, s in sizes.items())})")
        if not pending:
            break
    else:
        progress(f"  stopped after --prune-max-rounds {opts.max_rounds}")
    for b in pending:
        reached = _metric_value(b, cost, latency)
        result.unmet.append((b, reached))
        progress(f"  budget {b.metric}={b.text} NOT met: the smallest model reached {reached:g}")
    result.seconds = time.perf_counter() - start
    return result
