"""The daemon's API in one object, thin over bootstrap.py, scheduler.py, worker.py and answerer.py.

Transports (the ZeroMQ server, tests) are thin adapters over it. Threads: the caller's thread answers requests
(status never waits for training); one worker thread owns ingestion and training rounds; the answerer thread
runs predict and bench; each has its own interpreters and SQLite handles. Cross-thread fields and their one
owner: `config` is written only by the request thread (`reload`); `_state` (what `status` shows) changes only
under `_lock`, from any thread; the scheduler's, the worker's and the answerer's fields are listed in their
modules.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from .. import PROTOCOL_VERSION, __version__
from . import bootstrap
from .answerer import Answerer
from ..config import Config
from ..errors import AutlearnError
from ..learning.featcache import Stats
from .engine import current_key
from ..paths import Paths
from ..runtime.interpreter import RUNTIME
from .scheduler import Scheduler
from .worker import Worker

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict], None]


class Service:
    def __init__(self, config: Config, paths: Paths, emit: EventSink | None = None):
        self.config = config
        self.paths = paths
        self._emit = emit or (lambda name, data: None)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state = {"activity": "starting", "round": None, "last_round": None, "last_scan": None,
                       "last_error": None, "last_import": None}
        self._started = time.time()
        self.cache_stats = Stats()
        self.worker = Worker(self, self._stop)
        self.scheduler = Scheduler(self, self.worker)
        self.answerer: Answerer | None = None
        self.watcher_state: Callable[[], dict | None] = lambda: None  # main wires the file watcher's state in

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        b = bootstrap.boot(self.config, self.paths, self.cache_stats)
        self.store, self.cache, self.bundle, self.bundle_id = b.store, b.cache, b.bundle, b.bundle_id
        self.variant_choice, self.variant = b.variant_choice, b.variant
        self.answerer = Answerer(self)
        self.answerer.start()
        self.worker.start()
        from ..intake.media import Importer
        Importer(self.paths.imported).clean_partial()
        self.update_state(activity="idle")
        log.info("ready: bundle %s variant %s, head v%d, %s (%s)", self.bundle_id, self.variant.name,
                 self.current_version(), RUNTIME, self.answerer.delegate.in_use)

    def choose_variant(self, force: bool) -> dict:
        return bootstrap.choose_variant(self.config, self.bundle, self.bundle_id, self.paths.state, force)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.worker.stop(timeout)
        if self.answerer is not None:
            self.answerer.stop(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def current_key(self) -> str:
        return current_key(self.bundle_id, self.variant.name)

    def current_version(self) -> int:
        return int(self.store.get_meta(self.current_key()))

    def update_state(self, **kw: Any) -> None:
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
        self.update_state(last_error=f"{where}: {message}")
        self._emit("error", {"where": where, "message": message})

    # ------------------------------------------------------------------ for the worker and the watchers
    def request_scan(self, changes=None) -> None:
        """Scan what the watcher saw change (a watcher.Changes), or everything."""
        self.worker.put("scan", changes if changes is not None else "files changed")

    def round_step(self, step: str, round_id: int | None) -> None:
        """The running round reached `step` (worker thread)."""
        with self._lock:
            r = self._state["round"]
            if r is not None:
                self._state["round"] = {**r, "step": step, "round_id": r["round_id"] if round_id is None else round_id}

    def request_import(self, mount: str) -> None:
        self.worker.put("import", mount)

    def accelerator_changed(self, what: str) -> None:
        """A device came or went: choose the base model's delegate again, in both threads."""
        log.info("device change (%s): choosing the delegate again", what)
        self.worker.redelegate.set()
        if self.answerer is not None:
            self.answerer.redelegate.set()
        self.worker.put("scan", "device change")

    def use_policy(self) -> None:
        """Gate training on the board's real conditions (power, heat, load, GPU, time window)."""
        from .policy import Gate
        from .probe import SystemProbe
        probe = SystemProbe(self.config["policy.sysfs"], self.config["policy.procfs"])
        self.scheduler.gate = Gate(lambda: self.config, probe)

    def tick(self) -> None:
        """The control loop's periodic call (scheduler.py): a due or requested round starts."""
        self.scheduler.tick()

    @property
    def tick_soon(self) -> threading.Event:
        return self.scheduler.tick_soon

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
            "why_not_training": self.scheduler.why_not_training(st),
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
                     "initial_version": initial, "cut": head.get("cut"), "cut_reason": head.get("cut_reason")},
            "cache": self.cache.summary(),
            "paused_by_user": self.scheduler.paused_by_user,
            "conditions": self.scheduler.readings(),
        }

    def _classes_summary(self) -> dict:
        """Class names in slot order; a keyboard's vocabulary is long, so it lists only the user's own words."""
        slots = self.store.classes(self.bundle_id)
        names = sorted(slots, key=slots.get)
        public = len(self.bundle.labels)
        if self.bundle.task == "next_word":
            return {"classes_count": len(names), "personal_words": names[public:]}
        return {"classes_count": len(names), "classes": names}

    def train(self, args: dict) -> dict:
        """A rescan now and a round after it; while paused by the user the round waits for `resume`."""
        if self._stop.is_set():
            raise AutlearnError("busy", "the daemon is stopping")
        running = self._get()["activity"] in ("training", "paused")
        self.worker.put("scan", "before a requested round")
        self.scheduler.request_round()
        return {"queued": True, "running_round": running, "blocked_by": self.scheduler.blocking_reasons()}

    def pause(self, args: dict) -> dict:
        self.scheduler.pause()
        self._emit("paused", {})
        return {"paused": True}

    def resume(self, args: dict) -> dict:
        self.scheduler.resume()
        self._emit("resumed", {})
        return {"paused": False, "blocked_by": self.scheduler.blocking_reasons()}

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
