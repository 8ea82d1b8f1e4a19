"""`make bench`: what one personalisation round costs on this machine, next to what a user would run instead.

One run, side by side, on the same 500 new user images (UCI digits, tools/userdata.py) and the same user test
set (500 other UCI digits, never trained on):

* **daemon** — a real `autlearnd` subprocess (as tools/demo.py drives it) with its own NOTIFY_SOCKET. Timed
  from the moment the label folders are renamed into the watched directory to the `version_promoted` event,
  by the daemon's own timestamp in the event (the PUB socket delivers it up to one 50 ms poll later; both
  clocks are this machine's time.time()). This includes the debounce (`debounce_s`), the
  scan/ingest (decode, hash, SQLite), the wait for the scheduler's tick, int8 feature extraction (plus one
  augmented copy per image: the daemon's default), head training (`epochs`) and the holdout check.
  Then 10 % more files arrive (second round: features come from the cache for the first 500); then a long
  round (epochs raised through SIGHUP) during which a client calls `status` back to back; `bench` (per-variant
  feature-extraction latency); then restarts for READY. A second fresh daemon runs the first round again
  with `--epochs-high` epochs (what a higher accuracy costs on the board).
* **keras_head** / **keras_whole** — the bundle's float Keras classifier (re-created exactly as the builder
  makes it: tools/reference.py), fine-tuned in full TensorFlow with Adam (the bundle's head learning rate),
  batch 32, on the same training images the daemon trained on (the 500 minus the daemon's holdout): base
  frozen (head only; BatchNorm in inference mode) or everything trainable. Timed: decoding the PNG files,
  compile, fit — not the TensorFlow import nor re-creating the pretrained model.
* **tflite_whole** — the same classifier converted with a flex-free `train` signature that updates every
  weight (tools/tflite_whole.py: im2col convolutions, BatchNorm folded), trained with the LiteRT
  interpreter. Timed: decoding, interpreter creation, training; the conversion is reported separately.

"To comparable accuracy": the baselines evaluate the user test set after every epoch (evaluation time is not
counted) and their time is the time until they first reach the daemon's test accuracy minus `--tolerance`
(1 point); a baseline that never gets there within its epoch budget (`--max-epochs`, `--max-epochs-head`) is
charged its whole run and the speed-up is marked as a lower bound (a lower bound below a target is reported as
undetermined, not as a miss). CPU seconds are counted the same way, up to the epoch that reached the target. Every measurement is repeated `--repeats` times, interleaved (daemon, Keras
head, Keras whole, TFLite whole, then again), and the median is reported with min and max.

Writes reports/bench.json, reports/bench.md, reports/bench_cost.png and reports/bench_curve.png;
`--rerender reports/bench.json` rebuilds the summary, markdown and plots from the raw records without measuring.
This module runs it; the daemon's measurements are in bench_measure.py, the baselines in bench_baselines.py, the
figures and targets in bench_summary.py and the reports in bench_report.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from bench_baselines import keras_run, tflite_whole_run, time_to_target  # noqa: E402
from bench_measure import daemon_more_epochs, daemon_repetition, machine, proc_mem_mb, sqlite_commit_probe  # noqa: E402
from bench_report import write_reports  # noqa: E402
from bench_summary import summarise  # noqa: E402
from userdata import digits, write_user  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


def prepare_user(work: Path, n_first: int, n_later: int, n_test: int, seed: int) -> dict:
    images, labels = digits(seed)
    if n_first + n_later + n_test > len(images):
        raise SystemExit(f"bench: only {len(images)} UCI digits for {n_first}+{n_later}+{n_test}")
    udir = work / "user"
    if udir.exists():
        shutil.rmtree(udir)
    test_paths = write_user(udir / "test", images[:n_test], labels[:n_test], prefix="t")
    a, b = n_test, n_test + n_first
    first_paths = write_user(udir / "first", images[a:b], labels[a:b], prefix="a")
    later_paths = write_user(udir / "later", images[b:b + n_later], labels[b:b + n_later], prefix="b")
    return {"first_dir": udir / "first", "later_dir": udir / "later", "test_paths": test_paths,
            "test_y": labels[:n_test].astype(np.int64), "first_paths": first_paths,
            "first_y": labels[a:b].astype(np.int64), "n_later": len(later_paths)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="build/bench", help="scratch directory (bundle, daemon roots)")
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--restarts", type=int, default=2, help="restarts per repetition for READY on existing state")
    ap.add_argument("--n-first", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=30, help="daemon training.epochs (its default)")
    ap.add_argument("--epochs-high", type=int, default=300,
                    help="also time a daemon round at this many epochs (a higher accuracy); 0: skip")
    ap.add_argument("--max-epochs", type=int, default=30, help="epoch budget of the whole-model baselines")
    ap.add_argument("--max-epochs-head", type=int, default=100,
                    help="epoch budget of Keras head fine-tuning (it needs more epochs than the whole model)")
    ap.add_argument("--tolerance", type=float, default=0.01, help="baselines stop at daemon accuracy minus this")
    ap.add_argument("--debounce", type=float, default=0.25, help="daemon data.debounce_s")
    ap.add_argument("--long-round", type=float, default=5.0, help="target length of the status-latency round (s)")
    ap.add_argument("--build-epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rerender", metavar="BENCH_JSON",
                    help="measure nothing: recompute the summary, bench.md and the plots from a bench.json's raw records")
    args = ap.parse_args()
    if args.rerender:
        result = json.loads(Path(args.rerender).read_text())
        result.update(summarise(result["raw"]))
        Path(args.reports).mkdir(parents=True, exist_ok=True)
        write_reports(result, Path(args.reports))
        print((Path(args.reports) / "bench.md").read_text())
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work, reports = Path(args.work).absolute(), Path(args.reports)
    work.mkdir(parents=True, exist_ok=True)
    reports.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    machine_info = machine()
    machine_info["sqlite_commit_start"] = sqlite_commit_probe(work / "probe")
    from reference import BuildSpec, decode_pngs, ensure_bundle, pretrained_reference

    log("== bundle")
    spec = BuildSpec(epochs=args.build_epochs, seed=args.seed)
    bundle, build_s = ensure_bundle(work, spec, log)
    manifest = json.loads((bundle / "manifest.json").read_text())
    lr = float(manifest["optimizer"]["learning_rate"])
    batch = int(manifest["train_batch"])
    log(f"   {bundle} ({'built in %.1fs' % build_s if build_s else 'reused'}); variants "
        f"{', '.join(v['name'] for v in manifest['variants'])}")

    log("== the user: UCI digits")
    n_later = max(1, round(0.1 * args.n_first))
    user = prepare_user(work, args.n_first, n_later, args.n_test, args.seed)
    from autlearn.config import Config
    from autlearn.intake.ingest import holdout_of
    holdout = [holdout_of(hashlib.sha256(p.read_bytes()).hexdigest(), 0.2) for p in user["first_paths"]]
    train_paths = [p for p, h in zip(user["first_paths"], holdout) if not h]
    train_y = np.array([y for y, h in zip(user["first_y"], holdout) if not h])
    log(f"   {args.n_first} new images ({len(train_paths)} trained on, {sum(holdout)} the daemon's holdout), "
        f"{n_later} more for the second round, {args.n_test} test images")

    log("== reference Keras model (what a user with full TensorFlow starts from)")
    t_tf = time.perf_counter()
    import tensorflow as tf  # noqa: F401
    tf_import_s = time.perf_counter() - t_tf
    ref = pretrained_reference(manifest, spec, log)
    test_x = decode_pngs(user["test_paths"], manifest["input"])
    test_y = user["test_y"]
    from tflite_whole import convert, folded_weights, make_module
    t_conv = time.perf_counter()
    whole_model = convert(make_module(folded_weights(ref.fresh()), (28, 28, 1), batch))
    conversion_s = time.perf_counter() - t_conv
    log(f"   flex-free whole-model train signature: {len(whole_model)} bytes, converted in {conversion_s:.1f}s")

    raw = {"daemon": [], "keras_head": [], "keras_whole": [], "tflite_whole": []}
    for rep in range(args.repeats):
        log(f"== repetition {rep + 1}/{args.repeats} (load average {os.getloadavg()[0]:.2f})")
        d = daemon_repetition(rep, work, bundle, user, args.epochs, args.debounce, args.long_round, args.restarts)
        raw["daemon"].append(d)
        r1, r2 = d["round1"], d["round2"]
        target = r1["test_accuracy"] - args.tolerance
        d["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        log(f"   daemon: READY {d['ready_fresh_s']:.2f}s; round 1 {r1['landing_to_promoted_s']:.2f}s "
            f"(round itself {r1['round_seconds']:.2f}s, {r1['cpu_s']:.2f} CPU s, test acc {r1['test_accuracy']:.4f}, "
            f"{r1['outcome']}); round 2 {r2['landing_to_promoted_s']:.2f}s; peak RSS {d['peak_rss_mb']:.1f} MB; "
            f"status p99 {d['status']['p99_ms']:.2f} ms over {len(d['status']['latencies_ms'])} calls")
        if args.epochs_high:
            hi = daemon_more_epochs(rep, work, bundle, user, args.epochs_high, args.debounce)
            d["more_epochs"] = hi
            log(f"   daemon at {args.epochs_high} epochs: round 1 {hi['landing_to_promoted_s']:.2f}s, "
                f"test acc {hi['test_accuracy']:.4f}")
        for name, fn in (("keras_head", lambda: keras_run(ref, "head", train_paths, train_y, test_x, test_y,
                                                           args.max_epochs_head, target, lr, batch)),
                         ("keras_whole", lambda: keras_run(ref, "whole", train_paths, train_y, test_x, test_y,
                                                            args.max_epochs, target, lr, batch)),
                         ("tflite_whole", lambda: tflite_whole_run(whole_model, ref, train_paths, train_y, test_x,
                                                                   test_y, args.max_epochs, target, lr, batch,
                                                                   args.seed + rep))):
            r = fn()
            if d.get("more_epochs"):
                target_hi = d["more_epochs"]["test_accuracy"] - args.tolerance
                r["more_epochs_target"] = {"target_accuracy": round(target_hi, 4),
                                           **time_to_target(r["fixed_s"], r["epoch_s"], r["test_accuracy_per_epoch"],
                                                            target_hi)}
            raw[name].append(r)
            log(f"   {name}: {r['time_to_target_s']:.2f}s to {'reach' if r['reached'] else 'NOT reach'} "
                f"{target:.4f} ({r['epochs_to_target']} epochs); best acc {r['best_accuracy']:.4f}; "
                f"{len(r['epoch_s'])} epochs {r['full_s']:.2f}s; {r['cpu_s']:.2f} CPU s")

    result = {
        **summarise(raw),
        "setup": {
            "repeats": args.repeats, "restarts_per_repeat": args.restarts, "n_first": args.n_first,
            "n_trained": len(train_paths), "n_daemon_holdout": int(sum(holdout)), "n_second": n_later,
            "n_test": args.n_test, "daemon_epochs": args.epochs, "daemon_augment_copies": 1,
            "daemon_min_steps": Config()["training.min_steps"],
            "daemon_epochs_high": args.epochs_high,
            "baseline_max_epochs": args.max_epochs, "keras_head_max_epochs": args.max_epochs_head, "tolerance": args.tolerance, "debounce_s": args.debounce,
            "learning_rate": lr, "batch": batch, "seed": args.seed, "bundle": str(bundle),
            "bundle_build_s": build_s, "bundle_build": {"epochs": spec.epochs, "budget": spec.budget},
            "reference_matches_bundle": ref.matches_bundle, "reference_val_accuracy": ref.val_accuracy,
            "tensorflow_import_s": tf_import_s, "tflite_whole_conversion_s": conversion_s,
            "tflite_whole_model_bytes": len(whole_model),
            "bench_process_rss_mb": proc_mem_mb(os.getpid(), "VmHWM"),
        },
        "machine": {**machine_info, "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                    "sqlite_commit_end": sqlite_commit_probe(work / "probe"),
                    "loadavg_per_repetition": [d.get("loadavg") for d in raw["daemon"]],
                    "note": "timings carry the machine's noise (see min/max); ratios matter more than seconds"},
        "raw": raw,
        "seconds": time.monotonic() - t_all,
    }
    out = reports / "bench.json"
    write_reports(result, reports)
    log(f"== wrote {out}, {reports / 'bench.md'}, {reports / 'bench_cost.png'} in {result['seconds']:.0f}s")
    print((reports / "bench.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
