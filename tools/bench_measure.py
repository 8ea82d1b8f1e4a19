"""The bench's measurements of the daemon: rounds timed by its events, CPU, memory, READY, status latency.

`DaemonRun` is tools/harness.py's Daemon with media and policy off; the machine it ran on (CPU, load, what a
SQLite commit costs on its disk) is recorded beside.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import time
from pathlib import Path

import numpy as np

from autlearn.paths import Paths
from bench_summary import percentile
from harness import Daemon, proc_status

CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_SECTIONS = "[media]\nenabled = false\n[policy]\nrequire_mains = false\nmax_temp_c = 0.0\n"


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def proc_mem_mb(pid: int, key: str) -> float:
    """A /proc/<pid>/status field (VmRSS, VmHWM) in MB; NaN when the process is gone."""
    kib = proc_status(pid, key)
    return kib / 1024.0 if kib else float("nan")


def sqlite_commit_probe(where: Path, rows: int = 200) -> dict:
    """What one SQLite commit costs on this disk with the daemon's settings (WAL, synchronous=FULL): `rows`
    inserts each in its own transaction (autocommit) against all in one transaction, in ms per row."""
    import sqlite3

    where.mkdir(parents=True, exist_ok=True)
    path = where / "commit-probe.db"
    out = {}
    for mode in ("autocommit", "one_transaction"):
        for f in (path, Path(str(path) + "-wal"), Path(str(path) + "-shm")):
            f.unlink(missing_ok=True)
        db = sqlite3.connect(str(path), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t(k TEXT PRIMARY KEY, v TEXT)")
        t0 = time.perf_counter()
        if mode == "one_transaction":
            db.execute("BEGIN")
        for i in range(rows):
            db.execute("INSERT INTO t VALUES(?, ?)", (f"/inbox/{i}.png", "0" * 64))
        if mode == "one_transaction":
            db.execute("COMMIT")
        out[f"{mode}_ms_per_row"] = round((time.perf_counter() - t0) * 1000.0 / rows, 4)
        db.close()
    for f in (path, Path(str(path) + "-wal"), Path(str(path) + "-shm")):
        f.unlink(missing_ok=True)
    return out


def machine() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return info


class DaemonRun(Daemon):
    """The bench's autlearnd (harness.Daemon): media and the scheduling policy off, so that only the measured work
    runs; one log across restarts; from READY on a control connection (`client`) and an event subscriber
    (`events`)."""

    def __init__(self, root: Path, bundle: Path, epochs: int, debounce_s: float, min_steps: int | None = None):
        """`min_steps` None keeps the daemon's default (training.min_steps: epochs are raised for few samples)."""
        self.epochs, self.min_steps = epochs, min_steps
        self.client = self.events = None
        super().__init__(root, bundle, extra_config=BENCH_SECTIONS, training=self._training(epochs),
                         debounce_s=debounce_s, log_mode="a", start=False)

    def _training(self, epochs: int) -> str:
        return f"min_new_samples = 20\nepochs = {epochs}\n" + (
            "" if self.min_steps is None else f"min_steps = {self.min_steps}\n")

    def write_config(self, epochs: int | None = None) -> None:
        """The config file, with `training.epochs` changed to `epochs` if given (a SIGHUP applies it)."""
        if epochs is not None:
            self.epochs, self.training = epochs, self._training(epochs)
        super().write_config()

    def start(self) -> float:
        """Start and wait for READY=1 on our notify socket; returns seconds from Popen to READY."""
        from autlearn.control.client import Client

        super().start()
        try:
            self.up(120)
        except AssertionError as e:
            raise SystemExit(f"bench: {e}") from None
        self.client = Client(Paths.under(self.root).control_endpoint, timeout_s=30)
        self.events = self.subscribe()
        return self.ready_s

    def wait_event(self, names: tuple[str, ...], timeout: float = 600) -> list[tuple[float, dict]]:
        """Events (receipt time, message) until one named in `names` arrives (inclusive)."""
        seen = []
        end = time.perf_counter() + timeout
        while True:
            left = end - time.perf_counter()
            if left <= 0:
                raise SystemExit(f"bench: no {names} event within {timeout:.0f} s")
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: autlearnd exited with {self.proc.returncode}")
            try:
                ev = self.events.next(min(left, 1.0))
            except TimeoutError:
                continue
            seen.append((time.perf_counter(), ev))
            if ev["event"] in names:
                return seen

    def drain_events(self, quiet_s: float = 0.3) -> int:
        """Read and drop events until none arrives for `quiet_s`."""
        n = 0
        while True:
            try:
                self.events.next(quiet_s)
                n += 1
            except TimeoutError:
                return n

    def stop(self) -> int:
        for c in (self.client, self.events):
            if c is not None:
                c.close()
        self.client = self.events = None
        return super().stop(60) if self.proc is not None else 0

    def accuracy(self, test_paths: list[Path], truth: np.ndarray, version: int | None = None) -> float:
        hits = 0
        for i in range(0, len(test_paths), 100):
            preds = self.client.predict_files(test_paths[i:i + 100], version=version)["predictions"]
            hits += sum(int(p["label"]) == int(t) for p, t in zip(preds, truth[i:i + 100]))
        return hits / len(test_paths)


