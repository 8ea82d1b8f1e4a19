"""Where the daemon keeps its files: packaged defaults, or everything below one --root for development."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _below(root: str, name: str) -> property:
    return property(lambda self: getattr(self, root) / name, doc=f"{root}/{name}")


def _socket(name: str) -> property:
    return property(lambda self: f"ipc://{self.run / name}", doc=f"the ipc endpoint of run/{name}")


@dataclass(frozen=True)
class Paths:
    state: Path  # SQLite state, head versions, quarantine, the installed bundle
    cache: Path  # feature cache (deleting it only costs time)
    run: Path  # sockets

    @classmethod
    def packaged(cls) -> "Paths":
        return cls(Path("/var/lib/autlearn"), Path("/var/cache/autlearn"), Path("/run/autlearn"))

    @classmethod
    def under(cls, root: str | Path) -> "Paths":
        root = Path(root).absolute()
        return cls(root / "state", root / "cache", root / "run")

    db = _below("state", "autlearn.sqlite")
    heads = _below("state", "heads")  # head versions, one weights file each
    quarantine = _below("state", "quarantine")
    imported = _below("state", "imported")  # samples copied from removable media
    bundle = _below("state", "bundle")  # the installed, verified bundle
    feature_cache = _below("cache", "features.sqlite")
    control_endpoint = _socket("control.sock")
    events_endpoint = _socket("events.sock")

    def create(self) -> None:
        for d in (self.state, self.cache, self.run, self.heads, self.quarantine, self.imported):
            d.mkdir(parents=True, exist_ok=True)
