"""Measurements on converted models with the LiteRT interpreter, as the board runs them.

Measurements on converted models with the LiteRT interpreter (what the board runs): per-sample latency
of the int8 base, base features, head predictions and accuracy."""

from __future__ import annotations

import time

import numpy as np

LATENCY_BATCH = 50
LATENCY_THREADS = 2


def _interpreter(model: bytes, num_threads: int = LATENCY_THREADS):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=model, num_threads=num_threads)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if detail["dtype"] == np.float32 or not scale:  # float, or an unquantised integer input (token ids)
        return x.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(detail["dtype"])


def _dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if detail["dtype"] == np.float32 or not scale:
        return q.astype(np.float32)
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


class BaseRunner:
    """Runs a base model on float images in fixed batches (the last one padded)."""

    def __init__(self, model: bytes, batch: int = LATENCY_BATCH, num_threads: int = LATENCY_THREADS):
        self.interpreter = _interpreter(model, num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = batch
        shape = list(self.input["shape"])
        shape[0] = batch
        self.interpreter.resize_tensor_input(self.input["index"], shape)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def invoke_quantized(self, q: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], q)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def features(self, x: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(x), self.batch):
            chunk = x[start:start + self.batch]
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)])
            out.append(_dequantize(self.invoke_quantized(_quantize(chunk, self.input)), self.output)[:n])
        return np.concatenate(out) if out else np.zeros((0, *self.output["shape"][1:]), np.float32)

    def latency_ms(self, x: np.ndarray, repeats: int = 60, warmup: int = 15, block: int = 5) -> float:
        """Per-sample time of a batch invoke (ms): `repeats` timed invokes in blocks of `block`; the fastest
        block's mean divided by the batch size. The minimum (as `timeit` does) is what the model costs when
        nothing else competes for the cores; a median wanders with the machine's other load."""
        batch = x[:self.batch]
        if len(batch) < self.batch:
            batch = np.resize(batch, (self.batch, *x.shape[1:]))
        q = _quantize(batch, self.input)
        for _ in range(warmup):
            self.invoke_quantized(q)
        block = max(1, min(block, repeats))
        best = float("inf")
        for _ in range(max(1, repeats // block)):
            t0 = time.perf_counter()
            for _ in range(block):
                self.invoke_quantized(q)
            best = min(best, (time.perf_counter() - t0) / block)
        return float(best * 1000.0 / self.batch)


def head_probs(head_model: bytes, features: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Class probabilities from the head's `infer` signature."""
    interpreter = _interpreter(head_model)
    infer = interpreter.get_signature_runner("infer")
    return infer(x=features.astype(np.float32), active=active.astype(np.float32))["probs"]


def accuracy(probs_or_logits: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    return float(np.mean(np.argmax(probs_or_logits, axis=-1) == y))


def numpy_head_probs(weights: dict[str, np.ndarray], features: np.ndarray, active: np.ndarray,
                     mask_negative: float = 1e4) -> np.ndarray:
    """The image head's `infer` in numpy (float64): ReLU(x·w0 + b0)·w1 + b1, inactive classes masked."""
    x = np.asarray(features, np.float64)
    hidden = np.maximum(x @ weights["w0"] + weights["b0"], 0.0)
    logits = hidden @ weights["w1"] + weights["b1"] + (np.asarray(active, np.float64) - 1.0) * mask_negative
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
