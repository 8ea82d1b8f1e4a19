"""Where the daemon keeps its files: packaged defaults, or everything below one --root for development."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

    @property
    def db(self) -> Path:
        return self.state / "autlearn.sqlite"

    @property
    def heads(self) -> Path:
        return self.state / "heads"

    @property
    def quarantine(self) -> Path:
        return self.state / "quarantine"

    @property
    def imported(self) -> Path:
        return self.state / "imported"

    @property
    def bundle(self) -> Path:
        return self.state / "bundle"

    @property
    def feature_cache(self) -> Path:
        return self.cache / "features.sqlite"

    @property
    def control_endpoint(self) -> str:
        return f"ipc://{self.run / 'control.sock'}"

    @property
    def events_endpoint(self) -> str:
        return f"ipc://{self.run / 'events.sock'}"

    def create(self) -> None:
        for d in (self.state, self.cache, self.run, self.heads, self.quarantine, self.imported):
            d.mkdir(parents=True, exist_ok=True)
