"""Structured pruning of a Keras functional model's expansion channels (MobileNet-class `--model`/`--backbone`).

A *chain* is found in the model's own graph: a Conv2D (the producer, e.g. a MobileNetV2 block's `expand`
1x1 convolution) whose output reaches exactly one later Conv2D or Dense (the consumer, the block's `project`
convolution) only through single-use BatchNormalization, element-wise activations, ZeroPadding2D, Dropout and
DepthwiseConv2D layers (the carriers), at least one of them a DepthwiseConv2D. Removing some of the producer's filters removes the same channels from
every carrier and the consumer's matching input weights; nothing outside the chain changes, so block outputs,
residual adds and the feature vector keep their sizes. Nested models (MobileNetV2 inside a classifier) are
searched inside; a chain never crosses a model boundary.

For a budget (prune.py's `--budget`: flops/params of base + head, BatchNorm folded, or the int8 base's
measured latency) every chain keeps the same fraction of its filters, rounded to a multiple of 8 where the
chain has one (XNNPACK's vector width), the highest-L2-norm ones (the BatchNorm scale folded in). The pruned
model is rebuilt from the model's config with the smaller filter counts and the kept weights copied in; its
BatchNorm statistics are recalibrated and, with `--prune-finetune EPOCHS`, its features are distilled from the
unpruned model's (mean squared error on --data), so the model's own head still reads them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import InputError
from .prune import MIN_FILTERS, Budget

STEP = 0.01  # the kept fraction is searched in these steps
CARRIERS = ("BatchNormalization", "ReLU", "Activation", "ZeroPadding2D", "Dropout", "DepthwiseConv2D")
ELEMENTWISE = ("relu", "relu6", "linear", "sigmoid", "tanh", "swish", "silu", "elu", "selu", "gelu",
               "hard_sigmoid", "hard_swish", "hard_silu", "leaky_relu", "softplus", "mish")


@dataclass(frozen=True)
class Chain:
    scope: tuple[str, ...]  # names of the nested models that hold it, outermost first
    producer: str
    carriers: tuple[str, ...]
    consumer: str
    size: int

    @property
    def key(self) -> str:
        return "/".join((*self.scope, self.producer))


# ------------------------------------------------------------------------------------------- the graph


def _inputs(layer) -> list:
    tensors = layer.input
    return list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]


def _is_carrier(layer) -> str | None:
    """None when channels pass `layer` one to one; else why not."""
    kind = type(layer).__name__
    if kind not in CARRIERS:
        return f"{kind} ({layer.name})"
    if kind == "DepthwiseConv2D" and int(layer.depth_multiplier) != 1:
        return f"DepthwiseConv2D ({layer.name}) with depth multiplier {layer.depth_multiplier}"
    if kind == "Activation" and layer.get_config().get("activation") not in ELEMENTWISE:
        return f"Activation {layer.get_config().get('activation')!r} ({layer.name})"
    if kind == "BatchNormalization" and layer.axis not in (-1, 3, [3], [-1]):
        return f"BatchNormalization ({layer.name}) over axis {layer.axis}"
    return None


def _walk(model, scope: tuple[str, ...], chains: list[Chain], reasons: list[str]) -> None:
    graph = getattr(model, "_functional", None) or model  # a Sequential through the Functional it wraps
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    calls: dict[int, int] = {}  # the calls in this graph (a layer's _inbound_nodes also count stale ones)
    consumers: dict[int, list] = {}
    for node in (n for depth in graph._nodes_by_depth.values() for n in depth):
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for t in node.input_tensors:
            consumers.setdefault(id(t._keras_history.operation), []).append(node.operation)
    for t in graph.outputs:
        consumers.setdefault(id(t._keras_history.operation), []).append(None)  # None: the model's output
    for layer in layers:
        if hasattr(layer, "layers"):
            _walk(layer, (*scope, layer.name), chains, reasons)
            continue
        if type(layer).__name__ != "Conv2D" or int(getattr(layer, "groups", 1)) != 1:
            continue
        where = "/".join((*scope, layer.name))
        if calls.get(id(layer), 0) != 1:
            reasons.append(f"{where}: called {calls.get(id(layer), 0)} times")
            continue
        carriers, cur = [], layer
        while True:
            nxt = consumers.get(id(cur), [])
            if len(nxt) != 1 or nxt[0] is None:
                what = "is a model output" if None in nxt else f"feeds {len(nxt)} layers"
                reasons.append(f"{where}: {cur.name} {what}")
                break
            nxt = nxt[0]
            if calls.get(id(nxt), 0) != 1:
                reasons.append(f"{where}: its channels reach {nxt.name}, called {calls.get(id(nxt), 0)} times")
                break
            if type(nxt).__name__ in ("Conv2D", "Dense") and int(getattr(nxt, "groups", 1)) == 1:
                if not any(type(c).__name__ == "DepthwiseConv2D" for c in carriers):
                    reasons.append(f"{where}: no DepthwiseConv2D before {nxt.name} (not a block's expansion)")
                    break
                chains.append(Chain(scope, layer.name, tuple(c.name for c in carriers), nxt.name, int(layer.filters)))
                break
            why = _is_carrier(nxt)
            if why is not None:
                reasons.append(f"{where}: its channels reach {why}")
                break
            carriers.append(nxt)
            cur = nxt


def find_chains(model, min_filters: int = MIN_FILTERS) -> tuple[list[Chain], list[str]]:
    """The prunable chains of `model` (with more than `min_filters` filters) and, per other Conv2D, why not."""
    chains: list[Chain] = []
    reasons: list[str] = []
    _walk(model, (), chains, reasons)
    small = [c for c in chains if c.size <= min_filters]
    reasons += [f"{'/'.join((*c.scope, c.producer))}: only {c.size} filters" for c in small]
    return [c for c in chains if c.size > min_filters], reasons


def require_chains(model, source: str) -> list[Chain]:
    """find_chains, or an InputError that says why the model cannot be pruned."""
    chains, reasons = find_chains(model)
    if not chains:
        shown = "; ".join(reasons[:6]) + ("; …" if len(reasons) > 6 else "") if reasons else "it has no Conv2D"
        raise InputError(
            f"{source}: --budget cannot prune this model: no Conv2D's output reaches exactly one later Conv2D or "
            "Dense only through BatchNormalization, activations, ZeroPadding2D and a DepthwiseConv2D (a MobileNetV2 "
            f"block's expansion); {shown}")
    return chains


def leaves(model, scope: tuple[str, ...] = ()):
    """(scope, layer) for every leaf layer, nested models flattened, in order."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from leaves(layer, (*scope, layer.name))
        else:
            yield scope, layer


