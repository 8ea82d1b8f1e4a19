"""The daemon as an edge service: reload, scheduling policy on fake sysfs trees, pause/resume, rollback,
SIGTERM mid-round, permissions, following a round. Real subprocesses, sockets and signals throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import BIN
from daemon_helpers import Daemon, ctl, move_in, wait_until


def ready(d: Daemon) -> Daemon:
    def up():
        assert d.proc.poll() is None, (d.root / "autlearnd.log").read_text()
        return any("READY=1" in m for m in d.read_notify())
    wait_until(up, 60, "READY")
    return d


def fake_battery(sysfs: Path, status: str, online: int) -> None:
    bat = sysfs / "class" / "power_supply" / "BAT0"
    ac = sysfs / "class" / "power_supply" / "AC"
    for d in (bat, ac):
        d.mkdir(parents=True, exist_ok=True)
    (bat / "type").write_text("Battery\n")
    (bat / "status").write_text(status + "\n")
    (bat / "capacity").write_text("41\n")
    (bat / "present").write_text("1\n")
    (ac / "type").write_text("Mains\n")
    (ac / "online").write_text(f"{online}\n")


def test_sighup_with_a_broken_config_keeps_the_old_one(tmp_path, tiny_bundle):
    d = ready(Daemon(tmp_path / "r", tiny_bundle))
    try:
        good = d.config_path.read_text()
        d.config_path.write_text(good.replace("min_new_samples = 20", "min_new_samples = 'lots'"))
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "new configuration refused" in (d.root / "autlearnd.log").read_text(), 20, "refusal")
        assert ctl(d.root, "config")["values"]["training.min_new_samples"] == 20
        assert d.proc.poll() is None
        d.config_path.write_text(good.replace("min_new_samples = 20", "min_new_samples = 7"))
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: ctl(d.root, "config")["values"]["training.min_new_samples"] == 7, 20, "reload")
    finally:
        assert d.stop() == 0


def test_policy_waits_for_mains_power_then_trains(tmp_path, tiny_bundle, user_digits, write_user):
    sysfs = tmp_path / "sys"
    fake_battery(sysfs, "Discharging", 0)
    d = ready(Daemon(tmp_path / "r", tiny_bundle, extra_config=f'[policy]\nsysfs = "{sysfs}"\n'))
    try:
        images, labels = user_digits
        write_user(tmp_path / "stage", images[:100], labels[:100])
        move_in(tmp_path / "stage", d.inbox)
        st = wait_until(lambda: (s := d.status())["samples"]["ok"] == 100 and s, 30, "ingestion")
        st = wait_until(lambda: "on battery" in (s := d.status())["why_not_training"] and s, 10, "the reason")
        assert "BAT0" in st["why_not_training"] and st["last_round"] is None
        assert st["conditions"]["on_battery"] is True
        fake_battery(sysfs, "Charging", 1)  # the charger is plugged in
        st = d.wait_round()
        assert st["last_round"]["outcome"] in ("promoted", "rejected")  # a round ran: the gate opened
    finally:
        assert d.stop() == 0


def test_pause_holds_a_round_at_a_step_boundary_and_resume_finishes_it(tmp_path, tiny_bundle, user_digits,
                                                                      write_user):
    d = ready(Daemon(tmp_path / "r", tiny_bundle, training="auto = false\nepochs = 2000\n"))
    try:
        images, labels = user_digits
        write_user(d.inbox, images[:100], labels[:100])
        wait_until(lambda: d.status()["samples"]["ok"] == 100, 30, "ingestion")
        ctl(d.root, "train")
        wait_until(lambda: d.status()["activity"] == "training", 30, "the round")
        assert ctl(d.root, "pause")["paused"] is True
        st = wait_until(lambda: (s := d.status())["activity"] == "paused" and s, 90, "the paused round")
        assert "autlearnctl pause" in st["why_not_training"] and st["last_round"] is None
        ctl(d.root, "resume")
        st = d.wait_round()
        assert st["last_round"]["outcome"] in ("promoted", "rejected")
        assert st["last_round"]["n_train"] + st["last_round"]["n_holdout"] == 100
    finally:
        assert d.stop() == 0


def test_rollback_restores_an_earlier_head_exactly(tmp_path, tiny_bundle, user_digits, write_user):
    d = ready(Daemon(tmp_path / "r", tiny_bundle))
    try:
        images, labels = user_digits
        files = write_user(tmp_path / "probe", images[-20:], labels[-20:], prefix="p")
        initial = ctl(d.root, "predict", *map(str, files), "--version", "1")
        write_user(tmp_path / "stage", images[:200], labels[:200])
        move_in(tmp_path / "stage", d.inbox)
        st = d.wait_round()
        assert st["head"]["version"] == 2
        r = ctl(d.root, "rollback")
        assert r == {"previous": 2, "current": 1}
        assert d.status()["head"]["version"] == 1
        now = ctl(d.root, "predict", *map(str, files))
        assert now["version"] == 1
        assert [p["top"] for p in now["predictions"]] == [p["top"] for p in initial["predictions"]]
        assert ctl(d.root, "rollback", "2")["current"] == 2
        p = subprocess.run([str(BIN / "autlearnctl"), "--root", str(d.root), "rollback", "99"], capture_output=True,
                           text=True)
        assert p.returncode == 4 and "does not exist" in p.stderr
    finally:
        assert d.stop() == 0


def test_sigterm_mid_round_is_consistent_and_the_next_start_resumes(tmp_path, tiny_bundle, user_digits, write_user):
    root = tmp_path / "r"
    d = ready(Daemon(root, tiny_bundle, training="min_new_samples = 20\nepochs = 10000\n"))
    images, labels = user_digits
    write_user(d.inbox, images[:1000], labels[:1000])
    st = wait_until(lambda: (s := d.status())["activity"] == "training" and s, 60, "a long round")
    for _ in range(20):  # the control socket answers while the round runs
        assert d.status()["activity"] == "training"
    assert d.stop() == 0
    hist = None
    d2 = ready(Daemon(root, tiny_bundle, training="min_new_samples = 20\nepochs = 5\n"))
    try:
        st = d2.wait_round()
        hist = ctl(root, "history")["rounds"]
        assert hist[-1]["outcome"] == "stopped"  # the interrupted round, recorded honestly
        assert st["last_round"]["outcome"] in ("promoted", "rejected") and st["samples"]["ok"] == 1000
        assert st["last_round"]["features_cached"] == 1000  # nothing computed twice across the restart
        versions = ctl(root, "versions")["versions"]
        assert [v["status"] for v in versions][0] == "initial" and len(versions) == 2  # no half-saved head
    finally:
        assert d2.stop() == 0


def test_train_follow_prints_the_round_until_it_ends(tmp_path, tiny_bundle, user_digits, write_user):
    d = ready(Daemon(tmp_path / "r", tiny_bundle, training="auto = false\nepochs = 5\nmin_steps = 0\n"))
    try:
        images, labels = user_digits
        write_user(d.inbox, images[:100], labels[:100])
        wait_until(lambda: d.status()["samples"]["ok"] == 100, 30, "ingestion")
        p = subprocess.run([str(BIN / "autlearnctl"), "--root", str(d.root), "train", "--follow"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert "epoch 5/5" in p.stdout and "round_finished: round #1" in p.stdout
        assert "trained 5 epochs," in p.stdout and "round #1 started (requested)" in p.stdout
        assert "{" not in p.stdout, p.stdout  # prose only: no raw JSON among the lines
    finally:
        assert d.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_user_outside_the_group_is_refused(tiny_bundle):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "r"
        root.mkdir()
        os.chmod(tmp, 0o755)
        os.chmod(root, 0o755)
        d = ready(Daemon(root, tiny_bundle))
        try:
            os.chmod(root / "run", 0o755)  # even with the directory open, the socket itself is 0660
            sock = root / "run" / "control.sock"
            assert (sock.stat().st_mode & 0o777) == 0o660
            code = f"""
