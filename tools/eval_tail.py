"""Does training below the head pay (issue 14)? Head-only vs last_block vs last2_blocks tails, each trained by the
board's own code path (tools/eval_board.py: a real Service + Engine round, the daemon's default settings), against
local-only (the same CNN from scratch on the user's own images, Keras), for two groups of users:

  uci          the UCI-digits users of `make eval` (tools/eval_image.py: same partition, seed and splits); the
               base pretrained on MNIST-5k as `make eval` builds it. Centralised, FedAvg and local-only figures
               for these users are read from reports/eval.json (the same users), not recomputed.
  new_classes  a base pretrained on MNIST-5k digits 0-4 only; each user brings digits 5-9 (MNIST-5k images the
               base never saw, `--per-class` training images per class, 50 test images per class), which the
               board puts into free class slots.

With `chosen` among --cuts (the default), one more bundle per group carries every cut (`--tail
head,last_block,last2_blocks`, options as the others plus --chosen-build-args) and the board chooses the cut per
user by the holdout in one round each, scored against each cut's candidate of that round (tools/eval_tail_chosen.py).

Writes <out>/tail.json and <out>/tail.md. Bundles are built once under <work> with the real builder.

Two smaller measurements on bundles given with --bundles CUT=DIR,… (written into <out>/tail.json only):
  cache        the int8 feature cache against the float32 one it replaced: one UCI user's round at each cut with
               each (bytes per cached sample, of the SQLite file too, and the user's test accuracy)
  camera       bench_camera's photos on MobileNetV2 bundles (head-only, --tail last_conv, --tail last_block):
               one user's round at each cut (tools/eval_tail_camera.py)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from eval_tail_data import decode, new_class_data  # noqa: E402
from partition import summarise  # noqa: E402

BIN = Path(sys.executable).parent
CUTS = ("head", "last_block", "last2_blocks")


def log(msg: str) -> None:
    print(msg, flush=True)


def ensure_bundle(work: Path, group: str, cut: str, data_args: list[str], variant: str = "",
                  extra: list[str] = ()) -> Path:
    """The bundle of `group` built with `--tail cut` (a list of cuts: named `chosen`), once."""
    out = work / f"bundle-{group}-{'chosen' if ',' in cut else cut}{variant}"
    if (out / "manifest.json").exists():
        return out
    cmd = [str(BIN / "autlearn-build"), "image", *data_args, "--epochs", "8", "--seed", "0", "--degrade", "1",
           "--tail", cut, "--out", str(out), "--force", *extra]
    log(f"   building: {' '.join(cmd[1:])}")
    logf = work / f"{out.name}.log"
    with open(logf, "w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"autlearn-build failed; see {logf}")
    return out


def board_round(data, user: dict, bundle: Path, work: Path, float_cache: bool = False, **overrides) -> dict:
    """One user on the board at this bundle's cut: the daemon's defaults (offline, 1 augmented copy, 30 epochs,
    min_steps 1000, holdout gate), then the served version scored on the user's test images. `float_cache`:
    the feature cache stores float32 as before the int8 cache (for the A/B of `--group cache`)."""
    from eval_board import open_board
    from eval_image import _head_predict, _write_inbox

    b = open_board(work / f"{user['name']}-{bundle.name}{'-f32' if float_cache else ''}", bundle,
                   **{"training.seed": 0, **overrides})
    try:
        if float_cache:
            b.eng.extractor.cache_quant = None
        _write_inbox(b, data, user["train"])
        b.scan()
        test_y = data.labels[user["test"]]
        feats = b.eng.extractor(data.x[user["test"]])
        t0 = time.monotonic()
        r = b.round()
        secs = time.monotonic() - t0
        return {"accuracy": float(np.mean(_head_predict(b, b.version(), feats) == test_y)),
                "pretrained": float(np.mean(_head_predict(b, b.initial_version(), feats) == test_y)),
                "outcome": r.outcome, "holdout_before": r.accuracy_before, "holdout_after": r.accuracy_after,
                "n_train": r.n_train, "n_augmented": r.n_augmented, "n_holdout": r.n_holdout,
                "round_seconds": round(secs, 2), **cache_size(b)}
    finally:
        b.close()


def cache_size(b) -> dict:
    """The feature cache after the round: entries, the bytes of their vectors, and of the SQLite file (the
    write-ahead log checkpointed into it first)."""
    from autlearn.learning.featcache import FeatureCache

    b.eng.cache.close()
    path = b.svc.paths.feature_cache
    c = FeatureCache(path)
    try:
        c.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"cache_entries": c.count(), "cache_bytes": c.size_bytes(), "cache_file_bytes": path.stat().st_size}
    finally:
        c.close()


def cache_ab(data, user: dict, bundles: dict[str, Path], work: Path) -> dict:
    """The int8 cache against the float32 one it replaced: the same user's round at each cut with each, its
    accuracy (the int8 values dequantise to the very floats the extractor returns: it must not move) and the
    cache's bytes per cached sample."""
    out = {}
    for cut, bundle in bundles.items():
        row = {}
        for name, flt in (("float32", True), ("int8", False)):
            r = board_round(data, user, bundle, work / "boards", float_cache=flt)
            row[name] = {k: r[k] for k in ("accuracy", "holdout_after", "cache_entries", "cache_bytes",
                                           "cache_file_bytes", "round_seconds")}
            row[name]["bytes_per_sample"] = round(r["cache_bytes"] / max(1, r["cache_entries"]), 1)
            row[name]["file_bytes_per_sample"] = round(r["cache_file_bytes"] / max(1, r["cache_entries"]), 1)
        log(f"   cache {cut}: " + "; ".join(f"{n} {v['bytes_per_sample']} B/sample ({v['file_bytes_per_sample']} on "
                                            f"disk), accuracy {v['accuracy']:.4f}" for n, v in row.items()))
        out[cut] = row
    return out