# ------------------------------------------------------------------------------------------- costs


def _roles(chains: list[Chain], widths: dict[str, int]) -> tuple[dict, dict]:
    """(scope, layer) → pruned width of its input channels / of its output channels."""
    cin: dict = {}
    cout: dict = {}
    for c in chains:
        w = widths.get(c.key, c.size)
        cout[(c.scope, c.producer)] = w
        for name in c.carriers:
            cin[(c.scope, name)] = cout[(c.scope, name)] = w
        cin[(c.scope, c.consumer)] = w
    return cin, cout


def model_cost(model, chains: list[Chain] = (), widths: dict[str, int] | None = None,
               head: tuple[int, int] = (0, 0)) -> dict[str, int]:
    """Parameters (BatchNorm folded: one bias per channel) and FLOPs (a multiply-add = 2) per image of `model`
    with `widths` (chain key → kept filters), as image_model.count_params/count_flops count them, plus
    `head` = (params, flops) of the board's head."""
    cin_of, cout_of = _roles(list(chains), widths or {})
    params, flops = head
    for scope, layer in leaves(model):
        kind = type(layer).__name__
        key = (scope, layer.name)
        if kind == "InputLayer" or not hasattr(layer, "output"):
            continue
        shape_in, shape_out = _inputs(layer)[0].shape, layer.output.shape
        cin = cin_of.get(key, shape_in[-1] if len(shape_in) else 0)
        cout = cout_of.get(key, shape_out[-1] if len(shape_out) else 0)
        if kind == "DepthwiseConv2D":
            kh, kw = layer.kernel_size
            params += kh * kw * cin + (cin if layer.use_bias else 0)
            flops += 2 * shape_out[1] * shape_out[2] * cin * kh * kw
        elif kind == "Conv2D":
            kh, kw = layer.kernel_size
            params += kh * kw * cin * cout + (cout if layer.use_bias else 0)
            flops += 2 * shape_out[1] * shape_out[2] * cout * cin * kh * kw
        elif kind == "Dense":
            params += cin * cout + (cout if layer.use_bias else 0)
            flops += 2 * cin * cout * int(np.prod(shape_in[1:-1] or [1]))
        elif kind == "BatchNormalization":
            params += cin
        elif kind == "GlobalAveragePooling2D":
            flops += shape_in[1] * shape_in[2] * shape_in[3]
        else:
            params += int(sum(np.prod(w.shape) for w in layer.weights))
    return {"params": int(params), "flops": int(flops)}


def uniform_widths(chains: list[Chain], keep: float, min_filters: int = MIN_FILTERS) -> dict[str, int]:
    """Every chain keeps about `keep` of its filters: a multiple of 8 when its size is one, at least
    `min_filters`, never more than it has."""
    widths = {}
    for c in chains:
        unit = 8 if c.size % 8 == 0 and c.size >= 16 else 1
        w = int(round(c.size * keep / unit)) * unit
        widths[c.key] = int(min(c.size, max(min_filters, w)))
    return widths


