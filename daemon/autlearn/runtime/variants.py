"""Choosing the variant a board runs: the most accurate one within the budget, measured once and remembered.

The figures and their record are measure.py's; the `autlearnctl bench` table is variant_table.py's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .bundle import Bundle
from .measure import STORE_FILE, Measurement, MeasurementStore, measure_variants, record_key
from ..errors import AutlearnError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """Limits for the variant the board runs; None means no limit on that resource."""
    max_latency_ms: float | None = None  # per sample at batch 1 (one predict), base model, on this board
    max_memory_mb: float | None = None  # MiB (2**20 bytes) of `Measurement.memory_bytes`

    def __post_init__(self):
        for name in ("max_latency_ms", "max_memory_mb"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"budget {name} must be a positive number or None, not {value!r}")

    @property
    def unlimited(self) -> bool:
        return self.max_latency_ms is None and self.max_memory_mb is None

    def describe(self) -> str:
        parts = []
        if self.max_latency_ms is not None:
            parts.append(f"latency ≤ {self.max_latency_ms:g} ms/sample")
        if self.max_memory_mb is not None:
            parts.append(f"memory ≤ {self.max_memory_mb:g} MB")
        return ", ".join(parts) if parts else "no limits"

    def fits(self, m: "Measurement") -> bool:
        if m.error is not None:
            return False
        if self.max_latency_ms is not None and not m.ms_per_sample <= self.max_latency_ms:
            return False
        if self.max_memory_mb is not None and not m.memory_bytes <= self.max_memory_mb * (1 << 20):
            return False
        return True

    def as_dict(self) -> dict:
        return {"max_latency_ms": self.max_latency_ms, "max_memory_mb": self.max_memory_mb}


@dataclass(frozen=True)
class Choice:
    name: str  # the variant to run
    reason: str  # one sentence a person can read
    table: list[dict] = field(default_factory=list)  # one row per variant (manifest order), JSON-ready
    budget: Budget = Budget()
    fits: bool = True  # False when no variant fits and the fastest was taken instead
    measured_at: str = ""  # when the measurements were taken (UTC, ISO 8601)
    from_record: bool = False  # True when the measurements came from the record, not from timing now
    key: dict = field(default_factory=dict)  # what the record is keyed by

    def as_dict(self) -> dict:
        return {"name": self.name, "reason": self.reason, "table": self.table, "budget": self.budget.as_dict(),
                "fits": self.fits, "measured_at": self.measured_at, "from_record": self.from_record,
                "key": self.key}


# ----------------------------------------------------------------------------------------- choosing

def _accuracy(info: dict) -> float | None:
    a = info.get("accuracy_int8")
    return float(a) if isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) else None


def _variant_info(bundle: Bundle) -> dict[str, dict]:
    return {v["name"]: v for v in bundle.manifest["variants"]}


def _describe(m: Measurement) -> str:
    return f"{m.ms_per_sample:.4f} ms/sample, {human_bytes(m.memory_bytes)}"


def choose(bundle: Bundle, measurements: list[Measurement], budget: Budget) -> Choice:
    """The most accurate variant (the manifest's `accuracy_int8`) whose measurements fit `budget`; ties go
    to the faster one. If none fits, the fastest one (batch-1 latency), with a reason that says so."""
    info = _variant_info(bundle)
    by_name = {m.name: m for m in measurements}
    usable = [by_name[n] for n in bundle.variant_names if n in by_name and by_name[n].error is None]
    if not usable:
        raise AutlearnError("bad_bundle", "no variant of the bundle has a usable measurement")
    fitting = [m for m in usable if budget.fits(m)]

    def acc_key(m: Measurement):
        a = _accuracy(info[m.name])
        return (a is not None, a if a is not None else 0.0, -m.ms_per_sample)

    if fitting:
        best = max(fitting, key=acc_key)
        acc = _accuracy(info[best.name])
        acc_text = f"int8 accuracy {acc:.4f}" if acc is not None else "no accuracy in the manifest"
        if budget.unlimited:
            reason = (f"variant {best.name!r}: no budget is set, so the most accurate variant "
                      f"({acc_text}; {_describe(best)})")
        elif len(fitting) == len(usable):
            reason = (f"variant {best.name!r}: every variant fits the budget ({budget.describe()}); it is the most "
                      f"accurate ({acc_text}; {_describe(best)})")
        else:
            reason = (f"variant {best.name!r}: the most accurate of the {len(fitting)} of {len(usable)} variants "
                      f"within the budget ({budget.describe()}): {acc_text}; {_describe(best)}")
        fits = True
    else:
        best = min(usable, key=lambda m: (m.ms_per_sample, m.memory_bytes))
        reason = (f"no variant fits the budget ({budget.describe()}) on this board; using the fastest, "
                  f"{best.name!r} ({_describe(best)})")
        fits = False

    table = []
    for name in bundle.variant_names:
        v = info[name]
        m = by_name.get(name)
        row = {
            "variant": name,
            "params": int(v.get("params", 0)) + int(v.get("head_params", 0)),
            "flops": int(v.get("flops", 0)) + int(v.get("head_flops", 0)),
            "ms_per_sample": None, "ms_per_sample_batch": None, "batch": None, "memory_bytes": None,
            "accuracy_int8": _accuracy(v),
            "within_budget": False,
            "chosen": name == best.name,
            "delegate": "", "error": None,
        }
        if m is None:
            row["error"] = "not measured"
        elif m.error is not None:
            row["error"] = m.error
        else:
            row.update(ms_per_sample=m.ms_per_sample, ms_per_sample_batch=m.ms_per_sample_batch, batch=m.batch,
                       memory_bytes=m.memory_bytes, within_budget=budget.fits(m), delegate=m.delegate)
        table.append(row)
    return Choice(best.name, reason, table, budget, fits)


# ---------------------------------------------------------------------------------------------- glue

def choose_variant(bundle: Bundle, bundle_id: str, state_dir: str | Path, threads: int, delegate: str,
                   budget: Budget, force: bool = False,
                   measure: Callable[..., list[Measurement]] | None = None, **measure_kwargs) -> Choice:
    """Choose the variant to run: from the recorded measurements for this bundle, delegate, thread count,
    runtime and board, or — when there is no record, it does not cover every variant, or `force` — by timing
    the variants now (`measure`, default `measure_variants`, called as measure(bundle, threads, delegate,
    **measure_kwargs)) and recording the result in `state_dir`/variant_measurements.json."""
    measure = measure or measure_variants
    store = MeasurementStore(Path(state_dir) / STORE_FILE)
    key = record_key(bundle, threads, delegate)
    got = None if force else store.get(key)
    if got is not None and {m.name for m in got[0]} >= set(bundle.variant_names):
        measurements, measured_at = got
        from_record = True
    else:
        measurements = measure(bundle, threads, delegate, **measure_kwargs)
        measured_at = store.put(key, measurements, bundle_id)
        from_record = False
    c = choose(bundle, measurements, budget)
    choice = Choice(c.name, c.reason, c.table, budget, c.fits, measured_at, from_record, key)
    (log.info if choice.fits else log.warning)("bundle %s: %s%s", bundle_id, choice.reason,
                                               " (recorded measurements)" if from_record else "")
    return choice


def human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
