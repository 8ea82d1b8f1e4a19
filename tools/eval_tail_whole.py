"""Issue 14's cost and accuracy targets to the same accuracy: the board's deepest cut against whole-model training.

Per user (tools/eval_tail.py's new-classes users and the first --uci-users of make eval's UCI users):

  round     a real daemon round (Service + Engine, the defaults: offline, 1 augmented copy, 30 epochs, min_steps
            1000, holdout gate) on a `--tail last2_blocks` bundle (eval_tail.ensure_bundle, --build-args), on the
            first (1 - --later-fraction) of the user's training images; its wall and CPU time, its phases from the
            round's progress events (stem passes = round_started → features, training = features → trained), and
            the served version's test accuracy: the target. Then a second round after the remaining images
            arrive (the activations of the first ones cached, the head continuing: the incremental round).
  whole     the SAME pretrained float CNN (re-created with the builder's own code and options, checked against the
            bundle's manifest `accuracy_float`) fine-tuned whole on exactly the images the first round trained on
            (its non-holdout files plus the daemon's own augmented copy of each, same seeds): (i) through the
            builtin-only TFLite `train` signature of tools/tflite_whole.py in LiteRT, the test images scored
            after every epoch, until the round's accuracy is reached or --max-epochs; (ii) in Keras (float, Adam
            at the bundle's learning rate, batch = the bundle's train batch, --keras-epochs epochs).

Ratio = the TFLite whole-model time to first reach the round's test accuracy / the round's time (target >= 10);
never reached: a lower bound. Writes <out>/tail_whole.json and <out>/tail_whole.md; per-user results are kept
in <work>/whole_rounds.json (delete it to measure again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from bench_baselines import time_to_target  # noqa: E402
from eval_tail import Memo, ensure_bundle, log  # noqa: E402
from eval_tail_whole_report import CUT, TARGET_RATIO, markdown, summary_lines  # noqa: E402

ENSURE_ARGS = ["--epochs", "8", "--seed", "0", "--degrade", "1"]  # eval_tail.ensure_bundle's (checked below)


# ------------------------------------------------------------------------------------------ pure logic

def reach(epoch_s: list[float], cpu_s: list[float], accs: list[float], target: float, fixed_s: float = 0.0,
          fixed_cpu_s: float = 0.0) -> dict:
    """Wall and CPU seconds until the per-epoch test accuracy first reaches `target` (set-up included);
    not reached: the whole run is charged and `reached` is False (a ratio made from it is a lower bound)."""
    if len(cpu_s) != len(epoch_s):
        raise ValueError("one CPU reading per epoch")
    t = time_to_target(fixed_s, epoch_s, accs, target)
    last = (t["epochs"] or len(epoch_s))
    return {"reached": t["reached"], "epochs": t["epochs"], "seconds": round(t["seconds"], 3),
            "cpu_seconds": round(fixed_cpu_s + float(np.sum(cpu_s[:last])), 3)}


def ratio(whole: dict, round_s: float) -> dict:
    """whole-model time to the target / the round's time, and whether it meets TARGET_RATIO. A whole run that
    never reached the target gives a lower bound: it meets the target only when even the bound does."""
    r = whole["seconds"] / round_s if round_s > 0 else None
    bound = not whole["reached"]
    if r is None:
        verdict = "not measured"
    elif r >= TARGET_RATIO:
        verdict = "met"
    else:
        verdict = "not shown (lower bound)" if bound else "missed"
    return {"ratio": None if r is None else round(r, 2), "lower_bound": bound, "verdict": verdict}


def slot_map(labels: list[str], user_labels) -> dict[str, int]:
    """Class slot of every label: the bundle's own labels keep theirs, new ones take the next free slots in
    sorted order (as the board gives free slots to new classes; only the consistency matters here)."""
    slots = {lab: i for i, lab in enumerate(labels)}
    for lab in sorted({str(v) for v in user_labels} - set(slots), key=lambda s: (len(s), s)):
        slots[lab] = len(slots)
    return slots


def round_training_set(files: list[Path], labels, spec: dict, copies: int, seed: int,
                       holdout_fraction: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """The images a first round trains on, made as the daemon makes them: files whose content hash puts them
    in the holdout are left out, each other file decoded with the board's preprocessing plus `copies`
    augmented copies from the daemon's own seeds (augment.image_variants of the round's seed and the hash)."""
    from autlearn.intake import augment
    from autlearn.intake.ingest import holdout_of
    from reference import decode_pngs

    xs, ys, n_hold = [], [], 0
    for f, y in zip(files, labels):
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        if holdout_of(sha, holdout_fraction):
            n_hold += 1
            continue
        x = decode_pngs([f], spec)[0]
        xs.append(x)
        ys.append(y)
        for _, vseed in augment.image_variants(copies, seed, sha):
            xs.append(augment.augment_image(x, vseed))
            ys.append(y)
    return np.stack(xs).astype(np.float32), np.asarray(ys), {"n_originals": len(files) - n_hold,
                                                             "n_holdout": n_hold, "n_samples": len(xs)}


# ------------------------------------------------------------------------------------------ the pretrained CNN

def pretrained_classifier(bundle: Path, build_args: list[str]):
    """The bundle's float classifier re-created with the builder's own code and options (the start of
    image_build.build_image_bundle), checked: its accuracy on the held-out public images must equal the
    manifest's `accuracy_float`. Returns (classifier, check)."""
    from autlearn_build import cli, image_model
    from autlearn_build.build_steps import predict
    from autlearn_build.datasets import load_split, low_resolution_copies
    from autlearn_build.evaluate import accuracy

    args = cli.build_parser().parse_args(["image", *build_args])
    opts = args.options.from_args(args)
    spec = opts.input_spec
    data, train, val = load_split(opts.data, spec, opts.class_capacity, opts.limit, opts.val_fraction, lambda s: None)
    if opts.degrade > 0:
        train = low_resolution_copies(train, opts.degrade, opts.seed)
    image_model.set_seed(opts.seed)
    base = image_model.build_base((spec.height, spec.width, spec.channels), opts.feature_size, opts.width_mult)
    clf = image_model.build_classifier(base, opts.class_capacity, len(data.labels))
    t0 = time.monotonic()
    image_model.pretrain(clf, train.x, train.y, val.x, val.y, epochs=opts.epochs, batch_size=opts.batch_size,
                         learning_rate=opts.learning_rate, progress=lambda s: None)
    acc = float(accuracy(predict(clf, val.x), val.y))
    want = json.loads((bundle / "manifest.json").read_text())["variants"][0]["accuracy_float"]
    check = {"val_accuracy": round(acc, 4), "manifest_accuracy_float": want, "same": abs(acc - want) < 1e-3,
             "seconds": round(time.monotonic() - t0, 1)}
    log(f"   pretrained CNN re-created: public val accuracy {acc:.4f}, bundle's accuracy_float {want} "
        f"({'same model' if check['same'] else 'DIFFERS'})")
    try:  # the baselines are timed as a user would run them: without deterministic kernels
        import tensorflow as tf

        tf.config.experimental.disable_op_determinism()
    except Exception:  # pragma: no cover
        pass
    return clf, check


