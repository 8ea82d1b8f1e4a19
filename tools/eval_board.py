"""The board in-process, without the control server: a started Service and a caller-owned Engine.

A real autlearn Service (bundle installed and verified, SQLite store, feature cache, initial head) on a throw-away
development root, and a caller-owned Engine that scans the user's files and runs rounds exactly as autlearnd's
worker does (autlearn.learning.learner.Learner / autlearn.learning.keyboard.KeyboardLearner, chosen by the bundle's
task). Nothing here re-implements learning: the evaluation only writes the user's files, calls `Engine.scan` /
`Engine.round`, and reads back the head version the board would serve, to score it on the user's held-out data that
the board never saw. The tests and tools/bench_keyboard.py use the same pieces (`make_service`, `engine_of`);
tools/harness.py is the board as a subprocess.

No TensorFlow is imported here.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autlearn.config import Config
from autlearn.service.engine import Engine
from autlearn.learning.learner import RoundResult
from autlearn.paths import Paths
from autlearn.service.api import Service


def no_progress(name, data):
    """A round's progress callback that reports nothing."""


def never():
    """A round's stop check that never stops it."""
    return False


def start_service(root: Path, bundle_dir: Path, **overrides) -> Service:
    """A started Service (worker thread included) on `root`, watching `root/inbox`, learning only when asked;
    the daemon's defaults for everything not in `overrides`."""
    inbox = root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    cfg = Config().with_overrides(**{"paths.root": str(root), "data.watch": [str(inbox)],
                                     "model.bundle": str(bundle_dir), "training.auto": False, **overrides})
    svc = Service(cfg, Paths.under(root))
    svc.start()
    return svc


def make_service(root: Path, bundle_dir: Path, **overrides) -> Service:
    """start_service with the tests' shorter rounds (training.epochs = 20)."""
    return start_service(root, bundle_dir, **{"training.epochs": 20, **overrides})


def engine_of(svc: Service) -> Engine:
    """A second, caller-owned engine on the same state (what the worker thread uses)."""
    return Engine(svc.config, svc.paths, svc.bundle, svc.bundle_id, svc.variant)


@dataclass
class Board:
    root: Path
    svc: Service
    eng: Engine

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def scan(self):
        return self.eng.scan()

    def round(self) -> RoundResult:
        return self.eng.round("eval", no_progress, never)

    def version(self) -> int:
        """The head version the board serves now (the promoted candidate, or the one it kept)."""
        return self.eng.current_version()

    def initial_version(self) -> int:
        return int(next(h["version"] for h in self.eng.store.heads(self.svc.bundle_id) if h["status"] == "initial"))

    def slots(self) -> dict[str, int]:
        return self.eng.store.classes(self.svc.bundle_id)

    def close(self) -> None:
        self.svc.stop()
        self.eng.close()
        shutil.rmtree(self.root, ignore_errors=True)


def open_board(root: Path, bundle_dir: Path, **overrides) -> Board:
    """A fresh board on `root` (removed first), watching root/inbox, learning only when asked."""
    if root.exists():
        shutil.rmtree(root)
    svc = start_service(root, bundle_dir, **{"model.threads": 2, "model.delegate": "cpu", **overrides})
    return Board(root, svc, engine_of(svc))


def set_arrival_order(paths: list[Path], start_ns: int = 1_700_000_000 * 10**9) -> None:
    """The board learns online in arrival order (file mtime): give `paths` increasing mtimes in list order."""
    for i, p in enumerate(paths):
        t = start_ns + i * 1_000_000
        os.utime(p, ns=(t, t))


def prequential_curve(chunks: list[tuple[int, int]]) -> dict:
    """The online (predict-then-train) accounting: chunks of (hits, seen) in stream order → the overall
    prequential accuracy, the samples seen, and the cumulative accuracy after each chunk."""
    hits = np.cumsum([h for h, _ in chunks]) if chunks else np.zeros(0)
    seen = np.cumsum([n for _, n in chunks]) if chunks else np.zeros(0)
    if len(chunks) and np.any(np.array([h for h, _ in chunks]) > np.array([n for _, n in chunks])):
        raise ValueError("a chunk has more hits than samples")
    total = int(seen[-1]) if len(seen) else 0
    curve = [float(h / s) if s else None for h, s in zip(hits, seen)]
    return {"accuracy": float(hits[-1] / total) if total else None, "seen": total,
            "seen_after_chunk": [int(s) for s in seen], "cumulative": curve}
