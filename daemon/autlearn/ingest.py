"""Ingestion: walk the watched directories, validate new files, hash and label them, quarantine bad ones.

Layout of a watched directory: one sub-folder per label (`<watch>/<label>/<file>`). The user's files are
never moved, changed or deleted: a bad file is *copied* into the quarantine with a reason file beside it
and remembered, so it is not retried until it changes.

Whatever lands in a watched folder is treated as hostile: the walk is iterative (a tree thousands of levels
deep cannot exhaust the stack), files are opened without blocking and must be regular files when opened (a
FIFO, device or socket put in place of a file is refused, never waited on), reads stop at the size limit,
symlinks may not lead out of the watched tree, and a name that is not UTF-8 is recorded under an escaped form
and ignored with a reason instead of breaking the scan.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import imaging, kbtext
from .errors import AutlearnError
from .store import Store

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pgm", ".ppm"}
TEXT_SUFFIXES = {".txt", ".text", ".md"}
TEXT_LABEL = "text"  # keyboard samples have no label: the text is its own target
# Copies kept in the quarantine stop here: a folder full of bad files must not fill the state file system.
QUARANTINE_MAX_BYTES = 64 << 20
_MAX_NAME_BYTES = 200  # quarantine file names, well below NAME_MAX (255) with the tag and suffixes added


def db_path(path: str | os.PathLike) -> tuple[str, bool]:
    """The text a path is stored under, and whether it is valid UTF-8.

    A name with bytes that are not UTF-8 (os.fsencode gives them back) cannot be stored as SQLite text; it is
    stored with those bytes written as \\xNN escapes, which is also how it is shown to people."""
    s = os.fspath(path)
    try:
        s.encode("utf-8")
        return s, True
    except UnicodeEncodeError:
        return os.fsencode(s).decode("utf-8", "backslashreplace"), False


def read_regular_file(path: str | os.PathLike, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """Read at most `max_bytes` + 1 bytes of a regular file, never blocking.

    Opened with O_NONBLOCK and checked with fstat *after* opening, so a FIFO, socket or device that took the
    file's place between a listing and the read is refused (OSError EINVAL) instead of hanging the caller;
    the cap keeps a file that grew meanwhile from filling memory. Returns the bytes and the opened file's stat
    (a caller that sees more than `max_bytes` bytes knows the file is over its limit)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def walk_files(root: Path) -> Iterator[Path]:
    """Every non-directory entry below `root`, sorted, without recursion and without following symlinks.

    Hidden entries and unfinished copies (*.part, *.tmp, *~) are skipped; a directory that cannot be listed
    is logged and skipped. Symlinks (to files or directories) are yielded for the caller to judge."""
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            log.warning("cannot list %s: %s", db_path(d)[0], e.strerror)
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                subdirs.append(Path(e.path))
            elif not e.name.endswith((".part", ".tmp", "~")):
                yield Path(e.path)
        stack.extend(reversed(subdirs))


@dataclass
class IngestReport:
    added: int = 0
    quarantined: int = 0
    ignored: int = 0
    waiting: int = 0
    removed: int = 0
    unchanged: int = 0
    new_classes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def holdout_of(sha256: str, fraction: float) -> bool:
    """A sample's holdout membership follows from its content: stable across restarts and machines."""
    return int(sha256[:8], 16) / 0x100000000 < fraction


