"""inotify (through watchdog) with a debounce: a burst of file events becomes one scan of the paths they named.

Only the paths that changed are looked at again (a file created, written, moved or deleted; a directory created,
moved in or deleted), so a change costs what it touched, not every file the board holds. A full scan of the
watched directories happens at start, when a watched directory appears, and when events were lost: the kernel's
queue overflowed (watchdog logs it) or more than MAX_PENDING paths piled up in one burst.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)

MAX_PENDING = 20_000  # paths remembered in one burst; past it one full scan is cheaper than the list
_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"  # where watchdog reports IN_Q_OVERFLOW (events were lost)


@dataclass(frozen=True)
class Changes:
    """What one scan must look at: `full` (every watched directory) or just `paths`."""
    full: bool
    paths: frozenset[str] = field(default_factory=frozenset)


class _Mark(FileSystemEventHandler):
    def __init__(self, owner: "DebouncedWatcher"):
        self.owner = owner

    def on_any_event(self, event) -> None:  # noqa: D401 - watchdog callback
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type == "modified":
            self.owner.touch()  # its listing changed: the entries' own events say how
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        self.owner.touch([p.decode(errors="surrogateescape") if isinstance(p, bytes) else p for p in paths if p])


class _Overflow(logging.Handler):
    """Turns watchdog's "queue overflowed" log record into a full scan of every watcher."""

    watchers: "weakref.WeakSet[DebouncedWatcher]" = weakref.WeakSet()

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            for w in list(self.watchers):
                w.lost_events()


_overflow = _Overflow(logging.WARNING)
logging.getLogger(_OVERFLOW_LOGGER).addHandler(_overflow)


class DebouncedWatcher:
    def __init__(self, roots: list[str], debounce_s: float):
        self.roots = roots
        self.debounce_s = debounce_s
        self._last: float | None = time.monotonic()  # scan once at start
        self._full = True
        self._paths: set[str] = set()
        self._lock = threading.Lock()
        self._observer = Observer()
        self._handler = _Mark(self)
        self._watched: set[str] = set()
        _Overflow.watchers.add(self)

    def start(self) -> None:
        self._schedule_missing()
        self._observer.start()

    def _schedule_missing(self) -> None:
        for root in self.roots:
            if root not in self._watched and Path(root).is_dir():
                self._observer.schedule(self._handler, root, recursive=True)
                self._watched.add(root)
                log.info("watching %s", root)
                self.lost_events()  # what it held before the watch began

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)

    def touch(self, paths: list[str] = ()) -> None:
        with self._lock:
            self._last = time.monotonic()
            if not self._full:
                self._paths.update(paths)
                if len(self._paths) > MAX_PENDING:
                    self._full, self._paths = True, set()

    def lost_events(self) -> None:
        """Events were (or may have been) missed: the next scan walks every watched directory."""
        with self._lock:
            self._last = time.monotonic()
            self._full, self._paths = True, set()

    def due(self) -> Changes | None:
        """Once per burst of events, after `debounce_s` without new ones: what the scan must look at."""
        self._schedule_missing()  # a watched directory created after start
        with self._lock:
            if self._last is not None and time.monotonic() - self._last >= self.debounce_s:
                self._last = None
                changes = Changes(self._full, frozenset(self._paths))
                self._full, self._paths = False, set()
                if changes.full or changes.paths:
                    return changes
        return None
