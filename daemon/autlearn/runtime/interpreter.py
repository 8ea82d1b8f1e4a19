"""The one seam to the TFLite interpreter: ai-edge-litert, or tflite-runtime where only that exists.

Delegates accelerate the base model (inference) only; heads always train on the CPU
(`make_cpu_interpreter`): the GPU delegate cannot take training graphs and NNAPI exists only on Android.

Delegate specs (the `model.delegate` setting)
---------------------------------------------

    cpu                         XNNPACK, the interpreter's built-in CPU delegate (always available)
    gpu[?k=v&...]               a GPU delegate library (names in GPU_LIBRARIES), else XNNPACK
    nnapi[?k=v&...]             an NNAPI delegate library (names in NNAPI_LIBRARIES), else XNNPACK
    auto                        gpu, then nnapi, then XNNPACK
    external:<path>[?k=v&...]   any TFLite *external delegate* library, given the options k=v

An external delegate library is a shared object exporting the plugin interface of
tensorflow/lite/delegates/external (`tflite_plugin_create_delegate(keys, values, n, report_error)` and
`tflite_plugin_destroy_delegate(delegate)`), e.g. the Arm NN delegate, libedgetpu or a vendor NPU delegate.
Options follow the first `?` as `key=value` pairs joined by `&`; keys and values are percent-decoded
(`%26` is `&`, `%3D` is `=`, `%3F` is `?`, `%25` is `%`; `+` stays a plus), and so is the path. Every
value reaches the library as a string. Example:

    external:/usr/lib/libarmnnDelegate.so?backends=GpuAcc,CpuAcc&logging-severity=info

Fallback: a library that is missing, is not a delegate (lacks the plugin symbols), refuses to be created,
or cannot take the model (applying it, allocating tensors or one probe invocation fails) is skipped for
the next candidate in the chain, ending at XNNPACK. Each `make_interpreter` call that falls back logs ONE
line (a warning when a delegate was asked for by name, info for `auto`), and the returned `DelegateChoice`
says what is in use and why.

Note on ai-edge-litert's `load_delegate`: a missing library raises `OSError` (documented: `ValueError`),
a library without the plugin symbols raises `AttributeError`, and in both cases the half-made `Delegate`'s
`__del__` then prints an ignored `AttributeError` to stderr; a create function that returns NULL makes
`__del__` call the library's destroy function with NULL. We therefore check the library with ctypes first
and build delegates through a subclass whose finaliser skips half-made objects.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np

log = logging.getLogger(__name__)

try:  # the maintained package
    from ai_edge_litert import interpreter as _interp_mod  # type: ignore
    RUNTIME = "ai-edge-litert"
except ImportError:  # pragma: no cover - boards with only the old package
    from tflite_runtime import interpreter as _interp_mod  # type: ignore
    RUNTIME = "tflite-runtime"

Interpreter = _interp_mod.Interpreter
load_delegate = _interp_mod.load_delegate
_BaseDelegate = getattr(_interp_mod, "Delegate", None)

# Library names (or paths) tried for the named delegates, with the options each is given.
# Note: the stock TF GPU delegate build (libtensorflowlite_gpu_delegate.so) exports only
# TfLiteGpuDelegateV2Create; it loads here only if built with the external-delegate plugin interface.
GPU_LIBRARIES: tuple[tuple[str, dict[str, str]], ...] = (
    ("libtensorflowlite_gpu_delegate.so", {}),
    ("libtensorflowlite_gpu_gl.so", {}),
    ("libarmnnDelegate.so", {"backends": "GpuAcc"}),  # Arm NN on Mali GPUs (OpenCL)
)
NNAPI_LIBRARIES: tuple[tuple[str, dict[str, str]], ...] = (
    ("libnnapi_delegate.so", {}),
)
_PLUGIN_SYMBOLS = ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate")
CPU = "xnnpack"  # DelegateChoice.in_use when no extra delegate is applied


@dataclass(frozen=True)
class DelegateChoice:
    requested: str
    in_use: str  # "xnnpack", or the delegate that was applied: "gpu", "nnapi" or "external"
    reason: str
    library: str = ""  # the library applied, when in_use is not "xnnpack"
    options: tuple[tuple[str, str], ...] = ()  # the options it was given
    fallbacks: tuple[str, ...] = ()  # one line per candidate that was skipped, and why

    def as_dict(self) -> dict:
        return {"requested": self.requested, "in_use": self.in_use, "reason": self.reason,
                "library": self.library, "options": dict(self.options), "fallbacks": list(self.fallbacks)}


@dataclass(frozen=True)
class DelegateSpec:
    """A parsed delegate spec: `kind` is cpu, gpu, nnapi, auto or external."""
    kind: str
    path: str = ""
    options: dict[str, str] = field(default_factory=dict)


def _parse_options(text: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in text.split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = unquote(key).strip()
        if not eq or not key:
            raise ValueError(f"delegate option {part!r} is not key=value")
        options[key] = unquote(value)
    return options


def parse_delegate_spec(spec: str) -> DelegateSpec:
    """Parse a delegate spec (see the module docstring); raise ValueError for one that is not."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty delegate spec")
    spec = spec.strip()
    if spec.startswith("external:"):
        path, _, opts = spec[len("external:"):].partition("?")
        path = unquote(path)
        if not path:
            raise ValueError("external delegate spec without a library path: external:<path>[?key=value&...]")
        return DelegateSpec("external", path, _parse_options(opts))
    name, _, opts = spec.partition("?")
    if name == "xnnpack":
        name = "cpu"
    if name not in ("cpu", "auto", "gpu", "nnapi"):
        raise ValueError(f"unknown delegate {name!r}: expected auto, cpu, gpu, nnapi or external:<path>")
    if opts and name in ("cpu", "auto"):
        raise ValueError(f"delegate {name!r} takes no options")
    return DelegateSpec(name, "", _parse_options(opts))


