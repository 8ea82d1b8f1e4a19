"""Faults a board meets unattended: power loss (SIGKILL at random points of ingestion and training), a full
disk (state and cache on small tmpfs mounts), a tampered bundle (a flipped byte in each file).

Each fault is a scenario function that returns a `Tally`; the tests here run short versions with a fixed
seed, `tools/stress.py` (`make stress`) runs the long versions with a random seed and prints the table.
Set AUTLEARN_TEST_SEED to replay a seed the stress run printed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autlearn.runtime import bundle as bundle_mod
from autlearn.intake import imaging
from autlearn.control.client import Client, Events
from autlearn.errors import AutlearnError
from autlearn.learning.features import FeatureExtractor
from autlearn.learning.head import Head, load_weights
from autlearn.paths import Paths
from daemon_helpers import Daemon, move_in, wait_until
from userdata import write_user

SEED = int(os.environ.get("AUTLEARN_TEST_SEED", "20260501"))


# ---------------------------------------------------------------------------------------------- shared helpers

@dataclass
class Tally:
    """What one scenario did and found; a row of the stress table."""
    name: str
    trials: int = 0
    faults: int = 0
    samples_lost: int = 0
    crashes: int = 0
    bad_inputs: int = 0
    problems: list[str] = field(default_factory=list)  # unexpected failures
    known: list[str] = field(default_factory=list)  # failures of bugs already filed (xfail in the short run)
    detail: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    skipped: str = ""

    def problem(self, text: str) -> None:
        self.problems.append(text)


def client(root: Path, timeout_s: float = 10) -> Client:
    return Client(Paths.under(root).control_endpoint, timeout_s)


def call(root: Path, cmd: str, args: dict | None = None, timeout_s: float = 10):
    c = client(root, timeout_s)
    try:
        return c.call(cmd, args)
    finally:
        c.close()


def came_up(d: Daemon, timeout: float = 60) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if d.proc.poll() is not None:
            return False
        if any("READY=1" in m for m in d.read_notify()):
            return True
    return False


def kill9(d: Daemon) -> bool:
    """Power loss: SIGKILL, no chance to clean up. False if the daemon had already died by itself."""
    alive = d.proc.poll() is None
    if alive:
        d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(30)
    d.notify.close()
    d.log.close()
    return alive


def keep_log(d: Daemon, tag: str) -> Path:
    """Daemon() truncates autlearnd.log on every start: keep each run's log for the post-mortem."""
    logs = d.root / "logs"
    logs.mkdir(exist_ok=True)
    dest = logs / f"{tag}.log"
    shutil.copy(d.root / "autlearnd.log", dest)
    return dest


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status field in KiB (VmRSS, VmHWM), 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(str(db), timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def integrity(db: Path) -> str:
    rows = query(db, "PRAGMA integrity_check")
    return "; ".join(str(r[0]) for r in rows)


def copy_db(db: Path, dest_dir: Path) -> Path:
    """A copy of a SQLite file as a crash left it (with its WAL), to check without touching the original."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(db) + suffix)
        if src.exists():
            shutil.copy(src, dest_dir / (db.name + suffix))
    return dest_dir / db.name


def png_bytes(image: np.ndarray, size: int = 28) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "L").resize((size, size), Image.BILINEAR).save(buf, "PNG")
    return buf.getvalue()


def inbox_files(inbox: Path) -> dict[str, tuple[str, str]]:
    """Every image file of the inbox: path -> (sha256, label)."""
    out = {}
    for p in sorted(inbox.rglob("*.png")):
        out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.relative_to(inbox).parts[0])
    return out


class HeadOracle:
    """Computes what a stored head version must answer, in this process, to compare with the daemon."""

    def __init__(self, bundle_dir: Path):
        self.bundle = bundle_mod.load(bundle_dir)
        self.variant = self.bundle.variant()
        self.extractor = FeatureExtractor(self.variant, 1, "cpu")
        self.head = Head(self.variant, self.bundle.class_capacity, self.bundle.train_batch, 1)
        self.shapes = {k: v.shape for k, v in self.head.get_weights().items()}

    def check_file(self, path: Path) -> str | None:
        """None if `path` is a whole head version of this bundle, else what is wrong with it."""
        try:
            w = load_weights(path)
        except Exception as e:  # a torn or half-written npz
            return f"{path.name} does not load: {type(e).__name__}: {e}"
        if {k: v.shape for k, v in w.items()} != self.shapes:
            return f"{path.name} has weights {sorted(w)} of other shapes than the bundle's head"
        if not all(np.isfinite(v).all() for v in w.values()):
            return f"{path.name} holds non-finite weights"
        return None

    def probs(self, weights: Path, image: bytes, slots: list[int]) -> np.ndarray:
        x = imaging.load_input(image, "probe", self.bundle.input, 10 ** 8)
        self.head.set_weights(load_weights(weights))
        active = np.zeros(self.bundle.class_capacity, np.float32)
        active[slots] = 1.0
        return self.head.predict(self.extractor(x[None]), active)[0]


def check_heads(root: Path, oracle: HeadOracle, probe: bytes) -> list[str]:
    """Every recorded head version loads; the current one is a promoted (or the initial) version, and the
    daemon's answer with it equals the answer computed here from its file."""
    problems = []
    state = root / "state"
    st = call(root, "status")
    version, bundle_id = st["head"]["version"], st["bundle"]["id"]
    heads = {v: (status, f) for v, status, f in query(state / "autlearn.sqlite",
                                                      "SELECT version, status, file FROM heads WHERE bundle=?",
                                                      (bundle_id,))}
    for v, (_, fname) in sorted(heads.items()):
        bad = oracle.check_file(state / "heads" / fname)
        if bad:
            problems.append(f"head v{v}: {bad}")
    if version not in heads or heads[version][0] not in ("initial", "promoted"):
        problems.append(f"the current head v{version} is not a persisted promoted version ({heads.get(version)})")
        return problems
    pred = call(root, "predict", {"files": [{"name": "probe.png", "data": base64.b64encode(probe).decode()}],
                                  "version": version, "top": 3})
    slots = dict(query(state / "autlearn.sqlite", "SELECT name, slot FROM classes WHERE bundle=?", (bundle_id,)))
    p = oracle.probs(state / "heads" / heads[version][1], probe, sorted(slots.values()))
    for t in pred["predictions"][0]["top"]:
        if abs(p[slots[t["label"]]] - t["p"]) > 1e-4:
            problems.append(f"head v{version}: the daemon answers p({t['label']}) = {t['p']}, its file gives "
                            f"{p[slots[t['label']]]:.6f}")
    return problems


def check_samples(root: Path, files: dict[str, tuple[str, str]]) -> tuple[int, list[str]]:
    """Every file of `files` is in the samples table exactly once, usable, with its content's hash and label."""
    rows = query(root / "state" / "autlearn.sqlite", "SELECT path, sha256, label, status FROM samples")
    by_path: dict[str, list[tuple]] = {}
    for r in rows:
        by_path.setdefault(r[0], []).append(r)
    lost, problems = 0, []
    for path, (sha, label) in files.items():
        mine = by_path.get(path, [])
        if len(mine) != 1 or mine[0][1:] != (sha, label, "ok"):
            lost += 1
            problems.append(f"sample {Path(path).name}: expected once as ok, found {mine}")
    extra = [r[0] for r in rows if r[3] == "ok" and r[0] not in files]
    if extra:
        problems.append(f"{len(extra)} usable samples that are no file of the inbox: {extra[:3]}")
    return lost, problems


def wait_ingested(root: Path, n: int, timeout: float = 30) -> dict | None:
    try:
        return wait_until(lambda: (s := call(root, "status"))["last_scan"] is not None
                          and s["samples"]["ok"] >= n and s, timeout, f"{n} samples after the scan")
    except AssertionError:
        return None


def wait_round_after(root: Path, after: int, timeout: float = 60) -> tuple | None:
    """The first round numbered above `after` that ended with a head (promoted or rejected)."""
    db = root / "state" / "autlearn.sqlite"
    try:
        return wait_until(lambda: (r := query(db, "SELECT id, outcome FROM rounds WHERE id > ? AND outcome IN "
                                                  "('promoted', 'rejected') ORDER BY id LIMIT 1", (after,)))
                          and r[0], timeout, f"a round after #{after}")
    except AssertionError:
        return None


def max_round(root: Path) -> int:
    return query(root / "state" / "autlearn.sqlite", "SELECT COALESCE(MAX(id), 0) FROM rounds")[0][0]


# ---------------------------------------------------------------------------------------------- power loss

KILL_EVENTS = ("import", "round_started", "features", "augmented", "epoch", "trained", "version_", "round_finished")


def _wait_event(events: Events, name: str, epoch: int | None, timeout: float) -> bool:
    """Wait for an event whose name starts with `name` (for "epoch": that epoch or a later one, since a busy PUB
    socket may drop single events). False on timeout, or if the round ends before the epoch comes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            ev = events.next(max(0.01, end - time.monotonic()))
        except TimeoutError:
            return False
        if ev["event"].startswith(name) and (epoch is None or (ev["data"].get("epoch") or 0) >= epoch):
            return True
        if epoch is not None and ev["event"].startswith("round_finished"):
            return False
    return False


def power_loss(work: Path, bundle: Path, images: np.ndarray, labels: np.ndarray, trials: int, seed: int,
               batch: int = 100, epochs: int = 60, say=print) -> Tally:
    """`trials` times: new files arrive, the daemon is SIGKILLed at a random point (during its start, during
    the scan, or at a random event of the round plus up to 10 ms), and after the restart every invariant is
    checked: samples exactly once, both databases intact, the current head a whole persisted version that the
    daemon answers with, and a later round completes."""
    t = Tally("power loss: SIGKILL")
    t0 = time.monotonic()
    rng = random.Random(seed)
    root = work / "power"
    inbox = root / "inbox"
    training = f"min_new_samples = 20\nepochs = {epochs}\n"
    oracle = HeadOracle(bundle)
    probe = png_bytes(images[-1])
    files: dict[str, tuple[str, str]] = {}
    partial: tuple[Path, bytes] | None = None
    runs = 0
    write_user(inbox, images[-batch - 1:-1], labels[-batch - 1:-1], prefix="seed_")  # the user's first files

    def start() -> Daemon:
        nonlocal runs
        runs += 1
        return Daemon(root, bundle, training=training)

    for trial in range(trials + 1):
        last = trial == trials
        if not last and rng.random() < 0.2:  # the power fails again while the daemon starts
            d = start()
            time.sleep(rng.uniform(0.0, 0.6))
            if not kill9(d):
                t.crashes += 1
                t.problem(f"trial {trial}: the daemon died by itself while starting: {keep_log(d, f'run{runs}')}")
            t.faults += 1
            t.detail["kill while starting"] += 1
        d = start()
        if not came_up(d):
            t.crashes += 1
            t.problem(f"trial {trial}: the daemon did not come up after the power loss: {keep_log(d, f'run{runs}')}")
            kill9(d)
            break
        try:
            if partial is not None:  # the copy that was cut off completes after the reboot
                partial[0].write_bytes(partial[1])
                partial = None
            files = inbox_files(inbox)
            if wait_ingested(root, len(files)) is None:
                t.problem(f"trial {trial}: the scan after the restart did not settle")
            lost, problems = check_samples(root, files)
            t.samples_lost += lost
            t.problems += [f"trial {trial}: {p}" for p in problems]
            for db in (root / "state" / "autlearn.sqlite", root / "cache" / "features.sqlite"):
                if (res := integrity(db)) != "ok":
                    t.problem(f"trial {trial}: integrity_check of {db.name} after the restart: {res}")
            t.problems += [f"trial {trial}: {p}" for p in check_heads(root, oracle, probe)]
            before = max_round(root)
            call(root, "train")
            if wait_round_after(root, before) is None:
                t.problem(f"trial {trial}: no round completed after the restart (training did not resume)")
            else:
                t.detail["rounds completed after a restart"] += 1
            if last:
                if d.stop() != 0:
                    t.problem("the final SIGTERM did not end the daemon cleanly")
                unfinished = query(root / "state" / "autlearn.sqlite", "SELECT id FROM rounds WHERE finished IS NULL")
                if unfinished:
                    t.problem(f"rounds left unfinished after a clean stop: {unfinished}")
                break

            # new files arrive, and the power fails at a random point
            stage = work / "stage" / f"t{trial}"
            idx = [(trial * batch + i) % len(images) for i in range(batch)]
            write_user(stage, images[idx], labels[idx], prefix=f"t{trial:03d}_")
            if rng.random() < 0.3:  # and a file is being copied in when it does
                lab = str(int(labels[idx[0]]))
                full = png_bytes(images[idx[0]])
                cut = inbox / lab / f"t{trial:03d}_partial.png"
                cut.parent.mkdir(parents=True, exist_ok=True)
                cut.write_bytes(full[:len(full) // 2])
                partial = (cut, full)
                t.detail["half-written file at the kill"] += 1
            if rng.random() < 0.35:
                point, epoch, delay = "scan", None, rng.uniform(0.45, 0.8)
            else:
                point, delay = rng.choice(KILL_EVENTS), rng.uniform(0.0, 0.01)
                epoch = rng.randint(1, epochs) if point == "epoch" else None
            events = Events(Paths.under(root).events_endpoint) if point != "scan" else None
            move_in(stage, inbox)
            if events is None:
                time.sleep(delay)
            else:
                seen = _wait_event(events, point, epoch, 30)
                events.close()
                if not seen:
                    point = f"{point} (missed)"
                time.sleep(delay)
            label = f"kill at {point.rstrip('_')}" + (" (epoch)" if epoch else "")
            if not kill9(d):
                t.crashes += 1
                t.problem(f"trial {trial}: the daemon died by itself: {keep_log(d, f'run{runs}')}")
            keep_log(d, f"run{runs}")
            t.faults += 1
            t.trials += 1
            t.detail[label] += 1
            crash = work / "crash" / f"t{trial}"
            for db in (root / "state" / "autlearn.sqlite", root / "cache" / "features.sqlite"):
                if (res := integrity(copy_db(db, crash))) != "ok":
                    t.problem(f"trial {trial}: integrity_check of {db.name} as the crash left it: {res}")
        except BaseException:
            if d.proc.poll() is None:
                kill9(d)
            raise
    tmp_left = list((root / "state" / "heads").glob("*.tmp"))
    if tmp_left:
        t.detail["head .tmp files left behind"] = len(tmp_left)
    t.detail["interrupted rounds recorded"] = query(root / "state" / "autlearn.sqlite",
                                                    "SELECT COUNT(*) FROM rounds WHERE outcome = 'interrupted'")[0][0]
    t.seconds = time.monotonic() - t0
    say(f"power loss: seed {seed}, {t.trials} trials, {t.faults} kills: {dict(t.detail)}")
    return t


def test_power_loss_at_random_points_loses_nothing(tmp_path, tiny_bundle, user_digits):
    images, labels = user_digits
    print(f"power loss seed: {SEED} (replay: AUTLEARN_TEST_SEED={SEED})")
    t = power_loss(tmp_path, tiny_bundle, images, labels, trials=3, seed=SEED)
    assert t.crashes == 0 and t.samples_lost == 0 and not t.problems, t.problems
    assert t.trials == 3 and t.detail["rounds completed after a restart"] == 4


# ---------------------------------------------------------------------------------------------- full disk

def mount_tmpfs(where: Path, size_mb: int) -> str | None:
    """Mount a size-limited tmpfs; None if done, else why not (not root, no mount namespace rights…)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "mounting a size-limited tmpfs needs root"
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "autlearn-test", str(where)],
                       capture_output=True, text=True)
    return None if p.returncode == 0 else f"mount -t tmpfs failed: {p.stderr.strip()}"


