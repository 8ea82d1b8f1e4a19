"""Hostile input in the watched folders: a generated corpus of bad files next to good ones.

Each bad file must be quarantined or ignored with a reason (or, for directories and hidden names, simply
not taken), the daemon must stay up with bounded memory, the scan must never block (FIFOs!), the good files
must be learnt, and nothing in the user's folder may be changed or deleted. `hostile_files()` (tools/hostile.py)
is the scenario with its corpus; `tools/stress.py` runs it with a large corpus of mutated images as well.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from autlearn.runtime import bundle as bundle_mod
from autlearn.durable import read_regular_file
from autlearn.intake.ingest import MAX_DEPTH, Ingestor
from autlearn.learning.store import Store
from faults import SEED
from harness import Daemon, call, proc_status, query, wait_until
from hostile import HOSTILE_DATA, MAX_PIXELS, RSS_BOUND_MB, deep_dirs, hostile_files, remove_deep
from userdata import png_bytes, write_user


def test_hostile_corpus_is_quarantined_or_ignored_and_good_files_are_learnt(tmp_path, tiny_bundle, user_digits):
    images, labels = user_digits
    t = hostile_files(tmp_path, tiny_bundle, images, labels, SEED, n_mutations=60)
    assert t.crashes == 0 and not t.problems, "\n".join(t.problems)
    assert t.detail["stop (s)"] < 10  # nothing (a FIFO) holds the worker


# ---------------------------------------------------------------------------------------------- ingest, in-process

@pytest.fixture
def ingestor(tmp_path, tiny_bundle):
    b = bundle_mod.load(tiny_bundle)
    store = Store(tmp_path / "state.sqlite")
    yield Ingestor(store, tmp_path / "quarantine", "b", b.labels, b.class_capacity, 0.2, 1 << 20, MAX_PIXELS,
                   b.input)
    store.close()


def test_reading_a_fifo_never_blocks(tmp_path):
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    out = []

    def read():
        try:
            read_regular_file(fifo, 1 << 20)
        except OSError as e:
            out.append(e)
    th = threading.Thread(target=read, daemon=True)
    th.start()
    th.join(5)
    if th.is_alive():  # unblock it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("read_regular_file blocked on a FIFO")
    assert out and "regular" in str(out[0])


def test_scan_survives_names_that_are_not_utf8_and_a_very_deep_tree(tmp_path, ingestor, user_digits):
    images, _ = user_digits
    inbox = tmp_path / "inbox"
    (inbox / "3").mkdir(parents=True)
    good = png_bytes(images[0])
    (Path(os.fsdecode(os.fsencode(inbox / "3") + b"/caf\xe9.png"))).write_bytes(good)
    (inbox / "3" / "z-after.png").write_bytes(png_bytes(images[1]))
    deep = deep_dirs(inbox / "4", 1100)
    (deep / "deep.png").write_bytes(png_bytes(images[2]))
    (inbox / "4" / Path(*["d"] * (MAX_DEPTH - 1)) / "within.png").write_bytes(png_bytes(images[3]))
    try:
        rep = ingestor.scan([str(inbox)])
        assert (rep.added, rep.ignored) == (2, 2)  # the deep file is not taken: its folder is refused
        assert ingestor.scan([str(inbox)]).unchanged == 4  # remembered, not re-read or re-recorded
        (reason,) = [r for r in ingestor.store.problems() if "caf" in r["path"]]
        assert reason["path"].endswith("caf\\xe9.png") and "UTF-8" in reason["reason"]
        bound = str(inbox / "4" / Path(*["d"] * (MAX_DEPTH - 1)))
        (folder,) = [r for r in ingestor.store.problems() if r["path"] == bound]
        assert f"more than {MAX_DEPTH} levels" in folder["reason"]
        records = [p.read_text() for p in (tmp_path / "quarantine").glob("*.reason.txt")]
        assert any(f"path: {bound}\n" in r and "levels" in r for r in records)
        assert any("caf\\xe9.png" in r and "UTF-8" in r for r in records)
    finally:
        remove_deep(inbox / "4" / "d")


def test_an_in_tree_symlink_is_not_taken_again_on_every_scan(tmp_path, ingestor, user_digits):
    images, _ = user_digits
    inbox = tmp_path / "inbox"
    (inbox / "3").mkdir(parents=True)
    (inbox / "3" / "a.png").write_bytes(png_bytes(images[0]))
    (inbox / "3" / "b.png").symlink_to("a.png")
    assert ingestor.scan([str(inbox)]).added == 2
    ingestor.store.mark_trained([s.id for s in ingestor.store.usable_samples()], 1)
    rep = ingestor.scan([str(inbox)])
    assert rep.unchanged == 2 and ingestor.store.count_new() == 0


def test_quarantine_keeps_long_names_and_stops_copying_at_its_cap(tmp_path, ingestor, monkeypatch):
    import autlearn.intake.ingest as ingest_mod
    inbox = tmp_path / "inbox"
    (inbox / "7").mkdir(parents=True)
    (inbox / "7" / ("n" * 251 + ".png")).write_bytes(b"\x89PNG junk")
    for i in range(5):
        (inbox / "7" / f"bad{i}.png").write_bytes(bytes([i]) * 40_000)
    monkeypatch.setattr(ingest_mod, "QUARANTINE_MAX_BYTES", 100_000)
    rep = ingestor.scan([str(inbox)])
    assert rep.quarantined == 6
    q = tmp_path / "quarantine"
    copies = [p for p in q.iterdir() if not p.name.endswith(".reason.txt")]
    assert len(list(q.glob("*.reason.txt"))) == 6  # every bad file has its reason
    assert sum(p.stat().st_size for p in copies) <= 100_000  # but copies stop at the cap
    assert any("no copy kept" in r["reason"] for r in ingestor.store.problems())
    assert not list(q.glob("*.tmp"))


# ---------------------------------------------------------------------------------------------- races with training

def _fd_targets(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.add(os.readlink(fd))
        except OSError:
            pass
    return out


def _paused_round_with_a_swapped_sample(tmp_path, bundle, images, labels, swap, fake_battery) -> tuple[Daemon, Path]:
    """A round that has computed its features waits at a step boundary (paused: the board runs on battery);
    meanwhile a training sample's file is replaced by `swap(path)`. The charger plugged in makes the round read
    that file again for its augmented copy."""
    root = tmp_path / "r"
    sysfs = tmp_path / "sys"
    fake_battery(sysfs, "Discharging", 0)
    d = Daemon(root, bundle, training="auto = false\nepochs = 5\naugment_copies = 1\n", data=HOSTILE_DATA,
               extra_config=f'[policy]\nsysfs = "{sysfs}"\n')
    assert d.came_up()
    write_user(d.inbox, images[:60], labels[:60])
    wait_until(lambda: call(root, "status")["samples"]["ok"] == 60, 30, "ingestion")
    call(root, "train")  # a requested round starts on battery too, and waits at its first step boundary
    wait_until(lambda: call(root, "status")["activity"] == "paused", 30, "the paused round")
    (path,) = query(root / "state" / "autlearn.sqlite", "SELECT path FROM samples WHERE holdout=0 LIMIT 1")[0]
    swap(Path(path))
    fake_battery(sysfs, "Charging", 1)
    return d, Path(path)


def test_a_sample_swapped_for_a_fifo_during_a_round_does_not_hang_the_worker(tmp_path, tiny_bundle, user_digits,
                                                                              fake_battery):
    images, labels = user_digits

    def to_fifo(p: Path) -> None:
        p.unlink()
        os.mkfifo(p)
    d, fifo = _paused_round_with_a_swapped_sample(tmp_path, tiny_bundle, images, labels, to_fifo,
                                                   fake_battery)
    try:
        resumed, blocked, st = time.monotonic(), False, None
        while time.monotonic() - resumed < 15:
            st = call(d.root, "status")
            if st["last_round"] is not None:
                break  # the round finished: nothing blocked
            if time.monotonic() - resumed > 2.0:
                try:  # succeeds only if a reader waits in open(); being a writer, it also lets that reader go
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                    blocked = True
                    break
                except OSError:
                    pass
            time.sleep(0.1)
        assert not blocked, "the worker thread was blocked opening a FIFO (it waits for a writer forever)"
        assert st["last_round"] is not None and st["last_round"]["outcome"] in ("promoted", "rejected")
    finally:
        d.kill9()


def test_a_sample_swapped_for_a_huge_file_during_a_round_is_not_read_whole(tmp_path, tiny_bundle, user_digits,
                                                                             fake_battery):
    images, labels = user_digits

    def to_huge(p: Path) -> None:
        p.unlink()
        with open(p, "wb") as f:
            f.truncate(600 << 20)  # sparse: costs no disk, but 600 MB of memory if read whole
    d, _ = _paused_round_with_a_swapped_sample(tmp_path, tiny_bundle, images, labels, to_huge, fake_battery)
    try:
        rss0 = proc_status(d.proc.pid, "VmRSS")
        st = wait_until(lambda: (s := call(d.root, "status"))["last_round"] and s, 30, "the round")
        assert st["last_round"]["outcome"] in ("promoted", "rejected")
        grew = (proc_status(d.proc.pid, "VmHWM") - rss0) // 1024
        assert grew < RSS_BOUND_MB, f"peak RSS grew by {grew} MB reading a sample"
    finally:
        d.kill9()
