"""Promises of the control protocol and of autlearnctl/autlearnd's command lines, against real daemons, real
ZeroMQ sockets and real subprocesses: one reply per request (oversize ones too, with the readable id), requests
that never wait for a large predict, pause/train/bench that agree, the error event, the loop's guard, and one
sentence plus an exit code for every failure a user can cause."""

from __future__ import annotations

import pytest

import base64
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import zmq

from autlearn.control import protocol
from autlearn.control.client import Client, Events
from autlearn.control.notify import Notifier
from autlearn.control.server import ControlServer, EventQueue
from eval_board import make_service
from harness import BIN, Daemon, ctl, wait_until

V = protocol.PROTOCOL_VERSION


class Wire:
    def __init__(self, root: Path):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"ipc://{root / 'run' / 'control.sock'}")

    def send(self, payload: bytes) -> None:
        self.sock.send_multipart([b"", payload])

    def recv(self, timeout_ms: int = 60_000) -> dict:
        assert self.sock.poll(timeout_ms), "no reply"
        return json.loads(self.sock.recv_multipart()[-1])

    def close(self) -> None:
        self.sock.close(0)


def one_sentence(stderr: str, prog: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: ") and "Traceback" not in stderr, stderr
    return lines[0]


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60, **kw)


def test_envelopes_and_oversize_frames_get_their_one_reply(tmp_path, tiny_bundle):
    d = Daemon(tmp_path / "r", tiny_bundle, training="auto = false\n").up()
    w = Wire(d.root)
    try:
        for msg, says in [({"id": 5, "cmd": "status"}, "no 'v' field"), ({"v": 2.0, "id": 5, "cmd": "status"},
                          "must be an integer"), ({"v": True, "id": 5, "cmd": "status"}, "must be an integer"),
                          ({"v": 1, "id": 5, "cmd": "status"}, "protocol version 1, this daemon speaks 2"),
                          ({"v": V, "id": 5, "cmd": 3}, "'cmd' must be a string")]:
            w.send(json.dumps(msg).encode())
            r = w.recv()
            assert r["id"] == 5 and not r["ok"] and says in r["error"]["message"], (msg, r)
        for size in (1_052_677, 4 << 20):  # over ZeroMQ's old MAXMSGSIZE: dropped without a reply before
            w.send(b'{"v": 2, "id": 9, "cmd": "status", "pad": "' + b"x" * size + b'"}')
            r = w.recv()
            assert r["error"]["code"] == "bad_request" and "over the limit" in r["error"]["message"]
        w.send(protocol.request("status", None, 10))
        assert w.recv()["id"] == 10
    finally:
        w.close()
        assert d.stop() == 0


def test_a_status_sent_during_a_large_predict_is_answered_first(tmp_path, tiny_bundle, user_digits, write_user):
    d = Daemon(tmp_path / "r", tiny_bundle, training="auto = false\n").up()
    w = Wire(d.root)
    try:
        images, labels = user_digits
        files = write_user(tmp_path / "ask", images[:1200], labels[:1200])  # none of them cached
        payload = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in files]
        w.send(protocol.request("predict", {"files": payload}, "predict"))
        w.send(protocol.request("status", None, "status"))
        first, second = w.recv(), w.recv()
        assert (first["id"], second["id"]) == ("status", "predict") and first["ok"] and second["ok"]
        assert len(second["result"]["predictions"]) == 1200
        assert not any(p["cached"] for p in second["result"]["predictions"][:1])
    finally:
        w.close()
        assert d.stop() == 0


