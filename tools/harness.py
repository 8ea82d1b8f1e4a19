"""One real autlearnd subprocess to drive, for the tests, the demo, the benchmarks and `make stress`.

Its own root, config and NOTIFY_SOCKET; READY, control calls, events, SIGKILL and restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from autlearn.control.client import Client, Events
from autlearn.paths import Paths

BIN = Path(sys.executable).parent
DEFAULT_TRAINING = "min_new_samples = 20\nepochs = 20\n"


# ---------------------------------------------------------------------------------------------- waiting, files

def wait_until(check, timeout: float, what: str, interval: float = 0.2):
    """`check()` until it returns something true (returned); AssertionError naming `what` after `timeout` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = check()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def move_in(staging: Path, inbox: Path, whole_folders: bool = True) -> None:
    """Label folders of `staging` into `inbox` by renames: a whole folder appears at once (as a user's finished
    copy would), or, where the label folder exists already or `whole_folders` is false, each file at once."""
    for d in sorted(staging.iterdir()):
        target = inbox / d.name
        if whole_folders and not target.exists():
            os.rename(d, target)
            continue
        target.mkdir(exist_ok=True)
        for f in sorted(d.iterdir()):
            os.rename(f, target / f.name)


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status field in KiB (VmRSS, VmHWM), 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------------------------- control and state

def ctl(root: Path, *args: str, check: bool = True) -> dict:
    """autlearnctl (a subprocess) with --json under `root`; its decoded answer."""
    p = subprocess.run([str(BIN / "autlearnctl"), "--root", str(root), "--json", *args], capture_output=True,
                       text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"autlearnctl {args} failed ({p.returncode}): {p.stdout} {p.stderr}")
    return json.loads(p.stdout)


def client(root: Path, timeout_s: float = 10) -> Client:
    return Client(Paths.under(root).control_endpoint, timeout_s)


def call(root: Path, cmd: str, args: dict | None = None, timeout_s: float = 10):
    """One control request to the daemon under `root` on a connection of its own."""
    c = client(root, timeout_s)
    try:
        return c.call(cmd, args)
    finally:
        c.close()