def umount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(where: Path, leave_bytes: int = 0) -> Path:
    """Fill the file system of `where` until `leave_bytes` are free (0: until writes fail with ENOSPC)."""
    path = where / f"ballast-{len(list(where.glob('ballast-*')))}"
    with open(path, "wb") as f:
        for size in (1 << 20, 1 << 12, 1):
            while shutil.disk_usage(where).free - size >= leave_bytes:
                try:
                    f.write(b"\0" * size)
                    f.flush()
                except OSError:
                    break
    return path


def free_up(where: Path) -> None:
    for p in where.glob("ballast-*"):
        p.unlink()


def snapshot(root: Path) -> tuple[set, dict]:
    """What must survive: the usable samples and every head version's file, byte for byte."""
    samples = set(query(root / "state" / "autlearn.sqlite", "SELECT path, sha256, label FROM samples WHERE status='ok'"))
    heads = {f: hashlib.sha256((root / "state" / "heads" / f).read_bytes()).hexdigest()
             for (f,) in query(root / "state" / "autlearn.sqlite", "SELECT file FROM heads")}
    return samples, heads


def full_disk(work: Path, bundle: Path, images: np.ndarray, labels: np.ndarray, min_free_mb: float = 4.0,
              size_mb: int = 24, epochs: int = 1000, say=print) -> Tally:
    """State and cache each on a small tmpfs. (1) The disk fills while a round trains: the round pauses, status
    says why, and it finishes once space returns. (2) The disk fills below min_free_mb: new files are still
    ingested, no round starts, status says why. (3) It fills to the last byte while new files arrive: ingestion
    fails with 'disk full' and is retried, status keeps answering. (4) Space returns: everything is ingested, a
    round completes, and nothing stored before is lost."""
    t = Tally(f"full disk (tmpfs, min_free_mb={min_free_mb:g})")
    t0 = time.monotonic()
    root = work / "disk"
    mounts = [root / "state", root / "cache"]
    for m in mounts:
        why = mount_tmpfs(m, size_mb)
        if why:
            for done in mounts:
                umount(done)
            t.skipped = why
            return t
    d = None
    oracle = HeadOracle(bundle)
    low = int(min_free_mb * (1 << 20)) // 2

    def status_timed() -> dict:
        t0s = time.monotonic()
        st = call(root, "status", timeout_s=5)
        ms = round(1000 * (time.monotonic() - t0s))
        t.detail["slowest status while full (ms)"] = max(t.detail["slowest status while full (ms)"], ms)
        return st

    try:
        d = Daemon(root, bundle, training=f"min_new_samples = 20\nepochs = {epochs}\n",
                   data=f"min_free_mb = {min_free_mb}\n")
        assert came_up(d), (root / "autlearnd.log").read_text()
        write_user(work / "s1", images[:100], labels[:100], prefix="a")
        events = Events(Paths.under(root).events_endpoint)
        move_in(work / "s1", d.inbox)

        # (1) the disk fills while the round trains
        if _wait_event(events, "epoch", None, 30):
            for m in mounts:
                fill(m, leave_bytes=low)
            t.faults += 1
            paused = _wait_event(events, "round_paused", None, 20)
            st = status_timed()
            if not paused or st["activity"] != "paused" or "waiting for space" not in st["why_not_training"]:
                t.problem(f"the round did not pause for the full disk: {st['activity']!r}, {st['why_not_training']!r}")
            else:
                t.detail["round paused, status said why"] += 1
            for m in mounts:
                free_up(m)
            if wait_round_after(root, 0, 60) is None:
                t.problem("the paused round did not finish once space returned")
        else:
            t.problem("the first round never trained")
        events.close()
        samples0, heads0 = snapshot(root)

        # (2) below min_free_mb while idle: files are still taken in, learning waits
        for m in mounts:
            fill(m, leave_bytes=low)
        t.faults += 1
        write_user(work / "s2", images[100:150], labels[100:150], prefix="b")
        move_in(work / "s2", d.inbox)
        st = wait_ingested(root, 150)
        if st is None:
            t.problem("files were not ingested while space was short (but not gone)")
        time.sleep(0.7)  # a round would be queued within a tick (0.5 s)
        st = status_timed()
        if st["last_round"] and st["last_round"]["round_id"] > 1 or "waiting for space" not in st["why_not_training"]:
            t.problem(f"learning did not wait for space: {st['why_not_training']!r}")
        else:
            t.detail["learning waited for space, status said why"] += 1

        # (3) the disk fills to the last byte while new files arrive
        for m in mounts:
            fill(m)
        t.faults += 1
        write_user(work / "s3", images[150:200], labels[150:200], prefix="c")
        move_in(work / "s3", d.inbox)
        try:
            wait_until(lambda: "full" in (status_timed()["last_error"] or ""), 30, "the disk-full error")
            t.detail["ingestion failed with 'disk full', retried"] += 1
        except AssertionError:
            t.problem("ingestion did not report the full disk")
        for _ in range(10):
            st = status_timed()
        if "waiting for space" not in st["why_not_training"]:
            t.problem(f"status does not say learning waits for space: {st['why_not_training']!r}")
        if d.proc.poll() is not None:
            t.crashes += 1
            t.problem("the daemon died on the full disk")
            return t

        # (4) space returns
        for m in mounts:
            free_up(m)
        files = inbox_files(d.inbox)
        if wait_ingested(root, len(files), 60) is None:
            t.problem("the files that arrived on the full disk were not ingested once space returned")
        if wait_round_after(root, 1, 60) is None:
            t.problem("no round completed once space returned")
        lost, problems = check_samples(root, files)
        t.samples_lost += lost
        t.problems += problems
        samples1, heads1 = snapshot(root)
        if not samples0 <= samples1:
            t.samples_lost += len(samples0 - samples1)
            t.problem(f"samples stored before the disk filled are gone: {sorted(samples0 - samples1)[:3]}")
        changed = [f for f, h in heads0.items() if heads1.get(f) != h]
        if changed:
            t.problem(f"head versions changed or lost: {changed}")
        for db in (root / "state" / "autlearn.sqlite", root / "cache" / "features.sqlite"):
            if (res := integrity(db)) != "ok":
                t.problem(f"integrity_check of {db.name}: {res}")
        t.problems += check_heads(root, oracle, png_bytes(images[-1]))
        leftovers = [p.name for m in mounts for p in m.rglob("*.tmp")]
        if leftovers:
            t.known.append(f"temporary files left by failed writes: {leftovers}")
        if d.stop() != 0:
            t.problem("SIGTERM did not end the daemon cleanly")
        t.trials += 1
    finally:
        if d is not None and d.proc.poll() is None:
            kill9(d)
        for m in mounts:
            umount(m)
        t.seconds = time.monotonic() - t0
    say(f"full disk: {dict(t.detail)}")
    return t


