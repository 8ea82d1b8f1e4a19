"""Removable media: a mounted stick or card that carries an `autlearn/` folder is imported.

Samples are *copied* into the state directory (the stick may vanish at any moment): each file is read once,
hashed, written to a temporary name, fsynced and renamed, so a pulled stick leaves only whole samples.
The copies land in `<state>/imported/<label>/<sha256 prefix><suffix>`, which the daemon scans like a watched
directory. Mounts are found in the mount table (works everywhere); where udev runs, pyudev wakes the check
as soon as a block device or a USB accelerator comes or goes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..durable import read_regular_file, remove_temporaries, write_atomic
from .ingest import shown, walk_files

log = logging.getLogger(__name__)


def _unescape(field_: str) -> str:
    """The mount table escapes spaces and tabs as octal (\\040)."""
    return field_.encode().decode("unicode_escape")


def removable_mounts(mounts_file: Path, under: list[str], folder: str) -> set[str]:
    """Mount points below one of `under` that carry `folder`."""
    try:
        text = mounts_file.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        log.debug("cannot read %s: %s", mounts_file, e)
        return set()
    found = set()
    roots = [os.path.abspath(u).rstrip("/") + "/" for u in under]
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        point = _unescape(parts[1])
        if any((point.rstrip("/") + "/").startswith(r) and point.rstrip("/") + "/" != r for r in roots):
            try:
                if (Path(point) / folder).is_dir():
                    found.add(point)
            except OSError:
                continue
    return found


@dataclass
class ImportReport:
    mount: str
    copied: int = 0
    already: int = 0
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"mount": self.mount, "copied": self.copied, "already": self.already,
                "skipped": self.skipped[:20], "skipped_count": len(self.skipped)}


class Importer:
    def __init__(self, dest: Path, folder: str = "autlearn", max_file_bytes: int = 20 << 20):
        self.dest = dest
        self.folder = folder
        self.max_file_bytes = max_file_bytes

    def clean_partial(self) -> int:
        """Remove temporary files a crash or a pulled stick left behind."""
        return remove_temporaries(self.dest) if self.dest.is_dir() else 0

    def import_mount(self, mount: str, should_stop: Callable[[], bool] = lambda: False) -> ImportReport:
        report = ImportReport(mount)
        src_root = Path(mount) / self.folder
        for path, refused in walk_files(src_root):  # iterative and depth-bounded, as the scan of watched folders
            if should_stop():
                return report
            rel = path.relative_to(src_root)
            if refused:
                report.skipped.append(f"{shown(path)}: {refused}")
            elif len(rel.parts) < 2:
                report.skipped.append(f"{shown(rel)}: not inside a label folder")
            else:
                self._copy(path, rel.parts[0], report)
        return report

    def _copy(self, src: Path, label: str, report: ImportReport) -> None:
        try:
            if not src.is_file() or src.is_symlink():
                report.skipped.append(f"{shown(src)}: not a regular file")
                return
            data, _ = read_regular_file(src, self.max_file_bytes)  # a FIFO swapped in is refused, not waited on
            if len(data) > self.max_file_bytes:
                report.skipped.append(f"{shown(src)}: larger than {self.max_file_bytes} bytes")
                return
        except OSError as e:  # the stick went away, or a bad sector
            report.skipped.append(f"{shown(src)}: {e.strerror or e}")
            return
        sha = hashlib.sha256(data).hexdigest()
        target = self.dest / label / f"{sha[:24]}{src.suffix.lower()}"
        if target.exists():
            report.already += 1
            return
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, data)
        except OSError as e:
            report.skipped.append(f"{shown(src)}: cannot store the copy: {e.strerror or e}")
            return
        report.copied += 1


class MediaWatcher:
    """Says which media appeared since the last look; pyudev makes it look at once on device events."""

    def __init__(self, mounts_file: Path, under: list[str], folder: str,
                 on_accelerator_change: Callable[[str], None] | None = None):
        self.mounts_file = mounts_file
        self.under = under
        self.folder = folder
        self.on_accelerator_change = on_accelerator_change
        self.known: set[str] = set()
        self.wake = threading.Event()
        self.udev = "not started"
        self._observer = None

    def start(self) -> None:
        try:
            import pyudev  # type: ignore
        except ImportError:
            self.udev = "pyudev is not installed"
        else:
            if not Path("/run/udev/control").exists():
                self.udev = "no udev running"
            else:
                try:
                    ctx = pyudev.Context()
                    monitor = pyudev.Monitor.from_netlink(ctx)
                    monitor.filter_by("block")
                    monitor.filter_by("usb")
                    self._observer = pyudev.MonitorObserver(monitor, callback=self._on_device, daemon=True)
                    self._observer.start()
                    self.udev = "listening"
                except Exception as e:  # netlink refused (containers, no permission)
                    self.udev = f"udev unavailable ({e})"
        if self.udev != "listening":
            log.info("%s: removable media are found by reading %s; accelerator hotplug is not followed",
                     self.udev, self.mounts_file)

    def _on_device(self, device) -> None:
        self.wake.set()
        if device.subsystem == "usb" and self.on_accelerator_change is not None:
            self.on_accelerator_change(f"{device.action} {device.sys_name}")

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()

    def new_media(self) -> set[str]:
        """Media mounted since the last call (a medium that was removed and comes back counts again)."""
        self.wake.clear()
        now = removable_mounts(self.mounts_file, self.under, self.folder)
        new = now - self.known
        self.known = now
        return new
