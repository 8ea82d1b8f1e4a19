"""Power-loss scenarios: SIGKILL during ingestion and training, and during a bundle install.

`power_loss` kills at random points of the scan and the round, `install_cut` while the daemon installs a bundle;
after each restart every invariant of faults.py is checked.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np

from autlearn.runtime import bundle as bundle_mod
from autlearn.control.client import Events
from autlearn.paths import Paths
from faults import HeadOracle, Tally, check_heads, check_samples, copy_db, inbox_files, integrity
from harness import Daemon, call, max_round, move_in, query, wait_event, wait_ingested, wait_round_after
from resign import write_manifest
from userdata import png_bytes, write_user

KILL_EVENTS = ("import", "round_started", "features", "augmented", "epoch", "trained", "version_", "round_finished")

def power_loss(work: Path, bundle: Path, images: np.ndarray, labels: np.ndarray, trials: int, seed: int,
               batch: int = 100, epochs: int = 60, say=print) -> Tally:
    """`trials` times: new files arrive, the daemon is SIGKILLed at a random point (during its start, during
    the scan, or at a random event of the round plus up to 10 ms), and after the restart every invariant is
    checked: samples exactly once, both databases intact, the current head a whole persisted version that the
    daemon answers with, and a later round completes."""
    t = Tally("power loss: SIGKILL")
    t0 = time.monotonic()
    rng = random.Random(seed)
    root = work / "power"
    inbox = root / "inbox"
    training = f"min_new_samples = 20\nepochs = {epochs}\n"
    oracle = HeadOracle(bundle)
    probe = png_bytes(images[-1])
    files: dict[str, tuple[str, str]] = {}
    partial: tuple[Path, bytes] | None = None
    runs = 0
    write_user(inbox, images[-batch - 1:-1], labels[-batch - 1:-1], prefix="seed_")  # the user's first files

    def start() -> Daemon:
        nonlocal runs
        runs += 1
        return Daemon(root, bundle, training=training)

    for trial in range(trials + 1):
        last = trial == trials
        if not last and rng.random() < 0.2:  # the power fails again while the daemon starts
            d = start()
            time.sleep(rng.uniform(0.0, 0.6))
            if not d.kill9():
                t.crashes += 1
                t.problem(f"trial {trial}: the daemon died by itself while starting: {d.keep_log(f'run{runs}')}")
            t.faults += 1
            t.detail["kill while starting"] += 1
        d = start()
        if not d.came_up():
            t.crashes += 1
            t.problem(f"trial {trial}: the daemon did not come up after the power loss: {d.keep_log(f'run{runs}')}")
            d.kill9()
            break
        try:
            if partial is not None:  # the copy that was cut off completes after the reboot
                partial[0].write_bytes(partial[1])
                partial = None
            files = inbox_files(inbox)
            if wait_ingested(root, len(files)) is None:
                t.problem(f"trial {trial}: the scan after the restart did not settle")
            lost, problems = check_samples(root, files)
            t.samples_lost += lost
            t.problems += [f"trial {trial}: {p}" for p in problems]
            for db in (root / "state" / "autlearn.sqlite", root / "cache" / "features.sqlite"):
                if (res := integrity(db)) != "ok":
                    t.problem(f"trial {trial}: integrity_check of {db.name} after the restart: {res}")
            t.problems += [f"trial {trial}: {p}" for p in check_heads(root, oracle, probe)]
            before = max_round(root)
            call(root, "train")
            if wait_round_after(root, before) is None:
                t.problem(f"trial {trial}: no round completed after the restart (training did not resume)")
            else:
                t.detail["rounds completed after a restart"] += 1
            if last:
                if d.stop() != 0:
                    t.problem("the final SIGTERM did not end the daemon cleanly")
                unfinished = query(root / "state" / "autlearn.sqlite", "SELECT id FROM rounds WHERE finished IS NULL")
                if unfinished:
                    t.problem(f"rounds left unfinished after a clean stop: {unfinished}")
                break

            # new files arrive, and the power fails at a random point
            stage = work / "stage" / f"t{trial}"
            idx = [(trial * batch + i) % len(images) for i in range(batch)]
            write_user(stage, images[idx], labels[idx], prefix=f"t{trial:03d}_")
            if rng.random() < 0.3:  # and a file is being copied in when it does
                lab = str(int(labels[idx[0]]))
                full = png_bytes(images[idx[0]])
                cut = inbox / lab / f"t{trial:03d}_partial.png"
                cut.parent.mkdir(parents=True, exist_ok=True)
                cut.write_bytes(full[:len(full) // 2])
                partial = (cut, full)
                t.detail["half-written file at the kill"] += 1
            if rng.random() < 0.35:
                point, epoch, delay = "scan", None, rng.uniform(0.45, 0.8)
            else:
                point, delay = rng.choice(KILL_EVENTS), rng.uniform(0.0, 0.01)
                epoch = rng.randint(1, epochs) if point == "epoch" else None
            events = Events(Paths.under(root).events_endpoint) if point != "scan" else None
            move_in(stage, inbox)
            if events is None:
                time.sleep(delay)
            else:
                seen = wait_event(events, point, epoch, 30)
                events.close()
                if not seen:
                    point = f"{point} (missed)"
                time.sleep(delay)
            label = f"kill at {point.rstrip('_')}" + (" (epoch)" if epoch else "")
            if not d.kill9():
                t.crashes += 1
                t.problem(f"trial {trial}: the daemon died by itself: {d.keep_log(f'run{runs}')}")
            d.keep_log(f"run{runs}")
            t.faults += 1
            t.trials += 1
            t.detail[label] += 1
            crash = work / "crash" / f"t{trial}"
            for db in (root / "state" / "autlearn.sqlite", root / "cache" / "features.sqlite"):
                if (res := integrity(copy_db(db, crash))) != "ok":
                    t.problem(f"trial {trial}: integrity_check of {db.name} as the crash left it: {res}")
        except BaseException:
            if d.proc.poll() is None:
                d.kill9()
            raise
    tmp_left = list((root / "state" / "heads").glob("*.tmp"))
    if tmp_left:
        t.detail["head .tmp files left behind"] = len(tmp_left)
    t.detail["interrupted rounds recorded"] = query(root / "state" / "autlearn.sqlite",
                                                    "SELECT COUNT(*) FROM rounds WHERE outcome = 'interrupted'")[0][0]
    t.seconds = time.monotonic() - t0
    say(f"power loss: seed {seed}, {t.trials} trials, {t.faults} kills: {dict(t.detail)}")
    return t


def second_bundle(bundle: Path, dest: Path) -> Path:
    """A copy of `bundle` with another manifest (so another bundle id), written as the builder writes one."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(bundle, dest)
    m = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    m["build"]["copy"] = "second bundle for the install tests"
    write_manifest(dest, m)
    bundle_mod.load(dest)
    return dest


