"""`make bench-scale` (part of `make bench`): what the daemon costs as the number of stored samples grows.

For each size N (default 1,000, 10,000, 100,000) on one real `autlearnd` subprocess (tools/bench_measure.py's
DaemonRun):

* **data** — N small PNGs (28×28 UCI digits, each shifted by up to 3 px and given its own pixel noise, so that
  every file is different), in one folder per label, plus 100 more for the measured round. The files live on
  `--data` (a tmpfs by default: creating 100,000 files on a busy disk takes longer than all that is measured);
  the daemon's state (SQLite store, feature cache, heads) under `--work`, on disk.
* **setup** (not measured) — the N files are moved into the watched directory of a daemon started with a cheap
  training setting (`training.epochs = 1`, `min_steps = 0`): the daemon ingests them, computes and caches their
  features (one augmented copy each) and promotes a head that has learnt them, through its own code paths. Its
  time and peak RSS are reported as `setup_*` for the record.
* **measured** — the daemon is started again on that state with the default training settings. After its start
  scan (a full one, by design) and with nothing else going on: `status` from 50 clients at once, 10 requests
  each (p50/p99 over all 500; every client connected and answered once before the clock starts); then 100 new files are moved into the label folders and the time from their
  landing to the round's `round_finished` event (the daemon's own timestamp) is `round_after_100_new_s`,
  which includes the debounce `debounce_s`; peak RSS (VmHWM) of the whole measured process, start scan
  included, is `peak_rss_mb`.

Merges a `scale` object into reports/bench.json (other sections are kept) and writes reports/bench_scale.md.
Targets (issue 17), at 100,000 samples: a round after 100 new files within 1 s plus the debounce, peak RSS at
most 150 MB, status p99 at most 10 ms with 50 clients.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from bench_measure import DaemonRun, machine, proc_cpu_s, proc_mem_mb  # noqa: E402
from bench_report import compact_json  # noqa: E402
from bench_summary import percentile  # noqa: E402
from harness import move_in  # noqa: E402
from userdata import digits  # noqa: E402

TARGETS = {"round_after_100_new_s": "<= 1 s + debounce_s", "peak_rss_mb": "<= 150",
           "status_p99_ms_50_clients": "<= 10"}


def log(msg: str) -> None:
    print(f"[bench-scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_images(out: Path, n: int, seed: int, prefix: str) -> int:
    """`n` distinct 28×28 PNGs under `out/<label>/` from the UCI digits (shift and noise per file)."""
    from PIL import Image

    images, labels = digits(0)
    big = np.stack([np.asarray(Image.fromarray(im, "L").resize((22, 22), Image.BILINEAR)) for im in images])
    rng = np.random.default_rng(seed)
    for lab in range(10):
        (out / str(lab)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = int(rng.integers(len(images)))
        canvas = np.zeros((28, 28), np.int16)
        dy, dx = rng.integers(0, 7, size=2)
        canvas[dy:dy + 22, dx:dx + 22] = big[k]
        canvas += rng.integers(-12, 13, size=(28, 28), dtype=np.int16)
        img = np.clip(canvas, 0, 255).astype(np.uint8)
        Image.fromarray(img, "L").save(out / str(int(labels[k])) / f"{prefix}{i:06d}.png", compress_level=1)
    return n


def status_load(endpoint: str, clients: int, requests: int) -> dict:
    """`clients` threads with a connection each, started together, `requests` status calls each."""
    from autlearn.control.client import Client

    conns = [Client(endpoint, timeout_s=60) for _ in range(clients)]
    for c in conns:
        c.call("status")  # connected before the clock starts
    lat: list[float] = []
    lock, go = threading.Lock(), threading.Barrier(clients)

    def one(c):
        go.wait()
        mine = []
        for _ in range(requests):
            t0 = time.perf_counter()
            c.call("status")
            mine.append((time.perf_counter() - t0) * 1000.0)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=one, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    return {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat), "calls": len(lat)}


def wait_idle(run: DaemonRun, timeout: float = 3600) -> dict:
    """Until the start scan has run and the daemon is idle; its status then."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = run.client.call("status")
        if st["last_scan"] is not None and st["activity"] == "idle":
            return st
        time.sleep(0.2)
    raise SystemExit("bench-scale: the daemon did not finish its start scan")


class Run(DaemonRun):
    """bench.py's daemon, watching `inbox` (the images may live on another file system than the state)."""

    def __init__(self, root: Path, inbox: Path, bundle: Path, epochs: int, debounce_s: float, min_steps=None):
        super().__init__(root, bundle, epochs, debounce_s, min_steps)
        self.inbox = inbox
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.write_config(epochs)


