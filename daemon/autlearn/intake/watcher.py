"""inotify with a debounce: a burst of file events becomes one scan after a quiet time.

The watch thread is supervised: its death is shown in ``status`` and the thread started again.

One inotify descriptor watches every directory below the watched roots down to ``ingest.MAX_DEPTH`` levels
(deeper folders are not read by the scan either, which records them with a reason). Directories are found
by an iterative walk, so a tree thousands of levels deep costs a bounded number of watches and never the
stack. A directory created or moved in gets its watches at once; a move or a queue overflow re-walks the
directories (not the files) to bring the watches up to date.

Only the paths the events named are looked at again (a file created, written, moved or deleted; a directory
created, moved in or deleted), so a change costs what it touched, not every file the board holds. A full scan of
the watched directories happens at start, when a watched directory appears, after the watch thread was started
again, and when events were lost: the kernel's queue overflowed or more than MAX_PENDING paths piled up in one
burst. (watchdog, used before, walks new trees recursively in its own thread and died silently on a tree about a
thousand levels deep; it offers no depth bound.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
import time
from dataclasses import dataclass, field

from .ingest import MAX_DEPTH, shown

log = logging.getLogger(__name__)

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x4000, 0x8000, 0x40000000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK = 0x01000000, 0x02000000, 0x04000000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
_EVENT = struct.Struct("iIII")
MAX_PENDING = 20_000  # paths remembered in one burst; past it one full scan is cheaper than the list
_RESTART_S = (1.0, 60.0)  # back-off of restarts after the watch thread died: first, most

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


def _directories(root: bytes, max_depth: int):
    """(path, depth) of `root` and every directory below it down to `max_depth`, iteratively, links not followed."""
    stack = [(root, 0)]
    while stack:
        d, depth = stack.pop()
        yield d, depth
        if depth >= max_depth:
            continue
        try:
            with os.scandir(d) as it:
                subdirs = [e.path for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue  # vanished or unreadable: the scan reports what it cannot list
        stack.extend((p, depth + 1) for p in subdirs)


class _Inotify:
    """The watch set of one inotify descriptor: wd -> (path, depth)."""

    def __init__(self, max_depth: int):
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        self.fd = fd
        self.max_depth = max_depth
        self.watches: dict[int, tuple[bytes, int]] = {}
        self.limit_hit = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _add(self, path: bytes, depth: int) -> int | None:
        # a watched root may itself be a symlink (as the scan allows); links below it are not followed
        wd = _libc.inotify_add_watch(self.fd, path, MASK if depth else MASK & ~IN_DONT_FOLLOW)
        if wd < 0:
            e = ctypes.get_errno()
            if e == errno.ENOSPC and not self.limit_hit:  # fs.inotify.max_user_watches
                self.limit_hit = True
                log.warning("the inotify watch limit is reached at %d directories: changes below %s are seen at "
                            "the next scan only (raise fs.inotify.max_user_watches)", len(self.watches), shown(
                                os.fsdecode(path)))
            elif e == errno.EBADF:
                raise OSError(e, "inotify descriptor closed")
            return None  # vanished, not a directory, no permission: nothing to watch
        self.watches[wd] = (path, depth)
        return wd

    def watch_tree(self, top: bytes, depth: int) -> set[int]:
        return {wd for p, d in _directories(top, self.max_depth - depth) if (wd := self._add(p, depth + d))
                is not None}

    def rewatch(self, roots: list[bytes]) -> None:
        """Walk the directories again (after moves or an overflow) and drop watches no longer below a root."""
        old, self.watches = self.watches, {}
        seen = set()
        for r in roots:
            seen |= self.watch_tree(r, 0)
        for wd in set(old) - seen:
            _libc.inotify_rm_watch(self.fd, wd)

    def read(self) -> list[tuple[int, int, bytes]]:
        try:
            buf = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        out, i = [], 0
        while i + _EVENT.size <= len(buf):
            wd, mask, _cookie, n = _EVENT.unpack_from(buf, i)
            name = buf[i + _EVENT.size:i + _EVENT.size + n].rstrip(b"\0")
            out.append((wd, mask, name))
            i += _EVENT.size + n
        return out


@dataclass(frozen=True)
class Changes:
    """What one scan must look at: `full` (every watched directory) or just `paths`."""
    full: bool
    paths: frozenset[str] = field(default_factory=frozenset)


class DebouncedWatcher:
    def __init__(self, roots: list[str], debounce_s: float, max_depth: int = MAX_DEPTH):
        self.roots = roots
        self.debounce_s = debounce_s
        self.max_depth = max_depth
        self._last: float | None = time.monotonic()  # scan once at start
        self._full = True
        self._paths: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inotify: _Inotify | None = None
        self._restarts = 0
        self._restart_at = 0.0
        self._error: str | None = None
        self._watched_roots: set[str] = set()

    # --- the supervisor (called from the control loop) ---
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="autlearn-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def touch(self, paths=()) -> None:
        """Events arrived naming `paths` (str): the next scan looks at them, after the debounce."""
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
        """Once per burst of events, after `debounce_s` without new ones: what the scan must look at.
        Restarts a dead watch thread first."""
        self._supervise()
        with self._lock:
            if self._last is not None and time.monotonic() - self._last >= self.debounce_s:
                self._last = None
                changes = Changes(self._full, frozenset(self._paths))
                self._full, self._paths = False, set()
                if changes.full or changes.paths:
                    return changes
        return None

    def _supervise(self) -> None:
        t = self._thread
        if t is None or t.is_alive() or self._stop.is_set() or time.monotonic() < self._restart_at:
            return
        self._restarts += 1
        delay = min(_RESTART_S[1], _RESTART_S[0] * 2 ** (self._restarts - 1))
        self._restart_at = time.monotonic() + delay
        log.error("the file watcher stopped (%s); starting it again (restart %d)", self._error, self._restarts)
        self.lost_events()  # events may have been missed meanwhile: scan everything once more
        self.start()

    def state(self) -> dict:
        """For `status`: whether the watch thread runs, how often it was restarted, why it last stopped."""
        ino = self._inotify
        return {"alive": bool(self._thread and self._thread.is_alive()), "restarts": self._restarts,
                "last_error": self._error, "watched_dirs": len(ino.watches) if ino else 0,
                "max_depth": self.max_depth, "watch_limit_reached": bool(ino and ino.limit_hit)}

    # --- the watch thread ---
    def _run(self) -> None:
        ino = None
        try:
            ino = _Inotify(self.max_depth)
            self._inotify = ino
            self._watched_roots = set()
            self._loop(ino)
        except Exception as e:  # recorded for status; the supervisor starts the thread again
            self._error = f"{type(e).__name__}: {e}"
            if ino is not None and isinstance(e, OSError) and e.errno == errno.EBADF:
                ino.fd = -1  # gone already: closing the number again could close another file
            log.exception("the file watcher failed")
        finally:
            if ino is not None:
                try:
                    ino.close()
                except OSError:
                    pass

    def _watch_new_roots(self, ino: _Inotify) -> None:
        for root in self.roots:
            if root not in self._watched_roots and os.path.isdir(root):
                ino.watch_tree(os.fsencode(root), 0)
                self._watched_roots.add(root)
                log.info("watching %s", shown(root))
                self.lost_events()  # what it held before the watch began

    def _loop(self, ino: _Inotify) -> None:
        poller = select.poll()
        poller.register(ino.fd, select.POLLIN)
        while not self._stop.is_set():
            self._watch_new_roots(ino)  # a watched directory created after start
            if not poller.poll(500):
                continue
            if ino.fd < 0:
                raise OSError(errno.EBADF, "inotify descriptor closed")
            events = ino.read()
            if not events:
                # POLLNVAL/POLLERR, or a spurious wake-up: a closed descriptor raises here
                os.fstat(ino.fd)
                continue
            rewalk, lost, paths = False, False, []
            for wd, mask, name in events:
                if mask & IN_Q_OVERFLOW:
                    rewalk = lost = True  # events were lost
                    continue
                if mask & IN_MOVE_SELF:
                    rewalk = True  # a watched directory moved: its watches' paths changed
                if mask & IN_IGNORED:
                    ino.watches.pop(wd, None)
                    continue
                if wd not in ino.watches or not name:
                    continue  # an event on the watched directory itself: its entries' own events say how
                parent, depth = ino.watches[wd]
                path = os.path.join(parent, name)
                if mask & IN_ISDIR:
                    if mask & IN_ATTRIB and not mask & (IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE):
                        continue  # a directory's own attributes: nothing below it changed
                    if mask & IN_MOVED_FROM:
                        rewalk = True  # paths of the moved directory's watches changed
                    elif mask & (IN_CREATE | IN_MOVED_TO) and depth < self.max_depth:
                        ino.watch_tree(path, depth + 1)
                paths.append(os.fsdecode(path))
            if lost:
                self.lost_events()
            else:
                self.touch(paths)
            if rewalk:
                ino.rewatch([os.fsencode(r) for r in self._watched_roots if os.path.isdir(r)])
