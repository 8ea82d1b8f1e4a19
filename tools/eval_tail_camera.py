"""Camera photos (tools/bench_camera.py's set) on MobileNetV2: head-only against the `last_conv` tail (issue 14).

Both bundles are built beforehand with `autlearn-build image --backbone mobilenet_v2 --data PUBLIC [--tail
last_conv]` on bench_camera's public photos (seed 1); here one user's photos (seed 2, `per_class` per class) go
through a real daemon round at each cut (tools/eval_tail.board_round: Service + Engine, the daemon's defaults) and
the served version is scored on bench_camera's test photos (seed 4, 20 per class)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np


def camera_group(bundles: dict[str, Path], work: Path, per_class: int, test_per_class: int = 20) -> dict:
    import json

    from bench_camera import decode, make_set
    from eval_tail import board_round, cut_info, log

    user = make_set(work / "camera_user", per_class, 2)
    test = make_set(work / "camera_test", test_per_class, 4)
    files = [p for p, _ in user] + [p for p, _ in test]
    labels = np.array([c for _, c in user] + [c for _, c in test], np.int64)
    spec = json.loads((next(iter(bundles.values())) / "manifest.json").read_text())["input"]
    x = np.zeros((len(files), spec["height"], spec["width"], spec.get("channels", 3)), np.float32)
    test_idx = np.arange(len(user), len(files))
    x[test_idx] = decode([files[i] for i in test_idx], spec)
    order = np.random.default_rng(0).permutation(len(user))
    data = SimpleNamespace(x=x, labels=labels, files=files,
                           users=[{"name": "camera", "train": order, "test": test_idx}])
    out = {"per_class": per_class, "test_per_class": test_per_class, "cuts": {}}
    for cut, bundle in bundles.items():
        r = board_round(data, data.users[0], bundle, work / "boards")
        r["bytes_per_sample"] = round(r["cache_bytes"] / max(1, r["cache_entries"]), 1)
        out["cuts"][cut] = {"round": r, "bundle": cut_info(bundle)}
        log(f"   camera {cut}: accuracy {r['accuracy']:.4f} (pretrained {r['pretrained']:.4f}), holdout "
            f"{r['holdout_before']} → {r['holdout_after']} ({r['outcome']}), round {r['round_seconds']} s, "
            f"cache {r['bytes_per_sample']} B/sample")
    return out
