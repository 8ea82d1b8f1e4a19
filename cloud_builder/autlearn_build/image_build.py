"""The image pipeline: public data → pretrain base + classifier → int8 base + builtin-only head → bundle.

Each variant is measured; the CLI's `image` subcommand is a thin shell around `build_image_bundle` (and, with
--model or --backbone, around model_build's `build_model_bundle`)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .build_steps import (BuildResult, active_mask, build_record, chief_copy, latency_record, predict, prepare,
                          quiet_call, write_verified)
from .bundle_writer import Variant, metric
from .datasets import load_split
from .errors import BuildError, InputError
from .evaluate import LATENCY_BATCH, LATENCY_THREADS
from .image_options import ImageOptions
from .public_augment import augmentation_record, parse_ops, pretraining_set

TASK = "image_classification"
VARIANT_NAME = "full"


def build_image_bundle(opts: ImageOptions, progress: Callable[[str], None] = print) -> BuildResult:
    start = time.perf_counter()
    if opts.resolutions:  # the built-in CNN is pretrained at one size: --width-mult is its compression axis
        raise InputError("--resolutions applies to a build from --model or --backbone, not the built-in CNN")
    out = prepare(opts)
    spec = opts.input_spec

    progress(f"loading {opts.data} …")
    data, train, val = load_split(opts.data, spec, opts.class_capacity, opts.limit, opts.val_fraction, progress)
    n_classes = len(data.labels)
    progress(f"  {len(data)} images, {n_classes} classes: {len(train)} for training, {len(val)} held out")
    originals = len(train)
    ops = parse_ops(opts.augment_ops)
    if opts.degrade > 0 or opts.augment_public > 0:
        t_aug = time.perf_counter()
        train = pretraining_set(train, opts.degrade, opts.augment_public, ops, opts.seed)
        progress(f"  + {train.description.split(' + ', 1)[1]}: {len(train)} training images "
                 f"({time.perf_counter() - t_aug:.1f}s)")

    from .distribute import make_distribution
    from .prune import parse_budgets

    budgets = parse_budgets(opts.budgets)  # before any training: a typo fails fast
    dist = make_distribution(opts.strategy)

    from . import image_model

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
    copy = chief_copy(dist, classifier, make_classifier, progress)
    if copy is None:
        return BuildResult(out=None, manifest={}, seconds=time.perf_counter() - start,
                           pretrain_seconds=pre.seconds, train_size=len(train), val_size=len(val))
    if dist.strategy is not None:
        image_model.finish_pretrain(copy, train.x, val.x, val.y, pre, progress)
    classifier = copy

    active = active_mask(opts.class_capacity, n_classes)

    def finish(name: str, model) -> Variant:
        return _finish_variant(name, model, train, val, active, opts, progress)

    variants = [finish(VARIANT_NAME, classifier)]
    notes: list[str] = []
    prune_seconds = 0.0
    pruning = None
    if budgets:
        from .prune_search import pruned_variants

        factory = image_model.classifier_factory(input_shape, opts.feature_size, opts.class_capacity, n_classes)
        family = pruned_variants(classifier, factory, train, val, budgets, opts, finish, progress)
        variants += family.variants
        notes, pruning, prune_seconds = family.notes, family.record, family.seconds

    build = build_record(
        opts, data.description, images_used=len(data), train_images=len(train), val_images=len(val),
        epochs=opts.epochs, width_mult=opts.width_mult, pretrain_seconds=round(pre.seconds, 2),
        head_epochs=opts.head_epochs, tail=opts.tail, distribution=dist.describe(),
        latency=latency_record(LATENCY_THREADS, LATENCY_BATCH))
    if pruning:
        build["pruning"] = pruning
    if opts.degrade > 0 or opts.augment_public > 0:
        build["public_augmentation"] = augmentation_record(opts.degrade, opts.augment_public, ops, len(train),
                                                           originals)
    manifest = write_verified(out, opts, task=TASK, input_spec=spec.to_manifest(), labels=data.labels,
                              class_capacity=opts.class_capacity, variants=variants, build=build)
    return BuildResult(out=out, manifest=manifest, seconds=time.perf_counter() - start,
                       pretrain_seconds=pre.seconds, train_size=len(train), val_size=len(val),
                       prune_seconds=prune_seconds, notes=notes)


def _finish_variant(name: str, classifier, train, val, active: np.ndarray, opts: ImageOptions,
                    progress: Callable[[str], None]) -> Variant:
    """A float classifier → int8 base + head trained on that base's own int8 features → measured Variant.

    The head starts from the classifier's dense layers and is trained `opts.head_epochs` epochs on the int8
    features of the public training images with the head's own train step (what the board runs).
    With `opts.tail` below the head, the base is the stem below that cut and the head the tail above it; with a
    list of cuts, the head-only variant carries each deeper one."""
    if opts.tail != "head":  # one cut below the head, or a list of cuts (tail_build.finish_cuts)
        from .tail_build import finish_cuts, finish_tail_variant

        return finish_cuts(opts, lambda o: _finish_variant(name, classifier, train, val, active, o, progress),
                           lambda o: finish_tail_variant(name, classifier, train, val, active, o, progress,
                                                         quiet_call, predict))
    import tensorflow as tf

    from . import image_model
    from .convert import convert_base_int8, convert_head
    from .evaluate import BaseRunner, accuracy, head_probs, numpy_head_probs
    from .head_module import SIGNATURES, WEIGHT_NAMES, HeadModule, train_head

    t0 = time.perf_counter()
    base = image_model.base_of(classifier)
    base_model = quiet_call(convert_base_int8, base, train.x)
    runner = BaseRunner(base_model)
    latency = runner.latency_ms(val.x if len(val) else train.x)
    pretrained = image_model.head_weights(classifier)

    logits_float = predict(classifier, val.x)
    accuracy_float = accuracy(logits_float, val.y)
    # The head's math must reproduce the Keras classifier on the same (float) features.
    if len(val):
        probs_head = numpy_head_probs(pretrained, predict(base, val.x), active)
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
    head_model = quiet_call(convert_head, head, SIGNATURES)
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
                          "accuracy_int8_classifier_head": metric(accuracy_pretrained_head)})
