"""Reading the board's conditions: power supplies, thermal zones, the load average and NVIDIA GPUs.

The same code reads the real ``/sys`` and ``/proc`` or a fake tree given as a root (tests build such trees in
temporary directories). Every read that fails degrades to "unknown" for that condition, logged once at debug
level (policy.py judges the readings; an unknown one never blocks training).

- power: external power counts as connected when any Mains/USB/Wireless supply reports ``online`` = 1, or a
  battery reports Charging, Full or Not charging. "On battery" needs a battery reporting Discharging, or every
  external supply reporting offline. A board without a (system) battery is never "on battery".
- temperature: the hottest readable thermal zone (millidegrees in ``temp``).
- load: the plain 1-minute load average of ``/proc/loadavg`` (not divided by the number of CPUs).
- GPU: through NVML (``pynvml``, imported lazily, initialised once per probe), each NVIDIA GPU's utilisation.
  No NVML (module missing, no driver, init failing) is the normal "no NVIDIA GPU".

The module starts no subprocesses and keeps the NVML handles, so reading it every second is cheap.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_EXTERNAL_TYPES = ("Mains", "USB", "Wireless")
_POWERED_STATUSES = ("Charging", "Full", "Not charging")
# Thermal zones outside this range are broken sensors (e.g. -273 °C or 0x7fffffff), not temperatures.
_PLAUSIBLE_C = (-60.0, 250.0)


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