def test_full_disk_pauses_learning_keeps_answering_and_recovers(tmp_path, tiny_bundle, user_digits):
    images, labels = user_digits
    t = full_disk(tmp_path, tiny_bundle, images, labels, epochs=400)
    if t.skipped:
        pytest.skip(t.skipped)
    assert t.crashes == 0 and t.samples_lost == 0 and not t.problems, t.problems
    assert t.detail["round paused, status said why"] == 1
    assert t.detail["learning waited for space, status said why"] == 1


def enospc_mid_round(work: Path, bundle: Path, images: np.ndarray, labels: np.ndarray, cycles: int, seed: int,
                     epochs: int = 300, say=print) -> Tally:
    """min_free_mb = 0, so nothing pauses early: the disk fills to the last byte at a random moment of a round
    and the round's own writes (head file, SQLite rows, cached features) fail with ENOSPC. The daemon must keep
    answering, lose nothing, and complete a round once space returns."""
    t = Tally("disk full mid-write (min_free_mb=0)")
    t0 = time.monotonic()
    rng = random.Random(seed)
    root = work / "enospc"
    mounts = [root / "state", root / "cache"]
    for m in mounts:
        why = mount_tmpfs(m, 24)
        if why:
            for done in mounts:
                umount(done)
            t.skipped = why
            return t
    d = None
    oracle = HeadOracle(bundle)
    try:
        d = Daemon(root, bundle, training=f"min_new_samples = 20\nepochs = {epochs}\n", data="min_free_mb = 0.0\n")
        assert came_up(d), (root / "autlearnd.log").read_text()
        write_user(d.inbox, images[:100], labels[:100], prefix="a")
        if wait_round_after(root, 0) is None:
            t.problem("no first round")
        for cycle in range(cycles):
            samples0, heads0 = snapshot(root)
            before = max_round(root)
            point = rng.choice(["features", "augmented", "epoch", "trained"])
            epoch = rng.randint(1, epochs) if point == "epoch" else None
            events = Events(Paths.under(root).events_endpoint)
            lo = 100 + 40 * cycle
            idx = [i % len(images) for i in range(lo, lo + 40)]
            write_user(work / f"e{cycle}", images[idx], labels[idx], prefix=f"e{cycle}_")
            move_in(work / f"e{cycle}", d.inbox)
            if not _wait_event(events, point, epoch, 30):
                point += " (missed)"
            for m in mounts:
                fill(m)
            events.close()
            t.faults += 1
            t.trials += 1
            t.detail[f"filled at {point}"] += 1
            end = time.monotonic() + 2.0
            while time.monotonic() < end:  # status keeps answering while writes fail
                st = call(root, "status", timeout_s=5)
            if d.proc.poll() is not None:
                t.crashes += 1
                t.problem(f"cycle {cycle}: the daemon died on the full disk")
                return t
            if st["last_error"]:
                t.detail["jobs failed on the full disk"] += 1
            for m in mounts:
                free_up(m)
            files = inbox_files(d.inbox)
            if wait_ingested(root, len(files), 60) is None:
                t.problem(f"cycle {cycle}: files not ingested once space returned")
            call(root, "train")
            if wait_round_after(root, before, 60) is None:
                t.problem(f"cycle {cycle}: no round completed once space returned")
            lost, problems = check_samples(root, files)
            t.samples_lost += lost
            t.problems += [f"cycle {cycle}: {p}" for p in problems]
            samples1, heads1 = snapshot(root)
            if not samples0 <= samples1:
                t.samples_lost += len(samples0 - samples1)
                t.problem(f"cycle {cycle}: stored samples are gone: {sorted(samples0 - samples1)[:3]}")
            if any(heads1.get(f) != h for f, h in heads0.items()):
                t.problem(f"cycle {cycle}: stored head versions changed or vanished")
            for db in (root / "state" / "autlearn.sqlite", root / "cache" / "features.sqlite"):
                if (res := integrity(db)) != "ok":
                    t.problem(f"cycle {cycle}: integrity_check of {db.name}: {res}")
            t.problems += [f"cycle {cycle}: {p}" for p in check_heads(root, oracle, png_bytes(images[-1]))]
        leftovers = sorted(p.name for m in mounts for p in m.rglob("*.tmp"))
        if leftovers:
            t.known.append(f"{len(leftovers)} temporary files left by failed writes: {leftovers[:3]}")
        if d.stop() != 0:
            t.problem("SIGTERM did not end the daemon cleanly")
        # a failed round the full disk kept from being marked is marked before the next round; a round running at
        # SIGTERM is marked stopped: after a clean stop, none is left without an outcome
        unfinished = query(root / "state" / "autlearn.sqlite", "SELECT id FROM rounds WHERE finished IS NULL")
        if unfinished:
            t.problem(f"rounds {[r[0] for r in unfinished][:3]} stay unfinished in history after a clean stop")
        failed = query(root / "state" / "autlearn.sqlite", "SELECT COUNT(*) FROM rounds WHERE outcome = 'failed'")
        t.detail["rounds recorded as failed"] = failed[0][0]
    finally:
        if d is not None and d.proc.poll() is None:
            kill9(d)
        for m in mounts:
            umount(m)
        t.seconds = time.monotonic() - t0
    say(f"disk full mid-write: {dict(t.detail)}; known: {t.known}")
    return t