class Ingestor:
    def __init__(self, store: Store, quarantine_dir: Path, bundle_id: str, labels: list[str], capacity: int,
                 holdout_fraction: float, max_file_bytes: int, max_pixels: int, input_spec: dict,
                 task: str = "image_classification"):
        self.store = store
        self.quarantine_dir = quarantine_dir
        self.bundle_id = bundle_id
        self.capacity = capacity
        self.holdout_fraction = holdout_fraction
        self.max_file_bytes = max_file_bytes
        self.max_pixels = max_pixels
        self.input_spec = input_spec
        self._quarantine_used: int | None = None
        self.text = task == "next_word"  # a keyboard bundle learns from text files
        store.ensure_public_classes(bundle_id, labels)

    # --- walking ---
    def scan(self, roots: list[str]) -> IngestReport:
        report = IngestReport()
        present: set[str] = set()
        with self.store.batch() as checkpoint:  # a few commits per scan, not one per file
            for root in roots:
                rootp = Path(root).absolute()
                if not rootp.is_dir():
                    log.warning("watched directory %s does not exist (yet)", db_path(rootp)[0])
                    continue
                for path in walk_files(rootp):
                    present.add(db_path(path)[0])
                    self._consider(rootp, path, report)
                    checkpoint()
            report.removed = self.store.forget_missing(present, [db_path(Path(r).absolute())[0] for r in roots])
            self._retry_waiting(report)
        return report

    def _consider(self, root: Path, path: Path, report: IngestReport) -> None:
        spath, utf8 = db_path(path)
        try:
            st = os.lstat(path)
        except OSError:
            return  # vanished between listing and stat
        rel = path.relative_to(root)
        label = db_path(rel.parts[0])[0] if len(rel.parts) >= 2 else None
        if self.text:
            label = TEXT_LABEL  # a keyboard reads text files anywhere below the watched directory
        link_problem = None
        if stat.S_ISLNK(st.st_mode):
            # Judge a link by where it leads, and remember the target's size and time (what a later scan compares).
            target = Path(os.path.realpath(path))
            if not target.is_relative_to(os.path.realpath(root)):
                link_problem = f"symlink leads out of the watched tree (to {db_path(target)[0]})"
            else:
                try:
                    st = os.stat(path)
                except OSError as e:
                    link_problem = f"dangling symlink ({e.strerror})"
        if self.store.known(spath) == (st.st_size, st.st_mtime_ns):
            report.unchanged += 1
            return

        def ignore(reason: str) -> None:
            log.info("ignoring %s: %s", spath, reason)
            self.store.upsert_sample(spath, st.st_size, st.st_mtime_ns, None, label, "image", False, "ignored", reason)
            report.ignored += 1

        if link_problem:
            return ignore(link_problem)
        if not utf8:
            return ignore("the name is not valid UTF-8 (the bytes shown as \\xNN); rename it to learn from it")
        if not stat.S_ISREG(st.st_mode):
            return ignore("not a regular file")
        if label is None:
            return ignore("not inside a label folder (expected <watched dir>/<label>/<file>)")
        suffixes = TEXT_SUFFIXES if self.text else IMAGE_SUFFIXES
        if path.suffix.lower() not in suffixes:
            return ignore(f"file type {path.suffix or '(none)'} is not one this bundle reads "
                          f"({', '.join(sorted(suffixes))})")
        if st.st_size > self.max_file_bytes:
            return self._quarantine(path, st, label, None,
                                    f"{st.st_size} bytes is over the limit of {self.max_file_bytes}", report)
        try:
            data, _ = read_regular_file(path, self.max_file_bytes)
        except OSError as e:
            return ignore(f"cannot read: {e.strerror}")
        if len(data) > self.max_file_bytes:
            return self._quarantine(path, st, label, None,
                                    f"grew over the limit of {self.max_file_bytes} bytes while it was read", report)
        sha = hashlib.sha256(data).hexdigest()
        if self.text:
            problem = kbtext.text_problem(data)  # UTF-8, UTF-16/32 with a BOM or GB18030; not binary, not empty
            if problem:
                return self._quarantine(path, st, label, data, problem, report)
            self.store.upsert_sample(spath, st.st_size, st.st_mtime_ns, sha, label, "text", False, "ok")
            report.added += 1
            return
        try:
            imaging.load_input(data, spath, self.input_spec, self.max_pixels)
        except AutlearnError as e:
            return self._quarantine(path, st, label, data, e.message, report)
        is_new = label not in self.store.classes(self.bundle_id)
        slot = self.store.add_class(self.bundle_id, label, self.capacity)
        if slot is None:
            reason = f"class '{label}' has no free output slot (class capacity {self.capacity} is full)"
            self.store.upsert_sample(spath, st.st_size, st.st_mtime_ns, sha, label, "image",
                                     holdout_of(sha, self.holdout_fraction), "waiting", reason)
            report.waiting += 1
            return
        if is_new:
            log.info("new class '%s' takes output slot %d", label, slot)
            report.new_classes.append(label)
        self.store.upsert_sample(spath, st.st_size, st.st_mtime_ns, sha, label, "image",
                                 holdout_of(sha, self.holdout_fraction), "ok")
        report.added += 1

    def _retry_waiting(self, report: IngestReport) -> None:
        for label in self.store.waiting_labels():
            if self.store.add_class(self.bundle_id, label, self.capacity) is not None:
                self.store.set_status_for_label(label, "waiting", "ok", None)

    def _quarantine_bytes(self) -> int:
        if self._quarantine_used is None:
            try:
                self._quarantine_used = sum(e.stat(follow_symlinks=False).st_size
                                            for e in os.scandir(self.quarantine_dir))
            except OSError:
                self._quarantine_used = 0
        return self._quarantine_used

    def _quarantine(self, path: Path, st: os.stat_result, label: str | None, data: bytes | None, reason: str,
                    report: IngestReport) -> None:
        spath = db_path(path)[0]
        log.warning("quarantined %s: %s", spath, reason)
        tag = hashlib.sha256(os.fsencode(path)).hexdigest()[:12]
        name = os.fsencode(path.name)
        if len(name) > _MAX_NAME_BYTES:  # keep the end: it holds the suffix
            name = name[-_MAX_NAME_BYTES:]
        dest = self.quarantine_dir / os.fsdecode(tag.encode() + b"-" + name)
        note = ""
        if data is not None and self._quarantine_bytes() + len(data) > QUARANTINE_MAX_BYTES:
            data, note = None, f" (no copy kept: the quarantine already holds {QUARANTINE_MAX_BYTES >> 20} MiB)"
        tmp = dest.with_name(dest.name + ".tmp")
        try:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            if data is not None:
                tmp.write_bytes(data)
                os.replace(tmp, dest)
                self._quarantine_used = self._quarantine_bytes() + len(data)
            dest.with_name(dest.name + ".reason.txt").write_text(f"{spath}\n{reason}{note}\n", encoding="utf-8")
        except OSError as e:
            log.error("cannot write quarantine copy of %s: %s", spath, e)
            tmp.unlink(missing_ok=True)  # a full disk must not keep half a copy
        self.store.upsert_sample(spath, st.st_size, st.st_mtime_ns, None, label, "image", False,
                                 "quarantined", reason + note)
        report.quarantined += 1
