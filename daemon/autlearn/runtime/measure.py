"""Timing every variant's base model on this board, and the record that spares a restart measuring again.

What is measured (`measure_variants`), per variant, on the variant's int8 *base* (the part a delegate runs;
the head is a few small matmuls on the CPU and costs the same order for every variant), fed inputs of the
variant's own size (`Variant.input`: a bundle's variants may differ in input resolution):

* `ms_per_sample` — batch 1, per sample: what one `predict` costs. The latency budget applies to this figure.
* `ms_per_sample_batch` — per sample at batch `batch` (32, the training batch): feature-extraction throughput
  for training rounds. Shown in the table; no budget applies to it.
* `memory_bytes` — the figure the memory budget applies to: `model_bytes + tensor_bytes` at batch `batch`
  (the larger of the two batch sizes the daemon runs), plus `head_bytes`, the trainable head's state while it
  trains (its float32 weights, their gradients and Adam's two moments: four copies of the weights that the
  variant's `get_weights` signature returns; a pruned variant's head is smaller too).
  Why this one and not an RSS figure:
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
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import interpreter as runtime
from .bundle import Bundle, Variant, sha256_file
from ..durable import write_text_atomic
from ..errors import AutlearnError

log = logging.getLogger(__name__)

MEASURE_VERSION = 2  # changes whenever what or how we measure changes: old records are then ignored
STORE_FORMAT = 1
STORE_FILE = "variant_measurements.json"
MAX_RECORDS = 16  # records kept in the file (bundles and delegates come and go); the oldest are dropped
TRAIN_BATCH = 32


@dataclass(frozen=True)
class Measurement:
    """One variant's base model timed on this board (see the module docstring for each figure)."""
    name: str
    ms_per_sample: float  # batch 1: the cost of one predict
    ms_per_sample_batch: float  # per sample at `batch`: throughput for training
    batch: int
    memory_bytes: int  # model_bytes + tensor_bytes at `batch` + head_bytes: what the memory budget is checked against
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
    head_bytes: int = 0  # the head's training state: 4 x its float32 weights (weights, gradients, Adam's m and v)
    error: str | None = None  # set when the variant could not be timed; it is then never chosen

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement":
        names = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in d and f.name not in ("error", "head_bytes")]
        if missing:
            raise ValueError(f"measurement lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def failed(cls, name: str, threads: int, delegate: str, error: str) -> "Measurement":
        nan = float("nan")
        return cls(name, nan, nan, TRAIN_BATCH, 0, 0, 0, 0, None, threads, "", delegate, "", 0, 0, error=error)


# ---------------------------------------------------------------------------------------- measuring

def _timed(model: Path, threads: int, delegate: str, batch: int, repeats: int, target_s: float,
           shape: tuple[int, ...] | None = None) -> dict:
    """time_model with repeats adapted to the model: one probe invocation, then ~target_s of repeats."""
    probe = runtime.time_model(model, threads, delegate, batch, shape, repeats=1, warmup=1)
    per_invoke_s = max(probe["ms_per_batch"], 1e-6) / 1000
    n = int(min(repeats, max(3, target_s / per_invoke_s)))
    warmup = 2 if per_invoke_s < 0.1 else 1
    return runtime.time_model(model, threads, delegate, batch, shape, repeats=n, warmup=warmup)


def head_state_bytes(v: Variant) -> int:
    """The bytes a training round holds for variant `v`'s head: its float32 weights (as its `get_weights`
    signature returns them), their gradients and Adam's two moments — four copies."""
    weights = runtime.make_cpu_interpreter(v.head_path, 1).get_signature_runner("get_weights")()
    return 4 * sum(int(np.asarray(w).nbytes) for w in weights.values())


def probe_shape(bundle: Bundle, v: Variant) -> tuple[int, ...] | None:
    """One sample's shape as the board feeds variant `v`'s base: its own input's height x width x channels
    (image bundles; a variant may have its own resolution), else None (the model's own)."""
    if bundle.task != "image_classification":
        return None
    spec = v.input
    channels = spec.get("channels", 3 if spec.get("color_mode") == "RGB" else 1)  # bundle.py checked they agree
    return int(spec["height"]), int(spec["width"]), int(channels)


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
            shape = probe_shape(bundle, v)
            one = _timed(v.base_path, threads, delegate, 1, repeats, target_s, shape)
            many = _timed(v.base_path, threads, delegate, batch, repeats, target_s, shape)
            head_bytes = head_state_bytes(v)
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
            memory_bytes=int(many["model_bytes"]) + int(many["tensor_bytes"]) + head_bytes,
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
            head_bytes=head_bytes,
        ))
    if all(m.error is not None for m in out):
        raise AutlearnError("bad_bundle", "no variant of the bundle could be timed: "
                            + "; ".join(f"{m.name}: {m.error}" for m in out))
    log.info("timed %d variant(s) with delegate %s, %d thread(s) in %.1f s: %s", len(out), delegate, threads,
             time.perf_counter() - t0,
             ", ".join(f"{m.name} {m.ms_per_sample:.4f} ms/sample" for m in out if m.error is None))
    return out


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