def test_disk_full_in_the_middle_of_a_rounds_writes(tmp_path, tiny_bundle, user_digits):
    images, labels = user_digits
    t = enospc_mid_round(tmp_path, tiny_bundle, images, labels, cycles=1, seed=SEED)
    if t.skipped:
        pytest.skip(t.skipped)
    assert t.crashes == 0 and t.samples_lost == 0 and not t.problems, t.problems


# ---------------------------------------------------------------------------------------------- tampered bundle

def flip_byte(path: Path, offset: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def bundle_files(bundle: Path) -> list[str]:
    """Every file of a bundle: manifest.json, manifest.sha256 (if the builder wrote it) and the listed files."""
    names = [bundle_mod.MANIFEST] + ([bundle_mod.MANIFEST_DIGEST] if (bundle / bundle_mod.MANIFEST_DIGEST).exists()
                                     else [])
    return names + sorted(bundle_mod.load(bundle).manifest["files"])


def tamper_sweep(bundle: Path, work: Path, rng: random.Random, per_file: int) -> Tally:
    """Flip one byte of one file of a copy of the bundle, `per_file` offsets per file (all of them if the file is
    smaller; 0: every byte of every file): every copy must be refused with a message that names the flipped
    file. Loading a copy costs a few milliseconds, so the long run flips every byte."""
    t = Tally("tampered bundle: one flipped byte")
    t0 = time.monotonic()
    names = bundle_files(bundle)
    covered = bundle_mod.MANIFEST_DIGEST in names
    copy = work / "tampered"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(bundle, copy)
    for name in names:
        pristine = (bundle / name).read_bytes()
        size = len(pristine)
        offsets = range(size) if per_file <= 0 or per_file >= size else sorted(rng.sample(range(size), per_file))
        for off in offsets:
            flip_byte(copy / name, off, rng.randint(1, 255))
            t.faults += 1
            t.detail[f"flips in {name}"] += 1
            try:
                bundle_mod.load(copy)
            except AutlearnError as e:
                # a flip in a file's sha256 inside the manifest names that file "… does not match the manifest"
                if name not in e.message and not (name == "manifest.json" and "manifest" in e.message):
                    t.problem(f"{name} @{off}: refused, but the message does not name the file: {e.message}")
                else:
                    t.detail["refused, naming the file"] += 1
            except Exception as e:
                t.crashes += 1
                t.problem(f"{name} @{off}: crashed the loader: {type(e).__name__}: {e}")
            else:
                if name == "manifest.json" and not covered:
                    t.detail["manifest flips accepted"] += 1  # a legacy bundle: nothing covers its manifest
                else:
                    t.problem(f"{name} @{off}: a tampered file was accepted")
            finally:
                (copy / name).write_bytes(pristine)
    if t.detail["manifest flips accepted"]:
        t.known.append(f"{t.detail['manifest flips accepted']} of {t.detail['flips in manifest.json']} flipped "
                       "bytes of manifest.json loaded (a legacy bundle without manifest.sha256)")
    shutil.rmtree(copy)
    t.trials = t.faults
    t.seconds = time.monotonic() - t0
    return t


def test_a_flipped_byte_in_any_file_of_the_bundle_is_refused_naming_the_file(tmp_path, tiny_bundle):
    assert (tiny_bundle / "manifest.sha256").is_file(), "the builder no longer writes manifest.sha256"
    t = tamper_sweep(tiny_bundle, tmp_path, random.Random(SEED), per_file=48)
    assert not t.problems and t.crashes == 0, t.problems
    assert t.detail["refused, naming the file"] == t.faults == 48 * len(bundle_files(tiny_bundle))
    # a flip in the manifest's syntax is refused too, naming manifest.json
    copy = tmp_path / "m"
    shutil.copytree(tiny_bundle, copy)
    flip_byte(copy / "manifest.json", 0, 0x01)  # '{' -> 'z'
    with pytest.raises(AutlearnError) as e:
        bundle_mod.load(copy)
    assert e.value.code == "bad_bundle" and "manifest.json" in e.value.message


def test_manifest_sha256_is_what_sha256sum_checks(tiny_bundle):
    p = subprocess.run(["sha256sum", "--check", "--strict", "manifest.sha256"], cwd=tiny_bundle, capture_output=True,
                       text=True)
    assert p.returncode == 0 and "manifest.json: OK" in p.stdout, p.stdout + p.stderr


def _flip_a_label(manifest: Path) -> None:
    text = manifest.read_bytes()
    flip_byte(manifest, text.index(b'"3"') + 1, 0x01)  # label "3" becomes a second "2"


def test_a_flipped_byte_inside_a_manifest_value_is_refused(tmp_path, tiny_bundle):
    copy = tmp_path / "m"
    shutil.copytree(tiny_bundle, copy)
    _flip_a_label(copy / "manifest.json")
    json.loads((copy / "manifest.json").read_text())  # still valid JSON: only the digest can catch it
    with pytest.raises(AutlearnError) as e:
        bundle_mod.load(copy)
    assert e.value.code == "bad_bundle" and "manifest.json" in e.value.message
    assert "manifest.sha256" in e.value.message


def test_a_damaged_or_wrong_digest_file_is_refused(tmp_path, tiny_bundle):
    copy = tmp_path / "m"
    shutil.copytree(tiny_bundle, copy)
    digest = copy / "manifest.sha256"
    good = digest.read_text()
    for text in ("", "\n", good.upper(), good.replace("manifest.json", "other.json"), good[:-2] + "\n",
                 "0" * 64 + "  manifest.json\n", good + good, "\ufeff" + good):
        digest.write_text(text)
        with pytest.raises(AutlearnError) as e:
            bundle_mod.load(copy)
        assert e.value.code == "bad_bundle" and "manifest.sha256" in e.value.message, (text, e.value.message)
    digest.write_text(good.rstrip("\n"))  # sha256sum without the final newline is still the same line
    assert bundle_mod.load(copy).manifest_covered


def test_a_legacy_bundle_without_manifest_sha256_still_loads(tmp_path, tiny_bundle, caplog):
    """Bundles written before manifest.sha256 existed stay loadable (format_version 1 is unchanged); only the
    manifest's own bytes are unprotected there, which the daemon logs."""
    copy = tmp_path / "legacy"
    shutil.copytree(tiny_bundle, copy)
    (copy / "manifest.sha256").unlink()
    with caplog.at_level("WARNING", logger="autlearn.runtime.bundle"):
        b = bundle_mod.load(copy)
    assert not b.manifest_covered and b.labels == bundle_mod.load(tiny_bundle).labels
    assert "manifest.sha256" in caplog.text
    flip_byte(copy / b.manifest["variants"][0]["base"], 100, 0x40)  # the other files are still covered
    with pytest.raises(AutlearnError):
        bundle_mod.load(copy)


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"format_version": ' + b"9" * 5000 + b"}", b"\xff\xfe", b"NaN",
                                 b'{"format_version": 1, "task": "image_classification", "input": {}, "labels": [], '
                                 b'"class_capacity": 0, "train_batch": 1, "variants": [1], "files": {}}',
                                 b'{"format_version": 1, "task": "image_classification", "input": {}, "labels": [], '
                                 b'"class_capacity": 0, "train_batch": 1, "variants": [{"base": "a", "head": "a"}], '
                                 b'"files": {"a": 5}}'],
                         ids=["deep", "huge-int", "not-utf8", "nan", "variant-not-object", "files-entry-not-object"])
