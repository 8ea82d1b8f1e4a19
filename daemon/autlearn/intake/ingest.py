"""Ingestion: walk the watched directories, validate new files, hash and label them, quarantine bad ones.

Layout of a watched directory: one sub-folder per label (`<watch>/<label>/<file>`). The user's files are
never moved, changed or deleted: a bad file is *copied* into the quarantine with a reason file beside it
and remembered, so it is not retried until it changes.

Whatever lands in a watched folder is treated as hostile: the walk is iterative and stops MAX_DEPTH folders
below the watched directory (a deeper folder is refused with a reason), files are opened without blocking and
must be regular files when opened (a FIFO, device or socket put in place of a file is refused, never waited
on), reads stop at the size limit, symlinks may not lead out of the watched tree, and a name that is not UTF-8
is recorded under an escaped form and refused with a reason instead of breaking the scan.

Every refused entry gets a reason record: a row in the store (``status`` lists the latest) and a
``<tag>-<name>.reason.txt`` in the quarantine (docs/ingest.md). A copy is kept beside it only for a quarantined
file that was read within ``data.max_file_mb`` (while the quarantine holds less than QUARANTINE_MAX_BYTES): a
FIFO, device, socket or symlink is never opened, read or moved, an oversized file is never read. Names are
written with control characters escaped (``shown``), so a name cannot forge a log line or a record's line.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Iterator

from . import imaging, kbtext
from ..durable import read_regular_file, write_atomic, write_text_atomic
from ..errors import AutlearnError
from ..learning.store import Store

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pgm", ".ppm"}
TEXT_SUFFIXES = {".txt", ".text", ".md"}
TEXT_LABEL = "text"  # keyboard samples have no label: the text is its own target
# Copies kept in the quarantine stop here: a folder full of bad files must not fill the state file system.
QUARANTINE_MAX_BYTES = 64 << 20
QUARANTINE_MAX_RECORDS = 10_000  # reason files; beyond this a refusal is recorded in the store only
# Folders deeper than this below a watched directory are not read (a tree thousands of levels deep is refused).
MAX_DEPTH = 32
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


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def shown(text: str | os.PathLike) -> str:
    """A name or message as written to logs and reason files: bytes that are not UTF-8 as \\xNN, control
    characters (newline, tab, escape…) as \\xNN / \\uNNNN, so one name cannot make two lines."""
    s = db_path(text)[0]
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", s)


def walk_files(root: Path, max_depth: int = MAX_DEPTH) -> Iterator[tuple[Path, str | None]]:
    """Every non-directory entry below `root`, sorted, without recursion and without following symlinks, as
    (path, None); a folder `max_depth` levels down that holds folders itself comes as (folder, reason) and is
    not entered.

    Hidden entries and unfinished copies (*.part, *.tmp, *~) are skipped; a directory that cannot be listed
    is logged and skipped. Symlinks (to files or directories) are yielded for the caller to judge."""
    stack = [(root, 0)]
    while stack:
        d, depth = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            log.warning("cannot list %s: %s", shown(d), e.strerror)
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
                yield Path(e.path), None
        if subdirs and depth >= max_depth:
            yield d, (f"holds folders more than {max_depth} levels below the watched directory; deeper folders "
                      "are not read (move the files up to learn from them)")
            continue
        stack.extend((sd, depth + 1) for sd in reversed(subdirs))


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


@dataclass(eq=False)
class Ingestor:
    """Turns the watched directories' files into the store's samples (one scan at a time, on the worker)."""
    store: Store
    quarantine_dir: Path
    bundle_id: str
    labels: InitVar[list[str]]  # the bundle's public classes, given their slots at once
    capacity: int
    holdout_fraction: float
    max_file_bytes: int
    max_pixels: int
    input_spec: dict
    task: InitVar[str] = "image_classification"
    text: bool = field(init=False)  # a keyboard bundle learns from text files
    _quarantine_used: int | None = field(default=None, init=False)
    _records: int = field(default=0, init=False)

    def __post_init__(self, labels: list[str], task: str) -> None:
        self.text = task == "next_word"
        self.store.ensure_public_classes(self.bundle_id, labels)

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
                for path, refused in walk_files(rootp):
                    present.add(db_path(path)[0])
                    if refused:
                        self._refuse_folder(path, refused, report)
                    else:
                        self._consider(rootp, path, report)
                    checkpoint()
            report.removed = self.store.forget_missing(present, [db_path(Path(r).absolute())[0] for r in roots])
            self._retry_waiting(report)
        return report

    def scan_paths(self, roots: list[str], paths) -> IngestReport:
        """Look again only at `paths` (what the watcher saw change below `roots`): a file is judged as a full
        scan would judge it, a directory that appeared is walked, a path that is gone is forgotten with
        everything below it. Files elsewhere are not touched (not even stat-ed)."""
        report = IngestReport()
        tops = sorted((Path(r).absolute() for r in roots), key=lambda r: -len(r.parts))
        with self.store.batch() as checkpoint:
            for spath in sorted(set(paths)):
                path = Path(spath).absolute()
                root = next((r for r in tops if path.is_relative_to(r)), None)
                if root is None or path == root:
                    continue
                if any(part.startswith(".") for part in path.relative_to(root).parts) or \
                        path.name.endswith((".part", ".tmp", "~")):
                    continue  # what walk_files skips
                try:
                    is_dir = path.is_dir() and not path.is_symlink()
                    exists = is_dir or os.path.lexists(path)
                except OSError:
                    continue
                if not exists:
                    report.removed += self.store.forget_under(db_path(path)[0])
                    continue
                depth = len(path.relative_to(root).parts) - (0 if is_dir else 1)  # of the folder, root = 0
                if depth > MAX_DEPTH:
                    continue  # below a folder that the scan refuses (it holds the reason)
                for f, refused in (walk_files(path, MAX_DEPTH - depth) if is_dir else [(path, None)]):
                    if refused:
                        self._refuse_folder(f, refused, report)
                    else:
                        self._consider(root, f, report)
                    checkpoint()
            self._retry_waiting(report)
        return report

    def _refuse_folder(self, path: Path, reason: str, report: IngestReport) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            return
        spath = db_path(path)[0]
        if self.store.known(spath) == (st.st_size, st.st_mtime_ns):
            report.unchanged += 1
            return
        log.warning("not reading below %s: %s", shown(spath), reason)
        self._record(path, reason)
        self.store.upsert_sample(spath, st.st_size, st.st_mtime_ns, None, None, "folder", False, "ignored", reason)
        report.ignored += 1

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
            log.info("ignoring %s: %s", shown(spath), shown(reason))
            reason += self._record(path, reason)
            self.store.upsert_sample(spath, st.st_size, st.st_mtime_ns, None, label, "image", False, "ignored", reason)
            report.ignored += 1

        if link_problem:
            return ignore(link_problem)
        if not utf8:
            return ignore("the name is not valid UTF-8 (the bytes shown as \\xNN); rename it to learn from it")
        if not stat.S_ISREG(st.st_mode):
            return ignore(f"not a regular file ({_kind(st)}): it is neither read nor copied")
        if label is None:
            return ignore("not inside a label folder (expected <watched dir>/<label>/<file>)")
        suffixes = TEXT_SUFFIXES if self.text else IMAGE_SUFFIXES
        if path.suffix.lower() not in suffixes:
            return ignore(f"file type {path.suffix or '(none)'} is not one this bundle reads "
                          f"({', '.join(sorted(suffixes))})")
        if st.st_size > self.max_file_bytes:
            return self._quarantine(path, st, label, None,
                                    f"{st.st_size} bytes is over the limit of {self.max_file_bytes} "
                                    "(data.max_file_mb): not read, no copy kept", report)
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
            used, records = 0, 0
            try:
                for e in os.scandir(self.quarantine_dir):
                    used += e.stat(follow_symlinks=False).st_size
                    records += e.name.endswith(".reason.txt")
            except OSError:
                pass
            self._quarantine_used, self._records = used, records
        return self._quarantine_used

    def _dest(self, path: Path) -> Path:
        """The quarantine name of `path`: a tag from the whole path, then the end of the file's name."""
        tag = hashlib.sha256(os.fsencode(path)).hexdigest()[:12]
        name = os.fsencode(path.name)
        if len(name) > _MAX_NAME_BYTES:  # keep the end: it holds the suffix
            name = name[-_MAX_NAME_BYTES:]
        return self.quarantine_dir / os.fsdecode(tag.encode() + b"-" + name)

    def _record(self, path: Path, reason: str, copy: str = "none") -> str:
        """Write the reason record of a refused entry; returns a note for the stored reason ('' if written).

        A full disk raises (the scan is retried when space returns); other write errors are logged."""
        self._quarantine_bytes()
        if self._records >= QUARANTINE_MAX_RECORDS:
            return f" (no reason file written: the quarantine already holds {QUARANTINE_MAX_RECORDS} of them)"
        dest = self._dest(path)
        try:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(dest.with_name(dest.name + ".reason.txt"),
                              f"path: {shown(path)}\nreason: {shown(reason)}\ncopy: {shown(copy)}\n")
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.error("cannot write the reason file of %s: %s", shown(path), e)
            return f" (no reason file written: {e.strerror or e})"
        self._records += 1
        return ""

    def _quarantine(self, path: Path, st: os.stat_result, label: str | None, data: bytes | None, reason: str,
                    report: IngestReport) -> None:
        spath = db_path(path)[0]
        log.warning("quarantined %s: %s", shown(spath), shown(reason))
        dest = self._dest(path)
        note, copy = "", "none (not read)"
        if data is not None and self._quarantine_bytes() + len(data) > QUARANTINE_MAX_BYTES:
            data, note = None, f" (no copy kept: the quarantine already holds {QUARANTINE_MAX_BYTES >> 20} MiB)"
            copy = "none" + note
        if data is not None:
            try:
                self.quarantine_dir.mkdir(parents=True, exist_ok=True)
                write_atomic(dest, data)
                self._quarantine_used = self._quarantine_bytes() + len(data)
                copy = dest.name
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise  # the scan is retried when space returns
                log.error("cannot write quarantine copy of %s: %s", shown(spath), e)
                note = f" (no copy kept: {e.strerror or e})"
                copy = "none" + note
        note += self._record(path, reason, copy)
        self.store.upsert_sample(spath, st.st_size, st.st_mtime_ns, None, label, "image", False,
                                 "quarantined", reason + note)
        report.quarantined += 1


def _kind(st: os.stat_result) -> str:
    m = st.st_mode
    for test, word in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(m):
            return word
    return "a special file"
