"""Reads and verifies a model bundle (docs/bundle-format.md) and installs it atomically.

Integrity: `manifest.sha256` (one `sha256sum` line) covers the exact bytes of manifest.json, and manifest.json
covers every other file. A bundle without manifest.sha256 (written by a builder before it existed) still loads,
with a warning: a damaged manifest.json cannot be detected there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AutlearnError
from ..durable import fsync_dir, fsync_tree

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TASKS = ("image_classification", "next_word")
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"  # `<sha256 hex>  manifest.json`, as sha256sum writes it
_DIGEST_LINE = re.compile(rb"([0-9a-f]{64})  manifest\.json\n?")


def manifest_digest_line(manifest_bytes: bytes) -> str:
    """The content of manifest.sha256 for these manifest.json bytes (`sha256sum -c manifest.sha256` checks it)."""
    return f"{hashlib.sha256(manifest_bytes).hexdigest()}  {MANIFEST}\n"


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
    # What an input of this variant is (image bundles: how a file is decoded for its base): the bundle's `input`
    # updated by the variant's own (e.g. its input resolution, docs/bundle-format.md).
    input: dict[str, Any] = field(default_factory=dict)

    @property
    def regularisation(self) -> tuple["Regularisation", ...]:
        """The settings of a tail's pull toward the cloud weights its `train` takes as inputs (`tail.regularisation`,
        checked at load), in the manifest's order; () for a head or a tail that compiled its pull in."""
        return tuple(Regularisation(r["name"], float(r["l2"]), float(r["lr_scale"]))
                     for r in (self.info.get("tail") or {}).get("regularisation") or ())


@dataclass(frozen=True)
class Regularisation:
    """One setting of the pull: `train` adds `l2` x Σ‖w − w_cloud‖² over the tail's convolutions to the loss and
    steps them with `lr_scale` x lr (docs/bundle-format.md, "Cut below the head")."""
    name: str
    l2: float
    lr_scale: float


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]
    manifest_covered: bool = True  # False: a legacy bundle without manifest.sha256

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

    def _variant_of(self, name: str, v: dict, spec: dict | None = None) -> Variant:
        return Variant(name=name, base_path=self.root / v["base"], head_path=self.root / v["head"],
                       base_sha256=self.manifest["files"][v["base"]]["sha256"],
                       head_weights=tuple(v["head_weights"]), feature_size=int(v["feature_size"]), info=v,
                       input=spec if spec is not None else {**self.input, **v.get("input", {})})

    def variant(self, name: str = "") -> Variant:
        name = name or self.manifest.get("default_variant") or self.variant_names[0]
        for v in self.manifest["variants"]:
            if v["name"] == name:
                return self._variant_of(name, v)
        raise AutlearnError("not_found", f"bundle {self.root} has no variant {name!r} "
                                         f"(it has: {', '.join(self.variant_names)})")

    def cut_variants(self, name: str = "") -> list[Variant]:
        """The trainable parts of variant `name`, shallowest first: the variant itself (its own `cut`, `head`
        when absent), then each deeper cut it carries in `cuts` (docs/tail.md, "Choosing the cut"), named
        `<variant>@<cut>`; each is a whole Variant (its own stem as base, its tail as head)."""
        first = self.variant(name)
        return [first] + [self._variant_of(f"{first.name}@{c['cut']}", c, first.input)
                          for c in first.info.get("cuts", [])]


