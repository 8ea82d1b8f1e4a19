"""The budget search over prune.py's pruning steps, and the image bundle variants it yields.

Round by round until every budget is met; each emitted model is finished like the full one and records its
budget, widths and round.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .prune import MIN_FILTERS, Budget, analyse, chain_cost, prune_layer


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


@dataclass
class PrunedVariants:
    variants: list  # bundle_writer.Variant, in the order the budgets were met
    notes: list[str]
    record: dict  # the manifest's build.pruning
    seconds: float


def pruned_variants(classifier, factory: Callable[[dict[str, int]], object], train, val, budgets: list[Budget],
                    opts, finish: Callable[[str, object], object],
                    progress: Callable[[str], None] = print) -> PrunedVariants:
    """Search `budgets` from the pretrained `classifier` with the --prune-* options of `opts`; every emitted
    model becomes `finish(name, model)` (a Variant; two budgets met by one model share its files under two
    names), annotated with its budget, widths and round."""
    from . import image_model
    from .build_steps import quiet_call
    from .convert import convert_base_int8
    from .evaluate import BaseRunner

    def latency_fn(model) -> float:  # int8 base as the board runs it, quick calibration
        quick = quiet_call(convert_base_int8, image_model.base_of(model), train.x, max_calibration=32)
        return BaseRunner(quick).latency_ms(val.x if len(val) else train.x, repeats=40)

    search_opts = SearchOptions(step_fraction=opts.prune_step, retrain_fraction=opts.prune_retrain,
                                retrain_lr=opts.learning_rate / 4, finetune_epochs=opts.prune_finetune,
                                batch_size=opts.batch_size, max_rounds=opts.prune_max_rounds, seed=opts.seed)
    found = search(classifier, factory, train.x, train.y, val.x, val.y, budgets, search_opts,
                   latency_fn=latency_fn, progress=progress)
    variants, notes = [], []
    finished: dict[int, object] = {}
    for emitted in found.emitted:
        if id(emitted.model) in finished:  # two budgets met by the same model: same files, another name
            variant = dataclasses.replace(finished[id(emitted.model)], name=emitted.budget.name,
                                          extra=dict(finished[id(emitted.model)].extra))
        else:
            variant = finish(emitted.budget.name, emitted.model)
            finished[id(emitted.model)] = variant
        variant.extra.update({"budget": emitted.budget.to_manifest(), "widths": emitted.sizes,
                              "pruning_rounds": emitted.round})
        if emitted.budget.metric == "latency_ms" and variant.latency_ms > emitted.budget.limit:
            notes.append(f"variant {variant.name}: re-measured latency {variant.latency_ms:.4f} ms is above "
                         f"the budget (the search measured {emitted.latency_ms:.4f} ms; timing noise)")
        variants.append(variant)
    for b in found.met_by_full:
        notes.append(f"budget {b.metric}={b.text} is met by the full model: no separate variant")
    for b, reached in found.unmet:
        notes.append(f"budget {b.metric}={b.text} could not be met: the smallest model reached {reached:g}")
    record = {
        "budgets": [{**b.to_manifest(), "text": b.text} for b in budgets],
        "met_by_full": [b.name for b in found.met_by_full],
        "unmet": [{"budget": b.name, "reached": reached} for b, reached in found.unmet],
        "step_fraction": opts.prune_step, "retrain_epochs": opts.prune_retrain,
        "finetune_epochs": opts.prune_finetune, "min_filters": search_opts.min_filters,
        "criterion": "l2 norm of the BatchNorm-folded filter; candidate losing least public-validation accuracy",
        "rounds": [r.to_manifest() for r in found.rounds],
        "seconds": round(found.seconds, 2),
    }
    return PrunedVariants(variants, notes, record, found.seconds)
