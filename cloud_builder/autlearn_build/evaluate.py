"""Measurements on converted models with the LiteRT interpreter (what the board runs): per-sample latency
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
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(detail["dtype"])


def _dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return q.astype(np.float32)
    scale, zero_point = detail["quantization"]
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
        return np.concatenate(out) if out else np.zeros((0, self.output["shape"][-1]), np.float32)

    def latency_ms(self, x: np.ndarray, repeats: int = 60, warmup: int = 10) -> float:
        """Median time of one batch invoke divided by the batch size (ms per sample)."""
        batch = x[:self.batch]
        if len(batch) < self.batch:
            batch = np.resize(batch, (self.batch, *x.shape[1:]))
        q = _quantize(batch, self.input)
        for _ in range(warmup):
            self.invoke_quantized(q)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.invoke_quantized(q)
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1000.0 / self.batch)


def head_probs(head_model: bytes, features: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Class probabilities from the head's `infer` signature."""
    interpreter = _interpreter(head_model)
    infer = interpreter.get_signature_runner("infer")
    return infer(x=features.astype(np.float32), active=active.astype(np.float32))["probs"]


def accuracy(probs_or_logits: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    return float(np.mean(np.argmax(probs_or_logits, axis=-1) == y))
