"""The training policy, read by the real code from fake sysfs/procfs trees built in temporary directories."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from autlearn import config
from autlearn.errors import AutlearnError
from autlearn.config import parse_window
from autlearn.service.policy import PolicyConfig, evaluate, in_window
from autlearn.service.probe import SystemProbe

AFTERNOON = datetime(2024, 5, 17, 14, 5)


# ------------------------------------------------------------------------------------ fake trees

def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def make_root(tmp_path: Path, load: str = "0.42 0.30 0.20 1/123 4567") -> tuple[Path, Path]:
    """An empty sysfs (no power supplies, no thermal zones) and a procfs with a loadavg."""
    sysfs, procfs = tmp_path / "sys", tmp_path / "proc"
    (sysfs / "class" / "power_supply").mkdir(parents=True)
    (sysfs / "class" / "thermal").mkdir(parents=True)
    procfs.mkdir()
    if load is not None:
        _write(procfs / "loadavg", load)
    return sysfs, procfs


def add_battery(sysfs: Path, name: str = "BAT0", status: str = "Discharging", capacity: int | None = 41,
                scope: str | None = None) -> None:
    d = sysfs / "class" / "power_supply" / name
    _write(d / "type", "Battery")
    _write(d / "status", status)
    _write(d / "present", "1")
    if capacity is not None:
        _write(d / "capacity", str(capacity))
    if scope is not None:
        _write(d / "scope", scope)


def add_supply(sysfs: Path, name: str = "AC", kind: str = "Mains", online: int | str = 1) -> None:
    d = sysfs / "class" / "power_supply" / name
    _write(d / "type", kind)
    _write(d / "online", str(online))


def add_zone(sysfs: Path, index: int, temp: str, kind: str = "cpu-thermal") -> None:
    d = sysfs / "class" / "thermal" / f"thermal_zone{index}"
    _write(d / "type", kind)
    _write(d / "temp", temp)


class FakeNvml:
    """Stands in for pynvml (no NVIDIA GPU on this machine): same function names, fixed utilisations."""

    def __init__(self, utils: list[int], fail_init: bool = False) -> None:
        self.utils, self.fail_init, self.inits = utils, fail_init, 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.utils)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self.utils[handle], memory=0)


@pytest.fixture
def no_pynvml(monkeypatch):
    """Make `import pynvml` fail whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "pynvml", None)


def probe_for(tmp_path: Path, nvml=None) -> tuple[Path, SystemProbe]:
    sysfs, procfs = make_root(tmp_path)
    return sysfs, SystemProbe(sysfs, procfs, nvml=nvml if nvml is not None else FakeNvml([]))


# ------------------------------------------------------------------------------------ power

def test_desktop_without_battery_is_allowed(tmp_path):
    sysfs, probe = probe_for(tmp_path)
    add_supply(sysfs, "AC", "Mains", online=0)  # some desktops expose an adapter that says nothing useful
    v = evaluate(PolicyConfig(require_mains=True), probe, AFTERNOON)
    assert v.allowed and v.reasons == []
    assert v.readings["on_battery"] is False
    assert v.readings["battery_percent"] is None
    assert v.readings["notes"]["on_battery"] == "no battery"


def test_discharging_battery_blocks_with_require_mains(tmp_path):
    sysfs, probe = probe_for(tmp_path)
    add_battery(sysfs, "BAT0", "Discharging", 41)
    add_supply(sysfs, "AC", "Mains", online=0)
    v = evaluate(PolicyConfig(require_mains=True), probe, AFTERNOON)
    assert not v.allowed
    assert v.reasons == ["on battery (BAT0 discharging, 41 %): training waits for mains power"]
    assert v.readings["on_battery"] is True and v.readings["battery_percent"] == 41
    # without require_mains the battery does not matter
    assert evaluate(PolicyConfig(require_mains=False), probe, AFTERNOON).allowed


@pytest.mark.parametrize("status, online", [("Charging", 1), ("Full", 1), ("Discharging", 1), ("Charging", None),
                                            ("Not charging", None)])
def test_battery_with_external_power_is_allowed(tmp_path, status, online):
    sysfs, probe = probe_for(tmp_path)
    add_battery(sysfs, "BAT0", status, 80)
    if online is not None:
        add_supply(sysfs, "ADP1", "Mains", online=online)
    v = evaluate(PolicyConfig(require_mains=True), probe, AFTERNOON)
    assert v.allowed, v.reasons
    assert v.readings["on_battery"] is False


