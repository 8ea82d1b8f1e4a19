"""Features of stored samples for one variant (one stem): from the content-addressed cache, else computed."""

from __future__ import annotations

import contextlib
import hashlib
import logging

import numpy as np

from ..durable import read_regular_file
from ..errors import AutlearnError
from ..intake import augment, imaging
from ..intake.ingest import shown
from ..runtime.bundle import Bundle, Variant
from .featcache import FeatureCache, feature_key
from .features import FeatureExtractor
from .store import Sample

log = logging.getLogger(__name__)

# Inputs decoded and run through the base at a time when features are missing (memory: 1,024 28×28 inputs ≈ 3 MB).
FEATURE_CHUNK = 1024


def read_sample(path: str, max_bytes: int) -> bytes | None:
    """A stored sample's bytes as a round reads them again, or None (logged) when the file is gone, is no
    longer a regular file (a FIFO put in its place would block the worker forever) or grew past the limit
    (it is not read whole: the next scan judges it again)."""
    try:
        data, _ = read_regular_file(path, max_bytes)
    except OSError as e:
        log.info("sample %s cannot be read again (%s); it waits for the next scan", shown(path), e.strerror or e)
        return None
    if len(data) > max_bytes:
        log.info("sample %s grew past data.max_file_mb since it was ingested; it waits for the next scan",
                 shown(path))
        return None
    return data


class FeatureSource:
    """Features of stored samples: from the cache when present, else computed by the base and cached."""

    # Decoded inputs kept inside `sharing_inputs` for the round's augmented copies (a file is read once a round).
    SHARED_INPUT_BYTES = 8 << 20
    # Decoded inputs held at once while their features are computed (then the next chunk is decoded).
    DECODED_CHUNK_BYTES = 8 << 20

    def __init__(self, bundle: Bundle, variant: Variant, extractor: FeatureExtractor, cache: FeatureCache,
                 max_pixels: int, max_file_bytes: int = 64 << 20):
        self.bundle, self.variant, self.extractor, self.cache = bundle, variant, extractor, cache
        self.max_pixels, self.max_file_bytes = max_pixels, max_file_bytes
        self.prep_version = int(variant.input.get("preprocessing_version", 1))
        self._shared: dict[str, np.ndarray] | None = None
        self._shared_bytes = 0

    @contextlib.contextmanager
    def sharing_inputs(self):
        """Inside the block an input decoded for its features is kept (up to SHARED_INPUT_BYTES in all) and
        reused for the augmented copies: a new file is read, hash-checked and decoded once per round, not once
        per copy. Released when the block ends."""
        self._shared, self._shared_bytes = {}, 0
        try:
            yield
        finally:
            self._shared, self._shared_bytes = None, 0

    def key(self, sha256: str, augmentation: str = "none") -> str:
        return feature_key(sha256, self.variant.base_sha256, self.prep_version, augmentation)

    def for_samples(self, samples: list[Sample]) -> tuple[np.ndarray, list[Sample], int, int]:
        """Features for the samples still readable and unchanged; (features, kept samples, computed, cached)."""
        return self.for_items([(s, "none", None) for s in samples])

    def augmented(self, samples: list[Sample], copies: int, seed: int) -> tuple[np.ndarray, list[Sample], int, int]:
        """Features of up to `copies` augmented copies per sample, each cached under its own variant key."""
        items = [(s, name, vseed) for s in samples for name, vseed in augment.image_variants(copies, seed, s.sha256)]
        return self.for_items(items)

    def for_items(self, items: list[tuple[Sample, str, int | None]]) -> tuple[np.ndarray, list[Sample], int, int]:
        keys = [self.key(s.sha256, name) for s, name, _ in items]
        found = self.cache.get_many(keys)
        computed: dict[str, np.ndarray] = {}
        inputs, todo_keys, pending = [], [], set()

        def extract() -> None:  # a chunk at a time: 500 decoded photos at 160 px would be 150 MB of inputs
            if inputs:
                chunk = dict(zip(todo_keys, self.extractor(np.stack(inputs))))
                self.cache.put_many(chunk, self.extractor.cache_quant)  # cut: int8 cache
                computed.update(chunk)
                inputs.clear()
                todo_keys.clear()

        for (s, _, vseed), k in zip(items, keys):
            if k in found or k in computed or k in pending:
                continue
            x = self._read(s)
            if x is not None:
                inputs.append(x if vseed is None else augment.augment_image(x, vseed))
                todo_keys.append(k)
                pending.add(k)
                if len(inputs) >= FEATURE_CHUNK or len(inputs) * x.nbytes >= self.DECODED_CHUNK_BYTES:
                    extract()
        extract()
        kept, rows = [], []
        for (s, _, _), k in zip(items, keys):
            v = found.get(k)
            if v is None:
                v = computed.get(k)
            if v is not None:
                kept.append(s)
                rows.append(v)
        x = np.stack(rows) if rows else np.zeros((0, self.variant.feature_size), np.float32)
        return x, kept, len(computed), len(found)

    def _read(self, s: Sample) -> np.ndarray | None:
        shared = self._shared
        if shared is not None and s.sha256 in shared:
            return shared[s.sha256]
        x = self._decode(s)
        if x is not None and shared is not None and self._shared_bytes + x.nbytes <= self.SHARED_INPUT_BYTES:
            shared[s.sha256] = x
            self._shared_bytes += x.nbytes
        return x

    def _decode(self, s: Sample) -> np.ndarray | None:
        data = read_sample(s.path, self.max_file_bytes)
        if data is None or hashlib.sha256(data).hexdigest() != s.sha256:
            log.info("sample %s changed since it was ingested; it waits for the next scan", shown(s.path))
            return None
        try:
            return imaging.load_input(data, s.path, self.variant.input, self.max_pixels)
        except AutlearnError as e:
            log.warning("%s", shown(e.message))
            return None

    def for_bytes(self, data: bytes, name: str) -> tuple[np.ndarray, bool]:
        """Features of one file's bytes, through the cache (the inference–training cache)."""

        key = self.key(hashlib.sha256(data).hexdigest())
        found = self.cache.get_many([key])
        if key in found:
            return found[key], True
        x = imaging.load_input(data, name, self.variant.input, self.max_pixels)
        f = self.extractor(x[None])[0]
        self.cache.put_many({key: f}, self.extractor.cache_quant)  # cut: int8 cache
        return f, False
