"""The frozen base model as a feature extractor (int8 LiteRT, through the chosen delegate)."""

from __future__ import annotations

import numpy as np

from ..errors import AutlearnError
from ..runtime.bundle import Variant
from ..runtime.interpreter import DelegateChoice, make_interpreter

BATCH_INPUT_ELEMENTS = 1 << 20  # input values per invoke at most (64 MNIST digits; 13 photos at 160x160x3)


class FeatureExtractor:
    """Turns preprocessed inputs [N, H, W, C] into features [N, F]. Not thread-safe: one per thread."""

    def __init__(self, variant: Variant, threads: int, delegate: str = "cpu", batch: int = 64):
        self.variant = variant
        self.interp, self.delegate = make_interpreter(variant.base_path, threads, delegate)
        self._in = self.interp.get_input_details()[0]
        self._out = self.interp.get_output_details()[0]
        self._batch = batch
        self._size = None
        self.cache_quant = self._cache_quant()

    def _cache_quant(self) -> tuple[float, int] | None:
        """(scale, zero point) of an int8 base's output: the feature cache stores the activation at the cut as
        those int8 values (featcache.py); None (a float output) stores float32. A variant may declare them
        (`cache_quantization`, written by the builder); a declaration the base's tensor contradicts is refused."""
        scale, zero = self._out["quantization"] if self._out["dtype"] == np.int8 else (0.0, 0)
        quant = (float(scale), int(zero)) if scale else None
        declared = self.variant.info.get("cache_quantization")
        if declared is not None:
            d_scale = declared.get("scale") if isinstance(declared, dict) else None
            if quant is None or not isinstance(d_scale, (int, float)) or abs(d_scale - quant[0]) > 1e-6 * quant[0] \
                    or declared.get("zero_point") != quant[1]:
                raise AutlearnError("bad_bundle", f"variant {self.variant.name}: 'cache_quantization' {declared!r} "
                                                  f"does not match the base's output quantisation {quant!r}")
        return quant

    @property
    def choice(self) -> DelegateChoice:
        return self.delegate

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self._in["dtype"]
        if dtype == np.float32:
            return x.astype(np.float32)
        scale, zero = self._in["quantization"]
        if not scale:  # integer input that is not quantised (token ids)
            return x.astype(dtype)
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if self._out["dtype"] == np.float32:
            return y
        scale, zero = self._out["quantization"]
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = []
        # Large inputs (photos) get smaller batches: the interpreter's arena grows with the batch, and a MobileNet
        # at 160 px holds ~1 MB of activations per image. MNIST-sized inputs keep the full batch.
        batch = max(1, min(self._batch, BATCH_INPUT_ELEMENTS // max(1, int(np.prod(x.shape[1:])))))
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            if self._size != len(chunk):
                self.interp.resize_tensor_input(self._in["index"], [len(chunk), *chunk.shape[1:]])
                self.interp.allocate_tensors()
                self._size = len(chunk)
            self.interp.set_tensor(self._in["index"], self._quantize(chunk))
            self.interp.invoke()
            out.append(self._dequantize(self.interp.get_tensor(self._out["index"])).copy())
        if not out:
            return np.zeros((0, self.variant.feature_size), np.float32)
        return np.concatenate(out).reshape(len(x), -1)
