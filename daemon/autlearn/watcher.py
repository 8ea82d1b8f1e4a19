"""inotify (through watchdog) with a debounce: a burst of file events becomes one scan after a quiet time."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


class _Mark(FileSystemEventHandler):
    def __init__(self, owner: "DebouncedWatcher"):
        self.owner = owner

    def on_any_event(self, event) -> None:  # noqa: D401 - watchdog callback
        if event.event_type in ("opened", "closed_no_write"):
            return
        self.owner.touch()


class DebouncedWatcher:
    def __init__(self, roots: list[str], debounce_s: float):
        self.roots = roots
        self.debounce_s = debounce_s
        self._last: float | None = time.monotonic()  # scan once at start
        self._lock = threading.Lock()
        self._observer = Observer()
        self._handler = _Mark(self)
        self._watched: set[str] = set()

    def start(self) -> None:
        self._schedule_missing()
        self._observer.start()

    def _schedule_missing(self) -> None:
        for root in self.roots:
            if root not in self._watched and Path(root).is_dir():
                self._observer.schedule(self._handler, root, recursive=True)
                self._watched.add(root)
                log.info("watching %s", root)

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)

    def touch(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def due(self) -> bool:
        """True once per burst of events, after `debounce_s` without new events."""
        self._schedule_missing()  # a watched directory created after start
        with self._lock:
            if self._last is not None and time.monotonic() - self._last >= self.debounce_s:
                self._last = None
                return True
        return False
