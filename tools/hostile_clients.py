"""Hostile-client scenarios: the attacks of fuzz.py on one daemon, and the TCP listener's CURVE gate.

`hostile_clients` watches the daemon's memory and descriptors while every request must get a catalogued code;
`curve_gate` checks that intruders over TCP get nothing.
"""

from __future__ import annotations

import base64
import os
import random
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np

from autlearn.control import protocol
from faults import Tally
from fuzz import (Wire, concurrent_clients, decode_reply, fuzz_protocol, oversize, vanishing_clients,
                  wrong_types_everywhere)
from harness import BIN, Daemon, fd_count, proc_status
from userdata import png_bytes

MEMORY_BOUND_MB = 60


def hostile_clients(work: Path, bundle: Path, examples: int, seed: int | None, clients: int = 20,
                    per_client: int = 50, vanishing_rounds: int = 200, say=print) -> Tally:
    """The whole client-side attack on one daemon, with its memory and descriptors watched."""
    t = Tally("hostile clients (ipc)")
    t0 = time.monotonic()
    d = Daemon(work / "fuzz", bundle, training="auto = false\nepochs = 5\n")
    try:
        assert d.came_up(), (d.root / "autlearnd.log").read_text()
        endpoint = f"ipc://{d.root / 'run' / 'control.sock'}"
        warm = Wire(endpoint)  # a first predict loads the head: count that as the baseline
        decode_reply(warm.roundtrip([b"", protocol.request("predict", {"files": [{"name": "w.png", "data": base64.
                                                           b64encode(png_bytes(np.zeros((8, 8), np.uint8))).decode()}]})]))
        warm.close()
        rss0, fds0 = proc_status(d.proc.pid, "VmRSS"), fd_count(d.proc.pid)
        for name, step in [("fuzz", lambda: fuzz_protocol(endpoint, examples, seed)),
                           ("wrong types", lambda: wrong_types_everywhere(endpoint)),
                           ("oversize", lambda: oversize(endpoint)),
                           ("concurrent", lambda: concurrent_clients(endpoint, clients, per_client)),
                           ("vanishing", lambda: vanishing_clients(endpoint, vanishing_rounds, seed=seed or 0))]:
            try:
                counts = step()
            except AssertionError as e:
                t.problem(f"{name}: {e}")
                counts = Counter()
            for k, v in counts.items():
                t.detail[f"{name}: {k}"] = v
            t.bad_inputs += sum(v for k, v in counts.items() if k.startswith(("error", "raw", "text", "multipart",
                                                                                 "vanished", "flood", "oversize"))
                                or k == "errors")
            if d.proc.poll() is not None:
                t.crashes += 1
                t.problem(f"the daemon died during {name}: {(d.root / 'autlearnd.log').read_text()[-3000:]}")
                break
        t.trials = sum(v for k, v in t.detail.items() if k.endswith(("requests", "frames", "messages")))
        time.sleep(0.5)
        rss1, fds1 = proc_status(d.proc.pid, "VmRSS"), fd_count(d.proc.pid)
        t.detail["RSS before/after (MB)"] = f"{rss0 // 1024}/{rss1 // 1024}"
        t.detail["fds before/after"] = f"{fds0}/{fds1}"
        if rss1 - rss0 > MEMORY_BOUND_MB * 1024:
            t.problem(f"RSS grew by {(rss1 - rss0) // 1024} MB (bound {MEMORY_BOUND_MB} MB)")
        if fds1 > fds0 + 10:
            t.problem(f"file descriptors grew from {fds0} to {fds1}")
        if "request failed" in (d.root / "autlearnd.log").read_text():
            t.problem("the log shows a request that failed with an internal error")
        if d.stop() != 0:
            t.problem("the daemon did not stop cleanly")
    finally:
        t.end(d, t0)
    say(f"hostile clients: seed {seed if seed is not None else 'derandomized'}, {dict(t.detail)}")
    return t


# ---------------------------------------------------------------------------------------------- TCP and CURVE

def curve_gate(work: Path, bundle: Path, attempts: int = 3, say=print) -> Tally:
    """Over TCP only a client with an authorized CURVE key is answered: an unknown key, a plain (NULL) client,
    a CURVE client that guessed the wrong server key and raw TCP garbage get nothing, and cannot act."""
    from autlearn.control.curve import load_pair, load_public
    t = Tally("hostile clients (tcp, CURVE)")
    t0 = time.monotonic()
    keys = work / "keys"
    for name in ("alice", "mallory", "fake-server"):
        p = subprocess.run([str(BIN / "autlearnctl"), "keygen", str(keys), "--name", name], capture_output=True,
                           text=True)
        assert p.returncode == 0, p.stderr
    authorized = work / "authorized_keys"
    authorized.write_text(next(l.strip() for l in (keys / "alice.key").read_text().splitlines() if "public-key" in l)
                          + "\n")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    endpoint = f"tcp://127.0.0.1:{port}"
    d = Daemon(work / "tcp", bundle, training="auto = false\n",
               extra_config=f'[control]\ntcp = "{endpoint}"\nauthorized_keys = "{authorized}"\n')
    try:
        assert d.came_up(), (d.root / "autlearnd.log").read_text()
        server_pub = load_public(d.root / "state" / "curve" / "server.key")
        alice = Wire(endpoint, (*load_pair(keys / "alice.key_secret"), server_pub))
        assert decode_reply(alice.roundtrip([b"", protocol.request("status")]))["ok"]
        intruders = {
            "unknown CURVE key": (*load_pair(keys / "mallory.key_secret"), server_pub),
            "plain client (no CURVE)": None,
            "authorized key, wrong server key": (*load_pair(keys / "alice.key_secret"),
                                                 load_public(keys / "fake-server.key")),
        }
        for what, curve in intruders.items():
            for i in range(attempts):
                w = Wire(endpoint, curve)
                for cmd in ("status", "pause"):
                    if w.roundtrip([b"", protocol.request(cmd, None, i)], 700) is not None:
                        t.problem(f"{what}: got a reply to {cmd}")
                    t.bad_inputs += 1
                w.close()
            t.detail[what] = attempts * 2
        for i in range(attempts * 5):  # raw TCP: garbage and half greetings
            r = socket.create_connection(("127.0.0.1", port), timeout=2)
            r.sendall(os.urandom(random.Random(i).randint(1, 200)))
            r.settimeout(0.3)
            try:
                data = r.recv(4096)
            except OSError:
                data = b""
            if b"result" in data or b"{" in data:
                t.problem(f"raw TCP got data back: {data[:60]!r}")
            r.close()
            t.bad_inputs += 1
        t.detail["raw TCP garbage"] = attempts * 5
        st = decode_reply(alice.roundtrip([b"", protocol.request("status")]))["result"]
        if st["paused_by_user"]:
            t.problem("an intruder's 'pause' was carried out")
        alice.close()
        t.trials = t.bad_inputs
        if d.proc.poll() is not None:
            t.crashes += 1
        if d.stop() != 0:
            t.problem("the daemon did not stop cleanly")
    finally:
        t.end(d, t0)
    say(f"curve gate: {dict(t.detail)}")
    return t