def test_usb_supply_counts_as_external_power(tmp_path):
    sysfs, probe = probe_for(tmp_path)
    add_battery(sysfs, "BAT0", "Discharging", 90)
    add_supply(sysfs, "ADP1", "Mains", online=0)
    add_supply(sysfs, "ucsi-source-psy-USBC000:001", "USB", online=1)
    assert evaluate(PolicyConfig(), probe, AFTERNOON).allowed


def test_device_scope_battery_is_not_the_boards(tmp_path):
    sysfs, probe = probe_for(tmp_path)
    add_battery(sysfs, "hid-mouse-battery", "Discharging", 10, scope="Device")
    v = evaluate(PolicyConfig(), probe, AFTERNOON)
    assert v.allowed and v.readings["on_battery"] is False


def test_unreadable_battery_state_is_unknown_and_does_not_block(tmp_path, caplog):
    sysfs, probe = probe_for(tmp_path)
    add_battery(sysfs, "BAT0", "Unknown", None)
    add_supply(sysfs, "AC", "Mains", online="garbage")
    with caplog.at_level(logging.DEBUG, logger="autlearn.service.probe"):
        v = evaluate(PolicyConfig(require_mains=True), probe, AFTERNOON)
        evaluate(PolicyConfig(require_mains=True), probe, AFTERNOON)
    assert v.allowed
    assert v.readings["on_battery"] is None
    assert "does not block" in v.readings["notes"]["on_battery"]
    power_lines = [r for r in caplog.records if r.getMessage().startswith("power:")]
    assert len(power_lines) == 1  # logged once, not on every evaluation


# ------------------------------------------------------------------------------------ temperature

def test_hot_zone_blocks_using_the_max_and_ignoring_garbage(tmp_path):
    sysfs, probe = probe_for(tmp_path)
    add_zone(sysfs, 0, "45000", "acpitz")
    add_zone(sysfs, 1, "78000", "cpu-thermal")
    add_zone(sysfs, 2, "not a number", "broken")
    add_zone(sysfs, 3, "", "empty")
    (sysfs / "class" / "thermal" / "thermal_zone4").mkdir()  # no temp file at all
    add_zone(sysfs, 5, "-273000", "disabled")
    v = evaluate(PolicyConfig(max_temp_c=70), probe, AFTERNOON)
    assert not v.allowed
    assert v.reasons == ["temperature 78 °C (cpu-thermal) is above the 70 °C limit"]
    assert v.readings["temp_c"] == 78.0
    assert v.readings["notes"]["temp_c"] == "hottest zone thermal_zone1 (cpu-thermal)"
    assert evaluate(PolicyConfig(max_temp_c=78), probe, AFTERNOON).allowed  # equal to the limit is fine
    assert evaluate(PolicyConfig(max_temp_c=None), probe, AFTERNOON).allowed


def test_no_readable_zone_is_unknown_and_allowed(tmp_path):
    sysfs, probe = probe_for(tmp_path)
    add_zone(sysfs, 0, "garbage")
    v = evaluate(PolicyConfig(max_temp_c=10), probe, AFTERNOON)
    assert v.allowed
    assert v.readings["temp_c"] is None
    assert "does not block" in v.readings["notes"]["temp_c"]


# ------------------------------------------------------------------------------------ load

@pytest.mark.parametrize("load, limit, allowed", [("3.20 2.0 1.0 2/300 99", 1.5, False),
                                                  ("0.75 2.0 1.0 2/300 99", 1.5, True),
                                                  ("1.50 2.0 1.0 2/300 99", 1.5, True)])
def test_load_average_against_limit(tmp_path, load, limit, allowed):
    sysfs, procfs = make_root(tmp_path, load=load)
    v = evaluate(PolicyConfig(max_load=limit), SystemProbe(sysfs, procfs, nvml=FakeNvml([])), AFTERNOON)
    assert v.allowed is allowed
    assert v.readings["load1"] == float(load.split()[0])
    if not allowed:
        assert v.reasons == ["load average 3.20 is above the limit 1.50"]


@pytest.mark.parametrize("load", [None, "", "garbage here", "-1 0 0"])
def test_missing_or_garbage_loadavg_is_unknown(tmp_path, load):
    sysfs, procfs = make_root(tmp_path, load=load)
    v = evaluate(PolicyConfig(max_load=0.1), SystemProbe(sysfs, procfs, nvml=FakeNvml([])), AFTERNOON)
    assert v.allowed
    assert v.readings["load1"] is None
    assert "does not block" in v.readings["notes"]["load1"]


# ------------------------------------------------------------------------------------ window

