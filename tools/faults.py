"""Fault injectors and the invariants checked after them (samples, heads, SQLite files).

The replayable SEED, the `Tally` a scenario returns, size-limited tmpfs mounts and disk fillers, byte flips.
The scenarios built on them (power_loss.py, full_disk.py, tamper.py, hostile.py, hostile_clients.py) run short
in the tests and long in `make stress` (tools/stress.py). Set AUTLEARN_TEST_SEED to replay a seed a run printed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autlearn.runtime import bundle as bundle_mod
from autlearn.intake import imaging
from autlearn.learning.features import FeatureExtractor
from autlearn.learning.head import Head, load_weights
from harness import call, query

SEED = int(os.environ.get("AUTLEARN_TEST_SEED", "20260501"))


@dataclass
class Tally:
    """What one scenario did and found; a row of the stress table."""
    name: str
    trials: int = 0
    faults: int = 0
    samples_lost: int = 0
    crashes: int = 0
    bad_inputs: int = 0
    problems: list[str] = field(default_factory=list)  # unexpected failures
    known: list[str] = field(default_factory=list)  # failures of bugs already filed (xfail in the short run)
    detail: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    skipped: str = ""

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def end(self, daemon, started: float, mounts=()) -> None:
        """A scenario's teardown: SIGKILL the daemon if it is still alive, unmount its file systems, time it."""
        if daemon is not None and daemon.proc.poll() is None:
            daemon.kill9()
        for m in mounts:
            umount(m)
        self.seconds = time.monotonic() - started


def integrity(db: Path) -> str:
    rows = query(db, "PRAGMA integrity_check")
    return "; ".join(str(r[0]) for r in rows)


def copy_db(db: Path, dest_dir: Path) -> Path:
    """A copy of a SQLite file as a crash left it (with its WAL), to check without touching the original."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(db) + suffix)
        if src.exists():
            shutil.copy(src, dest_dir / (db.name + suffix))
    return dest_dir / db.name


def inbox_files(inbox: Path) -> dict[str, tuple[str, str]]:
    """Every image file of the inbox: path -> (sha256, label)."""
    out = {}
    for p in sorted(inbox.rglob("*.png")):
        out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.relative_to(inbox).parts[0])
    return out


class HeadOracle:
    """Computes what a stored head version must answer, in this process, to compare with the daemon."""

    def __init__(self, bundle_dir: Path):
        self.bundle = bundle_mod.load(bundle_dir)
        self.variant = self.bundle.variant()
        self.extractor = FeatureExtractor(self.variant, 1, "cpu")
        self.head = Head(self.variant, self.bundle.class_capacity, self.bundle.train_batch, 1)
        self.shapes = {k: v.shape for k, v in self.head.get_weights().items()}

    def check_file(self, path: Path) -> str | None:
        """None if `path` is a whole head version of this bundle, else what is wrong with it."""
        try:
            w = load_weights(path)
        except Exception as e:  # a torn or half-written npz
            return f"{path.name} does not load: {type(e).__name__}: {e}"
        if {k: v.shape for k, v in w.items()} != self.shapes:
            return f"{path.name} has weights {sorted(w)} of other shapes than the bundle's head"
        if not all(np.isfinite(v).all() for v in w.values()):
            return f"{path.name} holds non-finite weights"
        return None

    def probs(self, weights: Path, image: bytes, slots: list[int]) -> np.ndarray:
        x = imaging.load_input(image, "probe", self.variant.input, 10 ** 8)
        self.head.set_weights(load_weights(weights))
        active = np.zeros(self.bundle.class_capacity, np.float32)
        active[slots] = 1.0
        return self.head.predict(self.extractor(x[None]), active)[0]


def check_heads(root: Path, oracle: HeadOracle, probe: bytes) -> list[str]:
    """Every recorded head version loads; the current one is a promoted (or the initial) version, and the
    daemon's answer with it equals the answer computed here from its file."""
    problems = []
    state = root / "state"
    st = call(root, "status")
    version, bundle_id = st["head"]["version"], st["bundle"]["id"]
    heads = {v: (status, f) for v, status, f in query(state / "autlearn.sqlite",
                                                      "SELECT version, status, file FROM heads WHERE bundle=?",
                                                      (bundle_id,))}
    for v, (_, fname) in sorted(heads.items()):
        bad = oracle.check_file(state / "heads" / fname)
        if bad:
            problems.append(f"head v{v}: {bad}")
    if version not in heads or heads[version][0] not in ("initial", "promoted"):
        problems.append(f"the current head v{version} is not a persisted promoted version ({heads.get(version)})")
        return problems
    pred = call(root, "predict", {"files": [{"name": "probe.png", "data": base64.b64encode(probe).decode()}],
                                  "version": version, "top": 3})
    slots = dict(query(state / "autlearn.sqlite", "SELECT name, slot FROM classes WHERE bundle=?", (bundle_id,)))
    p = oracle.probs(state / "heads" / heads[version][1], probe, sorted(slots.values()))
    for t in pred["predictions"][0]["top"]:
        if abs(p[slots[t["label"]]] - t["p"]) > 1e-4:
            problems.append(f"head v{version}: the daemon answers p({t['label']}) = {t['p']}, its file gives "
                            f"{p[slots[t['label']]]:.6f}")
    return problems


