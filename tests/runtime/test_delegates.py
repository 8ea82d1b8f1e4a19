"""Delegates for the base model: a real external delegate built from C, and every fallback path."""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autlearn.runtime import interpreter as runtime
from autlearn.runtime.interpreter import DelegateChoice, make_cpu_interpreter, make_interpreter, parse_delegate_spec, time_model

HERE = Path(__file__).resolve().parents[1]
NOOP_SRC = HERE / "delegate" / "noop_delegate.c"


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _compile(src: Path, out: Path) -> Path:
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) on this machine: cannot build the test delegate")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-o", str(out), str(src)], check=True,
                   capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def noop_lib(tmp_path_factory) -> Path:
    return _compile(NOOP_SRC, tmp_path_factory.mktemp("delegate") / "libnoop_delegate.so")


@pytest.fixture(scope="module")
def not_a_delegate(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("notdelegate")
    (d / "plain.c").write_text("int autlearn_plain_function(int x) { return x + 1; }\n")
    return _compile(d / "plain.c", d / "libplain.so")


@pytest.fixture(scope="module")
def base(tiny_bundle) -> Path:
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    variant = next(v for v in m["variants"] if v["name"] == m["default_variant"])
    return tiny_bundle / variant["base"]


def _run(interp, x: np.ndarray) -> np.ndarray:
    """Like FeatureExtractor: resize to the batch, allocate, quantise-free int8 input, invoke."""
    d = interp.get_input_details()[0]
    interp.resize_tensor_input(d["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(d["index"], x.astype(d["dtype"]))
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).copy()


def _batch(interp, n: int = 7, seed: int = 0) -> np.ndarray:
    d = interp.get_input_details()[0]
    assert d["dtype"] == np.int8, "the builder's base is full-integer"
    return np.random.default_rng(seed).integers(-128, 128, (n, *d["shape"][1:]), dtype=np.int8)


def _counter(lib: Path, name: str) -> int:
    return ctypes.c_int.in_dll(ctypes.CDLL(str(lib)), name).value


# ------------------------------------------------------------------------------------------ spec syntax

def test_spec_parsing():
    assert parse_delegate_spec("cpu").kind == "cpu"
    assert parse_delegate_spec("xnnpack").kind == "cpu"
    assert parse_delegate_spec("auto").kind == "auto"
    s = parse_delegate_spec("external:/opt/my%20libs/d.so?backends=GpuAcc,CpuAcc&path=/a%26b%3Dc&plus=a+b&empty=")
    assert s.kind == "external" and s.path == "/opt/my libs/d.so"
    assert s.options == {"backends": "GpuAcc,CpuAcc", "path": "/a&b=c", "plus": "a+b", "empty": ""}
    assert parse_delegate_spec("gpu?backends=GpuAcc").options == {"backends": "GpuAcc"}
    for bad in ("", "tpu", "external:", "external:/x.so?novalue", "cpu?x=1", "auto?x=1"):
        with pytest.raises(ValueError):
            parse_delegate_spec(bad)


def test_delegate_choice_stays_compatible():
    c = DelegateChoice("cpu", "xnnpack", "why")  # the three positional fields other modules build/read
    assert (c.requested, c.in_use, c.reason) == ("cpu", "xnnpack", "why")
    assert c.as_dict()["fallbacks"] == [] and c.library == ""


# --------------------------------------------------------------------------------------- real delegate

def test_external_noop_delegate_is_loaded_given_options_and_matches_cpu(base, noop_lib, tmp_path):
    log_file = tmp_path / "noop.log"
    created, prepared = _counter(noop_lib, "noop_delegate_created"), _counter(noop_lib, "noop_delegate_prepared")
    spec = f"external:{noop_lib}?log={log_file}&greeting=hello%26bye"
    interp, choice = make_interpreter(base, 2, spec)
    assert choice.requested == spec
    assert choice.in_use == "external", choice.reason
    assert choice.library == str(noop_lib) and dict(choice.options)["greeting"] == "hello&bye"
    assert str(noop_lib) in choice.reason and not choice.fallbacks

    lines = log_file.read_text().splitlines()
    assert lines[0] == f"create log={log_file} greeting=hello&bye", lines
    assert "prepare" in lines  # the interpreter applied it to the graph
    assert _counter(noop_lib, "noop_delegate_created") == created + 1
    assert _counter(noop_lib, "noop_delegate_prepared") > prepared

    cpu, cpu_choice = make_interpreter(base, 2, "cpu")
    assert cpu_choice.in_use == "xnnpack"
    for n in (7, 3):  # resizing after the delegate was applied works too (the delegate allows dynamic tensors)
        x = _batch(cpu, n, seed=n)
        want, got = _run(cpu, x), _run(interp, x)
        assert got.shape == (n, want.shape[1])
        np.testing.assert_array_equal(got, want)

    del interp
    gc.collect()
    assert log_file.read_text().splitlines()[-1] == "destroy"  # released with its interpreter


def test_static_shape_delegate_is_reapplied_after_resize(base, noop_lib, tmp_path):
    """flags=0 (no dynamic tensors): LiteRT undoes and re-applies the delegate when the batch changes."""
    log_file = tmp_path / "static.log"
    interp, choice = make_interpreter(base, 1, f"external:{noop_lib}?log={log_file}&flags=0")
    assert choice.in_use == "external"
    cpu = make_cpu_interpreter(base, 1)
    x = _batch(interp, 5)
    np.testing.assert_array_equal(_run(interp, x), _run(cpu, x))
    assert log_file.read_text().splitlines().count("prepare") >= 2


def test_delegate_that_cannot_take_the_model_falls_back(base, noop_lib, tmp_path, caplog):
    log_file = tmp_path / "fail.log"
    with caplog.at_level(logging.INFO, logger="autlearn.runtime.interpreter"):
        interp, choice = make_interpreter(base, 1, f"external:{noop_lib}?log={log_file}&fail=prepare")
    assert choice.in_use == "xnnpack"
    assert "cannot take the model" in choice.reason and str(noop_lib) in choice.reason
    assert "prepare fail" in log_file.read_text()
    assert len([r for r in caplog.records if r.name == "autlearn.runtime.interpreter"]) == 1
    assert caplog.records[-1].levelno == logging.WARNING
    cpu = make_cpu_interpreter(base, 1)
    x = _batch(cpu, 4)
    np.testing.assert_array_equal(_run(interp, x), _run(cpu, x))


def test_delegate_whose_create_fails_falls_back_with_its_message(base, noop_lib, capfd):
    destroyed = _counter(noop_lib, "noop_delegate_destroyed")
    interp, choice = make_interpreter(base, 1, f"external:{noop_lib}?fail=create")
    gc.collect()
    assert choice.in_use == "xnnpack"
    assert "asked to fail" in choice.reason  # what the library reported through report_error
    assert _counter(noop_lib, "noop_delegate_destroyed") == destroyed  # no destroy(NULL) into the library
    assert "Exception ignored" not in capfd.readouterr().err


# ---------------------------------------------------------------------------------------- fallbacks

def test_gpu_without_library_falls_back_to_xnnpack(base, caplog):
    with caplog.at_level(logging.INFO, logger="autlearn.runtime.interpreter"):
        interp, choice = make_interpreter(base, 1, "gpu")
    if choice.in_use == "gpu":
        pytest.skip(f"this machine has a usable GPU delegate: {choice.reason}")
    assert choice.in_use == "xnnpack" and choice.requested == "gpu"
    assert "gpu" in choice.reason.lower() and choice.fallbacks
    records = [r for r in caplog.records if r.name == "autlearn.runtime.interpreter"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING and "gpu" in records[0].getMessage()
    assert interp.get_output_details()[0]["shape"][-1] > 0


def test_auto_tries_gpu_then_nnapi_then_xnnpack(base, noop_lib, tmp_path, monkeypatch):
    # nothing there: XNNPACK, and the reason names both candidates
    monkeypatch.setattr(runtime, "GPU_LIBRARIES", (("/nonexistent/libgpu.so", {}),))
    monkeypatch.setattr(runtime, "NNAPI_LIBRARIES", (("/nonexistent/libnnapi.so", {}),))
    _, choice = make_interpreter(base, 1, "auto")
    assert choice.in_use == "xnnpack"
    assert [f.split(":")[0] for f in choice.fallbacks] == ["gpu", "nnapi"]

    # a GPU library that cannot take the model, an NNAPI one that can: nnapi, with the gpu failure recorded
    gpu_log, nnapi_log = tmp_path / "gpu.log", tmp_path / "nnapi.log"
    monkeypatch.setattr(runtime, "GPU_LIBRARIES", ((str(noop_lib), {"log": str(gpu_log), "fail": "prepare"}),))
    monkeypatch.setattr(runtime, "NNAPI_LIBRARIES", ((str(noop_lib), {"log": str(nnapi_log)}),))
    _, choice = make_interpreter(base, 1, "auto")
    assert choice.in_use == "nnapi", choice.reason
    assert choice.fallbacks and choice.fallbacks[0].startswith("gpu:") and "cannot take the model" in choice.reason
    assert "prepare" in nnapi_log.read_text()

    # a GPU library that works is taken first
    monkeypatch.setattr(runtime, "GPU_LIBRARIES", (("/nonexistent/first.so", {}), (str(noop_lib), {"log": str(gpu_log)})))
    _, choice = make_interpreter(base, 1, "auto")
    assert choice.in_use == "gpu" and choice.library == str(noop_lib) and not choice.fallbacks


def test_missing_external_library_falls_back_naming_the_path(base, capfd):
    interp, choice = make_interpreter(base, 1, "external:/nonexistent.so?x=1")
    gc.collect()
    assert choice.in_use == "xnnpack"
    assert "/nonexistent.so" in choice.reason
    assert "Exception ignored" not in capfd.readouterr().err


@pytest.mark.parametrize("which", ["libm", "compiled"])
def test_library_that_is_not_a_delegate_falls_back_cleanly(base, which, not_a_delegate, capfd):
    lib = "libm.so.6" if which == "libm" else str(not_a_delegate)
    if which == "libm":
        try:
            ctypes.CDLL(lib)
        except OSError:
            pytest.skip("no libm.so.6 on this system")
    interp, choice = make_interpreter(base, 1, f"external:{lib}")
    gc.collect()
    assert choice.in_use == "xnnpack"
    assert lib in choice.reason and "not a TFLite external delegate" in choice.reason
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "AttributeError" not in err
    cpu = make_cpu_interpreter(base, 1)
    x = _batch(cpu, 2)
    np.testing.assert_array_equal(_run(interp, x), _run(cpu, x))


def test_cpu_is_xnnpack_without_log(base, caplog):
    with caplog.at_level(logging.INFO, logger="autlearn.runtime.interpreter"):
        _, choice = make_interpreter(base, 1, "cpu")
    assert choice.in_use == "xnnpack" and "cpu" in choice.reason
    assert not [r for r in caplog.records if r.name == "autlearn.runtime.interpreter"]


# -------------------------------------------------------------------------------------------- timing

def test_time_model_reports_speed_memory_and_delegate(base, noop_lib):
    r = time_model(base, 1, "cpu", batch=8, input_shape=None, repeats=3)
    assert r["delegate"] == "xnnpack" and r["batch"] == 8
    assert 0 < r["ms_per_sample"] < 1000 and r["ms_per_batch"] >= r["ms_per_sample"]
    assert r["tensor_bytes"] > 0 and r["model_bytes"] == base.stat().st_size
    assert r["peak_rss_bytes"] is None or r["peak_rss_bytes"] > 0
    r2 = time_model(base, 1, f"external:{noop_lib}", batch=4, input_shape=(28, 28, 1), repeats=2)
    assert r2["delegate"] == "external" and r2["ms_per_sample"] > 0


# ------------------------------------------------------------------------------------- runtime seam

def test_tflite_runtime_stands_in_when_ai_edge_litert_is_absent(base, noop_lib, tmp_path):
    """A fake `tflite_runtime` (re-exporting LiteRT's classes) is used when `ai_edge_litert` cannot import."""
    fake = tmp_path / "fake"
    (fake / "tflite_runtime").mkdir(parents=True)
    (fake / "tflite_runtime" / "__init__.py").write_text("")
    (fake / "tflite_runtime" / "interpreter.py").write_text(
        "import importlib, sys\n"
        "_real = importlib.import_module('ai_edge_litert.interpreter')\n"
        "Interpreter, load_delegate, Delegate = _real.Interpreter, _real.load_delegate, _real.Delegate\n")
    script = (
        "import sys\n"
        "import tflite_runtime.interpreter\n"  # loads the real package first, under the fake's name
        "for m in [m for m in sys.modules if m.split('.')[0] == 'ai_edge_litert']: sys.modules[m] = None\n"
        "from autlearn.runtime import interpreter as runtime\n"
        "assert runtime.RUNTIME == 'tflite-runtime', runtime.RUNTIME\n"
        f"i, c = runtime.make_interpreter({str(base)!r}, 1, 'external:{noop_lib}')\n"
        "print(runtime.RUNTIME, c.in_use)\n")
    env = dict(os.environ, PYTHONPATH=str(fake) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["tflite-runtime", "external"]