def local_only(x_tr, y_tr, x_te, y_te, n_classes: int, epochs: int, seed: int) -> float:
    """The bundle's CNN from scratch on the user's own training images (the builder's recipe)."""
    from autlearn_build import image_model

    image_model.set_seed(seed)
    model = image_model.build_classifier(image_model.build_base((28, 28, 1), 64, 1.0), 16, n_classes)
    image_model.pretrain(model, x_tr, y_tr, np.zeros((0, 28, 28, 1), np.float32), np.zeros(0, np.int64),
                         epochs=epochs, batch_size=32, progress=lambda s: None)
    return float(np.mean(np.argmax(model.predict(x_te, batch_size=256, verbose=0), axis=1) == y_te))


def whole_model_step_ms(train_batch: int = 32) -> float:
    """One `train` step of the whole CNN through a builtin-only TFLite signature (tools/tflite_whole.py, the
    bench's whole-model baseline), timed like the builder times a tail (random weights: only the cost counts)."""
    import tflite_whole
    from autlearn_build import image_model
    from autlearn_build.tail_build import train_step_ms

    image_model.set_seed(0)
    clf = image_model.build_classifier(image_model.build_base((28, 28, 1), 64, 1.0), 16, 10)
    model = tflite_whole.convert(tflite_whole.make_module(tflite_whole.folded_weights(clf), (28, 28, 1), train_batch))
    return train_step_ms(model, 28 * 28, 16, train_batch, image_input=(28, 28, 1))