def check_samples(root: Path, files: dict[str, tuple[str, str]]) -> tuple[int, list[str]]:
    """Every file of `files` is in the samples table exactly once, usable, with its content's hash and label."""
    rows = query(root / "state" / "autlearn.sqlite", "SELECT path, sha256, label, status FROM samples")
    by_path: dict[str, list[tuple]] = {}
    for r in rows:
        by_path.setdefault(r[0], []).append(r)
    lost, problems = 0, []
    for path, (sha, label) in files.items():
        mine = by_path.get(path, [])
        if len(mine) != 1 or mine[0][1:] != (sha, label, "ok"):
            lost += 1
            problems.append(f"sample {Path(path).name}: expected once as ok, found {mine}")
    extra = [r[0] for r in rows if r[3] == "ok" and r[0] not in files]
    if extra:
        problems.append(f"{len(extra)} usable samples that are no file of the inbox: {extra[:3]}")
    return lost, problems


# ---------------------------------------------------------------------------------------------- full disk

def mount_tmpfs(where: Path, size_mb: int) -> str | None:
    """Mount a size-limited tmpfs; None if done, else why not (not root, no mount namespace rights…)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "mounting a size-limited tmpfs needs root"
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "autlearn-test", str(where)],
                       capture_output=True, text=True)
    return None if p.returncode == 0 else f"mount -t tmpfs failed: {p.stderr.strip()}"


def umount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(where: Path, leave_bytes: int = 0) -> Path:
    """Fill the file system of `where` until `leave_bytes` are free (0: until writes fail with ENOSPC)."""
    path = where / f"ballast-{len(list(where.glob('ballast-*')))}"
    with open(path, "wb") as f:
        for size in (1 << 20, 1 << 12, 1):
            while shutil.disk_usage(where).free - size >= leave_bytes:
                try:
                    f.write(b"\0" * size)
                    f.flush()
                except OSError:
                    break
    return path


def free_up(where: Path) -> None:
    for p in where.glob("ballast-*"):
        p.unlink()


def snapshot(root: Path) -> tuple[set, dict]:
    """What must survive: the usable samples and every head version's file, byte for byte."""
    samples = set(query(root / "state" / "autlearn.sqlite", "SELECT path, sha256, label FROM samples WHERE status='ok'"))
    heads = {f: hashlib.sha256((root / "state" / "heads" / f).read_bytes()).hexdigest()
             for (f,) in query(root / "state" / "autlearn.sqlite", "SELECT file FROM heads")}
    return samples, heads


# ---------------------------------------------------------------------------------------------- tampered bundle

def flip_byte(path: Path, offset: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def bundle_files(bundle: Path) -> list[str]:
    """Every file of a bundle: manifest.json, manifest.sha256 (if the builder wrote it) and the listed files."""
    names = [bundle_mod.MANIFEST] + ([bundle_mod.MANIFEST_DIGEST] if (bundle / bundle_mod.MANIFEST_DIGEST).exists()
                                     else [])
    return names + sorted(bundle_mod.load(bundle).manifest["files"])
