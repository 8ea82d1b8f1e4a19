"""Features of stored samples for one variant (one stem): from the content-addressed cache, else computed."""

from __future__ import annotations

import hashlib
import json
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


Got = tuple[np.ndarray, list[Sample], int, int]  # features, the samples they belong to, computed, from the cache
Item = tuple[Sample, str, int | None]  # a sample, its augmentation's name ("none": the sample itself), its seed


class _Part:
    """The rows of one kind (the samples' own features, or their copies') as with_copies collects them."""

    def __init__(self) -> None:
        self.kept: list[Sample] = []
        self.rows: list[np.ndarray] = []
        self.computed: set[str] = set()
        self.cached: set[str] = set()

    def add(self, s: Sample, v: np.ndarray, key: str, computed: bool) -> None:
        self.kept.append(s)
        self.rows.append(v)
        (self.computed if computed else self.cached).add(key)

    def got(self, feature_size: int) -> Got:
        x = np.stack(self.rows) if self.rows else np.zeros((0, feature_size), np.float32)
        return x, self.kept, len(self.computed), len(self.cached)


class FeatureSource:
    """Features of stored samples: from the cache when present, else computed by the base and cached."""

    # Decoded inputs held at once while their features are computed (then the next chunk is decoded).
    DECODED_CHUNK_BYTES = 8 << 20

    def __init__(self, bundle: Bundle, variant: Variant, extractor: FeatureExtractor, cache: FeatureCache,
                 max_pixels: int, max_file_bytes: int = 64 << 20):
        self.bundle, self.variant, self.extractor, self.cache = bundle, variant, extractor, cache
        self.max_pixels, self.max_file_bytes = max_pixels, max_file_bytes
        self.prep_version = int(variant.input.get("preprocessing_version", 1))
        self.files_read = 0  # stored samples read (hash-checked, decoded) for features missing from the cache

    def key(self, sha256: str, augmentation: str = "none") -> str:
        return feature_key(sha256, self.variant.base_sha256, self.prep_version, augmentation)

    def for_samples(self, samples: list[Sample]) -> Got:
        """Features for the samples still readable and unchanged; (features, kept samples, computed, cached)."""
        return self.with_copies(samples, [False] * len(samples), 0, 0)[0]

    def with_copies(self, samples: list[Sample], train: list[bool], copies: int, seed: int) -> tuple[Got, Got]:
        """The samples' features and those of `copies` augmented copies of each sample whose `train` flag is
        set (each copy cached under its own variant key), in one pass: a sample's features and its copies are
        neighbours in the pass, so its file is read, hash-checked and decoded once for all of them, whatever the
        number of samples, while the decoded inputs held stay bounded by the chunk. Returns (features, kept
        samples, computed, cached) of the samples and the same of the copies; a copy is kept only with its
        sample."""
        return with_copies_at([self], samples, train, copies, seed)[0]

    def input_spec(self) -> str:
        """What decoding a stored sample for this stem depends on: stems that agree decode it once for all."""
        return json.dumps([self.variant.input, self.max_pixels, self.max_file_bytes], sort_keys=True, default=str)

    def _got(self, items: list[Item], keys: list[str], found: dict[str, np.ndarray],
             computed: dict[str, np.ndarray]) -> tuple[Got, Got]:
        parts: tuple[_Part, _Part] = (_Part(), _Part())
        sample_kept = False
        for (s, name, _), k in zip(items, keys):
            v = found.get(k)
            if v is None:
                v = computed.get(k)
            if name == "none":
                sample_kept = v is not None
            if v is not None and sample_kept:
                parts[name != "none"].add(s, v, k, k in computed)
        return parts[0].got(self.variant.feature_size), parts[1].got(self.variant.feature_size)

    def _extract(self, inputs: list[np.ndarray], keys: list[str], computed: dict[str, np.ndarray]) -> None:
        """Features of a chunk of decoded inputs by the base, cached as they come (cut: int8 cache)."""
        if inputs:
            chunk = dict(zip(keys, self.extractor(np.stack(inputs))))
            self.cache.put_many(chunk, self.extractor.cache_quant)
            computed.update(chunk)
            inputs.clear()
            keys.clear()

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


def with_copies_at(sources: list[FeatureSource], samples: list[Sample], train: list[bool], copies: int,
                   seed: int) -> list[tuple[Got, Got]]:
    """FeatureSource.with_copies for several stems (a round training more than one cut) in one pass: a file is
    read, hash-checked and decoded once, and each augmented copy made once, for every stem that misses its
    features (stems whose decoding agrees, `input_spec`); each stem's decoded inputs are held a chunk at a time.
    One (samples', copies') result per source, in order."""
    items: list[Item] = []
    for s, t in zip(samples, train, strict=True):
        items.append((s, "none", None))
        if t and copies > 0:
            items.extend((s, name, vseed) for name, vseed in augment.image_variants(copies, seed, s.sha256))
    keys = [[src.key(s.sha256, name) for s, name, _ in items] for src in sources]
    found = [src.cache.get_many(k) for src, k in zip(sources, keys)]
    computed: list[dict[str, np.ndarray]] = [{} for _ in sources]
    chunks: list[tuple[list[np.ndarray], list[str]]] = [([], []) for _ in sources]
    pending: list[set[str]] = [set() for _ in sources]
    specs = [src.input_spec() for src in sources]
    last: tuple[tuple[str, str] | None, dict[str, np.ndarray | None]] = (None, {})  # the sample decoded last
    for j, (s, _, vseed) in enumerate(items):
        need = [i for i in range(len(sources))
                if not any(keys[i][j] in d for d in (found[i], computed[i], pending[i]))]
        if not need:
            continue
        if last[0] != (s.path, s.sha256):  # a sample's items are neighbours: one read for all of them
            last = ((s.path, s.sha256), {})
        made: dict[str, np.ndarray] = {}  # this item's input, per input spec
        for i in need:
            src, spec = sources[i], specs[i]
            if spec not in last[1]:
                last[1][spec] = src._decode(s)
                src.files_read += 1
            x = last[1][spec]
            if x is None:
                continue
            if spec not in made:
                made[spec] = x if vseed is None else augment.augment_image(x, vseed)
            inputs, todo = chunks[i]
            inputs.append(made[spec])
            todo.append(keys[i][j])
            pending[i].add(keys[i][j])
            if len(inputs) >= FEATURE_CHUNK or len(inputs) * x.nbytes >= src.DECODED_CHUNK_BYTES:
                src._extract(inputs, todo, computed[i])  # 500 decoded photos at 160 px would be 150 MB
    for i, src in enumerate(sources):
        src._extract(*chunks[i], computed[i])
    return [src._got(items, keys[i], found[i], computed[i]) for i, src in enumerate(sources)]