# ------------------------------------------------------------------------------------------- surgery


def filter_norms(model, chain: Chain) -> np.ndarray:
    """L2 norm of each producer filter, times |gamma / sqrt(var + eps)| of the BatchNorm right after it."""
    layers = {(s, layer.name): layer for s, layer in leaves(model)}
    kernel = np.asarray(layers[(chain.scope, chain.producer)].get_weights()[0], np.float64)
    norms = np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), axis=0)
    bn = layers[(chain.scope, chain.carriers[0])]  # a chain has at least its depthwise carrier
    if type(bn).__name__ == "BatchNormalization":
        gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.gamma is not None else 1.0
        norms = norms * np.abs(gamma / np.sqrt(np.asarray(bn.moving_variance.numpy(), np.float64) + bn.epsilon))
    return norms


def kept_filters(model, chains: list[Chain], widths: dict[str, int]) -> dict[str, np.ndarray]:
    """Chain key → indices (ascending) of the `widths[key]` filters with the largest norms."""
    keep = {}
    for c in chains:
        order = np.argsort(-filter_norms(model, c), kind="stable")
        keep[c.key] = np.sort(order[:widths.get(c.key, c.size)])
    return keep


def _layer_entry(config: dict, scope: tuple[str, ...], name: str) -> dict:
    """The entry of layer `name` (in nested models `scope`) in a model config: {"class_name", "config", …}."""
    entry = {"config": config}
    for part in (*scope, name):
        entry = next(e for e in entry["config"]["layers"] if e.get("config", {}).get("name") == part)
    return entry


def prune_model(model, chains: list[Chain], keep: dict[str, np.ndarray], source: str = "the model"):
    """A new model with only the `keep[chain.key]` channels of every chain, rebuilt from `model`'s config, every
    other weight copied as it is."""
    config = copy.deepcopy(model.get_config())
    for c in chains:
        _layer_entry(config, c.scope, c.producer)["config"]["filters"] = int(len(keep[c.key]))
        for name in (c.producer, *c.carriers, c.consumer):  # built again from the new shapes
            _layer_entry(config, c.scope, name).pop("build_config", None)
    try:
        pruned = type(model).from_config(config)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types; its message is what we report
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{source}: Keras cannot rebuild it from its config with fewer filters, so --budget "
                         f"cannot prune it ({type(exc).__name__}: {first[:200]})") from None
    slices: dict = {}  # (scope, layer) → {axis: kept indices}
    for c in chains:
        k = keep[c.key]
        slices.setdefault((c.scope, c.producer), {})["out"] = k
        for name in c.carriers:
            slices.setdefault((c.scope, name), {})["carry"] = k
        slices.setdefault((c.scope, c.consumer), {})["in"] = k
    target = {(s, layer.name): layer for s, layer in leaves(pruned)}
    for scope, layer in leaves(model):
        weights = layer.get_weights()
        if not weights:
            continue
        cut = slices.get((scope, layer.name), {})
        kind = type(layer).__name__
        if "carry" in cut:  # BatchNorm: every vector; depthwise: kernel axis 2 and the bias
            weights = [np.take(w, cut["carry"], axis=2 if w.ndim == 4 else 0) for w in weights]
        if "in" in cut:
            axis = 2 if kind == "Conv2D" else 0
            weights[0] = np.take(weights[0], cut["in"], axis=axis)
        if "out" in cut:
            weights = [np.take(weights[0], cut["out"], axis=3)] + [np.take(b, cut["out"], axis=0) for b in weights[1:]]
        target[(scope, layer.name)].set_weights(weights)
    return pruned


# ------------------------------------------------------------------------------------------- recovery


def distill(pruned_base, teacher_base, x: np.ndarray, *, epochs: float, lr: float, batch_size: int, seed: int) -> None:
    """BatchNorm recalibration, then Adam on the mean squared error between the pruned base's features and
    the unpruned one's over about `epochs` passes of `x`, then BatchNorm recalibration again."""
    import tensorflow as tf

    from .image_model import recalibrate_batchnorm

    rng = np.random.default_rng(seed)
    recalibrate_batchnorm(pruned_base, x[rng.permutation(len(x))], max_images=256)
    batch = min(batch_size, len(x))
    steps = int(round(epochs * len(x) / batch)) if len(x) else 0
    if steps <= 0:
        return
    targets = np.concatenate([teacher_base(tf.constant(x[i:i + 64]), training=False).numpy()
                              for i in range(0, len(x), 64)])
    reps = int(np.ceil(steps * batch / len(x)))
    idx = np.concatenate([rng.permutation(len(x)) for _ in range(reps)])[:steps * batch]
    optimizer = tf.keras.optimizers.Adam(lr)
    variables = pruned_base.trainable_variables

    @tf.function
    def step(xb, tb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(pruned_base(xb, training=True) - tb))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    for i in range(steps):
        rows = idx[i * batch:(i + 1) * batch]
        step(tf.constant(x[rows]), tf.constant(targets[rows]))
    recalibrate_batchnorm(pruned_base, x[rng.permutation(len(x))], max_images=256)


