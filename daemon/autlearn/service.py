"""The daemon's API in one object. Transports (the ZeroMQ server, tests) are thin adapters over it.

Threads: the caller's thread answers requests (status never waits for training); one worker thread owns
ingestion and training rounds. Each thread has its own interpreters and SQLite handles.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import errno
import logging
import os
import queue
import shutil
import sqlite3
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


def _disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(e, sqlite3.OperationalError) and "full" in str(e)


class Service:
    def __init__(self, config: Config, paths: Paths, emit: EventSink | None = None):
        self.config = config
        self.paths = paths
        self._emit = emit or (lambda name, data: None)
        self._jobs: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.tick_soon = threading.Event()  # set when a scan ends: the server loop ticks at once, not in 0.5 s
        self._lock = threading.Lock()
        self._state = {"activity": "starting", "round": None, "last_round": None, "last_scan": None,
                       "last_error": None, "last_import": None}
        self._started = time.time()
        self._cache_stats = Stats()
        self._worker: threading.Thread | None = None
        self._predictor: tuple[int, Head] | None = None
        self._keyboard = None
        self._paused_by_user = False
        self._redelegate_worker = False
        self._round_queued = False
        self._round_failures = 0  # in a row: automatic rounds back off after each
        self._round_retry_at = 0.0
        self._unrecorded_failure: str | None = None  # a failed round the store could not mark (full disk)
        self._last_round_end = time.monotonic()
        # Conditions that forbid training now (battery, heat, load, time window…): sentences, empty = allowed.
        self._redelegate_here = False
        self.gate: Callable[[], list[str]] = lambda: []
        self.policy_readings: dict = {}
        self.watcher_state: Callable[[], dict | None] = lambda: None  # main wires the file watcher's state in

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
        self.bundle = bundle_mod.load_installed(self.paths.bundle)  # repairs an install cut off by a power loss
        self.bundle_id = bundle_mod.sha256_file(self.paths.bundle / "manifest.json")[:16]
        self.variant_choice = self._choose_variant(force=False)
        self.variant = self.bundle.variant(self.variant_choice["name"])
        self.store.ensure_public_classes(self.bundle_id, self.bundle.labels)
        self.cache = self._open_cache()
        self.extractor = FeatureExtractor(self.variant, self.config["model.threads"], self.config["model.delegate"])
        self.features = FeatureSource(self.bundle, self.variant, self.extractor, self.cache,
                                      self.config["data.max_pixels"], int(self.config["data.max_file_mb"] * (1 << 20)))
        self._ensure_initial_head()
        self._worker = threading.Thread(target=self._work, name="autlearn-worker", daemon=True)
        self._worker.start()
        from .media import Importer
        Importer(self.paths.imported).clean_partial()
        self._set(activity="idle")
        log.info("ready: bundle %s variant %s, head v%d, %s (%s)", self.bundle_id, self.variant.name,
                 self.current_version(), RUNTIME, self.extractor.choice.in_use)

    def _budget(self):
        from .variants import Budget
        return Budget(self.config["model.max_latency_ms"] or None, self.config["model.max_memory_mb"] or None)

    def _choose_variant(self, force: bool) -> dict:
        """The configured variant, or the most accurate one this board can afford (measured once, remembered)."""
        if self.config["model.variant"] and not force:
            return {"name": self.bundle.variant(self.config["model.variant"]).name,
                    "reason": "set in the configuration (model.variant)"}
        if len(self.bundle.variant_names) == 1 and not force:
            return {"name": self.bundle.variant_names[0], "reason": "the bundle has one variant"}
        from .variants import choose_variant, format_table
        choice = choose_variant(self.bundle, self.bundle_id, self.paths.state, self.config["model.threads"],
                                self.config["model.delegate"], self._budget(), force=force)
        return {"name": choice.name, "reason": choice.reason, "table": format_table(choice),
                "measurements": choice.as_dict()}

    def bench(self, args: dict) -> dict:
        """Time every variant on this board again (training is paused meanwhile so it does not skew timings)."""
        if self._get()["activity"] in ("training", "paused", "ingesting"):
            raise AutlearnError("busy", "a round is running; measure when the daemon is idle (or pause it first)")
        choice = self._choose_variant(force=True)
        choice["in_use"] = self.variant.name
        if choice["name"] != self.variant.name:
            choice["note"] = f"variant {choice['name']!r} would be chosen now; restart the daemon to switch"
        return choice

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
    def request_scan(self, changes=None) -> None:
        """Scan what the watcher saw change (a watcher.Changes), or everything."""
        self._jobs.put(("scan", changes if changes is not None else "files changed"))

    def _work(self) -> None:
        engine = Engine(self.config, self.paths, self.bundle, self.bundle_id, self.variant, self._cache_stats)
        try:
            while not self._stop.is_set():
                job = self._jobs.get()
                if job is None:
                    break
                kind, trigger = job
                engine.config = self.config  # a reloaded configuration applies from the next job on
                try:
                    if self._redelegate_worker:
                        self._redelegate_worker = False
                        engine.rebuild_extractor()
                    if kind == "scan":
                        self._scan(engine, None if isinstance(trigger, str) else trigger)
                    elif kind == "import":
                        self._import(trigger)
                        self._scan(engine)
                    elif kind == "round":
                        self._round_queued = False
                        self._record_failure(engine)
                        if self._round(engine, trigger).outcome == "skipped":
                            self._round_skipped()
                        else:
                            self._round_failures, self._round_retry_at = 0, 0.0
                except Exception as e:  # a job's failure never takes the daemon down
                    full = _disk_full(e)
                    if full:
                        log.error("%s job stopped: the disk is full (%s); it is retried when space returns", kind, e)
                    else:
                        log.exception("%s job failed", kind)
                    self._set(activity="idle", round=None, last_error=f"{kind}: {e}")
                    self._emit("error", {"job": kind, "message": str(e)})
                    if kind == "round":
                        self._round_failed(engine, e, full)
                    if full and kind == "scan":
                        self._jobs.put(("scan", "retry after a full disk"))
                        self._stop.wait(5.0)
        finally:
            engine.close()

    def _round_failed(self, engine: Engine, e: Exception, disk_full: bool) -> None:
        """Record the round as failed and hold automatic rounds back (5 s after a full disk, else 30 s doubling
        up to an hour), so that a round that keeps failing does not start again at every tick."""
        self._unrecorded_failure = f"{type(e).__name__}: {e}"
        self._record_failure(engine)
        self._round_failures += 1
        delay = 5.0 if disk_full else min(3600.0, 30.0 * 2 ** (self._round_failures - 1))
        self._round_retry_at = time.monotonic() + delay
        log.info("automatic rounds resume in %.0f s (failure %d in a row)", delay, self._round_failures)

    def _round_skipped(self) -> None:
        """A skipped round (nothing it could judge or learn yet) holds automatic rounds back as a failed one
        does, so that the samples that triggered it do not start a round at every tick."""
        self._round_failures += 1
        delay = min(3600.0, 30.0 * 2 ** (self._round_failures - 1))
        self._round_retry_at = time.monotonic() + delay
        log.info("round skipped: automatic rounds resume in %.0f s (or when 'autlearnctl train' asks)", delay)

    def _record_failure(self, engine: Engine) -> None:
        """Mark the failed round in the history; a full disk may refuse the write, and then it is tried again
        before the next round (only the worker runs rounds, so an unfinished one by then is the failed one)."""
        if self._unrecorded_failure is None:
            return
        try:
            engine.store.fail_unfinished_rounds("failed", self._unrecorded_failure)
            self._unrecorded_failure = None
        except sqlite3.Error as db_error:
            log.warning("cannot record the failed round yet: %s", db_error)

    def request_import(self, mount: str) -> None:
        self._jobs.put(("import", mount))

    def _import(self, mount: str) -> None:
        from .media import Importer
        self._set(activity="importing")
        log.info("importing samples from %s", mount)
        importer = Importer(self.paths.imported, self.config["media.folder"],
                            int(self.config["data.max_file_mb"] * (1 << 20)))
        report = importer.import_mount(mount, self._stop.is_set)
        self._set(activity="idle", last_import={**report.as_dict(), "time": time.time()})
        log.info("imported from %s: %d copied, %d already there, %d skipped", mount, report.copied, report.already,
                 len(report.skipped))
        self._emit("media_import", report.as_dict())

    def accelerator_changed(self, what: str) -> None:
        """A device came or went: choose the base model's delegate again, in both threads."""
        log.info("device change (%s): choosing the delegate again", what)
        self._redelegate_worker = True
        self._redelegate_here = True
        self._jobs.put(("scan", "device change"))

    def _scan(self, engine: Engine, changes=None) -> None:
        self._set(activity="ingesting")
        report = engine.scan(changes)
        self._set(activity="idle", last_scan={**report.as_dict(), "time": time.time()})
        self.tick_soon.set()
        if report.added or report.quarantined or report.removed or report.waiting:
            self._emit("import", report.as_dict())

    def _round(self, engine: Engine, trigger: str):
        self._set(activity="training", round={"trigger": trigger, "started": time.time(), "step": "features"})

        def progress(name: str, data: dict) -> None:
            with self._lock:
                if self._state["round"] is not None:
                    self._state["round"]["step"] = name
            self._emit(name, data)

        try:
            result = engine.round(trigger, progress, self._checkpoint)
        finally:
            self._last_round_end = time.monotonic()
        self._set(activity="idle", round=None, last_round=result.as_dict())
        return result

    def _checkpoint(self) -> bool:
        """Called between training steps: waits while training must pause; True means stop the round."""
        announced = False
        while not self._stop.is_set():
            reasons = self.blocking_reasons()
            if not reasons:
                if announced:
                    self._set(activity="training")
                    self._emit("round_resumed", {})
                return False
            if not announced:
                log.info("round paused: %s", "; ".join(reasons))
                self._set(activity="paused")
                self._emit("round_paused", {"reasons": reasons})
                announced = True
            self._stop.wait(1.0)
        return True

    def use_policy(self) -> None:
        """Gate training on the board's real conditions (power, heat, load, GPU, time window)."""
        from . import policy
        probe = policy.SystemProbe(self.config["policy.sysfs"], self.config["policy.procfs"])
        cache: dict = {"at": -1e9, "verdict": None, "config": None}

        def gate() -> list[str]:
            now = time.monotonic()
            if now - cache["at"] >= 1.0 or cache["config"] is not self.config:
                c = self.config
                pc = policy.PolicyConfig.from_config(c)
                cache.update(at=now, config=c, verdict=policy.evaluate(pc, probe, datetime.datetime.now()))
            self.policy_readings = cache["verdict"].readings
            return list(cache["verdict"].reasons)

        self.gate = gate

    def blocking_reasons(self) -> list[str]:
        reasons = ["paused with 'autlearnctl pause'"] if self._paused_by_user else []
        return reasons + self._disk_reasons() + list(self.gate())

    def _disk_reasons(self) -> list[str]:
        """Learning writes head versions, rounds and cached features: it waits while space is short."""
        need = self.config["data.min_free_mb"]
        out = []
        for where in {self.paths.state, self.paths.cache}:
            try:
                free = shutil.disk_usage(where).free / (1 << 20)
            except OSError:
                continue
            if free < need:
                out.append(f"only {free:.1f} MB free on {where} (learning needs {need:g} MB): waiting for space")
        return out

    # ------------------------------------------------------------------ scheduling (request thread, every tick)
    def tick(self) -> None:
        """Start a round when one is due and the board can afford it."""
        self.tick_soon.clear()
        if self._redelegate_here:
            self._redelegate_here = False
            self.extractor = FeatureExtractor(self.variant, self.config["model.threads"],
                                              self.config["model.delegate"])
            self.features.extractor = self.extractor
            self._emit("delegate", {"in_use": self.extractor.choice.in_use, "reason": self.extractor.choice.reason})
        if self._round_queued or self._stop.is_set() or self._get()["activity"] != "idle":
            return
        if not self.config["training.auto"] or self.blocking_reasons() or time.monotonic() < self._round_retry_at:
            return
        new, need, unit = self._pending()
        interval = self.config["training.interval_s"]
        if new >= need:
            trigger = f"{new} new {unit}"
        elif new and interval and time.monotonic() - self._last_round_end >= interval:
            trigger = f"interval of {interval:g}s passed with {new} new {unit}"
        else:
            return
        self._round_queued = True
        self._jobs.put(("round", trigger))

    def _pending(self) -> tuple[int, int, str]:
        """What the next round would learn from that no round has, what triggers one, and its unit: a keyboard
        counts new words of text (a growing notes file is one sample), an image bundle new samples."""
        if self.bundle.task == "next_word":
            from .keyboard import pending_words
            return pending_words(self.store), self.config["training.min_new_words"], "words"
        return self.store.count_new(), self.config["training.min_new_samples"], "samples"

    # ------------------------------------------------------------------ API (called from the request thread)
    def status(self, args: dict) -> dict:
        st = self._get()
        version = self.current_version()
        head = self.store.head(version) or {}
        initial = self.store.initial_head(self.bundle_id)
        return {
            "daemon": {"version": __version__, "protocol": PROTOCOL_VERSION, "pid": os.getpid(),
                       "uptime_s": round(time.time() - self._started, 3), "runtime": RUNTIME},
            "activity": st["activity"],
            "why_not_training": self._why_not_training(st),
            "round": st["round"],
            "last_round": st["last_round"],
            "last_scan": st["last_scan"],
            "last_error": st["last_error"],
            "last_import": st["last_import"],
            "watcher": self.watcher_state(),
            "refused": self.store.problems(10),
            "variant_choice": {k: v for k, v in self.variant_choice.items() if k in ("name", "reason")},
            "bundle": {"id": self.bundle_id, "task": self.bundle.task, "variant": self.variant.name,
                       "labels": len(self.bundle.labels), "class_capacity": self.bundle.class_capacity},
            "delegate": {"requested": self.extractor.choice.requested, "in_use": self.extractor.choice.in_use,
                         "reason": self.extractor.choice.reason},
            **self._classes_summary(),
            "samples": self.store.sample_counts(),
            "head": {"version": version, "status": head.get("status"), "accuracy": head.get("accuracy"),
                     "previous_accuracy": head.get("previous_accuracy"),
                     "initial_version": initial},
            "cache": self.cache.summary(),
            "paused_by_user": self._paused_by_user,
            "conditions": self.policy_readings,
        }

    def _classes_summary(self) -> dict:
        """Class names in slot order; a keyboard's vocabulary is long, so it lists only the user's own words."""
        slots = self.store.classes(self.bundle_id)
        names = sorted(slots, key=slots.get)
        public = len(self.bundle.labels)
        if self.bundle.task == "next_word":
            return {"classes_count": len(names), "personal_words": names[public:]}
        return {"classes_count": len(names), "classes": names}

    def _why_not_training(self, st: dict) -> str:
        if st["activity"] == "training":
            return "training now"
        reasons = self.blocking_reasons()
        if reasons:
            return ("round paused: " if st["activity"] == "paused" else "not training: ") + "; ".join(reasons)
        new, need, unit = self._pending()
        if not self.config["training.auto"]:
            return "automatic rounds are off (training.auto = false); 'autlearnctl train' starts one"
        if new < need and unit == "words":
            return (f"waiting for new text: about {new} of {need} new words needed to start a round "
                    f"(training.min_new_words; counted from what was added to the text files since the last round)")
        if new < need:
            return f"waiting for new samples: {new} of {need} needed to start a round"
        wait = self._round_retry_at - time.monotonic()
        if wait > 0:
            lr = st["last_round"]
            why = (f"was skipped ({lr['detail']})" if lr and lr.get("outcome") == "skipped"
                   else f"failed ({st['last_error']})")
            return (f"the last round {why}; automatic rounds resume in {wait:.0f} s "
                    "('autlearnctl train' starts one now)")
        return "a round is about to start"

    def train(self, args: dict) -> dict:
        if self._stop.is_set():
            raise AutlearnError("busy", "the daemon is stopping")
        running = self._get()["activity"] in ("training", "paused")
        self._round_queued = True
        self._jobs.put(("scan", "before a requested round"))
        self._jobs.put(("round", "requested"))
        return {"queued": True, "running_round": running, "blocked_by": self.blocking_reasons()}

    def pause(self, args: dict) -> dict:
        self._paused_by_user = True
        self._emit("paused", {})
        return {"paused": True}

    def resume(self, args: dict) -> dict:
        self._paused_by_user = False
        self._redelegate_worker = False
        self._emit("resumed", {})
        return {"paused": False, "blocked_by": self.blocking_reasons()}

    def rollback(self, args: dict) -> dict:
        """Make an earlier head version current (default: the one before the current)."""
        if self._get()["activity"] in ("training", "paused"):
            raise AutlearnError("busy", "a round is running; roll back when it has finished")
        heads = {h["version"]: h for h in self.store.heads(self.bundle_id)}
        current = self.current_version()
        version = args.get("version")
        if version is None:
            earlier = [v for v, h in heads.items() if v < current and h["status"] in ("initial", "promoted")]
            if not earlier:
                raise AutlearnError("not_found", f"head v{current} has no earlier version to roll back to")
            version = max(earlier)
        if not isinstance(version, int) or isinstance(version, bool):
            raise AutlearnError("bad_argument", "'version' must be an integer head version")
        if version not in heads:
            raise AutlearnError("not_found", f"head version {version} does not exist for the installed bundle "
                                             f"(versions: {', '.join(map(str, sorted(heads)))})")
        self.store.set_meta(self._current_key(), str(version))
        self._emit("rollback", {"from": current, "to": version})
        log.info("rolled back from head v%d to v%d", current, version)
        return {"previous": current, "current": version}

    def config_show(self, args: dict) -> dict:
        return {"source": self.config.source, "values": self.config.values}

    def cache_info(self, args: dict) -> dict:
        return self.cache.summary()

    def reload(self, new: Config) -> list[str]:
        """Apply a validated configuration; returns the keys that only take effect after a restart."""
        restart_only = ("paths.", "model.", "data.watch", "cache.")
        changed = [k for k in new.values if new.values[k] != self.config.values.get(k)]
        later = [k for k in changed if k.startswith(restart_only)]
        self.config = Config({**new.values, **{k: self.config.values[k] for k in later}}, new.source)
        self._emit("config_reloaded", {"changed": changed, "needs_restart": later})
        return later

    def versions(self, args: dict) -> dict:
        return {"current": self.current_version(), "versions": self.store.heads(self.bundle_id)}

    def history(self, args: dict) -> dict:
        limit = args.get("limit", 20)
        if not isinstance(limit, int) or limit < 1:
            raise AutlearnError("bad_argument", "'limit' must be a positive integer")
        return {"rounds": self.store.rounds(limit)}

    def predict(self, args: dict) -> dict:
        if self.bundle.task == "next_word":
            return self._predict_text(args)
        if "text" in args:
            raise AutlearnError("bad_argument", "this bundle classifies images; 'text' needs a keyboard bundle")
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

    def _predict_text(self, args: dict) -> dict:
        text = args.get("text")
        if not isinstance(text, str):
            raise AutlearnError("bad_argument", "a keyboard bundle predicts from 'text' (a string: what was typed)")
        version = args.get("version", self.current_version())
        top = args.get("top", 3)
        if not isinstance(version, int) or isinstance(version, bool) or not isinstance(top, int) or top < 1:
            raise AutlearnError("bad_argument", "'version' and 'top' must be positive integers")
        row = self.store.head(version)
        if row is None or row["bundle"] != self.bundle_id:
            raise AutlearnError("not_found", f"head version {version} does not exist for the installed bundle")
        if self._keyboard is None:
            from .keyboard import KeyboardLearner, KeyboardPredictor
            self._keyboard = KeyboardPredictor(KeyboardLearner(
                self.bundle, self.bundle_id, self.variant, self.store, self.extractor, self.cache, self.paths.heads,
                self.config["model.threads"], self.config["training.holdout_fraction"]))
        self._keyboard.learner.extractor = self.extractor
        return {"version": version, **self._keyboard.suggest(text, version, top)}

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

    COMMANDS = {"status": "status", "train": "train", "predict": "predict", "versions": "versions",
                "history": "history", "pause": "pause", "resume": "resume", "rollback": "rollback",
                "config": "config_show", "cache": "cache_info", "bench": "bench"}

    def handle(self, cmd: str, args: dict) -> Any:
        if cmd not in self.COMMANDS:
            raise AutlearnError("unknown_command", f"unknown command {cmd!r} (known: {', '.join(self.COMMANDS)})")
        return getattr(self, self.COMMANDS[cmd])(args)

    def status_line(self) -> str:
        st = self._get()
        return f"{st['activity']}; head v{self.current_version()}"
