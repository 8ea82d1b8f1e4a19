"""Builds a real Engine (real interpreter, SQLite, files) on a development root for in-process tests."""

from __future__ import annotations

from pathlib import Path

from autlearn.runtime import bundle as bundle_mod
from autlearn.config import Config
from autlearn.service.engine import Engine
from autlearn.paths import Paths
from autlearn.service.api import Service


def make_service(root: Path, bundle_dir: Path, **overrides) -> Service:
    """A started Service (worker thread included) on `root`, watching `root/inbox`."""
    inbox = root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    cfg = Config().with_overrides(**{"paths.root": str(root), "data.watch": [str(inbox)],
                                     "model.bundle": str(bundle_dir), "training.auto": False,
                                     "training.epochs": 20, **overrides})
    svc = Service(cfg, Paths.under(root))
    svc.start()
    return svc


def engine_of(svc: Service) -> Engine:
    """A second, caller-owned engine on the same state (what the worker thread uses)."""
    return Engine(svc.config, svc.paths, svc.bundle, svc.bundle_id, svc.variant)


def no_progress(name, data):
    pass


def never():
    return False


__all__ = ["make_service", "engine_of", "no_progress", "never", "bundle_mod"]