# ------------------------------------------------------------------------------------------- budgets


@dataclass
class Pruned:
    budget: Budget
    model: object  # the pruned Keras classifier
    widths: dict[str, int]
    cost: dict[str, int]
    keep_fraction: float
    latency_ms: float | None


def _metric(budget: Budget, cost: dict, latency: float | None) -> float:
    return float(latency) if budget.metric == "latency_ms" else float(cost[budget.metric])


def plan(model, chains: list[Chain], budget: Budget, head: tuple[int, int],
         latency_of: Callable[[dict[str, int]], float] | None = None) -> tuple[float, dict, dict, float | None]:
    """The largest uniformly kept fraction whose model meets `budget`: (fraction, widths, cost, latency), or
    the smallest model reached when none does (its metric above the limit). FLOPs/params are counted; a
    latency budget is bisected over the fractions with `latency_of` (the int8 base measured)."""
    fractions = [round(1 - STEP * i, 4) for i in range(1, int(round(1 / STEP)))]
    cost_of = {f: model_cost(model, chains, uniform_widths(chains, f), head) for f in fractions}
    if budget.metric != "latency_ms":
        for f in fractions:
            if cost_of[f][budget.metric] <= budget.limit:
                return f, uniform_widths(chains, f), cost_of[f], None
        f = fractions[-1]
        return f, uniform_widths(chains, f), cost_of[f], None
    lo, hi, best, measured = 0, len(fractions) - 1, None, {}
    while lo <= hi:  # latency falls as the fraction does: bisect for the largest fraction that fits
        mid = (lo + hi) // 2
        f = fractions[mid]
        measured[f] = latency_of(uniform_widths(chains, f))
        if measured[f] <= budget.limit:
            best, hi = f, mid - 1
        else:
            lo = mid + 1
    f = best if best is not None else min(measured)
    return f, uniform_widths(chains, f), cost_of[f], measured[f]


def prune_for_budgets(model, base_of: Callable[[object], object], x: np.ndarray, budgets: list[Budget],
                      head: tuple[int, int], opts, source: str,
                      latency_fn: Callable[[object], float] | None = None,
                      progress: Callable[[str], None] = print) -> tuple[list[Pruned], list[str]]:
    """One pruned, recovered classifier per budget not met by `model` itself; and notes (budgets met by the
    full model, budgets no fraction meets). `base_of(classifier)` is the classifier cut at its features."""
    chains = require_chains(model, source)
    full = model_cost(model, chains, {}, head)
    teacher = base_of(model)
    full_latency = latency_fn(model) if latency_fn and any(b.metric == "latency_ms" for b in budgets) else None
    progress(f"  pruning: {len(chains)} prunable chains ({sum(c.size for c in chains)} filters), full model "
             f"{full['params']} params, {full['flops'] / 1e6:.1f} MFLOPs"
             + (f", {full_latency:.3f} ms" if full_latency is not None else ""))
    out: list[Pruned] = []
    notes: list[str] = []

    def latency_of(widths):
        return latency_fn(prune_model(model, chains, kept_filters(model, chains, widths), source))

    for budget in budgets:
        if _metric(budget, full, full_latency) <= budget.limit:
            notes.append(f"budget {budget.metric}={budget.text} is met by the full model: no separate variant")
            continue
        t0 = time.perf_counter()
        fraction, widths, cost, latency = plan(model, chains, budget, head, latency_of)
        if _metric(budget, cost, latency) > budget.limit:
            notes.append(f"budget {budget.metric}={budget.text} could not be met: the smallest model reached "
                         f"{_metric(budget, cost, latency):g}")
            continue
        pruned = prune_model(model, chains, kept_filters(model, chains, widths), source)
        distill(base_of(pruned), teacher, x, epochs=opts.prune_finetune, lr=opts.learning_rate / 4,
                batch_size=opts.batch_size, seed=opts.seed)
        progress(f"  budget {budget.metric}={budget.text}: every chain keeps {fraction:.2f} of its filters → "
                 f"{cost['params']} params, {cost['flops'] / 1e6:.1f} MFLOPs"
                 + (f", {latency:.3f} ms" if latency is not None else "") + "; features distilled "
                 f"{opts.prune_finetune:g} epoch(s), {time.perf_counter() - t0:.1f} s")
        out.append(Pruned(budget, pruned, widths, cost, fraction, latency))
    return out, notes