def one_size(work: Path, data: Path, bundle: Path, n: int, debounce_s: float, clients: int, requests: int,
             seed: int) -> dict:
    root, files = work / f"n{n}", data / f"n{n}"
    for d in (root, files):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    out: dict = {"samples": n}
    t0 = time.monotonic()
    make_images(files / "staging" / "first", n, seed, "a")
    make_images(files / "staging" / "later", 100, seed + 1, "b")
    out["generate_s"] = time.monotonic() - t0
    log(f"   {n}: {n} + 100 PNGs written in {out['generate_s']:.1f}s")

    setup = Run(root, files / "inbox", bundle, 1, debounce_s, min_steps=0)
    try:
        setup.start()
        t_land = time.time()
        move_in(files / "staging" / "first", setup.inbox, whole_folders=True)
        fin = setup.wait_event(("round_finished",), 7200)[-1][1]
        out["setup_s"] = float(fin["time"]) - t_land
        out["setup_outcome"] = fin["data"].get("outcome")
        out["setup_peak_rss_mb"] = proc_mem_mb(setup.proc.pid, "VmHWM")
    finally:
        setup.stop()
    log(f"   {n}: setup round {out['setup_outcome']} after {out['setup_s']:.1f}s "
        f"(peak RSS {out['setup_peak_rss_mb']:.0f} MB)")

    run = Run(root, files / "inbox", bundle, 30, debounce_s)  # the default training settings
    try:
        out["ready_s"] = run.start()
        t_scan = time.monotonic()
        st = wait_idle(run)
        out["start_scan_s"] = time.monotonic() - t_scan
        out["stored_samples"] = st["samples"]["ok"]
        out["idle_rss_mb"] = proc_mem_mb(run.proc.pid, "VmRSS")
        cpu0 = proc_cpu_s(run.proc.pid)
        out["status_50_clients"] = status_load(_endpoint(root), clients, requests)
        # the daemon's CPU per answer: what the load on this machine cannot inflate (the 50 warm-up calls count)
        out["status_50_clients"]["daemon_cpu_ms_per_call"] = \
            1000.0 * (proc_cpu_s(run.proc.pid) - cpu0) / (out["status_50_clients"]["calls"] + clients)
        run.drain_events(0.2)
        cpu0 = proc_cpu_s(run.proc.pid)
        t_land = time.time()
        move_in(files / "staging" / "later", run.inbox, whole_folders=False)
        events = run.wait_event(("round_finished",), 600)
        fin = events[-1][1]
        out["round_after_100_new_cpu_s"] = proc_cpu_s(run.proc.pid) - cpu0  # scan + round, all threads
        at = {}
        for _, ev in events:
            at.setdefault(ev["event"], float(ev["time"]) - t_land)
        d = fin["data"]
        out["round_after_100_new_s"] = at["round_finished"]
        out["landing_to_scan_done_s"] = at.get("import")
        out["landing_to_round_started_s"] = at.get("round_started")
        out["round"] = {k: d.get(k) for k in ("outcome", "seconds", "n_train", "n_holdout", "features_computed",
                                               "features_cached", "augmented_computed", "augmented_cached",
                                               "detail")}
        out["peak_rss_mb"] = proc_mem_mb(run.proc.pid, "VmHWM")
    finally:
        run.stop()
        shutil.rmtree(files, ignore_errors=True)  # a tmpfs holds it in memory
    log(f"   {n}: round after 100 new files {out['round_after_100_new_s']:.2f}s ({out['round_after_100_new_cpu_s']:.2f} "
        f"CPU s; round {d.get('seconds'):.2f}s, "
        f"{d.get('features_cached')} features read, {d.get('features_computed')} computed); peak RSS "
        f"{out['peak_rss_mb']:.0f} MB; status p99 {out['status_50_clients']['p99_ms']:.2f} ms with {clients} clients")
    return out


def _endpoint(root: Path) -> str:
    from autlearn.paths import Paths
    return Paths.under(root).control_endpoint