@pytest.mark.parametrize("window, hhmm, inside", [
    ("", "03:00", True),
    ("09:00-17:00", "09:00", True),    # start included
    ("09:00-17:00", "16:59", True),
    ("09:00-17:00", "17:00", False),   # end excluded
    ("09:00-17:00", "08:59", False),
    ("22:00-06:00", "22:00", True),    # wraps midnight
    ("22:00-06:00", "23:59", True),
    ("22:00-06:00", "00:00", True),
    ("22:00-06:00", "05:59", True),
    ("22:00-06:00", "06:00", False),
    ("22:00-06:00", "14:05", False),
    ("22:00-06:00", "21:59", False),
])
def test_window(tmp_path, window, hhmm, inside):
    _, probe = probe_for(tmp_path)
    h, m = map(int, hhmm.split(":"))
    v = evaluate(PolicyConfig(window=window), probe, datetime(2024, 5, 17, h, m, 30))
    assert v.allowed is inside
    assert v.readings["in_window"] is inside
    if not inside:
        assert v.reasons == [f"outside the training window {window} (now {hhmm})"]


def test_window_helpers_are_pure():
    assert parse_window("") is None
    assert parse_window("6:30-7:00") == (390, 420)
    assert in_window((22 * 60, 6 * 60), 0) and not in_window((22 * 60, 6 * 60), 12 * 60)
    assert _policy('window = "6:30-7:00"').window == "06:30-07:00"


# ------------------------------------------------------------------------------------ configuration

def _policy(toml: str) -> PolicyConfig:
    return PolicyConfig.from_config(config.parse("[policy]\n" + toml + "\n", "t.toml"))


@pytest.mark.parametrize("toml, field", [
    ('window = "22-06"', "window"),
    ('window = "25:00-06:00"', "window"),
    ('window = "10:00-10:00"', "window"),
    ('window = "22:00-06:60"', "window"),
    ("window = 2200", "window"),
    ('require_mains = "yes"', "require_mains"),
    ('max_temp_c = "70"', "max_temp_c"),
    ("max_temp_c = 1000", "max_temp_c"),
    ("max_temp_c = nan", "max_temp_c"),
    ("max_load = -1", "max_load"),
    ("max_load = true", "max_load"),
    ("max_load = inf", "max_load"),
    ("gpu_max_util = 50.5", "gpu_max_util"),
    ("gpu_max_util = 101", "gpu_max_util"),
    ("gpu_max_utilisation = 50", "gpu_max_utilisation"),
])
def test_the_configuration_rejects_bad_policy_values_naming_the_key(toml, field):
    with pytest.raises(AutlearnError) as e:
        _policy(toml)
    assert f"policy.{field}" in e.value.message
    assert "expected" in e.value.message or "unknown" in e.value.message


def test_every_value_the_configuration_accepts_makes_a_policy_that_evaluates(tmp_path):
    """One validation: what config accepts, the policy takes as it is (200 °C once crashed a second check)."""
    _, probe = probe_for(tmp_path)
    for toml in ("max_temp_c = 200", "max_temp_c = 250", "max_temp_c = 0", "max_load = 10000",
                 "gpu_max_util = 0", 'window = "23:59-00:00"'):
        evaluate(_policy(toml), probe, AFTERNOON)
    assert _policy("max_temp_c = 200").max_temp_c == 200


def test_from_config_maps_the_off_values_to_none():
    cfg = _policy('require_mains = false\nmax_temp_c = 70\nmax_load = 1.5\ngpu_max_util = 50\n'
                  'window = "22:00-06:00"')
    assert cfg == PolicyConfig(False, 70, 1.5, 50, "22:00-06:00")
    assert PolicyConfig.from_config(config.Config()) == PolicyConfig(True, 80.0, None, None, "")
    assert _policy("max_temp_c = 0\ngpu_max_util = 100") == PolicyConfig(True, None, None, None, "")


# ------------------------------------------------------------------------------------ GPU

def test_no_pynvml_means_no_nvidia_gpu(tmp_path, no_pynvml):
    sysfs, procfs = make_root(tmp_path)
    v = evaluate(PolicyConfig(gpu_max_util=0), SystemProbe(sysfs, procfs), AFTERNOON)
    assert v.allowed
    assert v.readings["gpu_util"] is None
    assert v.readings["notes"]["gpu_util"] == "no NVIDIA GPU"


def test_nvml_init_failing_means_no_nvidia_gpu_and_is_not_retried(tmp_path):
    nvml = FakeNvml([99], fail_init=True)
    _, probe = probe_for(tmp_path, nvml)
    for _ in range(3):
        v = evaluate(PolicyConfig(gpu_max_util=50), probe, AFTERNOON)
        assert v.allowed and v.readings["notes"]["gpu_util"] == "no NVIDIA GPU"
    assert nvml.inits == 1