import os, sys
from autlearn.control.client import Client
from autlearn.errors import AutlearnError
c = Client("ipc://{sock}", timeout_s=3)
os.setgroups([]); os.setgid(65534); os.setuid(65534)   # become nobody
try:
    c.call("status")
except AutlearnError as e:
    print(e.code, e.message); sys.exit(0)
sys.exit("nobody was answered")
"""
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
            assert p.returncode == 0, p.stderr
            assert "permission denied" in p.stdout and "autlearn" in p.stdout
            assert d.status()["activity"] == "idle"  # root still gets in
        finally:
            assert d.stop() == 0


def test_tcp_listener_lets_in_only_authorized_curve_keys(tmp_path, tiny_bundle):
    import socket as so

    from autlearn.control.client import Client
    from autlearn.control.curve import load_pair, load_public
    from autlearn.errors import AutlearnError

    keys = tmp_path / "keys"
    for name in ("alice", "mallory"):
        p = subprocess.run([str(BIN / "autlearnctl"), "keygen", str(keys), "--name", name], capture_output=True,
                           text=True)
        assert p.returncode == 0, p.stderr
    assert (keys / "alice.key_secret").stat().st_mode & 0o077 == 0  # the secret key is owner-only
    authorized = tmp_path / "authorized_keys"
    authorized.write_text("# the owner's laptop\n" + next(l.strip() for l in (keys / "alice.key").read_text()
                                                         .splitlines() if "public-key" in l) + "\n")
    s = so.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    d = ready(Daemon(tmp_path / "r", tiny_bundle,
                     extra_config=f'[control]\ntcp = "tcp://127.0.0.1:{port}"\nauthorized_keys = "{authorized}"\n'))
    try:
        server_pub = load_public(d.root / "state" / "curve" / "server.key")
        alice = Client(f"tcp://127.0.0.1:{port}", 5, (*load_pair(keys / "alice.key_secret"), server_pub))
        assert alice.call("status")["activity"] == "idle"
        mallory = Client(f"tcp://127.0.0.1:{port}", 2, (*load_pair(keys / "mallory.key_secret"), server_pub))
        with pytest.raises(AutlearnError) as e:
            mallory.call("status")
        assert e.value.code == "not_running"  # nothing came back: no reply, no error, nothing
        assert "unknown CURVE key" in (d.root / "autlearnd.log").read_text()
        p = subprocess.run([str(BIN / "autlearnctl"), "--socket", f"tcp://127.0.0.1:{port}", "--key",
                            str(keys / "alice.key_secret"), "--server-key", str(d.root / "state" / "curve" /
                                                                               "server.key"), "status"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and "activity:" in p.stdout, p.stderr
        alice.close()
        mallory.close()
    finally:
        assert d.stop() == 0


def test_bench_times_the_variants_on_this_board_and_remembers(tmp_path, tiny_bundle):
    d = ready(Daemon(tmp_path / "r", tiny_bundle))
    try:
        p = subprocess.run([str(BIN / "autlearnctl"), "--root", str(d.root), "bench"], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert "full" in p.stdout and "chosen" in p.stdout
        assert (d.root / "state" / "variant_measurements.json").exists()  # a restart does not measure again
        st = d.status()
        assert st["variant_choice"]["name"] == "full"
    finally:
        assert d.stop() == 0


def test_watchdog_pings_and_learning_waits_for_disk_space(tmp_path, tiny_bundle, user_digits, write_user):
    env = dict(os.environ, WATCHDOG_USEC="600000")  # as systemd sets it for WatchdogSec=0.6
    # A board whose disk is "full": the configured minimum is more than any disk here has free.
    d = ready(Daemon(tmp_path / "r", tiny_bundle, env=env, data="min_free_mb = 1000000.0\n"))
    try:
        wait_until(lambda: sum("WATCHDOG=1" in m for m in d.read_notify()) >= 3, 10, "watchdog pings")
        images, labels = user_digits
        write_user(d.inbox, images[:60], labels[:60])
        st = wait_until(lambda: (s := d.status())["samples"]["ok"] == 60 and s, 30, "ingestion")
        st = wait_until(lambda: "waiting for space" in (s := d.status())["why_not_training"] and s, 10, "reason")
        assert st["last_round"] is None  # nothing learnt while space is short, nothing lost either
        good = d.config_path.read_text().replace("min_free_mb = 1000000.0", "min_free_mb = 1.0")
        d.config_path.write_text(good)
        d.proc.send_signal(signal.SIGHUP)  # space came back (here: the limit went down)
        st = d.wait_round()
        assert st["last_round"]["outcome"] in ("promoted", "rejected") and st["samples"]["ok"] == 60
    finally:
        assert d.stop() == 0
