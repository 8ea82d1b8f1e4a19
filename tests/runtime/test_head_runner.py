"""The heads' signature runners (make_cpu_interpreter): no resize of an unchanged input, the stock results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autlearn.runtime.interpreter import Interpreter, make_cpu_interpreter


@pytest.fixture(scope="module")
def head(tiny_bundle) -> Path:
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    variant = next(v for v in m["variants"] if v["name"] == m["default_variant"])
    return tiny_bundle / variant["head"]


class _Spy:
    """The real interpreter wrapper, recording the shapes it is asked to resize inputs to."""

    def __init__(self, wrapper):
        self._w, self.resized = wrapper, []

    def ResizeInputTensor(self, index, shape, strict, subgraph):
        self.resized.append((index, tuple(int(d) for d in shape)))
        return self._w.ResizeInputTensor(index, shape, strict, subgraph)

    def __getattr__(self, name):
        return getattr(self._w, name)


def _feed(runner, seed=0) -> dict:
    feed = {k: np.zeros(d["shape"], d["dtype"]) for k, d in runner.get_input_details().items()}
    rng = np.random.default_rng(seed)
    feed["x"] = rng.random(feed["x"].shape).astype(np.float32)
    feed["y"] = (np.arange(len(feed["y"])) % 3).astype(np.int32)
    feed["mask"][:] = 1
    feed["active"][:3] = 1
    feed["lr"] = np.array(0.01, np.float32)
    return feed


def test_train_never_resizes_the_scalar_learning_rate_and_matches_the_stock_runner(head):
    ours = make_cpu_interpreter(head, 1)
    stock = Interpreter(model_path=str(head), num_threads=1)
    train, stock_train = ours.get_signature_runner("train"), stock.get_signature_runner("train")
    assert train.get_input_details()["lr"]["shape"].tolist() == []  # the input that crashes aarch64 builds
    spy = _Spy(train._runner._interpreter_wrapper)
    train._runner._interpreter_wrapper = spy
    feed = _feed(train)
    losses = [float(train(**feed)["loss"]) for _ in range(4)]
    stock_losses = [float(stock_train(**feed)["loss"]) for _ in range(4)]
    assert spy.resized == []  # every input already had its shape: nothing resized, a scalar least of all
    assert losses == pytest.approx(stock_losses, rel=1e-6)
    assert losses[-1] < losses[0]
    w, sw = ours.get_signature_runner("get_weights")(), stock.get_signature_runner("get_weights")()
    assert w.keys() == sw.keys() and all(np.allclose(w[k], sw[k]) for k in w)


def test_a_changed_shape_is_still_resized_once(head):
    infer = make_cpu_interpreter(head, 1).get_signature_runner("infer")
    spy = _Spy(infer._runner._interpreter_wrapper)
    infer._runner._interpreter_wrapper = spy
    d = infer.get_input_details()
    x_index, feat = d["x"]["index"], int(d["x"]["shape"][-1])
    active = np.ones(d["active"]["shape"], np.float32)
    rng = np.random.default_rng(1)
    for n in (3, 5, 5, 3):
        probs = infer(x=rng.random((n, feat)).astype(np.float32), active=active)["probs"]
        assert probs.shape[0] == n and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert spy.resized == [(x_index, (3, feat)), (x_index, (5, feat)), (x_index, (3, feat))]


def test_missing_or_unknown_inputs_get_the_stock_error(head):
    train = make_cpu_interpreter(head, 1).get_signature_runner("train")
    feed = _feed(train)
    with pytest.raises(ValueError, match="Invalid number of inputs"):
        train(**{k: v for k, v in feed.items() if k != "lr"})
    with pytest.raises(ValueError, match="Invalid Input name"):
        train(**{**{k: v for k, v in feed.items() if k != "lr"}, "rate": feed["lr"]})
