"""Writes a bundle directory, complete or not at all (docs/bundle-format.md).

Writes a bundle directory (docs/bundle-format.md, format_version 1): the .tflite files, manifest.json
with the sha256 and size of every file, and manifest.sha256 with the sha256 of manifest.json itself (a
`sha256sum` line). The directory appears complete or not at all (written beside the target, then renamed)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# The board's names and digest line: autlearn.runtime.bundle reads and verifies what is written here.
from autlearn.runtime.bundle import FORMAT_VERSION, manifest_digest_line
from autlearn.runtime.bundle import MANIFEST as MANIFEST_NAME
from autlearn.runtime.bundle import MANIFEST_DIGEST as MANIFEST_DIGEST_NAME

from .errors import InputError


@dataclass
class Variant:
    """One base model and the head trained on its features."""

    name: str
    base_model: bytes
    head_model: bytes
    head_weights: list[str]
    feature_size: int
    params: int
    flops: int
    latency_ms: float
    accuracy_int8: float
    accuracy_float: float
    extra: dict = field(default_factory=dict)
    cuts: list["Variant"] = field(default_factory=list)  # deeper cuts the variant carries (docs/tail.md)

    @property
    def base_file(self) -> str:
        return f"base_{self.name}_int8.tflite"

    @property
    def head_file(self) -> str:
        return f"head_{self.name}.tflite"

    def to_manifest(self) -> dict:
        return {
            "name": self.name,
            "base": self.base_file,
            "head": self.head_file,
            "head_weights": list(self.head_weights),
            "feature_size": int(self.feature_size),
            "params": int(self.params),
            "flops": int(self.flops),
            "size_bytes": len(self.base_model),
            "latency_ms": round(float(self.latency_ms), 4),
            "accuracy_int8": metric(self.accuracy_int8),
            "accuracy_float": metric(self.accuracy_float),
            **self.extra,
            **({"cuts": [{k: v for k, v in c.to_manifest().items() if k != "name"} for c in self.cuts]}
               if self.cuts else {}),
        }

    def models(self) -> dict[str, bytes]:
        """File name → bytes of its base and head, and of each deeper cut's stem and tail."""
        files = {self.base_file: self.base_model, self.head_file: self.head_model}
        for c in self.cuts:
            files.update(c.models())
        return files


def metric(value: float):
    """A measured share for the manifest: rounded to 4 places, NaN (nothing to measure on) as null."""
    value = float(value)
    return None if value != value else round(value, 4)  # NaN (no validation images) → null


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def created_timestamp() -> str:
    """UTC ISO time; SOURCE_DATE_EPOCH, when set, makes it reproducible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (_dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch and epoch.isdigit()
            else _dt.datetime.now(_dt.timezone.utc))
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty output directory unless `force`; refuse a file in its place."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"output directory {out} is not empty (use --force to replace it)")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise InputError(f"parent directory {parent} of the output does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write in {parent}")


def build_manifest(*, task: str, input_spec: dict, labels: list[str], class_capacity: int, train_batch: int,
                   optimizer: dict, variants: list[Variant], files: dict[str, dict], build: dict,
                   fields: dict | None = None) -> dict:
    """`fields`: task-specific top-level entries (e.g. next_word's vocabulary and tokenizer), placed after
    `labels`; they may not replace the common ones."""
    fields = dict(fields or {})
    common = {"format_version", "task", "input", "labels", "class_capacity", "train_batch", "optimizer",
              "default_variant", "variants", "files", "build"}
    clash = common & set(fields)
    if clash:
        raise ValueError(f"task fields may not replace {sorted(clash)}")
    return {
        "format_version": FORMAT_VERSION,
        "task": task,
        "input": input_spec,
        "labels": list(labels),
        **fields,
        "class_capacity": int(class_capacity),
        "train_batch": int(train_batch),
        "optimizer": optimizer,
        "default_variant": variants[0].name,
        "variants": [v.to_manifest() for v in variants],
        "files": files,
        "build": build,
    }


def write_bundle(out: str | Path, *, task: str, input_spec: dict, labels: list[str], class_capacity: int,
                 train_batch: int, optimizer: dict, variants: list[Variant], build: dict,
                 force: bool = False, extra_files: dict[str, bytes] | None = None,
                 fields: dict | None = None) -> dict:
    """Write the bundle to `out` and return its manifest. `extra_files` (name → bytes) are written and
    listed in `files` with their sha256 like the models; `fields` are task-specific manifest entries."""
    out = Path(out)
    check_output_dir(out, force)
    blobs: dict[str, bytes] = {}
    for variant in variants:
        blobs.update(variant.models())
    for name, data in (extra_files or {}).items():
        if name in blobs or name in (MANIFEST_NAME, MANIFEST_DIGEST_NAME) or "/" in name or name.startswith("."):
            raise ValueError(f"bad extra bundle file name {name!r}")
        blobs[name] = data
    files = {name: {"sha256": sha256_bytes(data), "bytes": len(data)} for name, data in sorted(blobs.items())}
    manifest = build_manifest(task=task, input_spec=input_spec, labels=labels, class_capacity=class_capacity,
                              train_batch=train_batch, optimizer=optimizer, variants=variants, files=files,
                              build=build, fields=fields)
    parent = out.resolve().parent
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
        try:
            os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the daemon may run as another user
            for name, data in blobs.items():
                (staging / name).write_bytes(data)
            manifest_bytes = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
            (staging / MANIFEST_NAME).write_bytes(manifest_bytes)
            (staging / MANIFEST_DIGEST_NAME).write_text(manifest_digest_line(manifest_bytes), encoding="ascii")
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except OSError as exc:
        raise InputError(f"cannot write bundle to {out}: {exc}") from exc
    return manifest