def query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of `sql` on a SQLite file the daemon writes (its own connection, a long busy timeout)."""
    con = sqlite3.connect(str(db), timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def max_round(root: Path) -> int:
    return query(root / "state" / "autlearn.sqlite", "SELECT COALESCE(MAX(id), 0) FROM rounds")[0][0]


def wait_ingested(root: Path, n: int, timeout: float = 30) -> dict | None:
    """The status once a scan has run and `n` samples are usable; None on timeout."""
    try:
        return wait_until(lambda: (s := call(root, "status"))["last_scan"] is not None
                          and s["samples"]["ok"] >= n and s, timeout, f"{n} samples after the scan")
    except AssertionError:
        return None


def wait_round_after(root: Path, after: int, timeout: float = 60) -> tuple | None:
    """The first round numbered above `after` that ended with a head (promoted or rejected); None on timeout."""
    db = root / "state" / "autlearn.sqlite"
    try:
        return wait_until(lambda: (r := query(db, "SELECT id, outcome FROM rounds WHERE id > ? AND outcome IN "
                                                  "('promoted', 'rejected') ORDER BY id LIMIT 1", (after,)))
                          and r[0], timeout, f"a round after #{after}")
    except AssertionError:
        return None


def wait_event(events: Events, name: str, epoch: int | None, timeout: float) -> bool:
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


# ---------------------------------------------------------------------------------------------- the daemon

class Daemon:
    """autlearnd under `root`, watching `root/inbox`, with its own config file and NOTIFY_SOCKET.

    `training`, `data` and `extra_config` are TOML lines of those sections (and further sections); it starts at
    once unless `start=False`; `start()` again after `stop()` or `kill9()` restarts it on the same state."""

    def __init__(self, root: Path, bundle: Path | str, extra_config: str = "", env=None, training: str = "",
                 data: str = "", debounce_s: float = 0.5, log_mode: str = "w", start: bool = True):
        self.root, self.bundle, self.debounce_s = root, bundle, debounce_s
        self.training, self.data, self.extra_config = training or DEFAULT_TRAINING, data, extra_config
        self.inbox = root / "inbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.notify_path = root / "notify.sock"
        self.config_path = root / "autlearnd.toml"
        self.env, self.log_mode = env, log_mode
        self.proc: subprocess.Popen | None = None
        self.notify = self.log = None
        self.messages: list[str] = []
        self.started_at = self.ready_at = None
        self.write_config()
        if start:
            self.start()

    def write_config(self) -> None:
        self.config_path.write_text(
            f'[paths]\nroot = "{self.root}"\n[data]\nwatch = ["{self.inbox}"]\ndebounce_s = {self.debounce_s}\n'
            + self.data + f'[model]\nbundle = "{self.bundle}"\n[training]\n' + self.training + self.extra_config)

    def start(self) -> "Daemon":
        self.notify_path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        env = dict(self.env or os.environ)
        env["NOTIFY_SOCKET"] = str(self.notify_path)
        self.log = open(self.root / "autlearnd.log", self.log_mode)
        self.messages, self.ready_at = [], None
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen([str(BIN / "autlearnd"), "--config", str(self.config_path)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        return self

    # -- notify

    def read_notify(self) -> list[str]:
        """Every datagram the daemon sent to its NOTIFY_SOCKET so far (waits up to 0.2 s for the next)."""
        if self.notify is None or self.notify.fileno() < 0:
            return self.messages
        while True:
            try:
                msg = self.notify.recv(4096).decode()
            except (socket.timeout, BlockingIOError):
                return self.messages
            if self.ready_at is None and "READY=1" in msg.split("\n"):
                self.ready_at = time.perf_counter()
            self.messages.append(msg)

    def came_up(self, timeout: float = 60) -> bool:
        """True once the daemon reports READY=1; False if it exits or `timeout` s pass first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            self.read_notify()
            if self.ready_at is not None:
                return True
        return False

    def up(self, timeout: float = 60) -> "Daemon":
        """Wait for READY=1; AssertionError with the log's end if the daemon exits or is late."""
        if not self.came_up(timeout):
            raise AssertionError(f"autlearnd did not report READY within {timeout:.0f} s "
                                 f"(exit code {self.proc.poll()}):\n{self.log_text()[-3000:]}")
        return self

    @property
    def ready_s(self) -> float | None:
        """Seconds from starting the process to its READY=1 datagram."""
        return None if self.ready_at is None else self.ready_at - self.started_at

    # -- control

    def call(self, cmd: str, args: dict | None = None, timeout_s: float = 10):
        return call(self.root, cmd, args, timeout_s)

    def status(self) -> dict:
        return ctl(self.root, "status")

    def subscribe(self) -> Events:
        """A new subscription to the daemon's events (the caller closes it)."""
        return Events(Paths.under(self.root).events_endpoint)

    def wait_round(self, after: int = 0, timeout: float = 120) -> dict:
        """The status once a round numbered above `after` has ended and the daemon is idle."""
        def done():
            assert self.proc.poll() is None, self.log_text()
            st = self.status()
            last = st["last_round"]
            return st if last and last["round_id"] > after and st["activity"] == "idle" else None
        return wait_until(done, timeout, "a training round")

    def log_text(self) -> str:
        return (self.root / "autlearnd.log").read_text(errors="replace")

    def keep_log(self, tag: str) -> Path:
        """A copy of this run's log under root/logs/ (a start with log_mode "w" truncates autlearnd.log)."""
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        dest = logs / f"{tag}.log"
        shutil.copy(self.root / "autlearnd.log", dest)
        return dest

    # -- ending it

    def _closed(self) -> None:
        self.read_notify()
        self.notify.close()
        self.log.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, and its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._closed()

    def kill9(self) -> bool:
        """Power loss: SIGKILL, no chance to clean up. False if the daemon had already died by itself."""
        alive = self.proc.poll() is None
        if alive:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._closed()
        return alive

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
