"""The thread that answers the slow requests (predict, bench), so that the control loop never waits for them."""

from __future__ import annotations

import base64
import binascii
import logging
import queue
import threading
from typing import Any, Callable

import numpy as np

from ..errors import AutlearnError
from ..learning.featcache import FeatureCache
from ..learning.features import FeatureExtractor
from ..learning.head import Head, active_mask, load_weights
from ..learning.cuts import cut_of_row, cuts_of
from ..learning.featsource import FeatureSource
from ..learning.store import Store

log = logging.getLogger(__name__)

# done(ok, value): value is the result when ok, else the AutlearnError to answer with. Called on this thread.
Done = Callable[[bool, Any], None]


class Answerer:
    """Owns its interpreters, its SQLite handles and the head kept for predictions; jobs run one at a time.

    Cross-thread fields: `redelegate` is set by anyone (a device came or went) and cleared only here;
    `benching` is set and cleared only here and read by the scheduler (training waits while bench measures);
    `delegate` (the base model's delegate choice shown in status) is written only here."""

    COMMANDS = ("predict", "bench")
    MAX_WAITING = 64  # requests queued here at most (each up to 1 MiB): past it, `busy`

    def __init__(self, service) -> None:
        self.svc = service
        self._jobs: queue.Queue = queue.Queue()
        self.redelegate = threading.Event()
        self.benching = threading.Event()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self.delegate = None
        self._thread: threading.Thread | None = None

    def _new_extractor(self) -> FeatureExtractor:
        c = self.svc.config
        return FeatureExtractor(self.svc.variant, c["model.threads"], c["model.delegate"])

    def start(self) -> None:
        """Start the thread; returns once it has made its interpreter (on that thread), so `delegate` is known."""
        self._thread = threading.Thread(target=self._run, name="autlearn-answerer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    def stop(self, timeout: float = 30.0) -> None:
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, cmd: str, args: dict, done: Done) -> None:
        """Queue a request; `done` is called with its answer when it has run."""
        if self._jobs.qsize() >= self.MAX_WAITING:
            raise AutlearnError("busy", f"{self.MAX_WAITING} predict/bench requests are already waiting; "
                                        "send this one when they have been answered")
        self._jobs.put((cmd, args, done))

    def call(self, cmd: str, args: dict, timeout: float | None = None) -> Any:
        """Run a request on this thread and wait for its answer (in-process callers and tests)."""
        box: list = []
        finished = threading.Event()

        def done(ok: bool, value: Any) -> None:
            box.append((ok, value))
            finished.set()

        self.submit(cmd, args, done)
        if not finished.wait(timeout):
            raise AutlearnError("busy", f"{cmd} did not finish within {timeout} s")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        svc = self.svc
        try:
            self._extractor = self._new_extractor()
        except BaseException as e:
            self._failed = e
            self._ready.set()
            return
        self.delegate = self._extractor.choice
        self._ready.set()
        self.store = Store(svc.paths.db)
        self.cache = FeatureCache(svc.paths.feature_cache, int(svc.config["cache.max_mb"] * (1 << 20)),
                                  svc.cache_stats)
        self.features = FeatureSource(svc.bundle, svc.variant, self._extractor, self.cache,
                                      svc.config["data.max_pixels"], int(svc.config["data.max_file_mb"] * (1 << 20)))
        self._head: tuple[int, Head, FeatureSource] | None = None
        self._keyboard = None
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                cmd, args, done = job
                try:
                    self._maybe_redelegate()
                    result = self.predict(args) if cmd == "predict" else self.bench(args)
                except AutlearnError as e:
                    done(False, e)
                except Exception as e:  # one request never takes the thread down
                    log.exception("%s failed", cmd)
                    done(False, AutlearnError("internal", f"{type(e).__name__}: {e}"))
                else:
                    done(True, result)
        finally:
            self.store.close()
            self.cache.close()

    def _maybe_redelegate(self) -> None:
        if not self.redelegate.is_set():
            return
        self.redelegate.clear()
        self._extractor = self._new_extractor()
        self.features.extractor = self._extractor
        self._head = None  # a version at a deeper cut makes its stem's interpreter again
        if self._keyboard is not None:
            self._keyboard.learner.extractor = self._extractor
        self.delegate = self._extractor.choice
        self.svc.emit("delegate", {"in_use": self.delegate.in_use, "reason": self.delegate.reason})

    def _current_version(self) -> int:
        return int(self.store.get_meta(self.svc.current_key()))

    # ------------------------------------------------------------------ bench
    def bench(self, args: dict) -> dict:
        """Time every variant on this board again. No round starts meanwhile, and one held paused stays held, so
        that training does not skew the timings; a round computing now makes it `busy`."""
        self.benching.set()
        try:
            activity = self.svc.activity()
            if activity in ("training", "ingesting", "importing"):
                what = "a round is computing" if activity == "training" else f"the daemon is {activity}"
                raise AutlearnError("busy", f"{what}; bench measures when that has finished (a round held by "
                                            "'autlearnctl pause' does not stand in the way)")
            choice = self.svc.choose_variant(force=True)
        finally:
            self.benching.clear()
        in_use = self.svc.variant.name
        choice["in_use"] = in_use
        choice["note"] = (f"variant {choice['name']!r} would be chosen now; restart the daemon to switch"
                          if choice["name"] != in_use else f"variant {in_use!r} in use is still the choice")
        return choice

    # ------------------------------------------------------------------ predict
    def predict(self, args: dict) -> dict:
        svc = self.svc
        if svc.bundle.task == "next_word":
            return self._predict_text(args)
        if "text" in args:
            raise AutlearnError("bad_argument", "this bundle classifies images; 'text' needs a keyboard bundle")
        files = args.get("files")
        if not isinstance(files, list) or not files:
            raise AutlearnError("bad_argument", "'files' must be a non-empty list of {name, data} objects")
        version = args.get("version", self._current_version())
        if not isinstance(version, int) or isinstance(version, bool):
            raise AutlearnError("bad_argument", "'version' must be an integer head version")
        top = args.get("top", 3)
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            raise AutlearnError("bad_argument", "'top' must be a positive integer")
        head, features = self._head_for(version)
        feats, cached = [], []
        for i, f in enumerate(files):
            if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(f.get("data"), str):
                raise AutlearnError("bad_argument", f"files[{i}] must be an object with string 'name' and 'data'")
            try:
                data = base64.b64decode(f["data"], validate=True)
            except (binascii.Error, ValueError):
                raise AutlearnError("bad_argument", f"files[{i}] ({f['name']}): 'data' is not base64") from None
            vec, hit = features.for_bytes(data, f["name"])
            feats.append(vec)
            cached.append(hit)
        slots = self.store.classes(svc.bundle_id)
        names = {slot: name for name, slot in slots.items()}
        probs = head.predict(np.stack(feats), active_mask(svc.bundle.class_capacity, names))
        out = []
        for f, p, hit in zip(files, probs, cached):
            order = np.argsort(-p)[:min(top, len(names))]
            out.append({"name": f["name"], "label": names[int(order[0])], "cached": hit,
                        "top": [{"label": names[int(k)], "p": round(float(p[k]), 6)} for k in order]})
        return {"version": version, "predictions": out}

    def _predict_text(self, args: dict) -> dict:
        svc = self.svc
        text = args.get("text")
        if not isinstance(text, str):
            raise AutlearnError("bad_argument", "a keyboard bundle predicts from 'text' (a string: what was typed)")
        version = args.get("version", self._current_version())
        top = args.get("top", 3)
        if not isinstance(version, int) or isinstance(version, bool) or not isinstance(top, int) or top < 1:
            raise AutlearnError("bad_argument", "'version' and 'top' must be positive integers")
        self._row(version)
        if self._keyboard is None:
            from ..learning.kbpredict import KeyboardPredictor
            from ..learning.keyboard import KeyboardLearner
            self._keyboard = KeyboardPredictor(KeyboardLearner(
                svc.bundle, svc.bundle_id, svc.variant, self.store, self._extractor, self.cache, svc.paths.heads,
                svc.config["model.threads"], svc.config["training.holdout_fraction"]))
        return {"version": version, **self._keyboard.suggest(text, version, top)}

    def _row(self, version: int) -> dict:
        row = self.store.head(version)
        if row is None or row["bundle"] != self.svc.bundle_id:
            raise AutlearnError("not_found", f"head version {version} does not exist for the installed bundle")
        return row

    def _head_for(self, version: int) -> tuple[Head, FeatureSource]:
        """The head of `version` and the features it reads: the cut it was trained at (its stem, its head)."""
        if self._head is not None and self._head[0] == version:
            return self._head[1], self._head[2]
        row = self._row(version)
        svc = self.svc
        cut = cut_of_row(cuts_of(svc.bundle, svc.variant.name), row, svc.variant.name)
        features = self.features
        if cut.depth:
            features = FeatureSource(svc.bundle, cut.variant, FeatureExtractor(
                cut.variant, svc.config["model.threads"], svc.config["model.delegate"]), self.cache,
                svc.config["data.max_pixels"], int(svc.config["data.max_file_mb"] * (1 << 20)))
        head = Head(cut.variant, svc.bundle.class_capacity, svc.bundle.train_batch, svc.config["model.threads"])
        head.set_weights(load_weights(svc.paths.heads / row["file"]))
        self._head = (version, head, features)
        return head, features