def keras_whole(clf, n_active: int, x, y, test_x, test_y, epochs: int, lr: float, batch: int, target: float) -> dict:
    """The pretrained classifier (weights copied into one with `n_active` unmasked slots) fine-tuned whole in
    Keras: Adam at `lr`, constant, `epochs` epochs; test accuracy and wall/CPU time after every epoch."""
    import tensorflow as tf
    from autlearn_build import image_model

    base = image_model.build_base(tuple(clf.input.shape[1:]), int(image_model.base_of(clf).output.shape[-1]), 1.0)
    model = image_model.build_classifier(base, int(clf.output.shape[-1]), n_active)
    model.set_weights(clf.get_weights())
    c0, t0 = time.process_time(), time.perf_counter()
    model.compile(optimizer=tf.keras.optimizers.Adam(lr),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    walls, cpus, accs = [], [], []
    fixed_s, fixed_cpu = time.perf_counter() - t0, time.process_time() - c0
    for _ in range(epochs):
        c0, t0 = time.process_time(), time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=True, verbose=0)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        logits = np.concatenate([model(test_x[i:i + 500], training=False).numpy() for i in range(0, len(test_x), 500)])
        accs.append(float(np.mean(np.argmax(logits, 1) == test_y)))
    return curve(walls, cpus, accs, target, fixed_s, fixed_cpu)