def markdown(scale: dict) -> str:
    lines = ["# Scale (tools/bench_scale.py)", "",
             f"Machine: {scale['machine'].get('cpus')} CPUs, {scale['machine'].get('cpu_model', '')}; "
             f"load average at start {scale['machine'].get('loadavg_start')}; debounce {scale['debounce_s']} s.", "",
             "| samples | round after 100 new (s) | daemon CPU for it (s) | of it, the round (s) | features read | "
             "peak RSS (MB) | status p50 / p99, 50 clients (ms) | daemon CPU per status (ms) | start scan (s) | "
             "setup (s) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in scale["curve"]:
        rd = r["round"]
        lines.append(f"| {r['samples']:,} | {r['round_after_100_new_s']:.2f} | {r['round_after_100_new_cpu_s']:.2f} | "
                     f"{rd['seconds']:.2f} | "
                     f"{(rd['features_cached'] or 0) + (rd['features_computed'] or 0) + (rd['augmented_cached'] or 0) + (rd['augmented_computed'] or 0):,} | "
                     f"{r['peak_rss_mb']:.0f} | {r['status_50_clients']['p50_ms']:.2f} / "
                     f"{r['status_50_clients']['p99_ms']:.2f} | {r['status_50_clients']['daemon_cpu_ms_per_call']:.3f} | "
                     f"{r['start_scan_s']:.2f} | {r['setup_s']:.0f} |")
    lines += ["", "At the largest size, against the targets of issue 17:", ""]
    for k, target in TARGETS.items():
        lines.append(f"- `{k}` = {scale[k]:.2f} (target {target}; debounce {scale['debounce_s']} s)")
    lines += ["", "Wall times carry the machine's load (see the load average): the daemon's CPU seconds for the round "
              "after 100 new files and its CPU per `status` answer are what to compare across sizes. With 50 "
              "clients at once the one request thread answers them in turn, so the p99 is about 50 answers' worth "
              "of CPU time, stretched by the load.", ""]
    return "\n".join(lines) + "\n"


def merge_into(path: Path, scale: dict) -> None:
    """Put `scale` into bench.json, keeping every other section."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data["scale"] = scale
    path.write_text(compact_json(data) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="build/bench/scale", help="bundle and the daemons' state")
    ap.add_argument("--data", default="/dev/shm/autlearn-bench-scale" if Path("/dev/shm").is_dir() else "",
                    help="where the image files are written and watched (default: a tmpfs when there is one: "
                         "creating 100,000 files on a busy disk takes longer than the measurement; the state "
                         "stays under --work)")
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--debounce", type=float, default=1.0, help="data.debounce_s (the daemon's default)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rerender", action="store_true", help="measure nothing: write bench_scale.md again from "
                                                             "the scale object of bench.json")
    args = ap.parse_args()
    if args.rerender:
        md = markdown(json.loads((Path(args.reports) / "bench.json").read_text())["scale"])
        (Path(args.reports) / "bench_scale.md").write_text(md)
        print(md)
        return 0
    from reference import BuildSpec, ensure_bundle

    work, reports = Path(args.work).absolute(), Path(args.reports)
    data = Path(args.data).absolute() if args.data else work / "files"
    work.mkdir(parents=True, exist_ok=True)
    reports.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    info = machine()
    spec = BuildSpec(epochs=2, budget=None)  # what is measured is the board's bookkeeping, not accuracy
    bundle, _ = ensure_bundle(work, spec, log)
    curve = []
    for n in (int(x) for x in args.sizes.split(",")):
        log(f"== {n} samples (load average {os.getloadavg()[0]:.2f})")
        curve.append(one_size(work, data, bundle, n, args.debounce, args.clients, args.requests, args.seed))
    top = curve[-1]
    scale = {
        "samples": top["samples"],
        "round_after_100_new_s": top["round_after_100_new_s"], "debounce_s": args.debounce,
        "peak_rss_mb": top["peak_rss_mb"], "status_p99_ms_50_clients": top["status_50_clients"]["p99_ms"],
        "round_after_100_new_cpu_s": top["round_after_100_new_cpu_s"],
        "status_daemon_cpu_ms_per_call": top["status_50_clients"]["daemon_cpu_ms_per_call"],
        "targets": TARGETS, "curve": curve,
        "data_dir": str(data), "state_dir": str(work),
        "how": "N distinct 28x28 PNGs (UCI digits, shift + noise) moved into the watched directory of a daemon "
               "(training.epochs 1 for this setup round); then that daemon's state reopened by a fresh daemon "
               "with default settings, which is measured: status from 50 clients x 10 requests, then 100 new files",
        "machine": {**info, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "seconds": time.monotonic() - t_all,
    }
    merge_into(reports / "bench.json", scale)
    (reports / "bench_scale.md").write_text(markdown(scale))
    print(markdown(scale))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
