"""The worker thread: ingestion scans, removable-media imports and training rounds, one job at a time."""

from __future__ import annotations

import errno
import logging
import queue
import sqlite3
import threading
import time

from .engine import Engine

log = logging.getLogger(__name__)


def _disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(e, sqlite3.OperationalError) and "full" in str(e)


class Worker:
    """Owns its Engine (interpreters, SQLite handles). Fields read by other threads and written only here:
    `failures`, `retry_at` (automatic rounds wait until then), `last_round_end`. `redelegate` is set by anyone
    (a device came or went) and cleared only here."""

    def __init__(self, service, stop: threading.Event) -> None:
        self.svc = service
        self._stop = stop
        self.jobs: queue.Queue = queue.Queue()
        self.redelegate = threading.Event()
        self.failures = 0  # rounds failed in a row: automatic rounds back off after each
        self.retry_at = 0.0
        self.last_round_end = time.monotonic()
        self._unrecorded: str | None = None  # a failed round the store could not mark (full disk)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="autlearn-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self.jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def put(self, kind: str, trigger: str) -> None:
        self.jobs.put((kind, trigger))

    def _run(self) -> None:
        svc = self.svc
        engine = Engine(svc.config, svc.paths, svc.bundle, svc.bundle_id, svc.variant, svc.cache_stats)
        try:
            while not self._stop.is_set():
                job = self.jobs.get()
                if job is None:
                    break
                kind, trigger = job
                engine.config = svc.config  # a reloaded configuration applies from the next job on
                try:
                    if self.redelegate.is_set():
                        self.redelegate.clear()
                        engine.rebuild_extractor()
                    if kind == "scan":
                        self._scan(engine, None if isinstance(trigger, str) else trigger)
                    elif kind == "import":
                        self._import(trigger)
                        self._scan(engine)
                    elif kind == "round":
                        if not svc.scheduler.take_round(trigger):
                            continue
                        self._record_failure(engine)
                        if self._round(engine, trigger).outcome == "skipped":
                            self._round_skipped()
                        else:
                            self.failures, self.retry_at = 0, 0.0
                except Exception as e:  # a job's failure never takes the daemon down
                    full = _disk_full(e)
                    if full:
                        log.error("%s job stopped: the disk is full (%s); it is retried when space returns", kind, e)
                    else:
                        log.exception("%s job failed", kind)
                    svc.update_state(activity="idle", round=None)
                    svc.record_error(kind, e)
                    if kind == "round":
                        self._round_failed(engine, e, full)
                    if full and kind == "scan":
                        self.jobs.put(("scan", "retry after a full disk"))
                        self._stop.wait(5.0)
        finally:
            engine.close()

    def _round_failed(self, engine: Engine, e: Exception, disk_full: bool) -> None:
        """Record the round as failed and hold automatic rounds back (5 s after a full disk, else 30 s doubling
        up to an hour), so that a round that keeps failing does not start again at every tick."""
        self._unrecorded = f"{type(e).__name__}: {e}"
        self._record_failure(engine)
        self.failures += 1
        delay = 5.0 if disk_full else min(3600.0, 30.0 * 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + delay
        log.info("automatic rounds resume in %.0f s (failure %d in a row)", delay, self.failures)

    def _round_skipped(self) -> None:
        """A skipped round (nothing it could judge or learn yet) holds automatic rounds back as a failed one
        does, so that the samples that triggered it do not start a round at every tick."""
        self.failures += 1
        delay = min(3600.0, 30.0 * 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + delay
        log.info("round skipped: automatic rounds resume in %.0f s (or when 'autlearnctl train' asks)", delay)

    def _record_failure(self, engine: Engine) -> None:
        """Mark the failed round in the history; a full disk may refuse the write, and then it is tried again
        before the next round (only the worker runs rounds, so an unfinished one by then is the failed one)."""
        if self._unrecorded is None:
            return
        try:
            engine.store.fail_unfinished_rounds("failed", self._unrecorded)
            self._unrecorded = None
        except sqlite3.Error as db_error:
            log.warning("cannot record the failed round yet: %s", db_error)

    def _import(self, mount: str) -> None:
        from ..intake.media import Importer
        self.svc.update_state(activity="importing")
        log.info("importing samples from %s", mount)
        importer = Importer(self.svc.paths.imported, self.svc.config["media.folder"],
                            int(self.svc.config["data.max_file_mb"] * (1 << 20)))
        report = importer.import_mount(mount, self._stop.is_set)
        self.svc.update_state(activity="idle", last_import={**report.as_dict(), "time": time.time()})
        log.info("imported from %s: %d copied, %d already there, %d skipped", mount, report.copied, report.already,
                 len(report.skipped))
        self.svc.emit("media_import", report.as_dict())

    def _scan(self, engine: Engine, changes=None) -> None:
        self.svc.update_state(activity="ingesting")
        report = engine.scan(changes)
        self.svc.update_state(activity="idle", last_scan={**report.as_dict(), "time": time.time()})
        self.svc.scheduler.tick_soon.set()
        if report.added or report.quarantined or report.removed or report.waiting:
            self.svc.emit("import", report.as_dict())

    def _round(self, engine: Engine, trigger: str):
        self.svc.update_state(activity="training", round={"round_id": None, "trigger": trigger,
                                                          "started": time.time(), "step": "features"})

        def progress(name: str, data: dict) -> None:
            self.svc.round_step(name, data.get("round_id"))
            self.svc.emit(name, data)

        try:
            result = engine.round(trigger, progress, self._checkpoint)
        finally:
            self.last_round_end = time.monotonic()
        self.svc.update_state(activity="idle", round=None, last_round=result.as_dict())
        return result

    def _checkpoint(self) -> bool:
        """Called between training steps: waits while training must pause; True means stop the round."""
        announced = False
        while not self._stop.is_set():
            reasons = self.svc.scheduler.blocking_reasons()
            if not reasons:
                if announced:
                    self.svc.update_state(activity="training")
                    self.svc.emit("round_resumed", {})
                return False
            if not announced:
                log.info("round paused: %s", "; ".join(reasons))
                self.svc.update_state(activity="paused")
                self.svc.emit("round_paused", {"reasons": reasons})
                announced = True
            self._stop.wait(1.0)
        return True