def tflite_whole(model: bytes, batch: int, capacity: int, n_active: int, x, y, test_x, test_y, max_epochs: int,
                 lr: float, target: float, seed: int, extra_epochs: int = 0, prep=(0.0, 0.0)) -> dict:
    """Whole-model training through the builtin-only TFLite `train` signature (LiteRT, 2 threads), the test
    images scored after every epoch (not timed); stops `extra_epochs` after first reaching `target`.
    `prep`: (wall, CPU) seconds of making the training set, charged to the set-up."""
    from tflite_whole import TFLiteWholeTrainer

    c0, t0 = time.process_time(), time.perf_counter()
    trainer = TFLiteWholeTrainer(model, batch, capacity, threads=2)
    fixed_s, fixed_cpu = prep[0] + time.perf_counter() - t0, prep[1] + time.process_time() - c0
    active = np.zeros(capacity, np.float32)
    active[:n_active] = 1.0
    rng = np.random.default_rng(seed)
    walls, cpus, accs, losses, left = [], [], [], [], None
    for _ in range(max_epochs):
        c0, t0 = time.process_time(), time.perf_counter()
        losses.append(round(trainer.fit_epoch(x, y.astype(np.int32), active, lr, rng), 5))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        accs.append(float(np.mean(np.argmax(trainer.predict(test_x, active), 1) == test_y)))
        if left is None and accs[-1] >= target:
            left = extra_epochs
        if left is not None:
            if left == 0:
                break
            left -= 1
    return {**curve(walls, cpus, accs, target, fixed_s, fixed_cpu), "train_loss_per_epoch": losses}


def curve(walls, cpus, accs, target, fixed_s, fixed_cpu) -> dict:
    return {"fixed_s": round(fixed_s, 3), "epoch_s": [round(w, 3) for w in walls],
            "epoch_cpu_s": [round(c, 3) for c in cpus], "test_accuracy_per_epoch": [round(a, 4) for a in accs],
            "final_accuracy": round(accs[-1], 4), "best_accuracy": round(max(accs), 4),
            "to_target": reach(walls, cpus, accs, target, fixed_s, fixed_cpu)}


# ------------------------------------------------------------------------------------------ the board's rounds

def timed_round(b) -> dict:
    """One round of board `b` (eval_board's Board), its wall/CPU time and its phases from the progress events."""
    from eval_board import never

    marks: dict[str, float] = {}

    def progress(name, data):
        marks.setdefault(name, time.perf_counter())

    c0, t0 = time.process_time(), time.perf_counter()
    r = b.eng.round("eval", progress, never)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    start = marks.get("round_started", t0)
    phase = {"stem_s": marks["features"] - start if "features" in marks else None,
             "train_s": marks["trained"] - marks["features"] if {"features", "trained"} <= set(marks) else None}
    return {"round_s": round(wall, 3), "round_cpu_s": round(cpu, 3), **{k: v and round(v, 3) for k, v in phase.items()},
            "outcome": r.outcome, "n_train": r.n_train, "n_holdout": r.n_holdout,
            "n_augmented": r.n_augmented, "features_computed": r.features_computed,
            "features_cached": r.features_cached, "holdout_after": r.accuracy_after}


def board_rounds(data, user: dict, first: np.ndarray, later: np.ndarray, bundle: Path, work: Path) -> dict:
    """Round 1 on `first`, then round 2 after `later` arrives; the served version's test accuracy after each."""
    import shutil

    from eval_board import open_board, set_arrival_order
    from eval_image import _head_predict, _write_inbox

    b = open_board(work / f"{user['name']}-{bundle.name}", bundle, **{"training.seed": 0})
    try:
        _write_inbox(b, data, first)
        b.scan()
        test_y = data.labels[user["test"]]
        feats = b.eng.extractor(data.x[user["test"]])
        out = {"pretrained": float(np.mean(_head_predict(b, b.initial_version(), feats) == test_y))}
        out["round1"] = {**timed_round(b), "n_files": int(len(first))}
        out["round1"]["test_accuracy"] = float(np.mean(_head_predict(b, b.version(), feats) == test_y))
        if len(later):
            paths = []
            for j, i in enumerate(later):  # names of their own: _write_inbox numbers from 0 again
                p = b.inbox / str(int(data.labels[i])) / f"later{j:05d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(data.files[i], p)
                paths.append(p)
            set_arrival_order(paths, start_ns=1_800_000_000 * 10**9)
            b.scan()
            out["round2"] = {**timed_round(b), "n_files_added": int(len(later))}
            out["round2"]["test_accuracy"] = float(np.mean(_head_predict(b, b.version(), feats) == test_y))
        return out
    finally:
        b.close()


