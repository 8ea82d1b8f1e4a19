"""The image pipeline: public data → pretrain base + classifier → int8 base + builtin-only head → measure →
bundle. The CLI's `image` subcommand is a thin shell around `build_image_bundle`."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .bundle_writer import Variant, check_output_dir, created_timestamp, verify_bundle, write_bundle
from .datasets import MNIST5K_NAME, MNIST_FIT_BOX, ImageSpec, load_split, low_resolution_copies
from .errors import BuildError, InputError
from .evaluate import LATENCY_BATCH, LATENCY_THREADS

TASK = "image_classification"
VARIANT_NAME = "full"


@dataclass
class ImageBuildOptions:
    data: str
    out: Path
    epochs: int = 20
    limit: int | None = None
    seed: int = 0
    class_capacity: int = 16
    feature_size: int = 64
    train_batch: int = 32
    width_mult: float = 1.0
    val_fraction: float = 0.1
    batch_size: int = 32
    learning_rate: float = 2e-3
    head_learning_rate: float = 1e-3
    head_epochs: int = 3
    budgets: list[str] | None = None
    prune_step: float = 0.05
    prune_retrain: float = 0.25
    prune_finetune: float = 1.0
    prune_max_rounds: int = 100
    strategy: str = "default"
    force: bool = False
    fit_box: int | None = None  # None: MNIST's 20 for mnist5k, plain resize (0) for a folder
    degrade: float = 0.0
    tail: str = "head"  # the cut: head (train only the head) or a tail_module.CUTS entry below it
    tail_l2: float = 1e-3  # pull of the tail's convolution weights toward the pretrained ones
    tail_lr_scale: float = 0.3  # the tail's convolution weights step with this share of the learning rate

    @property
    def input_spec(self) -> ImageSpec:
        box = self.fit_box if self.fit_box is not None else (MNIST_FIT_BOX if self.data == MNIST5K_NAME else 0)
        return ImageSpec().with_fit_box(box)

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.limit is None or self.limit >= 4, "--limit must be at least 4"),
            (self.seed >= 0, "--seed must not be negative"),
            (2 <= self.class_capacity <= 4096, "--class-capacity must be between 2 and 4096"),
            (4 <= self.feature_size <= 1024, "--feature-size must be between 4 and 1024"),
            (1 <= self.train_batch <= 4096, "--train-batch must be between 1 and 4096"),
            (0.1 <= self.width_mult <= 4.0, "--width-mult must be between 0.1 and 4"),
            (0.0 < self.val_fraction <= 0.5, "--val-fraction must be in (0, 0.5]"),
            (1 <= self.batch_size <= 4096, "--batch-size must be between 1 and 4096"),
            (0.0 < self.learning_rate < 1.0, "--learning-rate must be in (0, 1)"),
            (0.0 < self.head_learning_rate < 1.0, "--head-lr must be in (0, 1)"),
            (0 <= self.head_epochs <= 1000, "--head-epochs must be between 0 and 1000"),
            (0.0 < self.prune_step <= 0.5, "--prune-step must be in (0, 0.5]"),
            (0.0 < self.prune_retrain <= 10.0, "--prune-retrain must be in (0, 10]"),
            (0.0 <= self.prune_finetune <= 100.0, "--prune-finetune must be between 0 and 100"),
            (1 <= self.prune_max_rounds <= 10000, "--prune-max-rounds must be at least 1"),
            (0.0 <= self.degrade <= 1.0, "--degrade must be between 0 and 1"),
            (self.tail in ("head", "last_block", "last2_blocks"), "--tail must be head, last_block or last2_blocks"),
            (0.0 <= self.tail_l2 <= 100.0, "--tail-l2 must be between 0 and 100"),
            (0.0 < self.tail_lr_scale <= 10.0, "--tail-lr-scale must be in (0, 10]"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)


@dataclass
class ImageBuildResult:
    out: Path | None  # None on a multi-worker process that is not the chief
    manifest: dict
    seconds: float
    pretrain_seconds: float
    train_images: int
    val_images: int
    prune_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _quiet_call(fn, *args, **kwargs):
    """Run a converter step without the chatter Keras (Python) and the converter (C++) print; a failure
    still surfaces as the exception (with the converter's message)."""
    with quiet_output():
        return fn(*args, **kwargs)


@contextlib.contextmanager
def quiet_output(fds: tuple[int, ...] = (1, 2)):
    """Silence stdout/stderr at the Python and the file-descriptor level (the converter writes from C++)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved: list[tuple[int, int]] = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in fds:
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    except OSError:  # no real descriptors: the Python-level redirect still applies
        pass
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in reversed(saved):
            os.dup2(copy, fd)
            os.close(copy)


def build_image_bundle(opts: ImageBuildOptions, progress: Callable[[str], None] = print) -> ImageBuildResult:
    start = time.perf_counter()
    opts.validate()
    out = Path(opts.out)
    from .distribute import make_distribution, parse_tf_config

    if opts.strategy == "multi-worker":
        parse_tf_config()  # a clear error before any work
    check_output_dir(out, opts.force)
    spec = opts.input_spec

    progress(f"loading {opts.data} …")
    data, train, val = load_split(opts.data, spec, opts.class_capacity, opts.limit, opts.val_fraction, progress)
    n_classes = len(data.labels)
    progress(f"  {len(data)} images, {n_classes} classes: {len(train)} for training, {len(val)} held out")
    if opts.degrade > 0:
        train = low_resolution_copies(train, opts.degrade, opts.seed)
        progress(f"  + low-resolution copies: {len(train)} training images")

    from . import prune
    from .prune import parse_budgets

    budgets = parse_budgets(opts.budgets)  # before any training: a typo fails fast
    dist = make_distribution(opts.strategy)

    import tensorflow as tf

    from . import image_model
    from .evaluate import BaseRunner

    image_model.set_seed(opts.seed)
    input_shape = (spec.height, spec.width, spec.channels)

    def make_classifier():
        base = image_model.build_base(input_shape, opts.feature_size, opts.width_mult)
        return image_model.build_classifier(base, opts.class_capacity, n_classes)

    with dist.scope():
        classifier = make_classifier()
    base = image_model.base_of(classifier)
    params, flops = image_model.count_params(base), image_model.count_flops(base)
    progress(f"pretraining base ({params} params, {flops / 1e6:.2f} MFLOPs/image) + classifier "
             f"for {opts.epochs} epoch(s)"
             + (f", strategy {dist.name} ({dist.replicas} replica(s), {dist.task})" if dist.strategy else ""))
    pre = image_model.pretrain(classifier, train.x, train.y, val.x, val.y, epochs=opts.epochs,
                               batch_size=opts.batch_size, learning_rate=opts.learning_rate, progress=progress,
                               strategy=dist.strategy, finish=dist.strategy is None)
    if not dist.is_chief:
        progress(f"pretraining done on {dist.task}; the chief writes the bundle")
        return ImageBuildResult(out=None, manifest={}, seconds=time.perf_counter() - start,
                                pretrain_seconds=pre.seconds, train_images=len(train), val_images=len(val))
    if dist.strategy is not None:
        from .distribute import local_copy

        classifier = local_copy(classifier, make_classifier)
        image_model.finish_pretrain(classifier, train.x, val.x, val.y, pre, progress)

    active = np.zeros(opts.class_capacity, np.float32)
    active[:n_classes] = 1.0
    variants = [_finish_variant(VARIANT_NAME, classifier, train, val, active, opts, progress)]

    notes: list[str] = []
    search_record: dict = {}
    prune_seconds = 0.0
    if budgets:
        from .convert import convert_base_int8

        def latency_fn(model) -> float:  # int8 base as the board runs it, quick calibration
            quick = _quiet_call(convert_base_int8, image_model.base_of(model), train.x, max_calibration=32)
            return BaseRunner(quick).latency_ms(val.x if len(val) else train.x, repeats=40)

        search_opts = prune.SearchOptions(step_fraction=opts.prune_step, retrain_fraction=opts.prune_retrain,
                                          retrain_lr=opts.learning_rate / 4, finetune_epochs=opts.prune_finetune,
                                          batch_size=opts.batch_size, max_rounds=opts.prune_max_rounds,
                                          seed=opts.seed)
        factory = image_model.classifier_factory(input_shape, opts.feature_size, opts.class_capacity, n_classes)
        search = prune.search(classifier, factory, train.x, train.y, val.x, val.y, budgets, search_opts,
                              latency_fn=latency_fn, progress=progress)
        prune_seconds = search.seconds
        finished: dict[int, Variant] = {}
        for emitted in search.emitted:
            if id(emitted.model) in finished:  # two budgets met by the same model: same files, another name
                variant = dataclasses.replace(finished[id(emitted.model)], name=emitted.budget.name,
                                              extra=dict(finished[id(emitted.model)].extra))
            else:
                variant = _finish_variant(emitted.budget.name, emitted.model, train, val, active, opts, progress)
                finished[id(emitted.model)] = variant
            variant.extra.update({
                "budget": emitted.budget.to_manifest(),
                "widths": emitted.sizes,
                "pruning_rounds": emitted.round,
            })
            if emitted.budget.metric == "latency_ms" and variant.latency_ms > emitted.budget.limit:
                notes.append(f"variant {variant.name}: re-measured latency {variant.latency_ms:.4f} ms is above "
                             f"the budget (the search measured {emitted.latency_ms:.4f} ms; timing noise)")
            variants.append(variant)
        for b in search.met_by_full:
            notes.append(f"budget {b.metric}={b.text} is met by the full model: no separate variant")
        for b, reached in search.unmet:
            notes.append(f"budget {b.metric}={b.text} could not be met: the smallest model reached {reached:g}")
        search_record = {
            "budgets": [{**b.to_manifest(), "text": b.text} for b in budgets],
            "met_by_full": [b.name for b in search.met_by_full],
            "unmet": [{"budget": b.name, "reached": reached} for b, reached in search.unmet],
            "step_fraction": opts.prune_step, "retrain_epochs": opts.prune_retrain,
            "finetune_epochs": opts.prune_finetune, "min_filters": search_opts.min_filters,
            "criterion": "l2 norm of the BatchNorm-folded filter; candidate losing least public-validation accuracy",
            "rounds": [r.to_manifest() for r in search.rounds],
            "seconds": round(search.seconds, 2),
        }

    from ai_edge_litert import __version__ as litert_version  # noqa: N813

    build = {
        "builder_version": __version__,
        "tensorflow": tf.__version__,
        "seed": opts.seed,
        "data": data.description,
        "created": created_timestamp(),
        "litert": litert_version,
        "python": platform.python_version(),
        "images_used": len(data),
        "train_images": len(train),
        "val_images": len(val),
        "epochs": opts.epochs,
        "width_mult": opts.width_mult,
        "pretrain_seconds": round(pre.seconds, 2),
        "head_epochs": opts.head_epochs,
        "tail": opts.tail,
        "distribution": dist.describe(),
        "latency": {"threads": LATENCY_THREADS, "batch": LATENCY_BATCH, "interpreter": "ai_edge_litert"},
    }
    if search_record:
        build["pruning"] = search_record
    manifest = write_bundle(out, task=TASK, input_spec=spec.to_manifest(), labels=data.labels,
                            class_capacity=opts.class_capacity, train_batch=opts.train_batch,
                            optimizer={"name": "adam", "learning_rate": opts.head_learning_rate},
                            variants=variants, build=build, force=opts.force)
    verify_bundle(out)
    return ImageBuildResult(out=out, manifest=manifest, seconds=time.perf_counter() - start,
                            pretrain_seconds=pre.seconds, train_images=len(train), val_images=len(val),
                          prune_seconds=prune_seconds, notes=notes)


def _finish_variant(name: str, classifier, train, val, active: np.ndarray, opts: ImageBuildOptions,
                    progress: Callable[[str], None]) -> Variant:
    """A float classifier → int8 base + head trained on that base's own int8 features → measured Variant.

    The head starts from the classifier's dense layers and is trained `opts.head_epochs` epochs on the int8
    features of the public training images with the head's own train step (what the board runs).
    With `opts.tail` below the head, the base is the stem below that cut and the head the tail above it."""
    if opts.tail != "head":
        from .tail_build import finish_tail_variant

        return finish_tail_variant(name, classifier, train, val, active, opts, progress, _quiet_call, _predict)
    import tensorflow as tf

    from . import image_model
    from .convert import convert_base_int8, convert_head
    from .evaluate import BaseRunner, accuracy, head_probs, numpy_head_probs
    from .head_module import SIGNATURES, WEIGHT_NAMES, HeadModule, train_head

    t0 = time.perf_counter()
    base = image_model.base_of(classifier)
    base_model = _quiet_call(convert_base_int8, base, train.x)
    runner = BaseRunner(base_model)
    latency = runner.latency_ms(val.x if len(val) else train.x)
    pretrained = image_model.head_weights(classifier)

    logits_float = _predict(classifier, val.x)
    accuracy_float = accuracy(logits_float, val.y)
    # The head's math must reproduce the Keras classifier on the same (float) features.
    if len(val):
        probs_head = numpy_head_probs(pretrained, _predict(base, val.x), active)
        probs_keras = tf.nn.softmax(logits_float).numpy()
        diff = float(np.max(np.abs(probs_head - probs_keras)))
        if diff > 1e-3:
            raise BuildError(f"variant {name}: the head does not reproduce the pretrained classifier "
                             f"(max probability difference {diff:.2e})")
    val_int8 = runner.features(val.x)
    accuracy_pretrained_head = accuracy(numpy_head_probs(pretrained, val_int8, active), val.y)
    weights = pretrained
    if opts.head_epochs > 0:
        weights = train_head(HeadModule(pretrained, opts.train_batch), runner.features(train.x),
                             train.y.astype(np.int32), active, epochs=opts.head_epochs,
                             lr=opts.head_learning_rate, seed=opts.seed)
    head = HeadModule(weights, opts.train_batch)  # fresh: Adam state at zero in the bundle
    head_model = _quiet_call(convert_head, head, SIGNATURES)
    probs_int8 = head_probs(head_model, val_int8, active)
    if len(val):
        diff = float(np.max(np.abs(probs_int8 - numpy_head_probs(weights, val_int8, active))))
        if diff > 1e-3:
            raise BuildError(f"variant {name}: the converted head differs from the trained one "
                             f"(max probability difference {diff:.2e})")
    accuracy_int8 = accuracy(probs_int8, val.y)
    head_params = int(sum(np.prod(w.shape) for w in weights.values()))
    head_flops = int(2 * (weights["w0"].size + weights["w1"].size))
    params, flops = image_model.count_params(base), image_model.count_flops(base)
    progress(f"  variant {name}: {params} + {head_params} params, {(flops + head_flops) / 1e6:.3f} MFLOPs, "
             f"int8 base {len(base_model)} bytes, {latency:.4f} ms/image; val acc float {accuracy_float:.4f}, "
             f"int8 {accuracy_int8:.4f} (int8 with the classifier's own head {accuracy_pretrained_head:.4f})  "
             f"{time.perf_counter() - t0:.1f}s")
    return Variant(name=name, base_model=base_model, head_model=head_model, head_weights=list(WEIGHT_NAMES),
                   feature_size=int(base.output.shape[-1]), params=params, flops=flops, latency_ms=latency,
                   accuracy_int8=accuracy_int8, accuracy_float=accuracy_float,
                   extra={"head_params": head_params, "head_flops": head_flops,
                          "accuracy_int8_classifier_head": _round(accuracy_pretrained_head)})


def _predict(model, x: np.ndarray, batch: int = 512) -> np.ndarray:
    """model(x) in inference mode, in chunks, without Keras predict (which retraces for every new model)."""
    import tensorflow as tf

    if len(x) == 0:
        return np.zeros((0, int(model.output.shape[-1])), np.float32)
    return np.concatenate([model(tf.constant(x[i:i + batch]), training=False).numpy()
                           for i in range(0, len(x), batch)])


def _round(value: float):
    return None if value != value else round(float(value), 4)