def test_a_malformed_manifest_without_a_digest_is_refused_not_a_crash(tmp_path, raw):
    (tmp_path / "manifest.json").write_bytes(raw)
    with pytest.raises(AutlearnError) as e:
        bundle_mod.load(tmp_path)
    assert e.value.code == "bad_bundle" and "manifest.json" in e.value.message


def _refusal_seen(d: Daemon, name: str) -> bool:
    log = (d.root / "autlearnd.log").read_text()
    return any("refused bundle" in line and name in line for line in log.splitlines())


def tampered_daemon(work: Path, bundle: Path, rng: random.Random, per_file: int = 1, only: list[str] | None = None,
                    say=print) -> Tally:
    """A running board is given a bundle with one flipped byte, `per_file` times per file of the bundle (offset 0
    of the manifest files, random offsets of the models) plus a flipped label: every time the daemon comes up with
    the bundle it had, logs a refusal naming the file, and answers with the kept bundle."""
    t = Tally("tampered bundle given to the daemon")
    t0 = time.monotonic()
    root = work / "tamper-daemon"
    d = Daemon(root, bundle)
    try:
        if not came_up(d):
            t.crashes += 1
            t.problem(f"the daemon did not start with the good bundle: {keep_log(d, 'good')}")
            return t
        good = call(root, "status")["bundle"]["id"]
        if d.stop() != 0:
            t.problem("SIGTERM did not end the daemon cleanly")
        flips = []
        for name in only or bundle_files(bundle):
            size = (bundle / name).stat().st_size
            for k in range(per_file):
                flips.append((name, k if name.startswith("manifest.") and k < size else rng.randrange(size),
                              rng.randint(1, 255)))
        flips.append(("manifest.json", (bundle / "manifest.json").read_bytes().index(b'"3"') + 1, 0x01))  # a label
        probe = base64.b64encode(png_bytes(np.zeros((8, 8), np.uint8))).decode()
        for i, (name, offset, mask) in enumerate(flips):
            bad = work / f"bad{i}"
            shutil.copytree(bundle, bad)
            flip_byte(bad / name, offset, mask)
            t.faults += 1
            t.trials += 1
            t.detail[f"flips in {name}"] += 1
            d = Daemon(root, bad)
            try:
                if not came_up(d):
                    t.crashes += 1
                    t.problem(f"{name} @{offset}: the daemon did not come up: {keep_log(d, f'bad{i}')}")
                    continue
                if call(root, "status")["bundle"]["id"] != good:
                    t.problem(f"{name} @{offset}: the tampered bundle replaced the installed one")
                elif not _refusal_seen(d, name):
                    t.problem(f"{name} @{offset}: the log does not say it refused {name}: {keep_log(d, f'bad{i}')}")
                else:
                    t.detail["refused, kept the installed bundle"] += 1
                pred = call(root, "predict", {"files": [{"name": "x.png", "data": probe}]})
                if not pred["predictions"][0]["label"]:
                    t.problem(f"{name} @{offset}: the kept bundle does not answer")
            finally:
                if d.stop() != 0:
                    t.crashes += 1
                    t.problem(f"{name} @{offset}: SIGTERM did not end the daemon cleanly")
                shutil.rmtree(bad)
    finally:
        if d.proc.poll() is None:
            kill9(d)
        t.seconds = time.monotonic() - t0
    say(f"tampered bundle given to the daemon: {dict(t.detail)}")
    return t


