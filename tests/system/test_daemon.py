"""autlearnd as a real subprocess: inotify, ZeroMQ, SQLite, the notify socket, autlearnctl, signals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autlearn.control.client import Client
from autlearn.paths import Paths
from conftest import no_tensorflow_env
from harness import BIN, Daemon, ctl, move_in, wait_until


@pytest.fixture
def daemon(tmp_path, tiny_bundle):
    d = Daemon(tmp_path / "root", tiny_bundle)
    wait_until(lambda: any("READY=1" in m for m in d.read_notify()), 60, "READY on the notify socket")
    yield d
    d.stop()


def test_daemon_learns_from_dropped_images_and_reuses_cache(daemon, tmp_path, user_digits, write_user):
    images, labels = user_digits
    st0 = daemon.status()
    assert st0["activity"] == "idle" and st0["samples"]["ok"] == 0
    initial = st0["head"]["version"]

    write_user(tmp_path / "stage1", images[:500], labels[:500])
    move_in(tmp_path / "stage1", daemon.inbox)
    st = daemon.wait_round()
    first = st["last_round"]
    assert first["outcome"] == "promoted", first
    assert first["accuracy_after"] > first["accuracy_before"], first  # holdout accuracy went up
    assert st["head"]["version"] > initial
    assert first["features_computed"] == 500

    write_user(tmp_path / "stage2", images[500:550], labels[500:550], prefix="b")
    move_in(tmp_path / "stage2", daemon.inbox)
    st = daemon.wait_round(after=first["round_id"])
    second = st["last_round"]
    assert second["features_computed"] == 50  # only the new files went through the base
    assert second["features_cached"] == 500

    # predict through autlearnctl: the answer is a label of the bundle, with probabilities
    some = next((daemon.inbox / "3").iterdir())
    pr = ctl(daemon.root, "predict", str(some))
    assert pr["predictions"][0]["label"] in st["classes"]
    assert pr["predictions"][0]["cached"] is True  # a trained-on file: its features came from the cache
    ps = [t["p"] for t in pr["predictions"][0]["top"]]
    assert ps == sorted(ps, reverse=True) and all(0 <= p <= 1 for p in ps) and sum(ps) <= 1 + 1e-5

    assert any(m.startswith("STATUS=") for m in daemon.read_notify())
    assert daemon.stop() == 0
    assert any("STOPPING=1" in m for m in daemon.messages)


def test_bad_files_are_quarantined_and_user_files_kept(daemon, user_digits, write_user):
    images, labels = user_digits
    bad_dir = daemon.inbox / "7"
    bad_dir.mkdir()
    (bad_dir / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (bad_dir / "empty.png").write_bytes(b"")
    (bad_dir / "notes.txt").write_text("not an image")
    write_user(daemon.inbox, images[:5], labels[:5])

    def scanned():
        s = daemon.status()["samples"]
        return s if s["quarantined"] == 2 and s["ok"] == 5 else None
    s = wait_until(scanned, 30, "the scan")
    assert s["ignored"] == 1
    # the user's files are all still where they were
    assert (bad_dir / "truncated.png").exists() and (bad_dir / "empty.png").exists()
    reasons = sorted(p.read_text() for p in (daemon.root / "state" / "quarantine").glob("*.reason.txt"))
    assert any("empty file" in r for r in reasons) and any("not a readable image" in r for r in reasons)
    assert daemon.proc.poll() is None


def test_control_errors_and_protocol_mismatch(daemon):
    c = Client(Paths.under(daemon.root).control_endpoint, timeout_s=5)
    from autlearn.errors import AutlearnError
    with pytest.raises(AutlearnError) as e:
        c.call("explode")
    assert e.value.code == "unknown_command"
    with pytest.raises(AutlearnError) as e:
        c.call("predict", {"files": "x"})
    assert e.value.code == "bad_argument"
    with pytest.raises(AutlearnError) as e:
        c.call("predict", {"files": [{"name": "a", "data": "aGVsbG8="}]})  # "hello" is no image
    assert e.value.code == "bad_input"
    import zmq
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.connect(Paths.under(daemon.root).control_endpoint)
    s.send_multipart([b"", json.dumps({"v": 99, "id": 1, "cmd": "status"}).encode()])
    assert s.poll(5000)
    reply = json.loads(s.recv_multipart()[-1])
    assert reply["ok"] is False and reply["error"]["code"] == "protocol_version"
    s.send_multipart([b"", b"\x00garbage"])
    assert s.poll(5000)
    assert json.loads(s.recv_multipart()[-1])["error"]["code"] == "bad_request"
    s.close(0)
    c.close()
    assert c.call("status")["activity"] in ("idle", "ingesting")  # still answering


def test_autlearnctl_explains_a_missing_daemon(tmp_path):
    p = subprocess.run([str(BIN / "autlearnctl"), "--root", str(tmp_path / "nowhere"), "status"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 9
    assert "is autlearnd running?" in p.stderr


def test_a_whole_round_runs_where_tensorflow_cannot_be_imported(tmp_path, tiny_bundle, user_digits, write_user):
    images, labels = user_digits
    write_user(tmp_path / "root" / "inbox", images[:200], labels[:200])
    code = f"""
import sys
try:
    import tensorflow
    sys.exit("tensorflow was importable")
except ImportError:
    pass
sys.path.insert(0, {str(Path(__file__).resolve().parents[2] / 'tools')!r})
from eval_board import make_service, engine_of, no_progress, never
from pathlib import Path
svc = make_service(Path({str(tmp_path / 'root')!r}), Path({str(tiny_bundle)!r}))
eng = engine_of(svc)
assert eng.scan().added == 200
r = eng.round("test", no_progress, never)
assert r.outcome in ("promoted", "rejected") and r.features_computed == 200, r
svc.stop()
assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules), "tensorflow was loaded"
print("round without tensorflow:", r.outcome)
"""
    p = subprocess.run([sys.executable, "-c", code], env=no_tensorflow_env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "round without tensorflow" in p.stdout
