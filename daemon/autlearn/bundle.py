"""Reads and verifies a model bundle (docs/bundle-format.md) and installs it atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AutlearnError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TASKS = ("image_classification", "next_word")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Variant:
    name: str
    base_path: Path
    head_path: Path
    base_sha256: str
    head_weights: tuple[str, ...]
    feature_size: int
    info: dict[str, Any]


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def input(self) -> dict[str, Any]:
        return self.manifest["input"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def class_capacity(self) -> int:
        return int(self.manifest["class_capacity"])

    @property
    def train_batch(self) -> int:
        return int(self.manifest["train_batch"])

    @property
    def learning_rate(self) -> float:
        return float(self.manifest.get("optimizer", {}).get("learning_rate", 1e-3))

    @property
    def variant_names(self) -> list[str]:
        return [v["name"] for v in self.manifest["variants"]]

    def variant(self, name: str = "") -> Variant:
        name = name or self.manifest.get("default_variant") or self.variant_names[0]
        for v in self.manifest["variants"]:
            if v["name"] == name:
                return Variant(
                    name=name,
                    base_path=self.root / v["base"],
                    head_path=self.root / v["head"],
                    base_sha256=self.manifest["files"][v["base"]]["sha256"],
                    head_weights=tuple(v["head_weights"]),
                    feature_size=int(v["feature_size"]),
                    info=v,
                )
        raise AutlearnError("not_found", f"bundle {self.root} has no variant {name!r} "
                                         f"(it has: {', '.join(self.variant_names)})")


def _require(m: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in m:
        raise AutlearnError("bad_bundle", f"{where}: missing key '{key}'")
    if not isinstance(m[key], kind):
        raise AutlearnError("bad_bundle", f"{where}: key '{key}' has the wrong type")
    return m[key]


def load(root: str | Path) -> Bundle:
    """Load a bundle and verify every file's sha256; raise bad_bundle naming what is wrong."""
    root = Path(root)
    mpath = root / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AutlearnError("no_bundle", f"{mpath}: no manifest.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AutlearnError("bad_bundle", f"{mpath}: unreadable manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise AutlearnError("bad_bundle", f"{mpath}: manifest is not a JSON object")
    version = _require(manifest, "format_version", int, str(mpath))
    if version != FORMAT_VERSION:
        raise AutlearnError("bad_bundle", f"{mpath}: format_version {version}, this daemon reads {FORMAT_VERSION}")
    task = _require(manifest, "task", str, str(mpath))
    if task not in TASKS:
        raise AutlearnError("bad_bundle", f"{mpath}: task {task!r} is not supported (supported: {', '.join(TASKS)})")
    _require(manifest, "input", dict, str(mpath))
    labels = _require(manifest, "labels", list, str(mpath))
    capacity = _require(manifest, "class_capacity", int, str(mpath))
    if capacity < len(labels):
        raise AutlearnError("bad_bundle", f"{mpath}: class_capacity {capacity} < {len(labels)} labels")
    _require(manifest, "train_batch", int, str(mpath))
    variants = _require(manifest, "variants", list, str(mpath))
    files = _require(manifest, "files", dict, str(mpath))
    if not variants:
        raise AutlearnError("bad_bundle", f"{mpath}: no variants")
    for v in variants:
        for key in ("base", "head"):
            if v.get(key) not in files:
                raise AutlearnError("bad_bundle", f"{mpath}: variant {v.get('name')!r}: {key} file not listed in 'files'")
    for name, meta in files.items():
        path = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise AutlearnError("bad_bundle", f"{mpath}: file name {name!r} leaves the bundle directory")
        if not path.is_file():
            raise AutlearnError("bad_bundle", f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != meta.get("sha256"):
            raise AutlearnError("bad_bundle", f"{path}: sha256 {actual[:12]}… does not match the manifest")
    return Bundle(root, manifest)


def install(source: str | Path, dest: Path) -> Bundle:
    """Verify `source`, then copy it to `dest` atomically. A bad source leaves `dest` untouched."""
    load(source)  # refuse before touching anything
    tmp = dest.with_name(dest.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(source, tmp)
    bundle = load(tmp)  # verify the copy, too
    old = dest.with_name(dest.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old.exists():
        shutil.rmtree(old)
    log.info("installed bundle from %s (%s, variants: %s)", source, bundle.task, ", ".join(bundle.variant_names))
    return load(dest)
