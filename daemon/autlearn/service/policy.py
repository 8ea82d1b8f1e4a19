"""When may the daemon train: the board's conditions (probe.py) judged against the configured limits.

Conditions (each one off when its limit is None / the window is empty); a reading that is unknown never
blocks training:

- power: with ``require_mains``, a board that has a (system) battery trains only while external power is
  connected.
- temperature: the hottest readable thermal zone must not be above ``max_temp_c``.
- load: the plain 1-minute load average (not divided by the number of CPUs) must not be above ``max_load``.
- GPU: no NVIDIA GPU may be more than ``gpu_max_util`` percent busy.
- window: ``"HH:MM-HH:MM"`` local time, start included, end excluded; it may wrap midnight ("22:00-06:00");
  ``config.parse_window`` checks its syntax.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from ..config import parse_window
from .probe import Battery, SystemProbe


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


# ---------------------------------------------------------------------------------------------------- gate

class Gate:
    """The answer to "may training run now?" for the scheduler (request thread) and a running round (worker
    thread): the policy judged at most once a second, or at once after a reload. The cached verdict, and with it
    the readings `status` shows, is written only under the gate's lock."""

    def __init__(self, config: Callable[[], Any], probe: SystemProbe,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config  # returns the configuration in force (a reload replaces it)
        self._probe = probe
        self._clock = clock
        self._lock = threading.Lock()
        self._at = -1e9
        self._judged: Any = None  # the configuration the cached verdict was judged against
        self._verdict: Verdict | None = None

    def reasons(self) -> list[str]:
        """Sentences saying what forbids training now; empty when it may run."""
        with self._lock:
            now, cfg = self._clock(), self._config()
            if now - self._at >= 1.0 or self._judged is not cfg:
                self._verdict = evaluate(PolicyConfig.from_config(cfg), self._probe, datetime.now())
                self._at, self._judged = now, cfg
            return list(self._verdict.reasons)

    @property
    def readings(self) -> dict:
        """The last verdict's readings ({} before the first)."""
        with self._lock:
            return self._verdict.readings if self._verdict is not None else {}
