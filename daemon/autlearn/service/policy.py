"""When may the daemon train: conditions read from the real system, judged against the configuration.

The same code reads the real ``/sys`` and ``/proc`` or a fake tree given as a root (tests build such trees in
temporary directories). Every read that fails degrades to "unknown" for that condition, logged once at debug
level, and an unknown reading never blocks training.

Conditions (each one off when its limit is None / the window is empty):

- power: with ``require_mains``, a board that has a (system) battery trains only while external power is
  connected. External power counts as connected when any Mains/USB/Wireless supply reports ``online`` = 1, or a
  battery reports Charging, Full or Not charging. "On battery" needs a battery reporting Discharging, or every
  external supply reporting offline. A board without a battery is never "on battery".
- temperature: the hottest readable thermal zone (millidegrees in ``temp``) must not be above ``max_temp_c``.
- load: the plain 1-minute load average of ``/proc/loadavg`` (not divided by the number of CPUs) must not be
  above ``max_load``.
- GPU: through NVML (``pynvml``, imported lazily, initialised once per probe), no NVIDIA GPU may be more than
  ``gpu_max_util`` percent busy. No NVML (module missing, no driver, init failing) is the normal "no NVIDIA GPU".
- window: ``"HH:MM-HH:MM"`` local time, start included, end excluded; it may wrap midnight ("22:00-06:00").

The module starts no subprocesses and keeps the NVML handles, so evaluating it every second is cheap.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_EXTERNAL_TYPES = ("Mains", "USB", "Wireless")
_POWERED_STATUSES = ("Charging", "Full", "Not charging")
_WINDOW_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
# Thermal zones outside this range are broken sensors (e.g. -273 °C or 0x7fffffff), not temperatures.
_PLAUSIBLE_C = (-60.0, 250.0)


# --------------------------------------------------------------------------------------------- configuration

def parse_window(window: str) -> tuple[int, int] | None:
    """``""`` -> None (always); ``"HH:MM-HH:MM"`` -> (start, end) in minutes after midnight; ValueError otherwise."""
    if window.strip() == "":
        return None
    m = _WINDOW_RE.match(window)
    if not m:
        raise ValueError("expected an empty string or HH:MM-HH:MM, e.g. 22:00-06:00")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError("expected times between 00:00 and 23:59")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError("expected different start and end times (use an empty string for always)")
    return start, end


def in_window(bounds: tuple[int, int] | None, minute_of_day: int) -> bool:
    """Start included, end excluded; a window whose end is before its start wraps midnight."""
    if bounds is None:
        return True
    start, end = bounds
    if start < end:
        return start <= minute_of_day < end
    return minute_of_day >= start or minute_of_day < end


def _fmt_window(bounds: tuple[int, int] | None) -> str:
    if bounds is None:
        return ""
    return "-".join(f"{t // 60:02d}:{t % 60:02d}" for t in bounds)


@dataclass(frozen=True)
class PolicyConfig:
    """Limits of the "when may I train" policy. None (or an empty window) switches a condition off.

    The values are already validated (``config.SETTINGS`` is the one place that checks them); ``from_config``
    maps the settings' "off" values (0, 100 %) to None. ``max_load`` is compared with the plain 1-minute load
    average (not per CPU). Limits are inclusive: a reading equal to the limit still allows training.
    """

    require_mains: bool = True
    max_temp_c: float | None = None
    max_load: float | None = None
    gpu_max_util: int | None = None
    window: str = ""

    @classmethod
    def from_config(cls, cfg: Any) -> "PolicyConfig":
        """From a validated ``config.Config`` (anything indexable by the ``policy.*`` setting names)."""
        return cls(require_mains=cfg["policy.require_mains"], max_temp_c=cfg["policy.max_temp_c"] or None,
                   max_load=cfg["policy.max_load"] or None,
                   gpu_max_util=None if cfg["policy.gpu_max_util"] >= 100 else cfg["policy.gpu_max_util"],
                   window=_fmt_window(parse_window(cfg["policy.window"])))

    @property
    def window_bounds(self) -> tuple[int, int] | None:
        return parse_window(self.window)


# ------------------------------------------------------------------------------------------------ readings

@dataclass(frozen=True)
class Battery:
    name: str
    status: str | None   # Charging, Discharging, Full, Not charging; None when unreadable or "Unknown"
    percent: int | None


@dataclass(frozen=True)
class PowerReading:
    on_battery: bool | None          # None: a battery exists but its state cannot be told
    batteries: tuple[Battery, ...]
    external_online: tuple[str, ...]  # names of Mains/USB/Wireless supplies reporting online
    note: str                         # a short sentence for the status reply


@dataclass(frozen=True)
class ThermalReading:
    temp_c: float | None
    zone: str | None  # the hottest zone's type (e.g. "cpu-thermal"), or its directory name
    note: str


@dataclass(frozen=True)
class GpuReading:
    util: tuple[int | None, ...] | None  # percent busy per GPU index; None when there is no NVIDIA GPU
    note: str


def _read(path: Path) -> str:
    """The stripped text of a small sysfs/procfs file; raises OSError or UnicodeDecodeError."""
    with open(path, "rb") as f:
        return f.read(4096).decode("ascii").strip()


def _read_int(path: Path) -> int | None:
    try:
        return int(_read(path))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _battery_percent(d: Path) -> int | None:
    pct = _read_int(d / "capacity")
    if pct is None:  # some gauges only give charge_* or energy_*
        for now_name, full_name in (("energy_now", "energy_full"), ("charge_now", "charge_full")):
            now, full = _read_int(d / now_name), _read_int(d / full_name)
            if now is not None and full:
                pct = round(100 * now / full)
                break
    return None if pct is None else max(0, min(100, pct))


def read_power(sysfs: str | os.PathLike[str]) -> tuple[PowerReading, list[str]]:
    """Power supplies under ``<sysfs>/class/power_supply``; returns the reading and problems worth a debug line."""
    base = Path(sysfs) / "class" / "power_supply"
    problems: list[str] = []
    try:
        entries = sorted(base.iterdir())
    except FileNotFoundError:
        entries = []
    except OSError as e:
        problems.append(f"cannot list {base}: {e.strerror or e}")
        return PowerReading(None, (), (), "power state unknown"), problems
    batteries: list[Battery] = []
    online: list[str] = []
    offline: list[str] = []
    for d in entries:
        try:
            kind = _read(d / "type")
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{d / 'type'}: unreadable ({e})")
            continue
        if kind == "Battery":
            try:
                scope = _read(d / "scope")
            except (OSError, UnicodeDecodeError):
                scope = "System"
            if scope == "Device" or _read_int(d / "present") == 0:
                continue  # a mouse's or keyboard's battery, or an empty battery bay
            try:
                status: str | None = _read(d / "status")
            except (OSError, UnicodeDecodeError) as e:
                problems.append(f"{d / 'status'}: unreadable ({e})")
                status = None
            if status not in _POWERED_STATUSES + ("Discharging",):
                status = None
            batteries.append(Battery(d.name, status, _battery_percent(d)))
        elif kind in _EXTERNAL_TYPES:
            flag = _read_int(d / "online")
            if flag is None:
                problems.append(f"{d / 'online'}: missing or not an integer")
            elif flag:
                online.append(d.name)
            else:
                offline.append(d.name)
    if not batteries:
        return PowerReading(False, (), tuple(online), "no battery"), problems
    statuses = {b.status for b in batteries}
    if online:
        on_battery: bool | None = False
        note = f"on external power ({', '.join(online)})"
    elif statuses & set(_POWERED_STATUSES):
        on_battery, note = False, "on external power (battery charging or full)"
    elif "Discharging" in statuses or (offline and statuses == {None}):
        on_battery, note = True, "on battery"
    else:
        on_battery, note = None, "unknown whether on battery or on external power"
        problems.append("battery found but neither its status nor an external supply tells the power source")
    return PowerReading(on_battery, tuple(batteries), tuple(online), note), problems


def read_thermal(sysfs: str | os.PathLike[str]) -> tuple[ThermalReading, list[str]]:
    """The hottest readable ``<sysfs>/class/thermal/thermal_zone*/temp`` (millidegrees Celsius)."""
    base = Path(sysfs) / "class" / "thermal"
    problems: list[str] = []
    try:
        zones = sorted(p for p in base.iterdir() if p.name.startswith("thermal_zone"))
    except FileNotFoundError:
        zones = []
    except OSError as e:
        problems.append(f"cannot list {base}: {e.strerror or e}")
        zones = []
    best: tuple[float, Path] | None = None
    for z in zones:
        milli = _read_int(z / "temp")
        c = None if milli is None else milli / 1000.0
        if c is None or not _PLAUSIBLE_C[0] <= c <= _PLAUSIBLE_C[1]:
            problems.append(f"{z / 'temp'}: unreadable or implausible, ignored")
            continue
        if best is None or c > best[0]:
            best = (c, z)
    if best is None:
        return ThermalReading(None, None, "no readable thermal zone"), problems
    c, z = best
    try:
        label = _read(z / "type") or z.name
    except (OSError, UnicodeDecodeError):
        label = z.name
    where = z.name if label == z.name else f"{z.name} ({label})"
    return ThermalReading(round(c, 1), label, f"hottest zone {where}"), problems


def read_load1(procfs: str | os.PathLike[str]) -> tuple[float | None, list[str]]:
    """The 1-minute load average from ``<procfs>/loadavg``."""
    path = Path(procfs) / "loadavg"
    try:
        value = float(_read(path).split()[0])
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as e:
        return None, [f"{path}: unreadable ({e.__class__.__name__}: {e})"]
    if value < 0 or value != value:
        return None, [f"{path}: implausible load {value}"]
    return value, []


# --------------------------------------------------------------------------------------------------- probe

class SystemProbe:
    """Reads the system's conditions from ``sysfs``/``procfs`` roots and, where present, NVML.

    ``nvml`` may be given an object with ``nvmlInit``, ``nvmlDeviceGetCount``, ``nvmlDeviceGetHandleByIndex``
    and ``nvmlDeviceGetUtilizationRates`` (as ``pynvml`` has); by default ``pynvml`` is imported on the first GPU
    read. NVML is initialised once; if that fails the probe reports "no NVIDIA GPU" for its whole life.
    """

    def __init__(self, sysfs: str | os.PathLike[str] = "/sys", procfs: str | os.PathLike[str] = "/proc",
                 nvml: Any = None) -> None:
        self.sysfs = Path(sysfs)
        self.procfs = Path(procfs)
        self._nvml = nvml
        self._gpu_handles: list[Any] | None = None  # None: not initialised yet
        self._gpu_absent_note = ""
        self._last_problems: dict[str, tuple[str, ...]] = {}

    def _report(self, condition: str, problems: list[str]) -> None:
        """One debug line per failing read, repeated only when the problem changes (probed every second)."""
        key = tuple(problems)
        if key and self._last_problems.get(condition) != key:
            log.debug("%s: %s", condition, "; ".join(problems))
        self._last_problems[condition] = key

    def power(self) -> PowerReading:
        reading, problems = read_power(self.sysfs)
        self._report("power", problems)
        return reading

    def thermal(self) -> ThermalReading:
        reading, problems = read_thermal(self.sysfs)
        self._report("thermal", problems)
        return reading

    def load1(self) -> float | None:
        value, problems = read_load1(self.procfs)
        self._report("load", problems)
        return value

    def _init_gpu(self) -> None:
        try:
            if self._nvml is None:
                import pynvml  # lazily: absent on most boards
                self._nvml = pynvml
            self._nvml.nvmlInit()
            count = int(self._nvml.nvmlDeviceGetCount())
            self._gpu_handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._gpu_absent_note = "" if count else "no NVIDIA GPU"
        except Exception as e:  # ImportError, NVMLError (no driver/library), OSError: all mean "no NVIDIA GPU"
            self._gpu_handles = []
            self._gpu_absent_note = "no NVIDIA GPU"
            self._report("gpu", [f"NVML unavailable ({e.__class__.__name__}: {e})"])

    def gpu(self) -> GpuReading:
        if self._gpu_handles is None:
            self._init_gpu()
        if not self._gpu_handles:
            return GpuReading(None, self._gpu_absent_note or "no NVIDIA GPU")
        utils: list[int | None] = []
        problems: list[str] = []
        for i, h in enumerate(self._gpu_handles):
            try:
                utils.append(int(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu))
            except Exception as e:  # NVMLError (GPU lost, not supported) -> unknown for this GPU
                utils.append(None)
                problems.append(f"GPU {i}: utilisation unreadable ({e.__class__.__name__}: {e})")
        self._report("gpu", problems)
        n = len(utils)
        return GpuReading(tuple(utils), f"{n} NVIDIA GPU{'s' if n > 1 else ''}")

    def close(self) -> None:
        """Shut NVML down if this probe initialised it (optional; the process exit does the same)."""
        if self._gpu_handles and hasattr(self._nvml, "nvmlShutdown"):
            try:
                self._nvml.nvmlShutdown()
            except Exception as e:
                log.debug("nvmlShutdown failed: %s", e)
        self._gpu_handles = None


# ------------------------------------------------------------------------------------------------- verdict

@dataclass
class Verdict:
    allowed: bool
    reasons: list[str] = field(default_factory=list)   # why not, in words; empty when allowed
    readings: dict[str, Any] = field(default_factory=dict)


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _battery_words(batteries: tuple[Battery, ...]) -> str:
    parts = []
    for b in batteries:
        words = [b.name + (f" {b.status.lower()}" if b.status else "")]
        if b.percent is not None:
            words.append(f"{b.percent} %")
        parts.append(", ".join(words))
    return "; ".join(parts)


def _battery_percent_total(batteries: tuple[Battery, ...]) -> int | None:
    known = [b.percent for b in batteries if b.percent is not None]
    return round(sum(known) / len(known)) if known else None


def evaluate(config: PolicyConfig, probe: SystemProbe, now: datetime) -> Verdict:
    """Read every condition once and judge it; unknown readings never block training.

    ``readings`` holds on_battery, battery_percent, temp_c, load1, gpu_util (percent per GPU index, or None),
    in_window, and ``notes``: a sentence per reading saying where it came from or why it is unknown.
    """
    reasons: list[str] = []
    notes: dict[str, str] = {}
    unknown = " (unknown: does not block training)"

    power = probe.power()
    notes["on_battery"] = power.note + (unknown if power.on_battery is None else "")
    if config.require_mains and power.on_battery:
        reasons.append(f"on battery ({_battery_words(power.batteries)}): training waits for mains power")

    thermal = probe.thermal()
    notes["temp_c"] = thermal.note + (unknown if thermal.temp_c is None else "")
    if config.max_temp_c is not None and thermal.temp_c is not None and thermal.temp_c > config.max_temp_c:
        reasons.append(f"temperature {_num(thermal.temp_c)} °C ({thermal.zone}) is above the "
                       f"{_num(config.max_temp_c)} °C limit")

    load1 = probe.load1()
    notes["load1"] = "1-minute load average" + (unknown if load1 is None else "")
    if config.max_load is not None and load1 is not None and load1 > config.max_load:
        reasons.append(f"load average {load1:.2f} is above the limit {config.max_load:.2f}")

    gpu = probe.gpu()
    notes["gpu_util"] = gpu.note
    if gpu.util is not None and None in gpu.util:
        notes["gpu_util"] += "; a GPU whose utilisation is unreadable does not block training"
    if config.gpu_max_util is not None and gpu.util is not None:
        for i, u in enumerate(gpu.util):
            if u is not None and u > config.gpu_max_util:
                reasons.append(f"GPU {i} is {u} % busy (limit {config.gpu_max_util} %)")

    bounds = config.window_bounds
    inside = in_window(bounds, now.hour * 60 + now.minute)
    notes["in_window"] = f"training window {config.window}" if bounds else "no training window: any time"
    if not inside:
        reasons.append(f"outside the training window {config.window} (now {now:%H:%M})")

    readings: dict[str, Any] = {
        "on_battery": power.on_battery,
        "battery_percent": _battery_percent_total(power.batteries),
        "temp_c": thermal.temp_c,
        "load1": load1,
        "gpu_util": list(gpu.util) if gpu.util is not None else None,
        "in_window": inside,
        "notes": notes,
    }
    return Verdict(not reasons, reasons, readings)
