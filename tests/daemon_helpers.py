"""A real autlearnd subprocess with its own NOTIFY_SOCKET, and autlearnctl as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import BIN


def ctl(root: Path, *args: str, check: bool = True) -> dict:
    p = subprocess.run([str(BIN / "autlearnctl"), "--root", str(root), "--json", *args], capture_output=True,
                       text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"autlearnctl {args} failed ({p.returncode}): {p.stdout} {p.stderr}")
    return json.loads(p.stdout)


def wait_until(check, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = check()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    def __init__(self, root: Path, bundle: Path, extra_config: str = "", env=None, training: str = "",
                 data: str = ""):
        self.root = root
        self.inbox = root / "inbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.notify_path = root / "notify.sock"
        self.notify_path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        cfg = root / "autlearnd.toml"
        cfg.write_text(f'[paths]\nroot = "{root}"\n[data]\nwatch = ["{self.inbox}"]\ndebounce_s = 0.5\n' + data +
                       f'[model]\nbundle = "{bundle}"\n[training]\n'
                       + (training or "min_new_samples = 20\nepochs = 20\n") + extra_config)
        self.config_path = cfg
        env = dict(env or os.environ)
        env["NOTIFY_SOCKET"] = str(self.notify_path)
        self.log = open(root / "autlearnd.log", "w")
        self.proc = subprocess.Popen([str(BIN / "autlearnd"), "--config", str(cfg)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        self.messages: list[str] = []

    def read_notify(self) -> list[str]:
        if self.notify.fileno() < 0:
            return self.messages
        while True:
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except (socket.timeout, BlockingIOError):
                return self.messages

    def status(self) -> dict:
        return ctl(self.root, "status")

    def wait_round(self, after: int = 0, timeout: float = 120) -> dict:
        def done():
            assert self.proc.poll() is None, (self.root / "autlearnd.log").read_text()
            st = self.status()
            lr = st["last_round"]
            return st if lr and lr["round_id"] > after and st["activity"] == "idle" else None
        return wait_until(done, timeout, "a training round")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.read_notify()
        self.notify.close()
        self.log.close()
        return code


def move_in(staging: Path, inbox: Path) -> None:
    """Whole label folders appear at once, as a user's copy would finish."""
    for d in sorted(staging.iterdir()):
        target = inbox / d.name
        if target.exists():
            for f in d.iterdir():
                os.rename(f, target / f.name)
        else:
            os.rename(d, target)
