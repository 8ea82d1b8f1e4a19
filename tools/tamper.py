"""Tampered-bundle scenarios: one flipped byte per copy of a bundle file, refused naming the file.

`tamper_sweep` loads the copies in this process; `tampered_daemon` gives them to a running board, which must keep
its installed bundle.
"""

from __future__ import annotations

import base64
import random
import shutil
import time
from pathlib import Path

import numpy as np

from autlearn.runtime import bundle as bundle_mod
from autlearn.errors import AutlearnError
from faults import Tally, bundle_files, flip_byte
from harness import Daemon, call
from userdata import png_bytes

def tamper_sweep(bundle: Path, work: Path, rng: random.Random, per_file: int) -> Tally:
    """Flip one byte of one file of a copy of the bundle, `per_file` offsets per file (all of them if the file is
    smaller; 0: every byte of every file): every copy must be refused with a message that names the flipped
    file. Loading a copy costs a few milliseconds, so the long run flips every byte."""
    t = Tally("tampered bundle: one flipped byte")
    t0 = time.monotonic()
    names = bundle_files(bundle)
    covered = bundle_mod.MANIFEST_DIGEST in names
    copy = work / "tampered"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(bundle, copy)
    for name in names:
        pristine = (bundle / name).read_bytes()
        size = len(pristine)
        offsets = range(size) if per_file <= 0 or per_file >= size else sorted(rng.sample(range(size), per_file))
        for off in offsets:
            flip_byte(copy / name, off, rng.randint(1, 255))
            t.faults += 1
            t.detail[f"flips in {name}"] += 1
            try:
                bundle_mod.load(copy)
            except AutlearnError as e:
                # a flip in a file's sha256 inside the manifest names that file "… does not match the manifest"
                if name not in e.message and not (name == "manifest.json" and "manifest" in e.message):
                    t.problem(f"{name} @{off}: refused, but the message does not name the file: {e.message}")
                else:
                    t.detail["refused, naming the file"] += 1
            except Exception as e:
                t.crashes += 1
                t.problem(f"{name} @{off}: crashed the loader: {type(e).__name__}: {e}")
            else:
                if name == "manifest.json" and not covered:
                    t.detail["manifest flips accepted"] += 1  # a legacy bundle: nothing covers its manifest
                else:
                    t.problem(f"{name} @{off}: a tampered file was accepted")
            finally:
                (copy / name).write_bytes(pristine)
    if t.detail["manifest flips accepted"]:
        t.known.append(f"{t.detail['manifest flips accepted']} of {t.detail['flips in manifest.json']} flipped "
                       "bytes of manifest.json loaded (a legacy bundle without manifest.sha256)")
    shutil.rmtree(copy)
    t.trials = t.faults
    t.seconds = time.monotonic() - t0
    return t


def _refusal_seen(d: Daemon, name: str) -> bool:
    log = (d.root / "autlearnd.log").read_text()
    return any("refused bundle" in line and name in line for line in log.splitlines())


def tampered_daemon(work: Path, bundle: Path, rng: random.Random, per_file: int = 1, only: list[str] | None = None,
                    say=print) -> Tally:
    """A running board is given a bundle with one flipped byte, `per_file` times per file of the bundle (offset 0
    of the manifest files, random offsets of the models) plus a flipped label: every time the daemon comes up with
    the bundle it had, logs a refusal naming the file, and answers with the kept bundle."""
    t = Tally("tampered bundle given to the daemon")
    t0 = time.monotonic()
    root = work / "tamper-daemon"
    d = Daemon(root, bundle)
    try:
        if not d.came_up():
            t.crashes += 1
            t.problem(f"the daemon did not start with the good bundle: {d.keep_log('good')}")
            return t
        good = call(root, "status")["bundle"]["id"]
        if d.stop() != 0:
            t.problem("SIGTERM did not end the daemon cleanly")
        flips = []
        for name in only or bundle_files(bundle):
            size = (bundle / name).stat().st_size
            for k in range(per_file):
                flips.append((name, k if name.startswith("manifest.") and k < size else rng.randrange(size),
                              rng.randint(1, 255)))
        flips.append(("manifest.json", (bundle / "manifest.json").read_bytes().index(b'"3"') + 1, 0x01))  # a label
        probe = base64.b64encode(png_bytes(np.zeros((8, 8), np.uint8))).decode()
        for i, (name, offset, mask) in enumerate(flips):
            bad = work / f"bad{i}"
            shutil.copytree(bundle, bad)
            flip_byte(bad / name, offset, mask)
            t.faults += 1
            t.trials += 1
            t.detail[f"flips in {name}"] += 1
            d = Daemon(root, bad)
            try:
                if not d.came_up():
                    t.crashes += 1
                    t.problem(f"{name} @{offset}: the daemon did not come up: {d.keep_log(f'bad{i}')}")
                    continue
                if call(root, "status")["bundle"]["id"] != good:
                    t.problem(f"{name} @{offset}: the tampered bundle replaced the installed one")
                elif not _refusal_seen(d, name):
                    t.problem(f"{name} @{offset}: the log does not say it refused {name}: {d.keep_log(f'bad{i}')}")
                else:
                    t.detail["refused, kept the installed bundle"] += 1
                pred = call(root, "predict", {"files": [{"name": "x.png", "data": probe}]})
                if not pred["predictions"][0]["label"]:
                    t.problem(f"{name} @{offset}: the kept bundle does not answer")
            finally:
                if d.stop() != 0:
                    t.crashes += 1
                    t.problem(f"{name} @{offset}: SIGTERM did not end the daemon cleanly")
                shutil.rmtree(bad)
    finally:
        t.end(d, t0)
    say(f"tampered bundle given to the daemon: {dict(t.detail)}")
    return t