def test_a_daemon_given_a_tampered_bundle_keeps_the_installed_one(tmp_path, tiny_bundle):
    # manifest.json (its label), manifest.sha256 and a model here; every file in tools/stress.py
    only = ["manifest.sha256", sorted(bundle_mod.load(tiny_bundle).manifest["files"])[0]]
    t = tampered_daemon(tmp_path, tiny_bundle, random.Random(SEED), per_file=1, only=only)
    assert t.crashes == 0 and not t.problems, t.problems
    assert t.detail["refused, kept the installed bundle"] == 3


# ---------------------------------------------------------------------------------------------- install cut off

def _installed(tmp_path: Path, tiny_bundle: Path) -> tuple[Path, str]:
    state = tmp_path / "state"
    state.mkdir()
    bundle_mod.install(tiny_bundle, state / "bundle")
    return state, bundle_mod.sha256_file(state / "bundle" / "manifest.json")


def _other_bundle(tmp_path: Path, tiny_bundle: Path) -> Path:
    """A second valid bundle (another label order), written the way the builder writes one."""
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    m = json.loads((other / "manifest.json").read_text())
    m["labels"] = list(reversed(m["labels"]))
    raw = (json.dumps(m, indent=2) + "\n").encode()
    (other / "manifest.json").write_bytes(raw)
    (other / "manifest.sha256").write_text(bundle_mod.manifest_digest_line(raw))
    bundle_mod.load(other)
    return other