def _require(m: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in m:
        raise AutlearnError("bad_bundle", f"{where}: missing key '{key}'")
    if not isinstance(m[key], kind):
        raise AutlearnError("bad_bundle", f"{where}: key '{key}' has the wrong type")
    return m[key]


def _check_trainable_part(v: dict, files: dict, where: str) -> None:
    """A variant, or one of its deeper `cuts`: base and head listed in 'files', head weight names, feature size."""
    for key in ("base", "head"):
        if v.get(key) not in files:
            raise AutlearnError("bad_bundle", f"{where}: {key} file not listed in 'files'")
    names = v.get("head_weights")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise AutlearnError("bad_bundle", f"{where}: key 'head_weights' is not a list of weight names")
    size = v.get("feature_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise AutlearnError("bad_bundle", f"{where}: key 'feature_size' must be a positive integer")
    tail = v.get("tail")
    if isinstance(tail, dict) and "regularisation" in tail:
        _check_regularisation(tail["regularisation"], f"{where}: tail.regularisation")


def _check_regularisation(settings: Any, where: str) -> None:
    """A non-empty list of {name, l2 ≥ 0, lr_scale > 0}, names unique."""
    if not isinstance(settings, list) or not settings:
        raise AutlearnError("bad_bundle", f"{where}: not a non-empty list of settings")
    names = set()
    for r in settings:
        name = r.get("name") if isinstance(r, dict) else None
        if not isinstance(name, str) or not name or name in names:
            raise AutlearnError("bad_bundle", f"{where}: each setting needs its own name, not {name!r}")
        names.add(name)
        for key, low in (("l2", 0.0), ("lr_scale", 1e-12)):
            value = r.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= 1e6:
                raise AutlearnError("bad_bundle", f"{where}: setting {name!r}: '{key}' must be a number "
                                                  f"{'≥ 0' if low == 0 else '> 0'}, not {value!r}")


def _check_image_input(spec: dict, where: str) -> None:
    """The image input spec: a positive `width` and `height`, a known `color_mode` with its number of `channels`,
    a known `resize_policy`, numeric `scale`/`offset`, and `fit_box` (when present) within the frame."""
    from ..intake.imaging import COLOR_MODES, RESIZE_POLICIES

    for key in ("width", "height"):
        value = _require(spec, key, int, where)
        if isinstance(value, bool) or not 1 <= value <= 4096:
            raise AutlearnError("bad_bundle", f"{where}: '{key}' must be between 1 and 4096, not {value}")
    mode = spec.get("color_mode", "L")
    if not isinstance(mode, str) or mode not in COLOR_MODES:
        raise AutlearnError("bad_bundle", f"{where}: 'color_mode' {mode!r} is not supported (supported: "
                                          f"{', '.join(COLOR_MODES)})")
    channels = spec.get("channels", COLOR_MODES[mode])
    if channels != COLOR_MODES[mode] or isinstance(channels, bool):
        raise AutlearnError("bad_bundle", f"{where}: 'channels' {channels!r} does not match color_mode {mode!r} "
                                          f"({COLOR_MODES[mode]} channel(s))")
    policy = spec.get("resize_policy", "resize")
    if not isinstance(policy, str) or policy not in RESIZE_POLICIES:
        raise AutlearnError("bad_bundle", f"{where}: 'resize_policy' {policy!r} is not supported (supported: "
                                          f"{', '.join(RESIZE_POLICIES)})")
    for key in ("scale", "offset"):
        value = spec.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > 1e6:
            raise AutlearnError("bad_bundle", f"{where}: '{key}' must be a finite number, not {value!r}")
    box = spec.get("fit_box", 0)
    if isinstance(box, bool) or not isinstance(box, int) or not 0 <= box <= min(spec["width"], spec["height"]):
        raise AutlearnError("bad_bundle", f"{where}: 'fit_box' must be a whole number of pixels between 0 (plain "
                                          f"resize) and the frame's smaller side, not {box!r}")
    if box and policy != "resize":
        raise AutlearnError("bad_bundle", f"{where}: 'fit_box' {box} (MNIST framing) cannot be combined with "
                                          f"resize_policy {policy!r}")


def _check_variant_input(v: dict, spec: dict, task: str, where: str) -> None:
    """A variant's own `input` (optional): an object that updates the bundle's (an image bundle's only), the
    result checked as the bundle-level one is."""
    if "input" not in v:
        return
    own = v["input"]
    if not isinstance(own, dict):
        raise AutlearnError("bad_bundle", f"{where}: key 'input' is not a JSON object")
    if task != "image_classification":
        raise AutlearnError("bad_bundle", f"{where}: key 'input' (a variant's own input) is for image bundles only")
    _check_image_input({**spec, **own}, f"{where}: input")


def load(root: str | Path) -> Bundle:
    """Load a bundle and verify every file's sha256; raise bad_bundle naming what is wrong."""
    root = Path(root)
    mpath = root / MANIFEST
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        raise AutlearnError("no_bundle", f"{mpath}: no manifest.json") from None
    except OSError as e:
        raise AutlearnError("bad_bundle", f"{mpath}: unreadable manifest: {e}") from None
    covered = _check_manifest_digest(root, raw)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, huge integers
        raise AutlearnError("bad_bundle", f"{mpath}: unreadable manifest: {e!r}"[:500]) from None
    if not isinstance(manifest, dict):
        raise AutlearnError("bad_bundle", f"{mpath}: manifest is not a JSON object")
    version = _require(manifest, "format_version", int, str(mpath))
    if version != FORMAT_VERSION:
        raise AutlearnError("bad_bundle", f"{mpath}: format_version {version}, this daemon reads {FORMAT_VERSION}")
    task = _require(manifest, "task", str, str(mpath))
    if task not in TASKS:
        raise AutlearnError("bad_bundle", f"{mpath}: task {task!r} is not supported (supported: {', '.join(TASKS)})")
    spec = _require(manifest, "input", dict, str(mpath))
    if task == "image_classification":
        _check_image_input(spec, f"{mpath}: input")
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
        if not isinstance(v, dict):
            raise AutlearnError("bad_bundle", f"{mpath}: a variant is not a JSON object")
        _check_trainable_part(v, files, f"{mpath}: variant {v.get('name')!r}")
        _check_variant_input(v, spec, task, f"{mpath}: variant {v.get('name')!r}")
        cuts = v.get("cuts", [])
        if not isinstance(cuts, list):
            raise AutlearnError("bad_bundle", f"{mpath}: variant {v.get('name')!r}: key 'cuts' is not a list")
        for c in cuts:
            where = f"{mpath}: variant {v.get('name')!r}, cut {c.get('cut') if isinstance(c, dict) else c!r}"
            if not isinstance(c, dict) or not isinstance(c.get("cut"), str):
                raise AutlearnError("bad_bundle", f"{where}: an entry of 'cuts' is not an object with a 'cut' name")
            _check_trainable_part(c, files, where)
    for name, meta in files.items():
        path = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise AutlearnError("bad_bundle", f"{mpath}: file name {name!r} leaves the bundle directory")
        if not isinstance(meta, dict):
            raise AutlearnError("bad_bundle", f"{mpath}: the entry of {name!r} in 'files' is not a JSON object")
        if not path.is_file():
            raise AutlearnError("bad_bundle", f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != meta.get("sha256"):
            raise AutlearnError("bad_bundle", f"{path}: sha256 {actual[:12]}… does not match the manifest")
    if not covered:
        log.warning("%s: no %s beside it (a bundle from an older builder): damage inside manifest.json itself "
                    "cannot be detected; rebuild the bundle to get it", mpath, MANIFEST_DIGEST)
    return Bundle(root, manifest, covered)


def _check_manifest_digest(root: Path, raw: bytes) -> bool:
    """Check manifest.json's bytes against manifest.sha256; False if there is none (legacy bundle)."""
    dpath = root / MANIFEST_DIGEST
    try:
        line = dpath.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise AutlearnError("bad_bundle", f"{dpath}: unreadable: {e}") from None
    m = _DIGEST_LINE.fullmatch(line)
    if not m:
        raise AutlearnError("bad_bundle", f"{dpath}: not a '<sha256>  manifest.json' line (damaged)")
    actual = hashlib.sha256(raw).hexdigest()
    if actual != m.group(1).decode():
        raise AutlearnError("bad_bundle", f"{root / MANIFEST}: sha256 {actual[:12]}… does not match "
                                          f"{MANIFEST_DIGEST} ({m.group(1)[:12].decode()}…): manifest.json or "
                                          f"{MANIFEST_DIGEST} is damaged")
    return True


def recover(dest: Path) -> str:
    """Repair what an install() cut off by a power loss left: it swaps directories with two renames
    (dest -> dest.old, dest.new -> dest), so a cut between them leaves no `dest`. Then the verified dest.new
    (what was being installed) is put in place, else dest.old (the previous bundle). Leftover .new/.old
    directories beside a whole `dest` are removed. Returns what was done ("" if nothing)."""
    dest = Path(dest)
    tmp, old = dest.with_name(dest.name + ".new"), dest.with_name(dest.name + ".old")
    done = ""
    if not dest.exists():
        for candidate, what in ((tmp, "finished the interrupted install"), (old, "restored the previous bundle")):
            if not candidate.is_dir():
                continue
            try:
                load(candidate)
            except AutlearnError as e:
                log.warning("bundle recovery: %s does not verify: %s", candidate, e.message)
                continue
            os.rename(candidate, dest)
            fsync_dir(dest.parent)
            done = f"{what} ({candidate.name} -> {dest.name})"
            log.warning("bundle recovery: %s was missing (an install was cut off): %s", dest, done)
            break
    if dest.exists():
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return done


def load_installed(dest: Path) -> Bundle:
    """The installed bundle, after repairing an interrupted install (see recover)."""
    recover(dest)
    return load(dest)


def install(source: str | Path, dest: Path) -> Bundle:
    """Verify `source`, then copy it to `dest` atomically. A bad source leaves `dest` untouched; a power loss at
    any point leaves either bundle whole (recover() at the next start repairs the directory names)."""
    dest = Path(dest)
    recover(dest)  # before anything is removed: dest.old may be the only whole bundle
    load(source)  # refuse before touching anything
    tmp = dest.with_name(dest.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(source, tmp)
    bundle = load(tmp)  # verify the copy, too
    fsync_tree(tmp)
    old = dest.with_name(dest.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)  # a power cut between the two renames: recover() finishes the install
    fsync_dir(dest.parent)
    if old.exists():
        shutil.rmtree(old)
    log.info("installed bundle from %s (%s, variants: %s)", source, bundle.task, ", ".join(bundle.variant_names))
    return load(dest)