def timed_round(run: DaemonRun, move, test_paths, truth) -> dict:
    """Move files in, follow the events to round_finished; timings, CPU, memory, accuracy."""
    pid = run.proc.pid
    cpu0 = proc_cpu_s(pid)
    t_land = time.perf_counter()
    wall_land = time.time()
    move()
    events = run.wait_event(("round_finished",))
    t_end = events[-1][0]
    cpu1 = proc_cpu_s(pid)
    # Each event carries the daemon's own time.time() of the moment it happened; the PUB socket sends it up to
    # one 50 ms poll later, so receipt times would add the delivery delay. Same machine, same clock.
    at = {}
    for _, ev in events:
        at.setdefault(ev["event"], float(ev["time"]) - wall_land)
    fin = events[-1][1]["data"]
    promoted = at.get("version_promoted")
    started = at.get("round_started")
    # the scan that made the round due: the last import event before the round started
    imports = [float(ev["time"]) - wall_land for _, ev in events if ev["event"] == "import"]
    last_import = max((x for x in imports if started is None or x <= started), default=None)
    r = {
        # the definition: files landing -> the new head promoted (the round's end when it was rejected)
        "landing_to_promoted_s": promoted if promoted is not None else at.get("round_finished"),
        "landing_to_finished_s": at.get("round_finished"),
        "landing_to_finished_received_s": t_end - t_land,
        "landing_to_import_s": last_import,
        "import_events": len(imports),
        "landing_to_round_started_s": at.get("round_started"),
        "round_seconds": fin.get("seconds"),
        "outcome": fin.get("outcome"),
        "features_computed": fin.get("features_computed"), "features_cached": fin.get("features_cached"),
        "augmented_computed": fin.get("augmented_computed"), "augmented_cached": fin.get("augmented_cached"),
        "n_train": fin.get("n_train"), "n_holdout": fin.get("n_holdout"),
        "holdout_accuracy_before": fin.get("accuracy_before"), "holdout_accuracy_after": fin.get("accuracy_after"),
        "cpu_s": cpu1 - cpu0,
        "peak_rss_mb": proc_mem_mb(pid, "VmHWM"),
        "events": [{"event": ev["event"], "t_s": round(float(ev["time"]) - wall_land, 4),
                    "received_s": round(t - t_land, 4),
                    **({k: ev["data"].get(k) for k in ("added", "waiting")} if ev["event"] == "import" else {})}
                   for t, ev in events if ev["event"] != "epoch"],
    }
    trained = [ev["data"] for _, ev in events if ev["event"] == "trained"]
    feats = [float(ev["time"]) for _, ev in events if ev["event"] in ("features", "augmented")]
    tr = [float(ev["time"]) for _, ev in events if ev["event"] == "trained"]
    if feats and tr:
        r["training_s"] = tr[0] - feats[-1]
        r["epochs_trained"] = trained[0].get("epochs")
    r["test_accuracy"] = run.accuracy(test_paths, truth) if fin.get("outcome") in ("promoted", "rejected") else None
    return r