def cut_info(bundle: Path, part: dict | None = None) -> dict:
    """The measured cost of the bundle's variant (or of `part`, one of its deeper `cuts`)."""
    from autlearn_build.tail_build import train_step_ms

    m = json.loads((bundle / "manifest.json").read_text())
    v = part or m["variants"][0]
    t = v.get("tail", {})
    if not t:  # head-only: time its train signature the same way
        step = train_step_ms((bundle / v["head"]).read_bytes(), v["feature_size"], m["class_capacity"],
                             m["train_batch"])
        t = {"train_ms_per_sample": round(step / m["train_batch"], 5),
             "train_ms_per_epoch": round(step * -(-500 // m["train_batch"]), 3)}
    return {"feature_size": v["feature_size"], "accuracy_int8_public": v["accuracy_int8"],
            "trainable_params": t.get("trainable_params", v.get("head_params")),
            "train_ms_per_sample": t.get("train_ms_per_sample"), "train_ms_per_epoch": t.get("train_ms_per_epoch"),
            "cache_bytes_per_sample": t.get("cache_bytes_per_sample", v["feature_size"]),  # int8: 1 B/value
            "base_latency_ms": v["latency_ms"]}


def cuts_info(bundle: Path) -> dict:
    """cut_info of each cut a multi-cut bundle's variant carries, head-only first."""
    v = json.loads((bundle / "manifest.json").read_text())["variants"][0]
    return {"head": cut_info(bundle), **{c["cut"]: cut_info(bundle, c) for c in v.get("cuts", [])}}


class Memo:
    """Results already measured (work/rounds.json, keyed by group/user/what): a run interrupted or split over
    several invocations (one cut at a time while the others' bundles build) does not redo them. Delete the
    file (or the bundle) to measure again."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str, compute):
        if key not in self.data:
            value = compute()
            if self.path.exists():  # another invocation may have added results meanwhile
                self.data = {**json.loads(self.path.read_text()), **self.data}
            self.data[key] = value
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=1) + "\n")
            tmp.replace(self.path)
        return self.data[key]


def run_group(name: str, data, bundles: dict[str, Path], work: Path, local: list[float], memo: Memo) -> dict:
    per = {cut: [] for cut in bundles}
    rows = []
    for u in data.users:
        row = {"name": u["name"], "n_train": int(len(u["train"])), "n_test": int(len(u["test"]))}
        for cut, bundle in bundles.items():
            key = cut + bundle.name.split(cut, 1)[1]  # the cut plus the bundle's variant suffix
            row[cut] = memo.get(f"{name}/{u['name']}/{key}", lambda: board_round(data, u, bundle, work / "boards"))
            per[cut].append(row[cut]["accuracy"])
        rows.append(row)
        log(f"   {name} {u['name']}: " + "  ".join(f"{c} {row[c]['accuracy']:.3f} ({row[c]['round_seconds']:.0f}s)"
                                                   for c in bundles))
    for row, acc in zip(rows, local):
        row["local_only"] = acc
    methods = {c: summarise(v).as_dict() | {"per_user": [round(a, 4) for a in v]} for c, v in per.items()}
    methods["local_only"] = summarise(local).as_dict() | {"per_user": [round(a, 4) for a in local]}
    methods["pretrained"] = summarise([r["head"]["pretrained"] for r in rows]).as_dict()
    return {"users": rows, "methods": methods, "cuts": {c: cut_info(b) for c, b in bundles.items()},
            "round_seconds": {c: round(float(np.mean([r[c]["round_seconds"] for r in rows])), 2) for c in bundles}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("reports"))
    ap.add_argument("--work", type=Path, default=Path("build/tail"))
    ap.add_argument("--group", choices=("uci", "new_classes", "all", "cache", "camera"), default="all",
                    help="cache: int8 against float32 feature cache for one UCI user at each cut (--bundles); "
                         "camera: head-only against --tail last_conv on MobileNetV2 (--bundles: head,last_conv)")
    ap.add_argument("--bundles", default="", help="with --group cache|camera: CUT=DIR,… bundles already built")
    ap.add_argument("--camera-per-class", type=int, default=30, help="camera: user photos per class")
    ap.add_argument("--cuts", default=",".join((*CUTS, "chosen")),
                    help="the one-cut bundles to measure, and/or chosen: one bundle carrying every cut, the board "
                         "choosing per user (tools/eval_tail_chosen.py)")
    ap.add_argument("--chosen-build-args", default="",
                    help="extra autlearn-build options of the chosen bundle, e.g. '--limit 2500 --epochs 4' (smaller)")
    ap.add_argument("--uci-users", type=int, default=10, help="the first N of make eval's 10 UCI users")
    ap.add_argument("--new-users", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--local-epochs", type=int, default=30)
    ap.add_argument("--variant", default="", help="suffix of the tail bundles' names (with --tail-args)")
    ap.add_argument("--tail-args", default="", help="extra autlearn-build options of the tail bundles, e.g. "
                                                      "'--tail-l2 0 --tail-lr-scale 1' (with --variant)")
    ap.add_argument("--eval-json", type=Path, default=Path("reports/eval.json"),
                    help="make eval's report: centralised, FedAvg and local-only figures of the UCI users")
    args = ap.parse_args(argv)
    cuts = [c for c in args.cuts.split(",") if c]

    def tail_variant(cut):
        return ("", []) if cut == "head" or not args.variant else (args.variant, args.tail_args.split())
    args.work.mkdir(parents=True, exist_ok=True)
    out_json = args.out / "tail.json"
    result = json.loads(out_json.read_text()) if out_json.exists() else {}
    t0 = time.monotonic()
    memo = Memo(args.work / "rounds.json")
    given = dict(kv.split("=", 1) for kv in args.bundles.split(",") if kv)
    if args.group == "cache":
        import eval_image as ei

        bundles = {c: Path(d) for c, d in given.items()}
        spec = json.loads((next(iter(bundles.values())) / "manifest.json").read_text())["input"]
        data = ei.load_users(args.work, spec, 10, 0.5, 0.3, 0)
        result["cache_ab"] = {"user": data.users[0]["name"], "cuts": cache_ab(data, data.users[0], bundles, args.work)}
    if args.group == "camera":
        from eval_tail_camera import camera_group

        result["camera"] = camera_group({c: Path(d) for c, d in given.items()}, args.work, args.camera_per_class)
    fixed = [c for c in cuts if c != "chosen"]
    chosen_args = args.chosen_build_args.split()

    def bundles_of(group: str, data_args: list[str]) -> dict[str, Path]:
        """The one-cut bundles of `fixed`, and the multi-cut one (`chosen`) when asked for."""
        out = {c: ensure_bundle(args.work, group, c, data_args, *tail_variant(c)) for c in fixed}
        if "chosen" in cuts:
            out["chosen"] = ensure_bundle(args.work, group, ",".join(CUTS), data_args, extra=chosen_args)
        return out

    def chosen(name: str, data, bundle: Path, local: list[float]) -> None:
        from autlearn.learning.cuts import LOSS_MARGIN
        from eval_tail_chosen import chosen_group

        result.setdefault("chosen", {})["build_args"] = args.chosen_build_args
        result["chosen"]["loss_margin"] = LOSS_MARGIN
        result["chosen"][name] = chosen_group(name, data, bundle, args.work, memo, local, cuts_info)

    if args.group in ("uci", "all"):
        import eval_image as ei

        log("== uci users (make eval's partition)")
        bundles = bundles_of("uci", ["--data", "mnist5k"])
        spec = json.loads((next(iter(bundles.values())) / "manifest.json").read_text())["input"]
        data = ei.load_users(args.work, spec, 10, 0.5, 0.3, 0)
        data.users = data.users[:args.uci_users]
        ev = json.loads(args.eval_json.read_text())["image"]["methods"]
        local = ev["local_only"]["per_user"][:args.uci_users]
        if fixed:
            g = run_group("uci", data, {c: bundles[c] for c in fixed}, args.work, local, memo)
            g["reference"] = {m: {"mean": ev[m]["mean"], "per_user": ev[m]["per_user"]}
                              for m in ("centralised", "fedavg", "autlearn_offline_aug")}
            g["reference_source"] = str(args.eval_json)
            result["uci" + args.variant] = g
        if "chosen" in bundles:
            chosen("uci", data, bundles["chosen"], local)
    if args.group in ("new_classes", "all"):
        log("== new-classes users (base on digits 0-4, users bring 5-9)")
        public, data = new_class_data(args.work, args.new_users, args.per_class)
        bundles = bundles_of("new04", ["--data", str(public), "--fit-box", "20"])
        decode(data, json.loads((next(iter(bundles.values())) / "manifest.json").read_text())["input"])
        local = [memo.get(f"new_classes/{u['name']}/local_only", lambda: local_only(
            data.x[u["train"]], data.labels[u["train"]] - 5, data.x[u["test"]], data.labels[u["test"]] - 5, 5,
            args.local_epochs, 0)) for u in data.users]
        log(f"   local only: {[round(a, 3) for a in local]}")
        if fixed:
            result["new_classes" + args.variant] = g = run_group(
                "new_classes", data, {c: bundles[c] for c in fixed}, args.work, local, memo)
            g["per_class_train"] = args.per_class
        if "chosen" in bundles:
            chosen("new_classes", data, bundles["chosen"], local)
            result["chosen"]["new_classes"]["per_class_train"] = args.per_class
    for key in ("uci", "new_classes"):
        if key + args.variant in result and args.variant:
            result[key + args.variant]["tail_args"] = args.tail_args
    if args.group in ("cache", "camera"):
        args.out.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {out_json}")
        return 0
    if fixed:  # the baseline of the one-cut bundles' costs, timed in the same run
        result["whole_model_train_ms_per_sample"] = memo.get("whole_model_train_ms_per_sample",
                                                             lambda: round(whole_model_step_ms() / 32, 5))
    result["seconds_last_run"] = round(time.monotonic() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "tail.md").write_text(markdown(result))
    log(f"wrote {out_json} and {args.out / 'tail.md'}")
    return 0


def markdown(r: dict) -> str:
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    lines = ["# Learning below the head (issue 14)", "",
             "Generated by `tools/eval_tail.py`. Every board figure is a real daemon round (Service + Engine, the "
             "daemon's default settings: offline, 1 augmented copy, 30 epochs, min_steps 1000, holdout gate) on a "
             "bundle built with `autlearn-build image --tail CUT`, scored on the user's own test images.", ""]
    if "whole_model_train_ms_per_sample" in r:
        lines += [f"Whole-model training through a builtin-only TFLite `train` signature (tools/tflite_whole.py): "
                  f"{r['whole_model_train_ms_per_sample']} ms per sample, timed like the cuts below.", ""]
    for group, g in ((k, v) for k, v in r.items() if isinstance(v, dict) and "methods" in v):
        m = g["methods"]
        cuts = [c for c in CUTS if c in m]
        if g.get("tail_args"):
            lines += [f"## {group} (tail bundles built with `{g['tail_args']}`)", ""]
        else:
            lines += [f"## {group}", ""]
        lines += ["| method | mean | min | per user |", "|---|---|---|---|"]
        for key in ["pretrained", *cuts, "local_only"]:
            if key in m:
                per = ", ".join(f"{100 * a:.1f}" for a in m[key].get("per_user", []))
                lines.append(f"| {key} | {pct(m[key]['mean'])} | {pct(m[key]['min'])} | {per} |")
        for key, ref in g.get("reference", {}).items():
            lines.append(f"| {key} (reports/eval.json) | {pct(ref['mean'])} | | "
                         f"{', '.join(f'{100 * a:.1f}' for a in ref['per_user'])} |")
        lines += ["", "| cut | values cached / sample | cache bytes / sample | trainable params | train ms / sample "
                  "| train ms / epoch of 500 | mean round s | public int8 acc |", "|---|---|---|---|---|---|---|---|"]
        for c in cuts:
            i = g["cuts"][c]
            lines.append(f"| {c} | {i['feature_size']} | {i['cache_bytes_per_sample']} | {i['trainable_params']} | "
                         f"{i['train_ms_per_sample'] if i['train_ms_per_sample'] is not None else 'n/a'} | "
                         f"{i['train_ms_per_epoch'] if i['train_ms_per_epoch'] is not None else 'n/a'} | "
                         f"{g['round_seconds'][c]} | {pct(i['accuracy_int8_public'])} |")
        local = g["methods"]["local_only"]["per_user"]
        ref = g.get("reference", {})
        lines.append("")
        for c in cuts:
            beats = sum(a >= b for a, b in zip(g["methods"][c]["per_user"], local))
            mean = m[c]["mean"]
            targets = [f"local-only's mean {pct(m['local_only']['mean'])}: "
                       f"{'met' if mean >= m['local_only']['mean'] else 'missed'}"]
            targets += [f"{k}'s {pct(ref[k]['mean'])}: {'met' if mean >= ref[k]['mean'] else 'missed'}"
                        for k in ("centralised", "fedavg") if k in ref]
            lines.append(f"* {c}: mean {pct(mean)}; ≥ local-only for {beats} of {len(local)} users; target "
                         + "; ".join(targets) + ".")
        lines.append("")
    if "chosen" in r:
        from eval_tail_chosen import markdown as chosen_markdown

        lines += chosen_markdown(r["chosen"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
