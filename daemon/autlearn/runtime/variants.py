"""Device-aware variant choice: time every variant of a bundle on THIS board, keep the most accurate one that
fits the budget, and remember the measurements so that a restart does not measure again.

What is measured (`measure_variants`), per variant, on the variant's int8 *base* (the part a delegate runs;
the head is a few small matmuls on the CPU and costs the same order for every variant):

* `ms_per_sample` — batch 1, per sample: what one `predict` costs. The latency budget applies to this figure.
* `ms_per_sample_batch` — per sample at batch `batch` (32, the training batch): feature-extraction throughput
  for training rounds. Shown in the table; no budget applies to it.
* `memory_bytes` — the figure the memory budget applies to: `model_bytes + tensor_bytes` at batch `batch`
  (the larger of the two batch sizes the daemon runs). Why this one and not an RSS figure:
  in a long-lived process RSS measures the allocator rather than the model. On the development board the
  first variant timed showed a +10 MB resident-set jump (the runtime initialising itself, whatever the model),
  later ones +24…45 kB whatever their size, depending on the order in which they were timed, because freed
  arenas are reused; the process's peak RSS only ever grows. `tensor_bytes` (the sum of every tensor buffer
  the interpreter has allocated, constants included) plus the flatbuffer's size is deterministic, independent
  of order, grows with the model and the batch, and bounds what the interpreter itself holds: the arena
  shares memory between activations (≤ their sum), and counting the constant tensors again beside the
  flatbuffer stands in for XNNPACK's repacked copy of the weights. It leaves out the runtime's fixed cost,
  which is the same for every variant and so cannot change the choice. The RSS growth is kept in the record
  (`rss_delta_bytes`) for diagnosis only.

Timings are medians over repeated invocations. The number of repeats adapts to the model: one probe
invocation estimates the cost, then the repeats fill about `target_s` seconds (between 3 and `repeats`),
so a large model on a slow board is measured in seconds, not minutes. Measure while the board is otherwise
idle: a concurrent training round inflates every figure.

The record (`MeasurementStore`) is one JSON file in the state directory, written atomically (temporary file,
fsync, rename, fsync of the directory). A record is keyed by the manifest's sha256, the delegate spec
(normalised: `xnnpack` is `cpu`), the thread count, the interpreter package and its version, the board
(architecture, CPU model, CPU count) and this module's measurement version, so a new bundle, another delegate
or another runtime measures again while a restart does not. A file that is not valid JSON, or not a record
this module wrote, is treated as absent: one warning, then the variants are measured again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from . import interpreter as runtime
from .bundle import Bundle, sha256_file
from ..durable import write_text_atomic
from ..errors import AutlearnError

log = logging.getLogger(__name__)

MEASURE_VERSION = 1  # changes whenever what or how we measure changes: old records are then ignored
STORE_FORMAT = 1
STORE_FILE = "variant_measurements.json"
MAX_RECORDS = 16  # records kept in the file (bundles and delegates come and go); the oldest are dropped
TRAIN_BATCH = 32


# --------------------------------------------------------------------------------------------- data

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
class Measurement:
    """One variant's base model timed on this board (see the module docstring for each figure)."""
    name: str
    ms_per_sample: float  # batch 1: the cost of one predict
    ms_per_sample_batch: float  # per sample at `batch`: throughput for training
    batch: int
    memory_bytes: int  # model_bytes + tensor_bytes at `batch`: what the memory budget is checked against
    model_bytes: int
    tensor_bytes: int  # at batch 1
    tensor_bytes_batch: int  # at `batch`
    rss_delta_bytes: int | None  # resident-set growth while timing at `batch`: diagnosis only, not trusted
    threads: int
    delegate: str  # what ran the base: "xnnpack", "gpu", "nnapi" or "external"
    delegate_requested: str
    delegate_reason: str
    repeats: int  # median over this many invocations at batch 1
    repeats_batch: int  # … and at `batch`
    error: str | None = None  # set when the variant could not be timed; it is then never chosen

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement":
        names = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in d and f.name != "error"]
        if missing:
            raise ValueError(f"measurement lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def failed(cls, name: str, threads: int, delegate: str, error: str) -> "Measurement":
        nan = float("nan")
        return cls(name, nan, nan, TRAIN_BATCH, 0, 0, 0, 0, None, threads, "", delegate, "", 0, 0, error)


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


# ---------------------------------------------------------------------------------------- measuring

def _timed(model: Path, threads: int, delegate: str, batch: int, repeats: int, target_s: float) -> dict:
    """time_model with repeats adapted to the model: one probe invocation, then ~target_s of repeats."""
    probe = runtime.time_model(model, threads, delegate, batch, None, repeats=1, warmup=1)
    per_invoke_s = max(probe["ms_per_batch"], 1e-6) / 1000
    n = int(min(repeats, max(3, target_s / per_invoke_s)))
    warmup = 2 if per_invoke_s < 0.1 else 1
    return runtime.time_model(model, threads, delegate, batch, None, repeats=n, warmup=warmup)


def measure_variants(bundle: Bundle, threads: int, delegate: str = "cpu", repeats: int = 100,
                     batch: int = TRAIN_BATCH, target_s: float = 0.25) -> list[Measurement]:
    """Time every variant's base model on this board with `delegate` (falling back as `make_interpreter`
    does; `Measurement.delegate` says what actually ran). A variant that cannot be timed is recorded with
    `error` set and is never chosen; if none can be timed, raise AutlearnError."""
    runtime.parse_delegate_spec(delegate)  # a bad spec is the caller's error, not a variant's
    if repeats < 1 or batch < 1:
        raise ValueError("repeats and batch must be at least 1")
    out: list[Measurement] = []
    t0 = time.perf_counter()
    for name in bundle.variant_names:
        v = bundle.variant(name)
        try:
            one = _timed(v.base_path, threads, delegate, 1, repeats, target_s)
            many = _timed(v.base_path, threads, delegate, batch, repeats, target_s)
        except Exception as e:  # noqa: BLE001 - one broken variant must not stop the others
            msg = " ".join(str(e).split()) or type(e).__name__
            log.warning("variant %s: cannot time its base model %s: %s", name, v.base_path.name, msg)
            out.append(Measurement.failed(name, threads, delegate, msg))
            continue
        out.append(Measurement(
            name=name,
            ms_per_sample=float(one["ms_per_sample"]),
            ms_per_sample_batch=float(many["ms_per_sample"]),
            batch=batch,
            memory_bytes=int(many["model_bytes"]) + int(many["tensor_bytes"]),
            model_bytes=int(many["model_bytes"]),
            tensor_bytes=int(one["tensor_bytes"]),
            tensor_bytes_batch=int(many["tensor_bytes"]),
            rss_delta_bytes=many["rss_delta_bytes"],
            threads=threads,
            delegate=many["delegate"],
            delegate_requested=delegate,
            delegate_reason=many["delegate_reason"],
            repeats=int(one["repeats"]),
            repeats_batch=int(many["repeats"]),
        ))
    if all(m.error is not None for m in out):
        raise AutlearnError("bad_bundle", "no variant of the bundle could be timed: "
                            + "; ".join(f"{m.name}: {m.error}" for m in out))
    log.info("timed %d variant(s) with delegate %s, %d thread(s) in %.1f s: %s", len(out), delegate, threads,
             time.perf_counter() - t0,
             ", ".join(f"{m.name} {m.ms_per_sample:.4f} ms/sample" for m in out if m.error is None))
    return out


# ----------------------------------------------------------------------------------------- choosing

def _accuracy(info: dict) -> float | None:
    a = info.get("accuracy_int8")
    return float(a) if isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) else None