def measure_user(data, user: dict, bundle: Path, manifest: dict, clf, whole_model: bytes, args, work: Path) -> dict:
    from autlearn.config import Config

    cfg = Config()
    n_later = int(round(args.later_fraction * len(user["train"])))
    first, later = user["train"][:len(user["train"]) - n_later], user["train"][len(user["train"]) - n_later:]
    res = board_rounds(data, user, first, later, bundle, work / "boards")
    target = res["round1"]["test_accuracy"]
    slots = slot_map(manifest["labels"], data.labels[user["train"]])
    c0, t0 = time.process_time(), time.perf_counter()
    x, y, info = round_training_set([data.files[i] for i in first], [slots[str(int(v))] for v in data.labels[first]],
                                    manifest["input"], args.augment_copies, 0, float(cfg["training.holdout_fraction"]))
    prep = (time.perf_counter() - t0, time.process_time() - c0)
    test_x, test_y = data.x[user["test"]], data.labels[user["test"]]
    slot_y = np.array([slots[str(int(v))] for v in test_y])
    lr, batch, cap = float(manifest["optimizer"]["learning_rate"]), int(manifest["train_batch"]), int(manifest["class_capacity"])
    res["whole_training_set"] = {**info, "prep_s": round(prep[0], 3), "prep_cpu_s": round(prep[1], 3)}
    res["tflite_whole"] = tflite_whole(whole_model, batch, cap, len(slots), x, y, test_x, slot_y, args.max_epochs, lr,
                                       target, 0, args.extra_epochs, prep)
    res["keras_whole"] = keras_whole(clf, len(slots), x, y, test_x, slot_y, args.keras_epochs, lr, batch, target)
    t = res["tflite_whole"]["to_target"]
    for n in ("1", "2") if "round2" in res else ("1",):
        res["ratio_round" + n] = ratio(t, res["round" + n]["round_s"])
        res["ratio_round" + n + "_cpu"] = ratio({**t, "seconds": t["cpu_seconds"]}, res["round" + n]["round_cpu_s"])
    return json.loads(json.dumps(res, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# ------------------------------------------------------------------------------------------ groups and report

def run_group(name: str, data, bundle: Path, build_args: list[str], args, memo: Memo) -> dict:
    import tflite_whole as tw

    manifest = json.loads((bundle / "manifest.json").read_text())
    state: dict = {}

    def model():
        if not state:
            state["clf"], state["check"] = pretrained_classifier(bundle, build_args)
            t0 = time.perf_counter()
            state["tflite"] = tw.convert(tw.make_module(tw.folded_weights(state["clf"]), tuple(data.x.shape[1:]),
                                                        int(manifest["train_batch"])))
            state["convert_s"] = round(time.perf_counter() - t0, 1)
        return state

    users = []
    for u in data.users:
        key = f"{name}/{u['name']}/{bundle.name}/e{args.max_epochs}-k{args.keras_epochs}-l{args.later_fraction}-" \
              f"a{args.augment_copies}-x{args.extra_epochs}"
        r = memo.get(key, lambda: {**measure_user(data, u, bundle, manifest, model()["clf"], model()["tflite"],
                                                  args, args.work), "pretrained_check": model()["check"]})
        users.append({"name": u["name"], "n_train_files": int(len(u["train"])), "n_test": int(len(u["test"])), **r})
        t = r["tflite_whole"]["to_target"]
        log(f"   {name} {u['name']}: round {r['round1']['test_accuracy']:.3f} in {r['round1']['round_s']:.0f}s; "
            f"tflite whole {'reached' if t['reached'] else 'NOT reached'} in {t['seconds']:.0f}s "
            f"({t['epochs']} epochs) -> x{r['ratio_round1']['ratio']}; keras whole {r['keras_whole']['final_accuracy']:.3f}")
    return {"bundle": str(bundle), "build_args": build_args, "users": users,
            "pretrained_check": users[0].get("pretrained_check") if users else None,
            "tflite_convert_s": state.get("convert_s")}


def findings(result: dict, out: Path) -> list[str]:
    """The targets' lines, then <out>/tail_whole.notes.md (the explanation, written by hand after a run) verbatim."""
    notes = out / "tail_whole.notes.md"
    return summary_lines(result) + (["", *notes.read_text().splitlines()] if notes.exists() else [])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("reports"))
    ap.add_argument("--work", type=Path, default=Path("build/tail-whole"))
    ap.add_argument("--groups", default="new_classes,uci")
    ap.add_argument("--uci-users", type=int, default=3, help="the first N of make eval's 10 UCI users (10: all)")
    ap.add_argument("--new-users", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--build-args", default="--limit 2500 --epochs 4", help="extra autlearn-build options")
    ap.add_argument("--max-epochs", type=int, default=20, help="TFLite whole-model epochs at most")
    ap.add_argument("--extra-epochs", type=int, default=2, help="TFLite epochs run after the target is reached")
    ap.add_argument("--keras-epochs", type=int, default=20)
    ap.add_argument("--later-fraction", type=float, default=0.1, help="share of the training images held back "
                                                                        "for round 2 (0: one round only)")
    ap.add_argument("--augment-copies", type=int, default=1, help="augmented copies in the whole-model set")
    ap.add_argument("--render", action="store_true", help="measure nothing: rewrite <out>/tail_whole.md from the json")
    args = ap.parse_args(argv)
    if args.render:
        r = json.loads((args.out / "tail_whole.json").read_text())
        (args.out / "tail_whole.md").write_text(markdown({**r, "findings": findings(r, args.out)}))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    memo = Memo(args.work / "whole_rounds.json")
    extra = shlex.split(args.build_args)
    out_json = args.out / "tail_whole.json"
    result = json.loads(out_json.read_text()) if out_json.exists() else {"groups": {}}
    groups = [g for g in args.groups.split(",") if g]
    for g in groups:
        if g == "new_classes":
            from eval_tail_data import decode, new_class_data

            log("== new-classes users (base on digits 0-4, users bring 5-9)")
            public, data = new_class_data(args.work, args.new_users, args.per_class)
            data_args = ["--data", str(public), "--fit-box", "20"]
            bundle = ensure_bundle(args.work, "new04", CUT, data_args, "-small", extra)
            decode(data, json.loads((bundle / "manifest.json").read_text())["input"])
        else:
            import eval_image as ei

            log("== uci users (make eval's partition)")
            data_args = ["--data", "mnist5k"]
            bundle = ensure_bundle(args.work, "uci", CUT, data_args, "-small", extra)
            data = ei.load_users(args.work, json.loads((bundle / "manifest.json").read_text())["input"], 10, 0.5,
                                 0.3, 0)
            data.users = data.users[:args.uci_users]
        build_args = [*data_args, *ENSURE_ARGS, "--tail", CUT, "--out", str(bundle), "--force", *extra]
        result["groups"][g] = run_group(g, data, bundle, build_args, args, memo)
        result["groups"][g]["command"] = "python tools/eval_tail_whole.py " + " ".join(map(shlex.quote, sys.argv[1:]))
    manifest = json.loads((bundle / "manifest.json").read_text())
    result["setup"] = {"commands": sorted({gr["command"] for gr in result["groups"].values()}),
                       "build_args": args.build_args, "max_epochs": args.max_epochs, "extra_epochs": args.extra_epochs,
                       "keras_epochs": args.keras_epochs, "later_fraction": args.later_fraction,
                       "augment_copies": args.augment_copies, "learning_rate": manifest["optimizer"]["learning_rate"],
                       "train_batch": manifest["train_batch"], "target_ratio": TARGET_RATIO}
    result["findings"] = findings(result, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "tail_whole.md").write_text(markdown(result))
    log(f"wrote {out_json} and {args.out / 'tail_whole.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
