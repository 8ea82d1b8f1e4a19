"""The daemon's API in one object. Transports (the ZeroMQ server, tests) are thin adapters over it.

Threads: the caller's thread answers requests (status never waits for training); one worker thread owns
ingestion and training rounds. Each thread has its own interpreters and SQLite handles.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import queue
import threading
import time
from typing import Any, Callable

import numpy as np

from . import __version__, bundle as bundle_mod
from .config import Config
from .errors import AutlearnError
from .featcache import FeatureCache, Stats
from .features import FeatureExtractor
from .head import Head, load_weights, save_weights
from .engine import Engine, current_key
from .learner import FeatureSource
from .paths import Paths
from .protocol import PROTOCOL_VERSION
from .runtime import RUNTIME
from .store import Store

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict], None]


class Service:
    def __init__(self, config: Config, paths: Paths, emit: EventSink | None = None):
        self.config = config
        self.paths = paths
        self._emit = emit or (lambda name, data: None)
        self._jobs: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state = {"activity": "starting", "round": None, "last_round": None, "last_scan": None,
                       "last_error": None}
        self._started = time.time()
        self._cache_stats = Stats()
        self._worker: threading.Thread | None = None
        self._predictor: tuple[int, Head] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.paths.create()
        self.store = Store(self.paths.db)
        self.store.fail_unfinished_rounds()
        source = self.config["model.bundle"]
        if source:
            try:
                bundle_mod.install(source, self.paths.bundle)
            except AutlearnError as e:
                if not (self.paths.bundle / "manifest.json").exists():
                    raise
                log.error("refused bundle %s, keeping the installed one: %s", source, e.message)
        self.bundle = bundle_mod.load(self.paths.bundle)
        self.bundle_id = bundle_mod.sha256_file(self.paths.bundle / "manifest.json")[:16]
        self.variant = self.bundle.variant(self.config["model.variant"])
        self.store.ensure_public_classes(self.bundle_id, self.bundle.labels)
        self.cache = self._open_cache()
        self.extractor = FeatureExtractor(self.variant, self.config["model.threads"], self.config["model.delegate"])
        self.features = FeatureSource(self.bundle, self.variant, self.extractor, self.cache,
                                      self.config["data.max_pixels"])
        self._ensure_initial_head()
        self._worker = threading.Thread(target=self._work, name="autlearn-worker", daemon=True)
        self._worker.start()
        self._set(activity="idle")
        log.info("ready: bundle %s variant %s, head v%d, %s (%s)", self.bundle_id, self.variant.name,
                 self.current_version(), RUNTIME, self.extractor.choice.in_use)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._jobs.put(None)
        if self._worker is not None:
            self._worker.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _open_cache(self) -> FeatureCache:
        return FeatureCache(self.paths.feature_cache, int(self.config["cache.max_mb"] * (1 << 20)), self._cache_stats)

    def _ensure_initial_head(self) -> None:
        if self.store.get_meta(self._current_key()) is not None:
            return
        head = Head(self.variant, self.bundle.class_capacity, self.bundle.train_batch, 1)
        version = self.store.next_head_version()
        fname = f"head-v{version}.npz"
        save_weights(head.get_weights(), self.paths.heads / fname)
        self.store.add_head(self.bundle_id, self.variant.name, "initial", fname)
        self.store.set_meta(self._current_key(), str(version))

    def _current_key(self) -> str:
        return current_key(self.bundle_id, self.variant.name)

    def current_version(self) -> int:
        return int(self.store.get_meta(self._current_key()))

    def _set(self, **kw: Any) -> None:
        with self._lock:
            self._state.update(kw)

    def _get(self) -> dict:
        with self._lock:
            return dict(self._state)

    # ------------------------------------------------------------------ worker thread
    def request_scan(self) -> None:
        self._jobs.put(("scan", "files changed"))

    def _work(self) -> None:
        engine = Engine(self.config, self.paths, self.bundle, self.bundle_id, self.variant, self._cache_stats)
        try:
            while not self._stop.is_set():
                job = self._jobs.get()
                if job is None:
                    break
                kind, trigger = job
                try:
                    if kind == "scan":
                        self._scan(engine)
                        if engine.round_due():
                            self._round(engine, "new samples")
                    elif kind == "round":
                        self._round(engine, trigger)
                except Exception as e:  # a job's failure never takes the daemon down
                    log.exception("%s job failed", kind)
                    self._set(activity="idle", round=None, last_error=f"{kind}: {e}")
                    self._emit("error", {"job": kind, "message": str(e)})
        finally:
            engine.close()

    def _scan(self, engine: Engine) -> None:
        self._set(activity="ingesting")
        report = engine.scan()
        self._set(activity="idle", last_scan={**report.as_dict(), "time": time.time()})
        if report.added or report.quarantined or report.removed or report.waiting:
            self._emit("import", report.as_dict())

    def _round(self, engine: Engine, trigger: str) -> None:
        self._set(activity="training", round={"trigger": trigger, "started": time.time(), "step": "features"})

        def progress(name: str, data: dict) -> None:
            with self._lock:
                if self._state["round"] is not None:
                    self._state["round"]["step"] = name
            self._emit(name, data)

        result = engine.round(trigger, progress, self._stop.is_set)
        self._set(activity="idle", round=None, last_round=result.as_dict())

    # ------------------------------------------------------------------ API (called from the request thread)
    def status(self, args: dict) -> dict:
        st = self._get()
        version = self.current_version()
        head = self.store.head(version) or {}
        initial = [h for h in self.store.heads(self.bundle_id) if h["status"] == "initial"]
        return {
            "daemon": {"version": __version__, "protocol": PROTOCOL_VERSION, "pid": os.getpid(),
                       "uptime_s": round(time.time() - self._started, 3), "runtime": RUNTIME},
            "activity": st["activity"],
            "why_not_training": self._why_not_training(st),
            "round": st["round"],
            "last_round": st["last_round"],
            "last_scan": st["last_scan"],
            "last_error": st["last_error"],
            "bundle": {"id": self.bundle_id, "task": self.bundle.task, "variant": self.variant.name,
                       "labels": len(self.bundle.labels), "class_capacity": self.bundle.class_capacity},
            "delegate": {"requested": self.extractor.choice.requested, "in_use": self.extractor.choice.in_use,
                         "reason": self.extractor.choice.reason},
            "classes": sorted(self.store.classes(self.bundle_id), key=lambda n: self.store.classes(self.bundle_id)[n]),
            "samples": self.store.sample_counts(),
            "head": {"version": version, "status": head.get("status"), "accuracy": head.get("accuracy"),
                     "previous_accuracy": head.get("previous_accuracy"),
                     "initial_version": initial[0]["version"] if initial else None},
            "cache": self.cache.summary(),
        }

    def _why_not_training(self, st: dict) -> str:
        if st["activity"] == "training":
            return "training now"
        new = self.store.count_new()
        need = self.config["training.min_new_samples"]
        if not self.config["training.auto"]:
            return "automatic rounds are off (training.auto = false); 'autlearnctl train' starts one"
        if new < need:
            return f"waiting for new samples: {new} of {need} needed to start a round"
        return "a round is about to start"

    def train(self, args: dict) -> dict:
        if self._stop.is_set():
            raise AutlearnError("busy", "the daemon is stopping")
        running = self._get()["activity"] == "training"
        self._jobs.put(("scan", "before a requested round"))
        self._jobs.put(("round", "requested"))
        return {"queued": True, "running_round": running}

    def versions(self, args: dict) -> dict:
        return {"current": self.current_version(), "versions": self.store.heads(self.bundle_id)}

    def history(self, args: dict) -> dict:
        limit = args.get("limit", 20)
        if not isinstance(limit, int) or limit < 1:
            raise AutlearnError("bad_argument", "'limit' must be a positive integer")
        return {"rounds": self.store.rounds(limit)}

    def predict(self, args: dict) -> dict:
        files = args.get("files")
        if not isinstance(files, list) or not files:
            raise AutlearnError("bad_argument", "'files' must be a non-empty list of {name, data} objects")
        version = args.get("version", self.current_version())
        if not isinstance(version, int) or isinstance(version, bool):
            raise AutlearnError("bad_argument", "'version' must be an integer head version")
        top = args.get("top", 3)
        if not isinstance(top, int) or top < 1:
            raise AutlearnError("bad_argument", "'top' must be a positive integer")
        head = self._head_for(version)
        feats, cached = [], []
        for i, f in enumerate(files):
            if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(f.get("data"), str):
                raise AutlearnError("bad_argument", f"files[{i}] must be an object with string 'name' and 'data'")
            try:
                data = base64.b64decode(f["data"], validate=True)
            except (binascii.Error, ValueError):
                raise AutlearnError("bad_argument", f"files[{i}] ({f['name']}): 'data' is not base64") from None
            vec, hit = self.features.for_bytes(data, f["name"])
            feats.append(vec)
            cached.append(hit)
        slots = self.store.classes(self.bundle_id)
        names = {slot: name for name, slot in slots.items()}
        active = np.zeros(self.bundle.class_capacity, np.float32)
        active[list(names)] = 1.0
        probs = head.predict(np.stack(feats), active)
        out = []
        for f, p, hit in zip(files, probs, cached):
            order = np.argsort(-p)[:min(top, len(names))]
            out.append({"name": f["name"], "label": names[int(order[0])], "cached": hit,
                        "top": [{"label": names[int(k)], "p": round(float(p[k]), 6)} for k in order]})
        return {"version": version, "predictions": out}

    def _head_for(self, version: int) -> Head:
        if self._predictor is not None and self._predictor[0] == version:
            return self._predictor[1]
        row = self.store.head(version)
        if row is None or row["bundle"] != self.bundle_id:
            raise AutlearnError("not_found", f"head version {version} does not exist for the installed bundle")
        head = Head(self.variant, self.bundle.class_capacity, self.bundle.train_batch, self.config["model.threads"])
        head.set_weights(load_weights(self.paths.heads / row["file"]))
        self._predictor = (version, head)
        return head

    COMMANDS = ("status", "train", "predict", "versions", "history")

    def handle(self, cmd: str, args: dict) -> Any:
        if cmd not in self.COMMANDS:
            raise AutlearnError("unknown_command", f"unknown command {cmd!r} (known: {', '.join(self.COMMANDS)})")
        return getattr(self, cmd)(args)

    def status_line(self) -> str:
        st = self._get()
        return f"{st['activity']}; head v{self.current_version()}"