def _variant_info(bundle: Bundle) -> dict[str, dict]:
    return {v["name"]: v for v in bundle.manifest["variants"]}


def _describe(m: Measurement) -> str:
    return f"{m.ms_per_sample:.4f} ms/sample, {_human_bytes(m.memory_bytes)}"


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


# ------------------------------------------------------------------------------------------- record

def _runtime_version() -> str:
    try:
        from importlib.metadata import version
        return f"{runtime.RUNTIME} {version(runtime.RUNTIME)}"
    except Exception:  # noqa: BLE001 - metadata missing (a vendored runtime)
        return runtime.RUNTIME


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or ""


def _board() -> str:
    return f"{platform.machine()} {_cpu_model()} x{os.cpu_count() or 0}".strip()


def normalise_delegate(delegate: str) -> str:
    spec = runtime.parse_delegate_spec(delegate)
    text = spec.kind + (f":{spec.path}" if spec.path else "")
    if spec.options:
        text += "?" + "&".join(f"{k}={v}" for k, v in sorted(spec.options.items()))
    return text


def record_key(bundle: Bundle, threads: int, delegate: str) -> dict:
    """What a record is keyed by (see the module docstring)."""
    return {
        "manifest_sha256": sha256_file(bundle.root / "manifest.json"),
        "delegate": normalise_delegate(delegate),
        "threads": int(threads),
        "runtime": _runtime_version(),
        "board": _board(),
        "measure_version": MEASURE_VERSION,
    }