def install_cut(work: Path, bundle: Path, trials: int, seed: int, say=print) -> Tally:
    """The power fails while the daemon installs a new bundle: it starts with the other of two bundles configured,
    and is SIGKILLed 0-10 ms after `state/bundle.new` appears (during the copy, its verification and flush, the two
    renames, or just after). The next start (with the new source, or with none: keep what is installed) must come
    up with one of the two bundles whole (the configured one, if one is), and leave no bundle.new/bundle.old."""
    t = Tally("power loss during a bundle install")
    t0 = time.monotonic()
    rng = random.Random(seed)
    root = work / "install"
    state = root / "state"
    bundles = [bundle, second_bundle(bundle, work / "bundle-b")]
    ids = [bundle_mod.sha256_file(b / "manifest.json")[:16] for b in bundles]
    d = Daemon(root, bundles[0])
    try:
        if not d.came_up():
            t.crashes += 1
            t.problem(f"the first start failed: {d.keep_log('first')}")
            return t
        d.stop()
        current = 0
        for trial in range(trials):
            target = 1 - current
            d = Daemon(root, bundles[target])
            end = time.monotonic() + 60
            while not (state / "bundle.new").exists() and d.proc.poll() is None and time.monotonic() < end:
                time.sleep(0.0002)  # the copy takes milliseconds
            time.sleep(rng.uniform(0.0, 0.01))
            if not d.kill9():
                t.crashes += 1
                t.problem(f"trial {trial}: the daemon died by itself while installing: {d.keep_log(f'i{trial}')}")
            names = {p.name for p in state.iterdir() if p.name.startswith("bundle")}
            where = ("between the two renames" if "bundle" not in names else
                     "during the copy or its check" if "bundle.new" in names else
                     "before the old copy was removed" if "bundle.old" in names else "after the install")
            t.faults += 1
            t.trials += 1
            t.detail[f"killed {where}"] += 1
            restart_with = rng.choice([target, None])  # None: model.bundle = "" keeps the installed bundle
            d = Daemon(root, bundles[restart_with] if restart_with is not None else "")
            try:
                if not d.came_up():
                    t.crashes += 1
                    t.problem(f"trial {trial} (killed {where}): no start after the cut: {d.keep_log(f'r{trial}')}")
                    continue
                got = call(root, "status")["bundle"]["id"]
                if got not in ids:
                    t.problem(f"trial {trial}: the daemon runs an unknown bundle {got}")
                elif restart_with is not None and got != ids[restart_with]:
                    t.problem(f"trial {trial}: configured bundle {ids[restart_with]}, running {got}")
                else:
                    current = ids.index(got)
                    t.detail["restarts with " + ("the configured bundle" if restart_with is not None else
                                                 f"the {'new' if current == target else 'previous'} bundle kept")] += 1
                left = sorted(p.name for p in state.iterdir() if p.name in ("bundle.new", "bundle.old"))
                if left:
                    t.problem(f"trial {trial}: {left} left beside state/bundle after the start")
            finally:
                if d.stop() != 0:
                    t.problem(f"trial {trial}: SIGTERM did not end the daemon cleanly")
    finally:
        t.end(d, t0)
    say(f"power loss during a bundle install: seed {seed}, {dict(t.detail)}")
    return t
