"""The steps every build path (image, model, text) shares, written once.

Checks before any work, quiet converter calls, the chief's copy after distributed pretraining, the build
record, and writing the bundle then verifying it with the board's own loader (`autlearn.runtime.bundle.load`).
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .bundle_writer import Variant, check_output_dir, created_timestamp, write_bundle
from .errors import BuildError


@dataclass
class BuildResult:
    out: Path | None  # None on a multi-worker process that is not the chief
    manifest: dict
    seconds: float
    pretrain_seconds: float = 0.0
    train_size: int = 0  # training images (image, model) or tokens (text)
    val_size: int = 0  # held-out images or tokens
    prune_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def prepare(opts, distributed: bool = True) -> Path:
    """Validate the options, refuse a multi-worker run without TF_CONFIG and an unusable output directory:
    every clear error before any work (each multi-worker process checks; only the chief will write)."""
    opts.validate()
    if distributed and opts.strategy == "multi-worker":
        from .distribute import parse_tf_config

        parse_tf_config()
    out = Path(opts.out)
    check_output_dir(out, opts.force)
    return out


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


def quiet_call(fn, *args, **kwargs):
    """Run a converter step without the chatter Keras (Python) and the converter (C++) print; a failure
    still surfaces as the exception (with the converter's message)."""
    with quiet_output():
        return fn(*args, **kwargs)


def predict(model, x: np.ndarray, batch: int = 512) -> np.ndarray:
    """model(x) in inference mode, in chunks, without Keras predict (which retraces for every new model)."""
    import tensorflow as tf

    if len(x) == 0:
        return np.zeros((0, int(model.output.shape[-1])), np.float32)
    return np.concatenate([model(tf.constant(x[i:i + batch]), training=False).numpy()
                           for i in range(0, len(x), batch)])


def active_mask(capacity: int, n_active: int) -> np.ndarray:
    """1 for the first `n_active` class slots, 0 for the free ones."""
    active = np.zeros(capacity, np.float32)
    active[:n_active] = 1.0
    return active


def chief_copy(dist, classifier, make_classifier, progress: Callable[[str], None]):
    """After pretraining: None on a worker that is not the chief (it stops here), else the classifier, as a
    local copy outside the strategy when there is one (what follows involves no other worker)."""
    if not dist.is_chief:
        progress(f"pretraining done on {dist.task}; the chief writes the bundle")
        return None
    if dist.strategy is None:
        return classifier
    from .distribute import local_copy

    return local_copy(classifier, make_classifier)


def build_record(opts, data: str, **fields) -> dict:
    """The manifest's `build`: what built it (versions, seed, data, time), then the path's own `fields`."""
    import tensorflow as tf
    from ai_edge_litert import __version__ as litert_version  # noqa: N813

    return {"builder_version": __version__, "tensorflow": tf.__version__, "seed": opts.seed, "data": data,
            "created": created_timestamp(), "litert": litert_version, "python": platform.python_version(),
            **fields}


def latency_record(threads: int, batch: int, per: str | None = None) -> dict:
    """How latency_ms was measured."""
    return {"threads": threads, "batch": batch, **({"per": per} if per else {}), "interpreter": "ai_edge_litert"}


def write_verified(out: Path, opts, *, task: str, input_spec: dict, labels: list[str], class_capacity: int,
                   variants: list[Variant], build: dict, extra_files: dict[str, bytes] | None = None,
                   fields: dict | None = None) -> dict:
    """Write the bundle (train batch, head optimizer and --force from `opts`), then load it as the board does:
    a bundle the board would refuse is a build failure (exit 1) naming what is wrong."""
    from autlearn.errors import AutlearnError
    from autlearn.runtime.bundle import load

    manifest = write_bundle(out, task=task, input_spec=input_spec, labels=labels, class_capacity=class_capacity,
                            train_batch=opts.train_batch,
                            optimizer={"name": "adam", "learning_rate": opts.head_learning_rate},
                            variants=variants, build=build, force=opts.force, extra_files=extra_files, fields=fields)
    try:
        bundle = load(out)
    except AutlearnError as exc:
        raise BuildError(f"the written bundle does not load on the board: {exc.message}") from exc
    if not bundle.manifest_covered:
        raise BuildError(f"the written bundle {out} has no manifest.sha256")
    return manifest
