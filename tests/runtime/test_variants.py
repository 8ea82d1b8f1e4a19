"""Device-aware variant choice: real interpreter, real bundle files, a real JSON record on disk.

The two-variant bundle (tests/conftest.py) is made from two real builds (full width and --width-mult 0.5)
merged into one manifest; its int8 accuracies are set so that the choice logic has something to decide.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autlearn.runtime import bundle as bundle_mod
from autlearn.runtime import interpreter as runtime
from autlearn.runtime import measure as M, variants as V
from autlearn.runtime.variant_table import format_table
from autlearn.learning.head import Head
from autlearn.errors import AutlearnError
from resign import write_manifest

BIN = Path(sys.executable).parent
ACC = {"full": 0.95, "half": 0.90}  # the accuracies tests/conftest.py gives two_variant_bundle
FAST = {"repeats": 5, "target_s": 0.02}  # measurement settings that keep the tests quick


@pytest.fixture(scope="module")
def bundle(two_variant_bundle):
    return bundle_mod.load(two_variant_bundle)


@pytest.fixture(scope="module")
def measured(bundle) -> list[M.Measurement]:
    return M.measure_variants(bundle, threads=2, delegate="cpu", **FAST)


class Counter:
    """A measure function that counts its calls and otherwise measures for real."""

    def __init__(self):
        self.calls = []

    def __call__(self, bundle, threads, delegate, **kw):
        self.calls.append(delegate)
        return M.measure_variants(bundle, threads, delegate, **kw)


def _m(name: str, ms: float, mem: int) -> M.Measurement:
    return M.Measurement(name, ms, ms / 2, 32, mem, mem // 3, mem // 2, mem, None, 2, "xnnpack", "cpu", "", 5, 5)


# -------------------------------------------------------------------------------------------- measuring

def test_measure_times_every_variant_at_both_batches(bundle, measured):
    assert [m.name for m in measured] == ["full", "half"]
    for m in measured:
        assert m.error is None
        assert m.ms_per_sample > 0 and m.ms_per_sample_batch > 0
        assert m.batch == 32 and m.threads == 2
        assert m.delegate == runtime.CPU and m.delegate_requested == "cpu"
        assert m.model_bytes == bundle.variant(m.name).base_path.stat().st_size
        assert m.tensor_bytes_batch > m.tensor_bytes > 0  # batch 32 holds larger activations than batch 1
        assert m.memory_bytes == m.model_bytes + m.tensor_bytes_batch + m.head_bytes
        v = bundle.variant(m.name)  # the head's training state: weights, gradients, Adam's m and v
        head = Head(v, bundle.class_capacity, bundle.train_batch, 1)
        assert m.head_bytes == 4 * sum(w.astype(np.float32).nbytes for w in head.get_weights().values()) > 0
        assert m.repeats >= 3 and m.repeats_batch >= 3
    full, half = measured
    # deterministic, order-independent memory figure: the half-width model is the smaller one
    assert half.memory_bytes < full.memory_bytes
    # a second measurement gives the same memory figures, whatever ran before
    again = M.measure_variants(bundle, 2, "cpu", **FAST)
    assert [m.memory_bytes for m in again] == [m.memory_bytes for m in measured]


def test_measurement_round_trips_through_a_dict(measured):
    for m in measured:
        assert M.Measurement.from_dict(json.loads(json.dumps(m.as_dict()))) == m
    with pytest.raises(ValueError):
        M.Measurement.from_dict({"name": "x"})


def test_a_variant_that_cannot_be_timed_is_recorded_and_never_chosen(bundle, monkeypatch):
    real = runtime.time_model

    def broken(model, *a, **kw):
        if "half" in str(model):
            raise RuntimeError("simulated: the delegate cannot take this model")
        return real(model, *a, **kw)

    monkeypatch.setattr(runtime, "time_model", broken)
    ms = M.measure_variants(bundle, 2, "cpu", **FAST)
    assert ms[0].error is None and "simulated" in ms[1].error
    c = V.choose(bundle, ms, V.Budget(max_latency_ms=1e-9))  # nothing fits: the fastest *usable* one
    assert c.name == "full"
    row = [r for r in c.table if r["variant"] == "half"][0]
    assert row["error"] and not row["within_budget"] and not row["chosen"]
    assert "simulated" in format_table(c)


def test_measure_raises_when_no_variant_can_be_timed(bundle, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(runtime, "time_model", broken)
    with pytest.raises(AutlearnError) as e:
        M.measure_variants(bundle, 2, "cpu", **FAST)
    assert e.value.code == "bad_bundle"


def test_bad_delegate_spec_is_the_callers_error(bundle):
    with pytest.raises(ValueError):
        M.measure_variants(bundle, 2, "warp-drive", **FAST)


# --------------------------------------------------------------------------------------------- choosing

def test_choose_most_accurate_within_a_latency_budget(bundle):
    # synthetic figures: the most accurate variant ('full') is the slow one
    ms = [_m("full", 2.0, 4000), _m("half", 1.0, 2000)]
    assert V.choose(bundle, ms, V.Budget(max_latency_ms=1.5)).name == "half"
    c = V.choose(bundle, ms, V.Budget(max_latency_ms=2.5))
    assert c.name == "full" and c.fits and "every variant fits" in c.reason
    c = V.choose(bundle, ms, V.Budget())
    assert c.name == "full" and "no budget" in c.reason
    # boundary: a variant exactly at the limit fits
    assert V.choose(bundle, ms, V.Budget(max_latency_ms=2.0)).name == "full"


def test_choose_with_real_measurements(bundle, measured):
    """Whichever variant this board measures as slower, a budget between the two picks the other one,
    and a budget above both picks the most accurate."""
    by = {m.name: m for m in measured}
    slow, fast = sorted(measured, key=lambda m: -m.ms_per_sample)
    if slow.ms_per_sample == fast.ms_per_sample:
        pytest.skip("both variants measured equally fast")
    c = V.choose(bundle, measured, V.Budget(max_latency_ms=fast.ms_per_sample))
    assert c.name == fast.name and c.fits
    assert "within the budget" in c.reason
    c = V.choose(bundle, measured, V.Budget(max_latency_ms=slow.ms_per_sample * 10))
    assert c.name == "full"  # the more accurate
    assert {r["variant"]: r["within_budget"] for r in c.table} == {"full": True, "half": True}
    assert by["full"].memory_bytes > by["half"].memory_bytes


def test_choose_within_a_memory_budget(bundle, measured):
    by = {m.name: m for m in measured}
    limit_mb = (by["full"].memory_bytes - 1) / (1 << 20)  # just below the full model
    c = V.choose(bundle, measured, V.Budget(max_memory_mb=limit_mb))
    assert c.name == "half" and c.fits
    c = V.choose(bundle, measured, V.Budget(max_memory_mb=by["full"].memory_bytes / (1 << 20)))
    assert c.name == "full"
    # both limits apply together
    ms = [_m("full", 1.0, 5 << 20), _m("half", 3.0, 1 << 20)]
    assert V.choose(bundle, ms, V.Budget(max_latency_ms=2.0, max_memory_mb=2.0)).fits is False
    assert V.choose(bundle, ms, V.Budget(max_latency_ms=4.0, max_memory_mb=2.0)).name == "half"


def test_impossible_budget_yields_the_fastest_and_says_so(bundle, measured):
    c = V.choose(bundle, measured, V.Budget(max_latency_ms=1e-9, max_memory_mb=1e-9))
    fastest = min(measured, key=lambda m: m.ms_per_sample)
    assert c.name == fastest.name
    assert not c.fits
    assert "no variant fits" in c.reason and fastest.name in c.reason
    assert not any(r["within_budget"] for r in c.table)
    assert [r["variant"] for r in c.table if r["chosen"]] == [fastest.name]


def test_accuracy_ties_and_missing_accuracy(two_variant_bundle, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(two_variant_bundle, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["variants"][0]["accuracy_int8"] = None  # e.g. built without held-out images
    write_manifest(root, manifest, rehash_files=True)
    b = bundle_mod.load(root)
    ms = [_m("full", 1.0, 100), _m("half", 2.0, 100)]
    assert V.choose(b, ms, V.Budget()).name == "half"  # a known accuracy beats an unknown one
    manifest["variants"][0]["accuracy_int8"] = ACC["half"]
    write_manifest(root, manifest, rehash_files=True)
    b = bundle_mod.load(root)
    assert V.choose(b, ms, V.Budget()).name == "full"  # equal accuracy: the faster one


@pytest.mark.parametrize("own, named", [
    ({"width": 0, "height": 20}, "'width'"),
    ({"color_mode": "CMYK"}, "'color_mode'"),
    ({"resize_policy": "squash"}, "'resize_policy'"),
    ({"width": 12, "height": 12}, "'fit_box'"),  # the bundle's MNIST framing box (20 px) no longer fits
    ("20x20", "key 'input' is not a JSON object"),
])
def test_a_bad_per_variant_input_is_refused_naming_the_variant_and_field(two_variant_bundle, tmp_path, own, named):
    root = tmp_path / "b"
    shutil.copytree(two_variant_bundle, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["variants"][1]["input"] = own
    write_manifest(root, manifest)
    with pytest.raises(AutlearnError) as e:
        bundle_mod.load(root)
    assert e.value.code == "bad_bundle" and "variant 'half'" in e.value.message and named in e.value.message


def test_a_variant_with_its_own_input_size_is_decoded_and_measured_at_that_size(two_variant_bundle, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(two_variant_bundle, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["variants"][1]["input"] = {"width": 24, "height": 24}
    write_manifest(root, manifest)
    b = bundle_mod.load(root)
    full, half = b.variant("full"), b.variant("half")
    assert full.input == b.input and (b.input["width"], b.input["height"]) == (28, 28)
    assert half.input == {**b.input, "width": 24, "height": 24}
    assert M.probe_shape(b, full) == (28, 28, 1) and M.probe_shape(b, half) == (24, 24, 1)
    assert [c.input for c in b.cut_variants("half")] == [half.input]  # its cuts share its input


def test_budget_validation():
    with pytest.raises(ValueError):
        V.Budget(max_latency_ms=-1)
    with pytest.raises(ValueError):
        V.Budget(max_memory_mb=0)
    with pytest.raises(ValueError):
        V.Budget(max_latency_ms=float("nan"))
    assert V.Budget().unlimited and V.Budget().describe() == "no limits"
    assert "latency ≤ 0.5 ms/sample" in V.Budget(0.5, 64).describe()


# --------------------------------------------------------------------------------------------- record

def test_record_is_reused_across_restarts_and_invalidated_by_delegate(bundle, tmp_path):
    state = tmp_path / "state"
    count = Counter()
    budget = V.Budget(max_latency_ms=1e6)
    c1 = V.choose_variant(bundle, "b1", state, 2, "cpu", budget, measure=count, **FAST)
    assert len(count.calls) == 1 and not c1.from_record and c1.name == "full"
    record = state / M.STORE_FILE
    mtime = record.stat().st_mtime_ns
    # a "restart": new call, new store object, same state directory -> no measurement
    c2 = V.choose_variant(bundle, "b1", state, 2, "xnnpack", budget, measure=count, **FAST)  # xnnpack == cpu
    assert len(count.calls) == 1 and c2.from_record
    assert c2.name == c1.name and c2.table == c1.table and c2.measured_at == c1.measured_at
    assert record.stat().st_mtime_ns == mtime
    # another delegate spec measures again (here it falls back to XNNPACK: no GPU/NNAPI library)
    c3 = V.choose_variant(bundle, "b1", state, 2, "auto", budget, measure=count, **FAST)
    assert count.calls == ["cpu", "auto"] and not c3.from_record
    # other thread counts too
    V.choose_variant(bundle, "b1", state, 1, "cpu", budget, measure=count, **FAST)
    assert len(count.calls) == 3
    # ... and both earlier records are still there
    V.choose_variant(bundle, "b1", state, 2, "cpu", budget, measure=count, **FAST)
    V.choose_variant(bundle, "b1", state, 2, "auto", budget, measure=count, **FAST)
    assert len(count.calls) == 3
    # force measures again even with a record
    c4 = V.choose_variant(bundle, "b1", state, 2, "cpu", budget, force=True, measure=count, **FAST)
    assert len(count.calls) == 4 and not c4.from_record
    assert [p.name for p in state.iterdir()] == [M.STORE_FILE]  # no temporary files left behind


def test_a_different_bundle_measures_again(two_variant_bundle, tmp_path):
    state = tmp_path / "state"
    count = Counter()
    b = bundle_mod.load(two_variant_bundle)
    V.choose_variant(b, "b1", state, 2, "cpu", V.Budget(), measure=count, **FAST)
    root = tmp_path / "other"
    shutil.copytree(two_variant_bundle, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["variants"][1]["accuracy_int8"] = 0.99  # new manifest -> new sha256 -> new record
    write_manifest(root, manifest, rehash_files=True)
    other = bundle_mod.load(root)
    c = V.choose_variant(other, "b2", state, 2, "cpu", V.Budget(), measure=count, **FAST)
    assert len(count.calls) == 2 and c.name == "half"
    # the first bundle's record is kept
    V.choose_variant(b, "b1", state, 2, "cpu", V.Budget(), measure=count, **FAST)
    assert len(count.calls) == 2


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe\x00garbage", b"[1, 2, 3]",
                                     b'{"format": 99, "records": {}}',
                                     b'{"format": 1, "records": {"x": 1}}'])
def test_corrupt_record_is_treated_as_absent(bundle, tmp_path, caplog, content):
    state = tmp_path / "state"
    state.mkdir()
    record = state / M.STORE_FILE
    record.write_bytes(content)
    count = Counter()
    with caplog.at_level(logging.WARNING, logger="autlearn.runtime.measure"):
        c = V.choose_variant(bundle, "b1", state, 2, "cpu", V.Budget(), measure=count, **FAST)
    assert len(count.calls) == 1 and c.name == "full"
    if b'"x": 1' not in content:  # every mangled file warns (an entry of the wrong type is just skipped)
        assert any("measurements" in r.getMessage() for r in caplog.records)
    data = json.loads(record.read_text())  # replaced by a valid record
    assert data["format"] == M.STORE_FORMAT and len(data["records"]) == 1
    V.choose_variant(bundle, "b1", state, 2, "cpu", V.Budget(), measure=count, **FAST)
    assert len(count.calls) == 1


def test_a_damaged_record_entry_is_measured_again(bundle, tmp_path, caplog):
    state = tmp_path / "state"
    count = Counter()
    V.choose_variant(bundle, "b1", state, 2, "cpu", V.Budget(), measure=count, **FAST)
    record = state / M.STORE_FILE
    data = json.loads(record.read_text())
    entry = next(iter(data["records"].values()))
    del entry["measurements"][0]["ms_per_sample"]
    record.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="autlearn.runtime.measure"):
        V.choose_variant(bundle, "b1", state, 2, "cpu", V.Budget(), measure=count, **FAST)
    assert len(count.calls) == 2
    assert any("damaged" in r.getMessage() for r in caplog.records)


def test_record_write_is_atomic(tmp_path, monkeypatch, measured):
    """A crash in the middle of writing leaves the previous record intact and no temporary file."""
    store = M.MeasurementStore(tmp_path / M.STORE_FILE)
    key = {"manifest_sha256": "a" * 64, "delegate": "cpu", "threads": 2}
    store.put(key, measured)
    before = (tmp_path / M.STORE_FILE).read_bytes()

    def crash(*a, **kw):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.put({**key, "threads": 1}, measured)
    assert (tmp_path / M.STORE_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [M.STORE_FILE]
    monkeypatch.undo()
    got = M.MeasurementStore(tmp_path / M.STORE_FILE).get(key)
    assert got is not None and got[0] == measured


def test_record_keeps_a_bounded_number_of_entries(tmp_path, measured):
    store = M.MeasurementStore(tmp_path / M.STORE_FILE)
    for i in range(M.MAX_RECORDS + 5):
        store.put({"manifest_sha256": f"{i:064x}"}, measured)
    data = json.loads((tmp_path / M.STORE_FILE).read_text())
    assert len(data["records"]) == M.MAX_RECORDS
    assert store.get({"manifest_sha256": f"{0:064x}"}) is None  # the oldest went first
    assert store.get({"manifest_sha256": f"{M.MAX_RECORDS + 4:064x}"}) is not None


# ---------------------------------------------------------------------------------------------- table

def test_format_table_lists_every_variant_and_marks_the_choice(bundle, tmp_path):
    c = V.choose_variant(bundle, "b1", tmp_path, 2, "cpu", V.Budget(max_latency_ms=1e-9), **FAST)
    text = format_table(c)
    lines = text.splitlines()
    header = lines[0]
    for col in ("variant", "params", "MFLOPs", "ms/sample b1", "ms/sample b32", "memory", "acc int8",
                "in budget", "chosen"):
        assert col in header
    rows = {line.split()[0]: line for line in lines[2:2 + len(bundle.variant_names)]}
    assert set(rows) == set(bundle.variant_names)
    assert rows[c.name].rstrip().endswith("*")
    assert sum(line.rstrip().endswith("*") for line in rows.values()) == 1
    for name, line in rows.items():
        assert f"{ACC[name]:.4f}" in line and line.split()[-2 if name == c.name else -1] == "no"
    assert "no variant fits" in text
    assert "delegate cpu -> xnnpack" in text
    json.dumps(c.as_dict())  # the choice travels over the control socket as JSON
