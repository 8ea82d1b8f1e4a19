"""Pretraining beyond one machine, for real: two `autlearn-build` worker processes on 127.0.0.1 form a
MultiWorkerMirroredStrategy cluster through TF_CONFIG; both finish, and only the chief writes the bundle."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_cluster(tmp_path: Path, task: list[str]) -> list[tuple[int, str, Path]]:
    ports = _free_ports(2)
    workers = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        out = tmp_path / f"bundle{index}"
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append((subprocess.Popen([str(BIN / "autlearn-build"), *task, "--out", str(out),
                                        "--strategy", "multi-worker"], stdout=log, stderr=subprocess.STDOUT,
                                       env=env), log, out))
    results = []
    try:
        for proc, log, out in procs:
            rc = proc.wait(timeout=240)
            log.close()
            results.append((rc, Path(log.name).read_text(errors="replace"), out))
    finally:
        for proc, log, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return results


@pytest.mark.slow
def test_two_workers_pretrain_together_and_the_chief_writes_the_bundle(tmp_path):
    (rc0, log0, out0), (rc1, log1, out1) = _run_cluster(
        tmp_path, ["image", "--data", "mnist5k", "--limit", "300", "--epochs", "2", "--width-mult", "0.25",
                   "--feature-size", "16", "--head-epochs", "0", "--batch-size", "32"])
    assert rc0 == 0, log0[-3000:]
    assert rc1 == 0, log1[-3000:]
    assert "strategy multi-worker (2 replica(s), worker 0)" in log0
    assert "strategy multi-worker (2 replica(s), worker 1)" in log1
    assert "pretraining done on worker 1; the chief writes the bundle" in log1
    assert not out1.exists(), "a worker that is not the chief must not write a bundle"

    m = json.loads((out0 / "manifest.json").read_text())
    assert m["build"]["distribution"] == {"strategy": "multi-worker", "task": "worker 0", "replicas": 2}
    assert set(m["files"]) == {"base_full_int8.tflite", "head_full.tflite"}

    # both workers saw the same synchronised training: their per-epoch losses are identical
    def losses(log: str) -> list[str]:
        return [line.split("loss")[1].split()[0] for line in log.splitlines() if line.strip().startswith("epoch")]

    assert losses(log0) and losses(log0) == losses(log1)


def test_multi_worker_without_tf_config_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    proc = subprocess.run([str(BIN / "autlearn-build"), "text", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                           "--strategy", "multi-worker"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    assert "needs TF_CONFIG" in proc.stderr