def daemon_repetition(rep: int, work: Path, bundle: Path, user: dict, epochs: int, debounce_s: float,
                      long_round_s: float, restarts: int) -> dict:
    root = work / f"daemon-rep{rep}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    staging = root / "staging"
    shutil.copytree(user["first_dir"], staging / "first")
    shutil.copytree(user["later_dir"], staging / "later")
    run = DaemonRun(root, bundle, epochs, debounce_s)
    out: dict = {}
    try:
        out["ready_fresh_s"] = run.start()
        out["idle_rss_mb"] = proc_mem_mb(run.proc.pid, "VmRSS")
        st = run.client.call("status")
        initial = st["head"]["version"]
        out["pretrained_accuracy"] = run.accuracy(user["test_paths"], user["test_y"], initial)

        def move_first():
            for d in sorted((staging / "first").iterdir()):
                os.rename(d, run.inbox / d.name)  # whole label folders appear at once

        def move_later():
            for d in sorted((staging / "later").iterdir()):
                (run.inbox / d.name).mkdir(exist_ok=True)
                for f in sorted(d.iterdir()):
                    os.rename(f, run.inbox / d.name / f.name)

        out["round1"] = timed_round(run, move_first, user["test_paths"], user["test_y"])
        out["round2"] = timed_round(run, move_later, user["test_paths"], user["test_y"])

        # A long round (more epochs, through SIGHUP), and a client calling status back to back meanwhile.
        per_epoch = (out["round1"].get("training_s") or 0.1) / max(out["round1"].get("epochs_trained") or epochs, 1)
        long_epochs = int(min(10000, max(200, long_round_s / max(per_epoch, 1e-4))))
        run.write_config(long_epochs)
        run.proc.send_signal(signal.SIGHUP)
        run.wait_event(("config_reloaded",), 30)
        run.client.call("train")
        lat, calls_total = [], 0
        t_start = time.perf_counter()
        seen_training = False
        while True:
            t0 = time.perf_counter()
            st = run.client.call("status")
            dt = (time.perf_counter() - t0) * 1000.0
            calls_total += 1
            if st["activity"] == "training":
                seen_training = True
                lat.append(dt)
            elif seen_training and st["activity"] == "idle":
                break
            if time.perf_counter() - t_start > max(120.0, 10 * long_round_s):
                break
        # Not its round_finished event: one `epoch` event per epoch overflows the PUB/SUB high-water mark (1000)
        # while this client is busy calling status, and ZeroMQ drops what does not fit. The status reply has it.
        run.drain_events()
        fin = run.client.call("status").get("last_round") or {}
        out["long_round_outcome"] = fin.get("outcome")
        out["long_round_holdout_accuracy"] = fin.get("accuracy_after")
        out["long_round_test_accuracy"] = run.accuracy(user["test_paths"], user["test_y"])
        out["status"] = {"latencies_ms": [round(x, 4) for x in lat], "calls": calls_total,
                         "long_round_epochs": long_epochs, "long_round_s": time.perf_counter() - t_start,
                         "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else None}
        out["peak_rss_mb"] = proc_mem_mb(run.proc.pid, "VmHWM")
        out["cpu_total_s"] = proc_cpu_s(run.proc.pid)
        bench = run.client.call("bench", timeout_s=300)
        out["variants"] = [{"name": row.get("variant"), **{k: row.get(k) for k in (
                               "ms_per_sample", "ms_per_sample_batch", "batch", "memory_bytes", "delegate", "flops",
                               "params", "accuracy_int8", "error")}}
                           for row in bench["measurements"]["table"]]
        out["variant_in_use"] = bench.get("in_use")
    finally:
        out["exit_code"] = run.stop()
    out["ready_restart_s"] = []
    for _ in range(restarts):
        out["ready_restart_s"].append(run.start())
        run.stop()
    return out


def daemon_more_epochs(rep: int, work: Path, bundle: Path, user: dict, epochs: int, debounce_s: float) -> dict:
    """The same first round with `training.epochs` raised: what the daemon costs at a higher accuracy."""
    root = work / f"daemon-rep{rep}-e{epochs}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    staging = root / "staging"
    shutil.copytree(user["first_dir"], staging / "first")
    run = DaemonRun(root, bundle, epochs, debounce_s)
    try:
        run.start()

        def move_first():
            for d in sorted((staging / "first").iterdir()):
                os.rename(d, run.inbox / d.name)

        return timed_round(run, move_first, user["test_paths"], user["test_y"])
    finally:
        run.stop()