def _key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path.absolute()), threading.Lock())


class MeasurementStore:
    """The persistent record of measurements: one JSON file, rewritten atomically on every save."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = _lock_for(self.path)

    def _read(self) -> dict:
        """The file's records ({key id: record}); {} for a missing, corrupt or foreign file (with a warning)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:
            log.warning("variant measurements %s unreadable (%s): measuring again", self.path, e)
            return {}
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            log.warning("variant measurements %s are corrupt (%s): measuring again", self.path, e)
            return {}
        if not (isinstance(data, dict) and data.get("format") == STORE_FORMAT
                and isinstance(data.get("records"), dict)):
            log.warning("variant measurements %s are not a record this daemon wrote: measuring again", self.path)
            return {}
        return {k: r for k, r in data["records"].items() if isinstance(r, dict)}

    def get(self, key: dict) -> tuple[list[Measurement], str] | None:
        """(measurements, measured_at) recorded under `key`, or None."""
        with self._lock:
            record = self._read().get(_key_id(key))
        if record is None or record.get("key") != key:
            return None
        try:
            ms = [Measurement.from_dict(d) for d in record["measurements"]]
            return ms, str(record.get("measured_at", ""))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("variant measurements %s: the record for this bundle is damaged (%s): measuring again",
                        self.path, e)
            return None

    def put(self, key: dict, measurements: list[Measurement], bundle_id: str = "") -> str:
        """Record `measurements` under `key` (replacing an older record for it); return measured_at."""
        measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._lock:
            records = self._read()
            records.pop(_key_id(key), None)
            records[_key_id(key)] = {"key": key, "bundle_id": bundle_id, "measured_at": measured_at,
                                     "measurements": [m.as_dict() for m in measurements]}
            while len(records) > MAX_RECORDS:  # dicts keep insertion order: the first is the oldest
                records.pop(next(iter(records)))
            self._write({"format": STORE_FORMAT, "records": records})
        return measured_at

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(data, indent=1, allow_nan=True) + "\n")


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


# ------------------------------------------------------------------------------------------- display

def _human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _ms(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4f}" if x < 10 else f"{x:.1f}"


def format_table(choice: Choice) -> str:
    """The `autlearnctl bench` table: one row per variant, the chosen one marked *, then the reason."""
    batch = next((r["batch"] for r in choice.table if r.get("batch")), TRAIN_BATCH)
    rows = [("variant", "params", "MFLOPs", "ms/sample b1", f"ms/sample b{batch}", "memory", "acc int8",
             "in budget", "chosen")]
    for r in choice.table:
        acc = r.get("accuracy_int8")
        rows.append((
            r["variant"], str(r["params"]), f"{r['flops'] / 1e6:.3f}",
            _ms(r.get("ms_per_sample")), _ms(r.get("ms_per_sample_batch")), _human_bytes(r.get("memory_bytes")),
            "n/a" if acc is None else f"{acc:.4f}",
            ("error" if r.get("error") else "yes" if r["within_budget"] else "no"),
            "*" if r["chosen"] else "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    left = {0, 7, 8}
    lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    delegates = sorted({r["delegate"] for r in choice.table if r.get("delegate")})
    key = choice.key or {}
    facts = [f"budget: {choice.budget.describe()}"]
    if key:
        facts.append(f"delegate {key.get('delegate')}" + (f" -> {', '.join(delegates)}" if delegates else "")
                     + f", {key.get('threads')} thread(s), {key.get('runtime')}")
    if choice.measured_at:
        facts.append(f"measured {choice.measured_at}" + (" (recorded)" if choice.from_record else " (now)"))
    lines.append("; ".join(facts))
    for r in choice.table:
        if r.get("error"):
            lines.append(f"{r['variant']}: {r['error']}")
    lines.append(f"chosen: {choice.reason}")
    return "\n".join(lines)
