"""The file watcher on real inotify: a tree deeper than Python's recursion limit, a watch thread that dies,
and the daemon that keeps noticing new files through both."""

from __future__ import annotations

import pytest

import os
import time
from pathlib import Path

from autlearn.intake.ingest import MAX_DEPTH
from autlearn.intake.watcher import DebouncedWatcher
from harness import Daemon, call, wait_until
from hostile import deep_dirs, remove_deep
from userdata import png_bytes


def _noticed(w: DebouncedWatcher, make) -> bool:
    """Drain what is due, make a change, and say whether the watcher noticed it."""
    time.sleep(w.debounce_s * 2)
    w.due()
    make()
    try:
        wait_until(w.due, 10, "the change to be noticed")
        return True
    except AssertionError:
        return False


@pytest.mark.slow
def test_a_tree_a_thousand_levels_deep_moved_in_keeps_the_watcher_alive_with_bounded_watches(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "3").mkdir(parents=True)
    deep_dirs(tmp_path / "stage", 1000)
    w = DebouncedWatcher([str(inbox)], 0.1)
    w.start()
    try:
        wait_until(lambda: w.state()["watched_dirs"] == 2, 10, "the watches")
        assert _noticed(w, lambda: os.rename(tmp_path / "stage", inbox / "3" / "deep"))
        st = wait_until(lambda: (s := w.state())["watched_dirs"] > 2 and s, 10, "the new tree's watches")
        assert st["alive"] and st["last_error"] is None
        assert st["watched_dirs"] <= MAX_DEPTH + 1  # one chain of folders, down to the bound only
        assert _noticed(w, lambda: (inbox / "3" / "new.png").write_bytes(b"x"))
        # a change at the deepest watched level is seen; the levels below the bound are not watched
        bottom = inbox / "3" / Path(*["deep"] + ["d"] * (MAX_DEPTH - 2))
        assert _noticed(w, lambda: (bottom / "f.png").write_bytes(b"x"))
    finally:
        w.stop()
        remove_deep(inbox / "3" / "deep")


def test_a_watch_thread_that_dies_is_shown_and_started_again(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "3").mkdir(parents=True)
    w = DebouncedWatcher([str(inbox)], 0.1)
    w.start()
    try:
        wait_until(lambda: w.state()["watched_dirs"] == 2, 10, "the watches")
        os.close(w._inotify.fd)  # a real fault: the thread's inotify descriptor goes away under it
        st = wait_until(lambda: (s := w.state())["alive"] is False and s, 10, "the thread to die")
        assert "Bad file descriptor" in st["last_error"] and st["restarts"] == 0
        wait_until(lambda: w.due() and w.state()["alive"], 10, "the restart")  # the control loop restarts it
        assert w.state()["restarts"] == 1
        assert _noticed(w, lambda: (inbox / "3" / "after.png").write_bytes(b"x"))
    finally:
        w.stop()


def test_a_watched_directory_created_after_start_is_watched_even_through_a_symlink(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "later")
    inbox = tmp_path / "link"
    w = DebouncedWatcher([str(inbox)], 0.1)
    w.start()
    try:
        assert _noticed(w, lambda: (tmp_path / "later" / "3").mkdir(parents=True))
        assert _noticed(w, lambda: (inbox / "3" / "a.png").write_bytes(b"x"))
    finally:
        w.stop()


def test_the_daemon_keeps_ingesting_after_a_deep_tree_arrives_and_restarts_with_it_present(tmp_path, tiny_bundle,
                                                                                          user_digits):
    images, _ = user_digits
    root = tmp_path / "r"
    d = Daemon(root, tiny_bundle, training="min_new_samples = 1000\n")
    try:
        assert d.came_up(), (root / "autlearnd.log").read_text()
        wait_until(lambda: call(root, "status")["last_scan"] is not None, 30, "the first scan")
        (d.inbox / "3").mkdir()
        deep_dirs(tmp_path / "stage", 1000)
        os.rename(tmp_path / "stage", d.inbox / "3" / "deep")
        (d.inbox / "3" / "a.png").write_bytes(png_bytes(images[0]))
        st = wait_until(lambda: (s := call(root, "status"))["samples"]["ok"] == 1 and s, 30, "the new file")
        assert st["watcher"]["alive"] and st["watcher"]["last_error"] is None
        assert any("levels" in r["reason"] for r in st["refused"])
        assert d.stop() == 0
        d = Daemon(root, tiny_bundle, training="min_new_samples = 1000\n")  # the tree is still there
        assert d.came_up(), (root / "autlearnd.log").read_text()
        (d.inbox / "3" / "b.png").write_bytes(png_bytes(images[1]))
        wait_until(lambda: call(root, "status")["samples"]["ok"] == 2, 30, "the next file")
        assert call(root, "status")["watcher"]["alive"]
    finally:
        assert d.stop() == 0
        remove_deep(d.inbox / "3" / "deep")