def test_train_while_paused_starts_no_round_until_resume(tmp_path, tiny_bundle, user_digits, write_user):
    d = Daemon(tmp_path / "r", tiny_bundle, training="auto = false\nepochs = 5\n").up()
    try:
        images, labels = user_digits
        write_user(d.inbox, images[:100], labels[:100])
        wait_until(lambda: d.status()["samples"]["ok"] == 100, 30, "ingestion")
        scanned = d.status()["last_scan"]["time"]
        assert ctl(d.root, "pause")["paused"] is True
        r = ctl(d.root, "train")
        assert r["queued"] and any("autlearnctl pause" in b for b in r["blocked_by"])
        wait_until(lambda: d.status()["last_scan"]["time"] > scanned, 30, "the rescan before the round")
        st = d.status()
        assert st["round"] is None and st["activity"] == "idle" and ctl(d.root, "history")["rounds"] == []
        assert "autlearnctl pause" in st["why_not_training"]
        ctl(d.root, "resume")
        st = d.wait_round()
        assert st["last_round"]["outcome"] in ("promoted", "rejected")
        assert len(ctl(d.root, "history")["rounds"]) == 1
    finally:
        assert d.stop() == 0


def test_bench_is_busy_only_while_a_round_computes_and_holds_a_paused_one(tmp_path, tiny_bundle, user_digits,
                                                                          write_user):
    d = Daemon(tmp_path / "r", tiny_bundle, training="min_new_samples = 20\nepochs = 10000\n").up()
    try:
        images, labels = user_digits
        write_user(d.inbox, images[:300], labels[:300])
        wait_until(lambda: d.status()["activity"] == "training", 60, "a long round")
        p = run("autlearnctl", "--root", str(d.root), "bench")
        assert p.returncode == 6 and "pause it first" not in p.stderr, p.stderr
        one_sentence(p.stderr, "autlearnctl")
        ctl(d.root, "pause")
        wait_until(lambda: d.status()["activity"] == "paused", 60, "the round held at a step")
        r = ctl(d.root, "bench")
        assert r["note"] and r["in_use"] == r["name"]
        st = d.status()
        assert st["activity"] == "paused" and st["round"]["round_id"] == 1
    finally:
        assert d.stop() == 0


def test_a_refused_reload_is_an_error_event_and_the_last_error(tmp_path, tiny_bundle):
    d = Daemon(tmp_path / "r", tiny_bundle).up()
    try:
        events = Events(f"ipc://{d.root / 'run' / 'events.sock'}", ("error",))
        d.config_path.write_text(d.config_path.read_text().replace("min_new_samples = 20", "min_new_samples = 'x'"))
        d.proc.send_signal(signal.SIGHUP)
        ev = events.next(30)
        events.close()
        assert ev["event"] == "error" and ev["data"]["where"] == "reload"
        assert "min_new_samples" in ev["data"]["message"]
        assert d.status()["last_error"].startswith("reload: new configuration refused")
    finally:
        assert d.stop() == 0


def test_the_loop_survives_failing_periodic_work_and_keeps_answering(tmp_path, tiny_bundle):
    svc = make_service(tmp_path / "r", tiny_bundle)
    events = EventQueue()
    svc._emit = events
    calls = {"n": 0, "fail": True}
    real_tick = svc.tick

    def tick():
        calls["n"] += 1
        if calls["fail"]:
            raise RuntimeError("boom")
        real_tick()

    svc.tick = tick
    svc.tick_soon.set()
    server = ControlServer(svc, svc.paths.control_endpoint, svc.paths.events_endpoint, Notifier(""), events, None)
    subscriber = Events(svc.paths.events_endpoint, ("error",))
    stop = threading.Event()
    seen: dict = {}

    def client_side():  # the loop runs on this test's thread (it owns the service's SQLite handle)
        client = Client(svc.paths.control_endpoint)
        try:
            seen["event"] = subscriber.next(30)
            seen["last_error"] = client.call("status")["last_error"]
            seen["auto"] = client.call("config")["values"]["training.auto"]  # still answering
            calls["fail"] = False
            n = calls["n"]
            wait_until(lambda: calls["n"] > n + 1, 30, "ticks again after the back-off")
            seen["recovered"] = True
        except BaseException as e:
            seen["error"] = e
        finally:
            client.close()
            stop.set()

    t = threading.Thread(target=client_side)
    t.start()
    try:
        server.serve(stop.is_set)
    finally:
        stop.set()
        t.join(60)
        subscriber.close()
        server.close()
        svc.stop()
    assert "error" not in seen, seen.get("error")
    assert seen["event"]["data"] == {"where": "scheduling", "message": "RuntimeError: boom"}
    assert seen["last_error"] == "scheduling: RuntimeError: boom" and seen["auto"] is False and seen["recovered"]


