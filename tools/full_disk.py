"""Full-disk scenarios: state and cache on small tmpfs mounts, filled while the daemon works.

`full_disk` fills them during a round, below min_free_mb and to the last byte; `enospc_mid_round` at a random
step of a round with min_free_mb = 0.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from autlearn.control.client import Events
from autlearn.paths import Paths
from faults import (HeadOracle, Tally, check_heads, check_samples, fill, free_up, inbox_files, integrity,
                    mount_tmpfs, snapshot, umount)
from harness import Daemon, call, max_round, move_in, query, wait_event, wait_ingested, wait_round_after, wait_until
from userdata import png_bytes, write_user

def full_disk(work: Path, bundle: Path, images: np.ndarray, labels: np.ndarray, min_free_mb: float = 4.0,
              size_mb: int = 24, epochs: int = 1000, say=print) -> Tally:
    """State and cache each on a small tmpfs. (1) The disk fills while a round trains: the round pauses, status
    says why, and it finishes once space returns. (2) The disk fills below min_free_mb: new files are still
    ingested, no round starts, status says why. (3) It fills to the last byte while new files arrive: ingestion
    fails with 'disk full' and is retried, status keeps answering. (4) Space returns: everything is ingested, a
    round completes, and nothing stored before is lost."""
    t = Tally(f"full disk (tmpfs, min_free_mb={min_free_mb:g})")
    t0 = time.monotonic()
    root = work / "disk"
    mounts = [root / "state", root / "cache"]
    for m in mounts:
        why = mount_tmpfs(m, size_mb)
        if why:
            for done in mounts:
                umount(done)
            t.skipped = why
            return t
    d = None
    oracle = HeadOracle(bundle)
    low = int(min_free_mb * (1 << 20)) // 2

    def status_timed() -> dict:
        t0s = time.monotonic()
        st = call(root, "status", timeout_s=5)
        ms = round(1000 * (time.monotonic() - t0s))
        t.detail["slowest status while full (ms)"] = max(t.detail["slowest status while full (ms)"], ms)
        return st

    try:
        d = Daemon(root, bundle, training=f"min_new_samples = 20\nepochs = {epochs}\n",
                   data=f"min_free_mb = {min_free_mb}\n")
        assert d.came_up(), (root / "autlearnd.log").read_text()
        write_user(work / "s1", images[:100], labels[:100], prefix="a")
        events = Events(Paths.under(root).events_endpoint)
        move_in(work / "s1", d.inbox)

        # (1) the disk fills while the round trains
        if wait_event(events, "epoch", None, 30):
            for m in mounts:
                fill(m, leave_bytes=low)
            t.faults += 1
            paused = wait_event(events, "round_paused", None, 20)
            st = status_timed()
            if not paused or st["activity"] != "paused" or "waiting for space" not in st["why_not_training"]:
                t.problem(f"the round did not pause for the full disk: {st['activity']!r}, {st['why_not_training']!r}")
            else:
                t.detail["round paused, status said why"] += 1
            for m in mounts:
                free_up(m)
            if wait_round_after(root, 0, 60) is None:
                t.problem("the paused round did not finish once space returned")
        else:
            t.problem("the first round never trained")
        events.close()
        samples0, heads0 = snapshot(root)

        # (2) below min_free_mb while idle: files are still taken in, learning waits
        for m in mounts:
            fill(m, leave_bytes=low)
        t.faults += 1
        write_user(work / "s2", images[100:150], labels[100:150], prefix="b")
        move_in(work / "s2", d.inbox)
        st = wait_ingested(root, 150)
        if st is None:
            t.problem("files were not ingested while space was short (but not gone)")
        time.sleep(0.7)  # a round would be queued within a tick (0.5 s)
        st = status_timed()
        if st["last_round"] and st["last_round"]["round_id"] > 1 or "waiting for space" not in st["why_not_training"]:
            t.problem(f"learning did not wait for space: {st['why_not_training']!r}")
        else:
            t.detail["learning waited for space, status said why"] += 1

        # (3) the disk fills to the last byte while new files arrive
        for m in mounts:
            fill(m)
        t.faults += 1
        write_user(work / "s3", images[150:200], labels[150:200], prefix="c")
        move_in(work / "s3", d.inbox)
        try:
            wait_until(lambda: "full" in (status_timed()["last_error"] or ""), 30, "the disk-full error")
            t.detail["ingestion failed with 'disk full', retried"] += 1
        except AssertionError:
            t.problem("ingestion did not report the full disk")
        for _ in range(10):
            st = status_timed()
        if "waiting for space" not in st["why_not_training"]:
            t.problem(f"status does not say learning waits for space: {st['why_not_training']!r}")
        if d.proc.poll() is not None:
            t.crashes += 1
            t.problem("the daemon died on the full disk")
            return t

        # (4) space returns
        for m in mounts:
            free_up(m)
        files = inbox_files(d.inbox)
        if wait_ingested(root, len(files), 60) is None:
            t.problem("the files that arrived on the full disk were not ingested once space returned")
        if wait_round_after(root, 1, 60) is None:
            t.problem("no round completed once space returned")
        lost, problems = check_samples(root, files)
        t.samples_lost += lost
        t.problems += problems
        samples1, heads1 = snapshot(root)
        if not samples0 <= samples1:
            t.samples_lost += len(samples0 - samples1)
            t.problem(f"samples stored before the disk filled are gone: {sorted(samples0 - samples1)[:3]}")
        changed = [f for f, h in heads0.items() if heads1.get(f) != h]
        if changed:
            t.problem(f"head versions changed or lost: {changed}")
        for db in (root / "state" / "autlearn.sqlite", root / "cache" / "features.sqlite"):
            if (res := integrity(db)) != "ok":
                t.problem(f"integrity_check of {db.name}: {res}")
        t.problems += check_heads(root, oracle, png_bytes(images[-1]))
        leftovers = [p.name for m in mounts for p in m.rglob("*.tmp")]
        if leftovers:
            t.known.append(f"temporary files left by failed writes: {leftovers}")
        if d.stop() != 0:
            t.problem("SIGTERM did not end the daemon cleanly")
        t.trials += 1
    finally:
        t.end(d, t0, mounts)
    say(f"full disk: {dict(t.detail)}")
    return t


def enospc_mid_round(work: Path, bundle: Path, images: np.ndarray, labels: np.ndarray, cycles: int, seed: int,
                     epochs: int = 300, say=print) -> Tally:
    """min_free_mb = 0, so nothing pauses early: the disk fills to the last byte at a random moment of a round
    and the round's own writes (head file, SQLite rows, cached features) fail with ENOSPC. The daemon must keep
    answering, lose nothing, and complete a round once space returns."""
    t = Tally("disk full mid-write (min_free_mb=0)")
    t0 = time.monotonic()
    rng = random.Random(seed)
    root = work / "enospc"
    mounts = [root / "state", root / "cache"]
    for m in mounts:
        why = mount_tmpfs(m, 24)
        if why:
            for done in mounts:
                umount(done)
            t.skipped = why
            return t
    d = None
    oracle = HeadOracle(bundle)
    try:
        d = Daemon(root, bundle, training=f"min_new_samples = 20\nepochs = {epochs}\n", data="min_free_mb = 0.0\n")
        assert d.came_up(), (root / "autlearnd.log").read_text()
        write_user(d.inbox, images[:100], labels[:100], prefix="a")
        if wait_round_after(root, 0) is None:
            t.problem("no first round")
        for cycle in range(cycles):
            samples0, heads0 = snapshot(root)
            before = max_round(root)
            point = rng.choice(["features", "augmented", "epoch", "trained"])
            epoch = rng.randint(1, epochs) if point == "epoch" else None
            events = Events(Paths.under(root).events_endpoint)
            lo = 100 + 40 * cycle
            idx = [i % len(images) for i in range(lo, lo + 40)]
            write_user(work / f"e{cycle}", images[idx], labels[idx], prefix=f"e{cycle}_")
            move_in(work / f"e{cycle}", d.inbox)
            if not wait_event(events, point, epoch, 30):
                point += " (missed)"
            for m in mounts:
                fill(m)
            events.close()
            t.faults += 1
            t.trials += 1
            t.detail[f"filled at {point}"] += 1
            end = time.monotonic() + 2.0
            while time.monotonic() < end:  # status keeps answering while writes fail
                st = call(root, "status", timeout_s=5)
            if d.proc.poll() is not None:
                t.crashes += 1
                t.problem(f"cycle {cycle}: the daemon died on the full disk")
                return t
            if st["last_error"]:
                t.detail["jobs failed on the full disk"] += 1
            for m in mounts:
                free_up(m)
            files = inbox_files(d.inbox)
            if wait_ingested(root, len(files), 60) is None:
                t.problem(f"cycle {cycle}: files not ingested once space returned")
            call(root, "train")
            if wait_round_after(root, before, 60) is None:
                t.problem(f"cycle {cycle}: no round completed once space returned")
            lost, problems = check_samples(root, files)
            t.samples_lost += lost
            t.problems += [f"cycle {cycle}: {p}" for p in problems]
            samples1, heads1 = snapshot(root)
            if not samples0 <= samples1:
                t.samples_lost += len(samples0 - samples1)
                t.problem(f"cycle {cycle}: stored samples are gone: {sorted(samples0 - samples1)[:3]}")
            if any(heads1.get(f) != h for f, h in heads0.items()):
                t.problem(f"cycle {cycle}: stored head versions changed or vanished")
            for db in (root / "state" / "autlearn.sqlite", root / "cache" / "features.sqlite"):
                if (res := integrity(db)) != "ok":
                    t.problem(f"cycle {cycle}: integrity_check of {db.name}: {res}")
            t.problems += [f"cycle {cycle}: {p}" for p in check_heads(root, oracle, png_bytes(images[-1]))]
        leftovers = sorted(p.name for m in mounts for p in m.rglob("*.tmp"))
        if leftovers:
            t.known.append(f"{len(leftovers)} temporary files left by failed writes: {leftovers[:3]}")
        if d.stop() != 0:
            t.problem("SIGTERM did not end the daemon cleanly")
        # a failed round the full disk kept from being marked is marked before the next round; a round running at
        # SIGTERM is marked stopped: after a clean stop, none is left without an outcome
        unfinished = query(root / "state" / "autlearn.sqlite", "SELECT id FROM rounds WHERE finished IS NULL")
        if unfinished:
            t.problem(f"rounds {[r[0] for r in unfinished][:3]} stay unfinished in history after a clean stop")
        failed = query(root / "state" / "autlearn.sqlite", "SELECT COUNT(*) FROM rounds WHERE outcome = 'failed'")
        t.detail["rounds recorded as failed"] = failed[0][0]
    finally:
        t.end(d, t0, mounts)
    say(f"disk full mid-write: {dict(t.detail)}; known: {t.known}")
    return t