if _BaseDelegate is not None:
    class _Delegate(_BaseDelegate):  # type: ignore[misc, valid-type]
        """The package's Delegate, with a finaliser that ignores half-made objects (no stderr noise,
        no destroy(NULL) into the library when its create function failed)."""

        def __del__(self):
            if self.__dict__.get("_library") is None:
                return
            if not self.__dict__.get("_delegate_ptr"):
                self._library = None
                return
            try:
                super().__del__()
            except Exception:  # a finaliser must never raise
                pass
else:  # pragma: no cover - a runtime without the Delegate class
    _Delegate = None


class LibraryMissing(OSError):
    """The delegate library is not there (as opposed to: there, but unusable)."""


def _load(lib: str, options: dict[str, str]):
    """Load one external delegate library; raise OSError with a sentence saying why it cannot be used."""
    try:
        handle = ctypes.CDLL(lib)  # a missing library fails here, before the runtime builds a half-made Delegate
    except OSError as e:
        msg = _one_line(e)
        msg = msg if lib in msg else f"{lib}: {msg}"
        if "No such file" in msg or "cannot open shared object" in msg:
            raise LibraryMissing(msg) from None
        raise OSError(f"cannot load {msg}") from None  # e.g. wrong architecture, an undefined symbol
    missing = [s for s in _PLUGIN_SYMBOLS if not hasattr(handle, s)]
    if missing:
        raise OSError(f"{lib} is not a TFLite external delegate (no {', '.join(missing)})")
    try:
        if _Delegate is not None:
            return _Delegate(lib, options)
        return load_delegate(lib, options)
    except (OSError, ValueError, RuntimeError, AttributeError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        raise OSError(f"{lib} refused to create the delegate ({msg})") from None


def _probe(interp) -> None:
    """One invocation on zeros at the allocated shapes, then a state reset (stateful models)."""
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    interp.invoke()
    if hasattr(interp, "reset_all_variables"):
        interp.reset_all_variables()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def make_interpreter(model: Path | str, threads: int, delegate: str = "cpu",
                     probe: bool = True) -> tuple[object, DelegateChoice]:
    """An interpreter for `model` (tensors allocated) with the requested delegate, falling back to
    XNNPACK on the CPU. With `probe`, a delegate must also survive one invocation to be kept."""
    spec = parse_delegate_spec(delegate)
    if spec.kind == "external":
        chain = [("external", ((spec.path, spec.options),))]
    elif spec.kind in ("gpu", "nnapi"):
        named = GPU_LIBRARIES if spec.kind == "gpu" else NNAPI_LIBRARIES  # read at call time (tests patch them)
        chain = [(spec.kind, tuple((lib, {**opts, **spec.options}) for lib, opts in named))]
    elif spec.kind == "auto":
        chain = [("gpu", GPU_LIBRARIES), ("nnapi", NNAPI_LIBRARIES)]
    else:
        chain = []

    fallbacks: list[str] = []
    for name, candidates in chain:
        problems, missing = [], []
        for lib, options in candidates:
            try:
                d = _load(lib, options)
            except LibraryMissing as e:
                missing.append((lib, str(e)))
                continue
            except OSError as e:
                problems.append(str(e))
                continue
            interp = None
            try:
                interp = Interpreter(model_path=str(model), num_threads=threads, experimental_delegates=[d])
                interp.allocate_tensors()
                if probe:
                    _probe(interp)
            except Exception as e:  # ValueError/RuntimeError from the wrapper
                problems.append(f"{lib} cannot take the model ({_one_line(e)})")
                interp = None  # the interpreter goes before its delegate
                del d
                continue
            reason = f"{name} delegate {lib} applied" + (f" with {_fmt(options)}" if options else "")
            if fallbacks:
                reason += "; skipped: " + "; ".join(fallbacks)
            choice = DelegateChoice(delegate, name, reason, lib, tuple(sorted(options.items())), tuple(fallbacks))
            if fallbacks:
                log.info("delegate %s: using %s (%s)", delegate, name, reason)
            return interp, choice
        if len(missing) == 1:
            problems.insert(0, f"cannot load {missing[0][1]}")
        elif missing:
            problems.insert(0, "no library found (tried " + ", ".join(lib for lib, _ in missing) + ")")
        if name == "nnapi" and missing and len(missing) == len(candidates):
            problems.append("NNAPI exists only on Android")
        fallbacks.append(f"{name}: " + ("; ".join(problems) if problems else "no library to try"))

    interp = Interpreter(model_path=str(model), num_threads=threads)
    interp.allocate_tensors()
    if spec.kind == "cpu":
        return interp, DelegateChoice(delegate, CPU, "cpu requested: XNNPACK, the interpreter's CPU delegate")
    reason = "; ".join(fallbacks) + " -> falling back to XNNPACK on the CPU"
    (log.info if spec.kind == "auto" else log.warning)("delegate %s not used: %s", delegate, reason)
    return interp, DelegateChoice(delegate, CPU, reason, fallbacks=tuple(fallbacks))


def _fmt(options: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in options.items())


class _CpuInterpreter(Interpreter):  # type: ignore[misc, valid-type]
    """The interpreter for heads: its signature runners resize only inputs whose shape changed.

    Every aarch64 build of ai-edge-litert (1.4.0 to 2.3.0) segfaults when a signature input is resized
    to rank 0: `InterpreterWrapper::ResizeInputTensor` stores the first of `n` dims and memsets the other
    `n - 1`, so for a scalar's empty shape (n = 0) it memsets 2^64 - 4 bytes. A head's `train` takes the
    learning rate as a scalar and the stock runner resizes every input on every call, so training on an
    arm64 board died on its first step (x86-64 builds memset n * 4 bytes and survive). Resizing an input
    to the shape it has is a no-op, so skipping it changes nothing else (reports/arm64.md)."""

    def get_signature_runner(self, signature_key=None):
        runner = super().get_signature_runner(signature_key)
        if not all(hasattr(runner, a) for a in ("_interpreter_wrapper", "_inputs", "_outputs", "_subgraph_index")):
            return runner  # pragma: no cover - a runtime whose runner is built differently
        return _ResizeOnChange(runner)


class _ResizeOnChange:
    """A signature runner that calls ResizeInputTensor only for an input whose shape differs from its
    tensor's (never for a scalar fed as a scalar); otherwise the stock runner's steps, in its order."""

    def __init__(self, runner):
        self._runner = runner

    def __getattr__(self, name):  # get_input_details, get_output_details, ...
        return getattr(self._runner, name)

    def __call__(self, **kwargs):
        r = self._runner
        if kwargs.keys() != r._inputs.keys():
            return r(**kwargs)  # the stock runner's error for missing or unknown inputs
        w, sub = r._interpreter_wrapper, r._subgraph_index
        for name, value in kwargs.items():
            shape = tuple(np.shape(value))
            if shape != tuple(w.TensorSize(r._inputs[name], sub)):
                w.ResizeInputTensor(r._inputs[name], np.array(shape, dtype=np.int32), False, sub)
        w.AllocateTensors(sub)
        for name, value in kwargs.items():
            w.SetTensor(r._inputs[name], value, sub)
        w.Invoke(sub)
        return {name: w.GetTensor(index, sub) for name, index in r._outputs}


def make_cpu_interpreter(model: Path | str, threads: int):
    """Training graphs (heads) run on the CPU: delegates cannot take them. Their signature runners skip
    resizing unchanged inputs (the aarch64 scalar-resize crash: `_CpuInterpreter`)."""
    return _CpuInterpreter(model_path=str(model), num_threads=threads)


# ----------------------------------------------------------------------------------------------- timing

def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss_bytes() -> int | None:
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):  # pragma: no cover
        return None
    return int(peak) * (1 if os.uname().sysname == "Darwin" else 1024)