def test_resume_keeps_a_pending_delegate_choice(tmp_path, tiny_bundle):
    svc = make_service(tmp_path / "r", tiny_bundle)
    svc.stop()  # no worker to take the flag: what resume does to it is all that is seen
    svc.accelerator_changed("test")
    svc.resume({})
    assert svc.worker.redelegate.is_set() and svc.answerer.redelegate.is_set()


@pytest.mark.slow
def test_command_line_failures_are_one_sentence_and_an_exit_code(tmp_path):
    p = run("autlearnd", "--root", "/proc/autlearn-x")
    assert p.returncode == 8 and "/proc/autlearn-x" in one_sentence(p.stderr, "autlearnd")
    if not os.path.exists("/etc/autlearn/autlearnd.toml"):
        p = run("autlearnd", "--check-config")
        assert p.returncode == 0 and "defaults" in p.stdout, p.stderr
    p = run("autlearnd", "--check-config", str(tmp_path / "missing.toml"))
    assert p.returncode == 8 and "missing.toml" in one_sentence(p.stderr, "autlearnd")
    p = run("autlearnctl", "--socket", "foo://bar", "status")
    assert p.returncode == 2 and "foo://bar" in one_sentence(p.stderr, "autlearnctl")
    (tmp_path / "afile").write_text("x")
    p = run("autlearnctl", "keygen", str(tmp_path / "afile"))
    assert p.returncode == 2 and "not a directory" in one_sentence(p.stderr, "autlearnctl")
    assert (tmp_path / "afile").read_text() == "x"
    p = run("autlearnctl", "--root", str(tmp_path / "none"), "events")
    assert p.returncode == 9 and "is autlearnd running?" in one_sentence(p.stderr, "autlearnctl")
    stale = tmp_path / "stale" / "run"  # socket files a killed daemon left behind: nobody answers
    stale.mkdir(parents=True)
    for name in ("control.sock", "events.sock"):
        (stale / name).touch()
    p = run("autlearnctl", "--root", str(tmp_path / "stale"), "--timeout", "1", "events")
    assert p.returncode == 9 and "no reply" in one_sentence(p.stderr, "autlearnctl")
    p = run("autlearnctl", "--root", str(tmp_path / "none"), "predict", str(tmp_path))
    assert p.returncode == 2 and "is a directory" in one_sentence(p.stderr, "autlearnctl")


def test_a_reader_that_goes_away_is_one_sentence_not_a_traceback(tmp_path, tiny_bundle):
    d = Daemon(tmp_path / "r", tiny_bundle).up()
    try:
        for verb in (["status"], ["--json", "config"]):
            r, w = os.pipe()
            os.close(r)  # `| head` that has already exited
            p = subprocess.run([str(BIN / "autlearnctl"), "--root", str(d.root), *verb], stdout=w,
                               stderr=subprocess.PIPE, text=True, timeout=60)
            os.close(w)
            assert p.returncode == 141, p.stderr
            one_sentence(p.stderr, "autlearnctl")
    finally:
        assert d.stop() == 0


def test_events_without_a_liveness_client_time_out_cleanly(tmp_path):
    """A subscriber made without `alive` (as the bench harness makes one) whose poll returns a fraction of a
    millisecond before the deadline waits on and raises TimeoutError, not an AttributeError on the absent client."""
    pub = zmq.Context.instance().socket(zmq.PUB)
    sock = tmp_path / "events.sock"
    pub.bind(f"ipc://{sock}")
    try:
        ev = Events(f"ipc://{sock}")
        try:
            for _ in range(20):  # 1.5 ms polls as 1 ms: each time the loop comes round before the deadline
                with pytest.raises(TimeoutError):
                    ev.next(0.0015)
        finally:
            ev.close()
    finally:
        pub.close(0)
