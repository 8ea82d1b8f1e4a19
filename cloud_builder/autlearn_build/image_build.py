"""The image pipeline: public data → pretrain base + classifier → int8 base + builtin-only head → measure →
bundle. The CLI's `image` subcommand is a thin shell around `build_image_bundle`."""

from __future__ import annotations

import contextlib
import io
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .bundle_writer import Variant, check_output_dir, created_timestamp, verify_bundle, write_bundle
from .datasets import ImageSpec, load_dataset, stratified_split
from .errors import BuildError, InputError

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
    force: bool = False

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
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)


@dataclass
class ImageBuildResult:
    out: Path
    manifest: dict
    seconds: float
    pretrain_seconds: float
    train_images: int
    val_images: int


def _quiet_call(fn, *args, **kwargs):
    """Run a converter step without the Python-level chatter Keras prints to stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def build_image_bundle(opts: ImageBuildOptions, progress: Callable[[str], None] = print) -> ImageBuildResult:
    start = time.perf_counter()
    opts.validate()
    out = Path(opts.out)
    check_output_dir(out, opts.force)
    spec = ImageSpec()

    progress(f"loading {opts.data} …")
    data = load_dataset(opts.data, spec)
    n_classes = len(data.labels)
    if n_classes > opts.class_capacity:
        raise InputError(f"{n_classes} classes do not fit --class-capacity {opts.class_capacity}")
    if opts.limit is not None:
        if opts.limit > len(data):
            progress(f"  --limit {opts.limit} exceeds the {len(data)} public images; using all of them")
        data = data.take(np.arange(min(opts.limit, len(data))))
    counts = np.bincount(data.y, minlength=n_classes)
    thin = [data.labels[c] for c in range(n_classes) if counts[c] < 2]
    if thin:
        raise InputError(f"class(es) {', '.join(thin)} have fewer than 2 images in the data used "
                         f"({len(data)} images); raise --limit")
    train_idx, val_idx = stratified_split(data.y, opts.val_fraction, n_classes)
    train, val = data.take(train_idx), data.take(val_idx)
    progress(f"  {len(data)} images, {n_classes} classes: {len(train)} for training, {len(val)} held out")

    import tensorflow as tf

    from . import image_model
    from .convert import convert_base_int8, convert_head
    from .evaluate import BaseRunner, accuracy, head_probs
    from .head_module import SIGNATURES, WEIGHT_NAMES, HeadModule

    image_model.set_seed(opts.seed)
    input_shape = (spec.height, spec.width, spec.channels)
    base = image_model.build_base(input_shape, opts.feature_size, opts.width_mult)
    classifier = image_model.build_classifier(base, opts.class_capacity, n_classes)
    params, flops = image_model.count_params(base), image_model.count_flops(base)
    progress(f"pretraining base ({params} params, {flops / 1e6:.2f} MFLOPs/image) + classifier "
             f"for {opts.epochs} epoch(s)")
    pre = image_model.pretrain(classifier, train.x, train.y, val.x, val.y, epochs=opts.epochs,
                               batch_size=opts.batch_size, learning_rate=opts.learning_rate, progress=progress)

    progress("converting: int8 base, builtin-only head …")
    base_model = _quiet_call(convert_base_int8, base, train.x)
    head = HeadModule(image_model.head_weights(classifier), opts.train_batch)
    head_model = _quiet_call(convert_head, head, SIGNATURES)

    progress("measuring on the held-out public images …")
    active = np.zeros(opts.class_capacity, np.float32)
    active[:n_classes] = 1.0
    logits_float = classifier.predict(val.x, batch_size=256, verbose=0)
    accuracy_float = accuracy(logits_float, val.y)
    # The converted head must reproduce the Keras classifier on the same (float) features.
    features_float = base.predict(val.x, batch_size=256, verbose=0)
    probs_head = head_probs(head_model, features_float, active)
    probs_keras = tf.nn.softmax(logits_float).numpy()
    if len(val) and float(np.max(np.abs(probs_head - probs_keras))) > 1e-3:
        raise BuildError("the converted head does not reproduce the pretrained classifier "
                         f"(max probability difference {np.max(np.abs(probs_head - probs_keras)):.2e})")
    runner = BaseRunner(base_model)
    accuracy_int8 = accuracy(head_probs(head_model, runner.features(val.x), active), val.y)
    latency = runner.latency_ms(val.x if len(val) else train.x)

    variant = Variant(name=VARIANT_NAME, base_model=base_model, head_model=head_model,
                      head_weights=list(WEIGHT_NAMES), feature_size=opts.feature_size, params=params,
                      flops=flops, latency_ms=latency, accuracy_int8=accuracy_int8, accuracy_float=accuracy_float)
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
        "latency": {"threads": 2, "batch": runner.batch, "interpreter": "ai_edge_litert"},
    }
    manifest = write_bundle(out, task=TASK, input_spec=spec.to_manifest(), labels=data.labels,
                            class_capacity=opts.class_capacity, train_batch=opts.train_batch,
                            optimizer={"name": "adam", "learning_rate": opts.head_learning_rate},
                            variants=[variant], build=build, force=opts.force)
    verify_bundle(out)
    return ImageBuildResult(out=out, manifest=manifest, seconds=time.perf_counter() - start,
                            pretrain_seconds=pre.seconds, train_images=len(train), val_images=len(val))
