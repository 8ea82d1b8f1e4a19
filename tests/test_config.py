import pytest

from autlearn import config
from autlearn.errors import AutlearnError


def test_defaults_cover_every_setting():
    cfg = config.Config()
    assert set(cfg.values) == {s.name for s in config.SETTINGS}
    assert cfg["training.min_new_samples"] == 20


def test_values_are_read_and_validated():
    cfg = config.parse('[training]\nepochs = 5\n[data]\nwatch = ["/a", "/b"]\n', "t.toml")
    assert cfg["training.epochs"] == 5
    assert cfg["data.watch"] == ["/a", "/b"]


@pytest.mark.parametrize("text, needle", [
    ("[training]\nepochs = -1\n", "training.epochs = -1"),
    ("[training]\nepochs = 'many'\n", "expected an integer"),
    ("[training]\nepoch = 3\n", "unknown key 'training.epoch'"),
    ("[model]\ndelegate = 'tpu'\n", "model.delegate"),
    ("[data]\nwatch = '/a'\n", "expected a list of strings"),
    ("training = 3\n", "must be a [section] table"),
    ("[training\n", "not valid TOML"),
    ("[data]\nmax_file_mb = nan\n", "data.max_file_mb = nan"),
    ("[training]\nlearning_rate = -nan\n", "training.learning_rate"),
    ("[data]\nmin_free_mb = nan\n", "data.min_free_mb = nan"),
])
def test_bad_values_name_file_key_and_expectation(text, needle):
    with pytest.raises(AutlearnError) as e:
        config.parse(text, "/etc/autlearn/x.toml")
    assert e.value.code == "bad_config"
    assert "/etc/autlearn/x.toml" in e.value.message
    assert needle in e.value.message


def test_external_delegate_needs_a_path():
    assert config.parse("[model]\ndelegate = 'external:/lib/x.so'\n", "t")["model.delegate"] == "external:/lib/x.so"
    with pytest.raises(AutlearnError):
        config.parse("[model]\ndelegate = 'external:'\n", "t")


def test_shipped_sample_config_is_valid():
    from pathlib import Path
    cfg = config.load(Path(__file__).resolve().parents[1] / "configs" / "autlearnd.toml")
    assert cfg.source.endswith("autlearnd.toml")


def test_sample_config_shows_every_setting_with_its_default():
    import tomllib
    from pathlib import Path
    data = tomllib.loads((Path(__file__).resolve().parents[1] / "configs" / "autlearnd.toml").read_text())
    shown = {f"{sec}.{k}" for sec, table in data.items() for k in table}
    assert shown == {s.name for s in config.SETTINGS}
    for s in config.SETTINGS:
        if s.name not in ("data.watch", "model.bundle"):  # packaged paths differ from the empty defaults
            sec, key = s.name.split(".")
            assert data[sec][key] == s.default, s.name


def test_control_tcp_takes_the_listener_forms_and_refuses_what_zeromq_could_not_bind():
    for ep in ("", "tcp://0.0.0.0:7557", "tcp://*:7557", "tcp://127.0.0.1:1", "tcp://board.local:65535",
               "tcp://[::1]:7557", "tcp://eth0:7557"):
        assert config.parse(f"[control]\ntcp = '{ep}'\n", "t")["control.tcp"] == ep
    for ep in ("http://x", "tcp://0.0.0.0", "tcp://0.0.0.0:70000", "tcp://0.0.0.0:0", "tcp://host:80/path",
               "ipc:///run/x.sock", " tcp://a:1"):
        with pytest.raises(AutlearnError) as e:
            config.parse(f"[control]\ntcp = '{ep}'\n", "/etc/autlearn/x.toml")
        assert f"control.tcp = {ep!r}" in e.value.message and "tcp://<address or *>:<port 1-65535>" in e.value.message


# ------------------------------------------------------------------ every accepted configuration runs

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from harness import BIN  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _strings(work: Path, bundle: Path) -> dict:
    """Strategies for the string settings: every form each one documents (paths point into `work`)."""
    return {
        "paths.root": st.just(str(work / "root")),
        "data.watch": st.sampled_from([[str(work / "inbox")], [], [str(work / "inbox"), str(work / "later")]]),
        "model.bundle": st.just(str(bundle)),
        "model.variant": st.sampled_from(["", "full"]),
        "model.delegate": st.sampled_from(["auto", "cpu", "gpu", "nnapi", "external:/nonexistent/libdelegate.so"]),
        "control.group": st.sampled_from(["autlearn", "no-such-group", "root"]),
        "control.tcp": st.sampled_from(["", "tcp://127.0.0.1:{port}", "tcp://*:{port}"]),
        "control.authorized_keys": st.sampled_from([str(work / "keys"), "/etc/autlearn/authorized_keys"]),
        "media.under": st.sampled_from([[str(work / "media")], []]),
        "media.folder": st.sampled_from(["autlearn", "samples"]),
        "media.mounts": st.sampled_from(["/proc/self/mounts", str(work / "no-mounts")]),
        "policy.window": st.sampled_from(["", "22:00-06:00", "00:00-23:59", "6:30-7:00"]),
        "policy.sysfs": st.sampled_from(["/sys", str(work / "no-sys")]),
        "policy.procfs": st.sampled_from(["/proc", str(work / "no-proc")]),
    }