def _sample_input(d: dict, rng: np.random.Generator) -> np.ndarray:
    shape, dtype = tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"])
    if dtype == np.float32 or dtype == np.float16:
        return rng.random(shape, dtype=np.float32).astype(dtype)
    if dtype in (np.int8, np.uint8):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return np.zeros(shape, dtype)  # token ids and other integers: 0 is always a valid index


def time_model(model_path: Path | str, threads: int = 2, delegate: str = "cpu", batch: int = 32,
               input_shape: tuple[int, ...] | None = None, repeats: int = 20, warmup: int = 2) -> dict:
    """Time a base model on this board: `batch` samples per invocation, median of `repeats` invocations.

    `input_shape` is one sample's shape (without the batch dimension); by default the model's own. The
    memory figures are approximate: `rss_delta_bytes` is the growth of this process's resident set while
    the interpreter was built, allocated and run (None where /proc is missing), `peak_rss_bytes` the
    process's peak so far, `tensor_bytes` the sum of all tensor buffers at this batch size.
    """
    if batch < 1 or repeats < 1:
        raise ValueError("batch and repeats must be at least 1")
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    interp, choice = make_interpreter(model_path, threads, delegate)
    inputs = interp.get_input_details()
    for d in inputs:
        per_sample = tuple(input_shape) if input_shape is not None and len(inputs) == 1 else tuple(d["shape"][1:])
        interp.resize_tensor_input(d["index"], [batch, *per_sample])
    interp.allocate_tensors()
    setup_ms = (time.perf_counter() - t0) * 1000
    rng = np.random.default_rng(0)
    data = {d["index"]: _sample_input(d, rng) for d in interp.get_input_details()}
    times = []
    for i in range(warmup + repeats):
        for index, x in data.items():
            interp.set_tensor(index, x)
        t = time.perf_counter()
        interp.invoke()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    rss1 = _rss_bytes()
    tensor_bytes = 0
    for d in interp.get_tensor_details():
        shape = d.get("shape")
        if shape is not None and len(shape):
            tensor_bytes += int(np.prod(shape)) * np.dtype(d["dtype"]).itemsize
    per_batch = statistics.median(times) * 1000
    result = {
        "model": str(model_path),
        "model_bytes": Path(model_path).stat().st_size,
        "threads": threads,
        "batch": batch,
        "repeats": repeats,
        "ms_per_batch": per_batch,
        "ms_per_sample": per_batch / batch,
        "ms_per_sample_min": min(times) * 1000 / batch,
        "setup_ms": setup_ms,
        "tensor_bytes": tensor_bytes,
        "rss_delta_bytes": (rss1 - rss0) if rss0 is not None and rss1 is not None else None,
        "peak_rss_bytes": _peak_rss_bytes(),
        "delegate": choice.in_use,
        "delegate_requested": choice.requested,
        "delegate_reason": choice.reason,
        "runtime": RUNTIME,
    }
    del interp
    return result