def test_install_cut_between_its_two_renames_is_repaired(tmp_path, tiny_bundle):
    state, old_sha = _installed(tmp_path, tiny_bundle)
    other = _other_bundle(tmp_path, tiny_bundle)
    new_sha = bundle_mod.sha256_file(other / "manifest.json")
    # cut after bundle -> bundle.old, with a whole bundle.new: the install is finished
    shutil.copytree(other, state / "bundle.new")
    os.rename(state / "bundle", state / "bundle.old")
    assert "finished" in bundle_mod.recover(state / "bundle")
    assert bundle_mod.sha256_file(state / "bundle" / "manifest.json") == new_sha
    assert sorted(p.name for p in state.iterdir()) == ["bundle"]
    # cut with a bundle.new that does not verify (a real power loss before its data reached the disk): roll back
    shutil.copytree(state / "bundle", state / "bundle.new")
    os.rename(state / "bundle", state / "bundle.old")
    victim = state / "bundle.new" / bundle_mod.load(state / "bundle.new").manifest["variants"][0]["base"]
    victim.write_bytes(victim.read_bytes()[:100])
    assert "restored" in bundle_mod.recover(state / "bundle")
    assert sorted(p.name for p in state.iterdir()) == ["bundle"]
    assert bundle_mod.load_installed(state / "bundle").root == state / "bundle"
    # leftovers beside a whole bundle are removed; nothing to do is nothing done
    (state / "bundle.old").mkdir()
    (state / "bundle.new").mkdir()
    assert bundle_mod.recover(state / "bundle") == ""
    assert sorted(p.name for p in state.iterdir()) == ["bundle"]
    # an install that finds only bundle.old (e.g. cut again) keeps it until the new one is in place
    os.rename(state / "bundle", state / "bundle.old")
    with pytest.raises(AutlearnError):
        bundle_mod.install(tmp_path / "missing", state / "bundle")
    assert bundle_mod.sha256_file(state / "bundle" / "manifest.json") == new_sha
    assert old_sha != new_sha


