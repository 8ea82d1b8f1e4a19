"""The one seam to the TFLite interpreter: ai-edge-litert, or tflite-runtime where only that exists.

Delegates accelerate the base model (inference) only; heads always train on the CPU.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

try:  # the maintained package
    from ai_edge_litert.interpreter import Interpreter, load_delegate  # type: ignore
    RUNTIME = "ai-edge-litert"
except ImportError:  # pragma: no cover - boards with only the old package
    from tflite_runtime.interpreter import Interpreter, load_delegate  # type: ignore
    RUNTIME = "tflite-runtime"

# Library names tried for the named delegates.
_GPU_LIBS = ("libtensorflowlite_gpu_delegate.so", "libtensorflowlite_gpu_gl.so")
_NNAPI_LIBS = ("libnnapi_delegate.so",)


@dataclass(frozen=True)
class DelegateChoice:
    requested: str
    in_use: str  # "xnnpack" or the delegate that loaded
    reason: str


def _try_load(libs: tuple[str, ...], options: dict | None = None):
    last = ""
    for lib in libs:
        try:
            ctypes.CDLL(lib)  # a missing library fails here, before the runtime builds a half-made Delegate
            return load_delegate(lib, options or {}), lib
        except (OSError, ValueError, RuntimeError) as e:  # a missing library raises OSError
            last = f"{lib}: {e}"
    raise OSError(last or "no library to try")


def make_interpreter(model: Path, threads: int, delegate: str = "cpu") -> tuple[object, DelegateChoice]:
    """An interpreter for `model` with the requested delegate, falling back to XNNPACK on the CPU."""
    chain: list[tuple[str, tuple[str, ...], dict]] = []
    if delegate.startswith("external:"):
        spec = delegate[len("external:"):]
        path, _, opts = spec.partition("?")
        options = dict(kv.split("=", 1) for kv in opts.split("&") if "=" in kv)
        chain.append(("external", (path,), options))
    elif delegate in ("gpu", "auto"):
        chain.append(("gpu", _GPU_LIBS, {}))
    if delegate in ("nnapi", "auto"):
        chain.append(("nnapi", _NNAPI_LIBS, {}))
    reasons = []
    for name, libs, options in chain:
        try:
            d, lib = _try_load(libs, options)
        except OSError as e:
            reasons.append(f"{name} unavailable ({e})")
            continue
        try:
            interp = Interpreter(model_path=str(model), num_threads=threads, experimental_delegates=[d])
            interp.allocate_tensors()
            return interp, DelegateChoice(delegate, name, f"loaded {lib}")
        except (ValueError, RuntimeError) as e:
            reasons.append(f"{name} cannot take the model ({e})")
    if reasons and delegate != "auto":
        log.warning("delegate %s not used, falling back to XNNPACK: %s", delegate, "; ".join(reasons))
    interp = Interpreter(model_path=str(model), num_threads=threads)
    interp.allocate_tensors()
    reason = "; ".join(reasons) if reasons else "CPU requested"
    return interp, DelegateChoice(delegate, "xnnpack", reason)


def make_cpu_interpreter(model: Path, threads: int):
    """Training graphs (heads) run on the CPU: delegates cannot take them."""
    interp = Interpreter(model_path=str(model), num_threads=threads)
    return interp