def test_busy_gpu_blocks(tmp_path):
    nvml = FakeNvml([10, 93])
    _, probe = probe_for(tmp_path, nvml)
    v = evaluate(PolicyConfig(gpu_max_util=50), probe, AFTERNOON)
    assert not v.allowed
    assert v.reasons == ["GPU 1 is 93 % busy (limit 50 %)"]
    assert v.readings["gpu_util"] == [10, 93]
    assert evaluate(PolicyConfig(gpu_max_util=93), probe, AFTERNOON).allowed
    assert evaluate(PolicyConfig(gpu_max_util=None), probe, AFTERNOON).allowed
    assert nvml.inits == 1  # initialised once, however often it is read


def test_unreadable_gpu_utilisation_does_not_block(tmp_path):
    class Flaky(FakeNvml):
        def nvmlDeviceGetUtilizationRates(self, handle):
            raise RuntimeError("GPU is lost")
    _, probe = probe_for(tmp_path, Flaky([0]))
    v = evaluate(PolicyConfig(gpu_max_util=0), probe, AFTERNOON)
    assert v.allowed and v.readings["gpu_util"] == [None]


# ------------------------------------------------------------------------------------ together

def test_several_failing_conditions_give_several_reasons(tmp_path):
    sysfs, procfs = make_root(tmp_path, load="3.2 1 1 1/1 1")
    add_battery(sysfs, "BAT0", "Discharging", 41)
    add_zone(sysfs, 0, "78000")
    probe = SystemProbe(sysfs, procfs, nvml=FakeNvml([93]))
    cfg = PolicyConfig(require_mains=True, max_temp_c=70, max_load=1.5, gpu_max_util=50, window="22:00-06:00")
    v = evaluate(cfg, probe, AFTERNOON)
    assert not v.allowed
    assert v.reasons == [
        "on battery (BAT0 discharging, 41 %): training waits for mains power",
        "temperature 78 °C (cpu-thermal) is above the 70 °C limit",
        "load average 3.20 is above the limit 1.50",
        "GPU 0 is 93 % busy (limit 50 %)",
        "outside the training window 22:00-06:00 (now 14:05)",
    ]
    assert v.readings == {
        "on_battery": True, "battery_percent": 41, "temp_c": 78.0, "load1": 3.2, "gpu_util": [93],
        "in_window": False, "notes": v.readings["notes"],
    }


def test_missing_trees_degrade_to_unknown(tmp_path):
    probe = SystemProbe(tmp_path / "nope-sys", tmp_path / "nope-proc", nvml=FakeNvml([]))
    v = evaluate(PolicyConfig(max_temp_c=1, max_load=0), probe, AFTERNOON)
    assert v.allowed
    assert v.readings["on_battery"] is False and v.readings["temp_c"] is None and v.readings["load1"] is None


def test_real_system_reads_without_raising():
    probe = SystemProbe()
    v = evaluate(PolicyConfig(), probe, datetime.now())
    load1 = probe.load1()
    assert isinstance(load1, float) and load1 >= 0
    assert isinstance(v.readings["load1"], float) and v.readings["load1"] >= 0
    assert v.readings["on_battery"] in (True, False, None)
    probe.close()


# ------------------------------------------------------------------------------------ the gate

def test_gate_judges_at_most_once_a_second_and_at_once_after_a_reload(tmp_path):
    from autlearn.service import policy
    sysfs, probe = probe_for(tmp_path)
    add_battery(sysfs, "BAT0", "Discharging", 30)
    clock = [1000.0]
    cfg = [config.parse("[policy]\nrequire_mains = true\n", "t.toml")]
    gate = policy.Gate(lambda: cfg[0], probe, clock=lambda: clock[0])
    assert gate.readings == {}  # nothing judged yet
    assert any("on battery" in r for r in gate.reasons())
    assert gate.readings["on_battery"] is True and gate.readings["battery_percent"] == 30

    add_supply(sysfs, "AC", "Mains", online=1)  # plugged in: the cached verdict stands within the second
    clock[0] += 0.5
    assert any("on battery" in r for r in gate.reasons())
    clock[0] += 0.5
    assert gate.reasons() == [] and gate.readings["on_battery"] is False

    _write(sysfs / "class" / "power_supply" / "AC" / "online", "0")  # unplugged, then a reload: judged at once
    cfg[0] = config.parse("[policy]\nrequire_mains = false\nmax_load = 0.1\n", "t.toml")
    assert gate.reasons() == ["load average 0.42 is above the limit 0.10"]
