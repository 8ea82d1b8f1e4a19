"""Ingestion: walk the watched directories, validate new files, hash and label them, quarantine bad ones.

Layout of a watched directory: one sub-folder per label (`<watch>/<label>/<file>`). The user's files are
never moved, changed or deleted: a bad file is *copied* into the quarantine with a reason file beside it
and remembered, so it is not retried until it changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from . import imaging
from .errors import AutlearnError
from .store import Store

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pgm", ".ppm"}


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
                 holdout_fraction: float, max_file_bytes: int, max_pixels: int, input_spec: dict):
        self.store = store
        self.quarantine_dir = quarantine_dir
        self.bundle_id = bundle_id
        self.capacity = capacity
        self.holdout_fraction = holdout_fraction
        self.max_file_bytes = max_file_bytes
        self.max_pixels = max_pixels
        self.input_spec = input_spec
        store.ensure_public_classes(bundle_id, labels)

    # --- walking ---
    def scan(self, roots: list[str]) -> IngestReport:
        report = IngestReport()
        present: set[str] = set()
        for root in roots:
            rootp = Path(root).absolute()
            if not rootp.is_dir():
                log.warning("watched directory %s does not exist (yet)", rootp)
                continue
            for dirpath, dirnames, filenames in os.walk(rootp, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith(".") or name.endswith((".part", ".tmp", "~")):
                        continue
                    path = Path(dirpath) / name
                    present.add(str(path))
                    self._consider(rootp, path, report)
        report.removed = self.store.forget_missing(present, [str(Path(r).absolute()) for r in roots])
        self._retry_waiting(report)
        return report

    def _consider(self, root: Path, path: Path, report: IngestReport) -> None:
        spath = str(path)
        try:
            st = os.lstat(path)
        except OSError:
            return  # vanished between listing and stat
        if self.store.known(spath) == (st.st_size, st.st_mtime_ns):
            report.unchanged += 1
            return
        rel = path.relative_to(root)
        label = rel.parts[0] if len(rel.parts) >= 2 else None

        def ignore(reason: str) -> None:
            log.info("ignoring %s: %s", path, reason)
            self.store.upsert_sample(spath, st.st_size, st.st_mtime_ns, None, label, "image", False, "ignored", reason)
            report.ignored += 1

        if stat.S_ISLNK(st.st_mode):
            target = Path(os.path.realpath(path))
            if not target.is_relative_to(root):
                return ignore(f"symlink leads out of the watched tree (to {target})")
            try:
                st = os.stat(path)
            except OSError:
                return ignore("dangling symlink")
        if not stat.S_ISREG(st.st_mode):
            return ignore("not a regular file")
        if label is None:
            return ignore("not inside a label folder (expected <watched dir>/<label>/<file>)")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return ignore(f"file type {path.suffix or '(none)'} is not an image this bundle reads")
        if st.st_size > self.max_file_bytes:
            return self._quarantine(path, st, label, None,
                                    f"{st.st_size} bytes is over the limit of {self.max_file_bytes}", report)
        try:
            with open(path, "rb") as f:
                data = f.read(self.max_file_bytes + 1)
        except OSError as e:
            return ignore(f"cannot read: {e.strerror}")
        sha = hashlib.sha256(data).hexdigest()
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

    def _quarantine(self, path: Path, st: os.stat_result, label: str | None, data: bytes | None, reason: str,
                    report: IngestReport) -> None:
        log.warning("quarantined %s: %s", path, reason)
        tag = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        dest = self.quarantine_dir / f"{tag}-{path.name}"
        try:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            if data is not None:
                tmp = dest.with_name(dest.name + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, dest)
            (dest.with_name(dest.name + ".reason.txt")).write_text(f"{path}\n{reason}\n", encoding="utf-8")
        except OSError as e:
            log.error("cannot write quarantine copy of %s: %s", path, e)
        self.store.upsert_sample(str(path), st.st_size, st.st_mtime_ns, None, label, "image", False,
                                 "quarantined", reason)
        report.quarantined += 1