def _strategy(s: config.Setting, strings: dict):
    if hasattr(s.check, "bounds"):
        lo, hi, integer = s.check.bounds
        return st.integers(lo, hi) if integer else st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    if hasattr(s.check, "options"):
        return st.sampled_from(s.check.options)
    if s.check is config._bool:
        return st.booleans()
    assert s.name in strings, f"the property test has no strategy for {s.name}: add one"
    return strings[s.name]


def _toml(values: dict) -> str:
    sections: dict = {}
    for name, v in values.items():
        sec, key = name.split(".")
        sections.setdefault(sec, []).append(f"{key} = {json.dumps(v)}")
    return "".join(f"[{sec}]\n" + "\n".join(lines) + "\n" for sec, lines in sections.items())


def _run_daemon(cfg_path: Path, root: Path) -> tuple[int | None, str, list[dict]]:
    """Start autlearnd on the file; wait for READY, ask status twice over a few ticks, stop it."""
    from harness import call
    notify_path = root.parent / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    log = open(root.parent / "autlearnd.log", "w")
    proc = subprocess.Popen([str(BIN / "autlearnd"), "--config", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)})
    replies = []
    try:
        end = time.monotonic() + 90
        ready = False
        while not ready and time.monotonic() < end and proc.poll() is None:
            try:
                ready = b"READY=1" in notify.recv(4096)
            except socket.timeout:
                pass
        if ready:
            replies.append(call(root, "status", timeout_s=20))
            time.sleep(1.5)  # a few ticks of the control loop: the policy, the scheduler, the first scan
            replies.append(call(root, "status", timeout_s=20))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        notify.close()
        log.close()
    return code, (root.parent / "autlearnd.log").read_text(), replies


@pytest.mark.slow
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_every_configuration_check_config_accepts_runs(data, tiny_bundle, user_digits):
    """Generated from SETTINGS: whatever --check-config accepts, the daemon starts on, answers status with
    and stops cleanly on (200 °C, NaN and a URL once passed the check and crashed the daemon)."""
    from userdata import png_bytes
    images, _ = user_digits
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "inbox" / "3").mkdir(parents=True)
        for i in range(4):
            (work / "inbox" / "3" / f"{i}.png").write_bytes(png_bytes(images[i]))
        strings = _strings(work, tiny_bundle)
        values = {s.name: data.draw(_strategy(s, strings), label=s.name) for s in config.SETTINGS}
        if values["control.tcp"]:
            values["control.tcp"] = values["control.tcp"].format(port=_free_port())
        cfg_path = work / "autlearnd.toml"
        cfg_path.write_text(_toml(values))
        check = subprocess.run([str(BIN / "autlearnd"), "--check-config", str(cfg_path)], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        code, log, replies = _run_daemon(cfg_path, work / "root")
        assert len(replies) == 2 and code == 0, f"{_toml(values)}\n---\n{log[-3000:]}"
        assert "Traceback" not in log, log[-3000:]
        assert all(r["activity"] in ("idle", "ingesting", "training", "paused", "importing") for r in replies)


@pytest.mark.slow
def test_check_config_refuses_what_the_daemon_could_not_run(tmp_path):
    for text in ("[data]\nmax_file_mb = nan\n", "[control]\ntcp = 'http://x'\n", "[policy]\nmax_temp_c = inf\n"):
        (tmp_path / "c.toml").write_text(text)
        p = subprocess.run([str(BIN / "autlearnd"), "--check-config", str(tmp_path / "c.toml")],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 8 and "expected" in p.stderr and "Traceback" not in p.stderr


def test_a_listener_that_cannot_bind_ends_the_daemon_with_one_sentence_and_no_socket_left(tmp_path, tiny_bundle):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        values = {"paths.root": str(tmp_path / "root"), "model.bundle": str(tiny_bundle), "media.enabled": False,
                  "control.tcp": f"tcp://127.0.0.1:{port}", "control.authorized_keys": str(tmp_path / "keys"),
                  "policy.max_temp_c": 200.0}
        (tmp_path / "c.toml").write_text(_toml(values))
        p = subprocess.run([str(BIN / "autlearnd"), "--config", str(tmp_path / "c.toml")], capture_output=True,
                           text=True, timeout=120)
    assert p.returncode == 8, p.stderr
    assert f"cannot listen on control.tcp = 'tcp://127.0.0.1:{port}'" in p.stderr and "Traceback" not in p.stderr
    assert not list((tmp_path / "root" / "run").glob("*.sock"))