def test_nothing_to_recover_is_still_no_bundle(tmp_path):
    with pytest.raises(AutlearnError) as e:
        bundle_mod.load_installed(tmp_path / "bundle")
    assert e.value.code == "no_bundle"


def second_bundle(bundle: Path, dest: Path) -> Path:
    """A copy of `bundle` with another manifest (so another bundle id), written as the builder writes one."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(bundle, dest)
    m = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    m["build"]["copy"] = "second bundle for the install tests"
    raw = (json.dumps(m, indent=2, ensure_ascii=False) + "\n").encode()
    (dest / "manifest.json").write_bytes(raw)
    (dest / "manifest.sha256").write_text(bundle_mod.manifest_digest_line(raw))
    bundle_mod.load(dest)
    return dest


def install_cut(work: Path, bundle: Path, trials: int, seed: int, say=print) -> Tally:
    """The power fails while the daemon installs a new bundle: it starts with the other of two bundles configured,
    and is SIGKILLed 0-10 ms after `state/bundle.new` appears (during the copy, its verification and flush, the two
    renames, or just after). The next start (with the new source, or with none: keep what is installed) must come
    up with one of the two bundles whole (the configured one, if one is), and leave no bundle.new/bundle.old."""
    t = Tally("power loss during a bundle install")
    t0 = time.monotonic()
    rng = random.Random(seed)
    root = work / "install"
    state = root / "state"
    bundles = [bundle, second_bundle(bundle, work / "bundle-b")]
    ids = [bundle_mod.sha256_file(b / "manifest.json")[:16] for b in bundles]
    d = Daemon(root, bundles[0])
    try:
        if not came_up(d):
            t.crashes += 1
            t.problem(f"the first start failed: {keep_log(d, 'first')}")
            return t
        d.stop()
        current = 0
        for trial in range(trials):
            target = 1 - current
            d = Daemon(root, bundles[target])
            end = time.monotonic() + 60
            while not (state / "bundle.new").exists() and d.proc.poll() is None and time.monotonic() < end:
                time.sleep(0.0002)  # the copy takes milliseconds
            time.sleep(rng.uniform(0.0, 0.01))
            if not kill9(d):
                t.crashes += 1
                t.problem(f"trial {trial}: the daemon died by itself while installing: {keep_log(d, f'i{trial}')}")
            names = {p.name for p in state.iterdir() if p.name.startswith("bundle")}
            where = ("between the two renames" if "bundle" not in names else
                     "during the copy or its check" if "bundle.new" in names else
                     "before the old copy was removed" if "bundle.old" in names else "after the install")
            t.faults += 1
            t.trials += 1
            t.detail[f"killed {where}"] += 1
            restart_with = rng.choice([target, None])  # None: model.bundle = "" keeps the installed bundle
            d = Daemon(root, bundles[restart_with] if restart_with is not None else "")
            try:
                if not came_up(d):
                    t.crashes += 1
                    t.problem(f"trial {trial} (killed {where}): no start after the cut: {keep_log(d, f'r{trial}')}")
                    continue
                got = call(root, "status")["bundle"]["id"]
                if got not in ids:
                    t.problem(f"trial {trial}: the daemon runs an unknown bundle {got}")
                elif restart_with is not None and got != ids[restart_with]:
                    t.problem(f"trial {trial}: configured bundle {ids[restart_with]}, running {got}")
                else:
                    current = ids.index(got)
                    t.detail["restarts with " + ("the configured bundle" if restart_with is not None else
                                                 f"the {'new' if current == target else 'previous'} bundle kept")] += 1
                left = sorted(p.name for p in state.iterdir() if p.name in ("bundle.new", "bundle.old"))
                if left:
                    t.problem(f"trial {trial}: {left} left beside state/bundle after the start")
            finally:
                if d.stop() != 0:
                    t.problem(f"trial {trial}: SIGTERM did not end the daemon cleanly")
    finally:
        if d.proc.poll() is None:
            kill9(d)
        t.seconds = time.monotonic() - t0
    say(f"power loss during a bundle install: seed {seed}, {dict(t.detail)}")
    return t


def test_power_loss_while_the_daemon_installs_a_bundle(tmp_path, tiny_bundle):
    t = install_cut(tmp_path, tiny_bundle, trials=2, seed=SEED)
    assert t.crashes == 0 and not t.problems, t.problems
    assert t.trials == 2


def test_power_cut_between_the_two_renames_of_a_bundle_install(tmp_path, tiny_bundle):
    root = tmp_path / "r"
    d = Daemon(root, tiny_bundle)
    assert came_up(d)
    good = call(root, "status")["bundle"]["id"]
    assert d.stop() == 0
    os.rename(root / "state" / "bundle", root / "state" / "bundle.old")  # where install() was cut off
    d = Daemon(root, "")  # model.bundle = "": keep the installed bundle
    try:
        assert came_up(d, 30), (root / "autlearnd.log").read_text()
        assert call(root, "status")["bundle"]["id"] == good
        assert "restored the previous bundle" in (root / "autlearnd.log").read_text()
    finally:
        d.stop()
