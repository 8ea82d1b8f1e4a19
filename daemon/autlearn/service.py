"""The daemon's API in one object. Transports (the ZeroMQ server, tests) are thin adapters over it.

Threads: the caller's thread answers requests (status never waits for training); one worker thread owns
ingestion and training rounds; the answerer thread (answerer.py) runs predict and bench. Each thread has its own
interpreters and SQLite handles.

Cross-thread fields, each with one writer: the request thread writes `config` and `_paused_by_user`; the
worker writes `_round_failures`, `_round_retry_at`, `_last_round_end` and `_unrecorded_failure`; `_state`,
`_rounds_queued` and `_round_requested` change only under `_lock`; `_redelegate_worker` (an Event) is set by
anyone and cleared only by the worker; the policy gate's cache is guarded by its own lock.
"""

from __future__ import annotations

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

from . import __version__, bundle as bundle_mod
from .answerer import Answerer
from .config import Config
from .errors import AutlearnError
from .featcache import FeatureCache, Stats
from .head import Head, save_weights
from .engine import Engine, current_key
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
        self.cache_stats = Stats()
        self._worker: threading.Thread | None = None
        self.answerer: Answerer | None = None
        self._paused_by_user = False
        self._redelegate_worker = threading.Event()
        self._rounds_queued = 0  # round jobs in the worker's queue (under _lock)
        self._round_requested: str | None = None  # a round's trigger held while paused (under _lock)
        self._round_failures = 0  # in a row: automatic rounds back off after each
        self._round_retry_at = 0.0
        self._unrecorded_failure: str | None = None  # a failed round the store could not mark (full disk)
        self._last_round_end = time.monotonic()
        # Conditions that forbid training now (battery, heat, load, time window…): sentences, empty = allowed.
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
        self.variant_choice = self.choose_variant(force=False)
        self.variant = self.bundle.variant(self.variant_choice["name"])
        self.store.ensure_public_classes(self.bundle_id, self.bundle.labels)
        self.cache = self._open_cache()
        self._ensure_initial_head()
        self.answerer = Answerer(self)
        self.answerer.start()
        self._worker = threading.Thread(target=self._work, name="autlearn-worker", daemon=True)
        self._worker.start()
        from .media import Importer
        Importer(self.paths.imported).clean_partial()
        self._set(activity="idle")
        log.info("ready: bundle %s variant %s, head v%d, %s (%s)", self.bundle_id, self.variant.name,
                 self.current_version(), RUNTIME, self.answerer.delegate.in_use)

    def _budget(self):
        from .variants import Budget
        return Budget(self.config["model.max_latency_ms"] or None, self.config["model.max_memory_mb"] or None)

    def choose_variant(self, force: bool) -> dict:
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

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._jobs.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        if self.answerer is not None:
            self.answerer.stop(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _open_cache(self) -> FeatureCache:
        return FeatureCache(self.paths.feature_cache, int(self.config["cache.max_mb"] * (1 << 20)), self.cache_stats)

    def _ensure_initial_head(self) -> None:
        if self.store.get_meta(self.current_key()) is not None:
            return
        head = Head(self.variant, self.bundle.class_capacity, self.bundle.train_batch, 1)
        version = self.store.next_head_version()
        fname = f"head-v{version}.npz"
        save_weights(head.get_weights(), self.paths.heads / fname)
        self.store.add_head(self.bundle_id, self.variant.name, "initial", fname)
        self.store.set_meta(self.current_key(), str(version))

    def current_key(self) -> str:
        return current_key(self.bundle_id, self.variant.name)

    def current_version(self) -> int:
        return int(self.store.get_meta(self.current_key()))

    def _set(self, **kw: Any) -> None:
        with self._lock:
            self._state.update(kw)

    def _get(self) -> dict:
        with self._lock:
            return dict(self._state)

    def activity(self) -> str:
        with self._lock:
            return self._state["activity"]

    def emit(self, name: str, data: dict) -> None:
        self._emit(name, data)

    def record_error(self, where: str, e: BaseException | str) -> None:
        """Something failed that the daemon survives: `status.last_error` says so and an `error` event tells
        the subscribers (docs/protocol.md)."""
        message = e if isinstance(e, str) else (e.message if isinstance(e, AutlearnError) else
                                                f"{type(e).__name__}: {e}")
        self._set(last_error=f"{where}: {message}")
        self._emit("error", {"where": where, "message": message})

    # ------------------------------------------------------------------ worker thread
    def request_scan(self, changes=None) -> None:
        """Scan what the watcher saw change (a watcher.Changes), or everything."""
        self._jobs.put(("scan", changes if changes is not None else "files changed"))

    def _work(self) -> None:
        engine = Engine(self.config, self.paths, self.bundle, self.bundle_id, self.variant, self.cache_stats)
        try:
            while not self._stop.is_set():
                job = self._jobs.get()
                if job is None:
                    break
                kind, trigger = job
                engine.config = self.config  # a reloaded configuration applies from the next job on
                try:
                    if self._redelegate_worker.is_set():
                        self._redelegate_worker.clear()
                        engine.rebuild_extractor()
                    if kind == "scan":
                        self._scan(engine, None if isinstance(trigger, str) else trigger)
                    elif kind == "import":
                        self._import(trigger)
                        self._scan(engine)
                    elif kind == "round":
                        if not self._take_round(trigger):
                            continue
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
                    self._set(activity="idle", round=None)
                    self.record_error(kind, e)
                    if kind == "round":
                        self._round_failed(engine, e, full)
                    if full and kind == "scan":
                        self._jobs.put(("scan", "retry after a full disk"))
                        self._stop.wait(5.0)
        finally:
            engine.close()

    def _take_round(self, trigger: str) -> bool:
        """A round job leaves the queue. Paused by the user, no round starts: it waits for `resume`."""
        with self._lock:
            self._rounds_queued -= 1
            if self._paused_by_user:
                self._round_requested = self._round_requested or trigger
                return False
        return True

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
        self._redelegate_worker.set()
        if self.answerer is not None:
            self.answerer.redelegate.set()
        self._jobs.put(("scan", "device change"))

    def _scan(self, engine: Engine, changes=None) -> None:
        self._set(activity="ingesting")
        report = engine.scan(changes)
        self._set(activity="idle", last_scan={**report.as_dict(), "time": time.time()})
        self.tick_soon.set()
        if report.added or report.quarantined or report.removed or report.waiting:
            self._emit("import", report.as_dict())

    def _round(self, engine: Engine, trigger: str) -> None:
        self._set(activity="training", round={"round_id": None, "trigger": trigger, "started": time.time(),
                                              "step": "features"})

        def progress(name: str, data: dict) -> None:
            with self._lock:
                if self._state["round"] is not None:
                    self._state["round"] = {**self._state["round"], "step": name,
                                            "round_id": data.get("round_id", self._state["round"]["round_id"])}
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
        lock = threading.Lock()  # both the request thread (tick, status) and the worker (checkpoints) ask

        def gate() -> list[str]:
            with lock:
                return evaluate()

        def evaluate() -> list[str]:
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
        if self.answerer is not None and self.answerer.benching.is_set():
            reasons.append("measuring the variants ('autlearnctl bench')")
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
        """Start a round when one is due and the board can afford it; hand over a requested one unless paused."""
        self.tick_soon.clear()
        if self._stop.is_set():
            return
        with self._lock:
            requested = None if self._paused_by_user else self._round_requested
            if requested:
                self._round_requested = None
                self._rounds_queued += 1
                self._jobs.put(("round", requested))
            busy = self._rounds_queued > 0 or self._state["activity"] != "idle"
        if busy:
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
        self._queue_round(trigger)

    def _queue_round(self, trigger: str) -> None:
        with self._lock:
            self._rounds_queued += 1
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
            "delegate": {"requested": self.answerer.delegate.requested, "in_use": self.answerer.delegate.in_use,
                         "reason": self.answerer.delegate.reason},
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
        """A rescan now and a round after it; while paused by the user the round waits for `resume`."""
        if self._stop.is_set():
            raise AutlearnError("busy", "the daemon is stopping")
        running = self._get()["activity"] in ("training", "paused")
        self._jobs.put(("scan", "before a requested round"))
        with self._lock:
            self._round_requested = "requested"
        self.tick_soon.set()
        return {"queued": True, "running_round": running, "blocked_by": self.blocking_reasons()}

    def pause(self, args: dict) -> dict:
        self._paused_by_user = True
        self._emit("paused", {})
        return {"paused": True}

    def resume(self, args: dict) -> dict:
        self._paused_by_user = False
        self.tick_soon.set()  # a round requested while paused starts now
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
        self.store.set_meta(self.current_key(), str(version))
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
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise AutlearnError("bad_argument", "'limit' must be a positive integer")
        return {"rounds": [{"round_id": r.pop("id"), **r} for r in self.store.rounds(limit)]}

    def predict(self, args: dict) -> dict:
        return self.answerer.call("predict", args)

    def bench(self, args: dict) -> dict:
        return self.answerer.call("bench", args)

    SLOW = Answerer.COMMANDS  # answered on the answerer thread: the control loop hands them over (submit)

    def submit(self, cmd: str, args: dict, done) -> None:
        self.answerer.submit(cmd, args, done)

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
