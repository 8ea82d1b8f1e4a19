"""Ingestion in-process: a full disk at a commit, reason records for every refused entry, names that cannot
forge a line. The daemon-level corpus is in test_hostile_files."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from autlearn.intake.ingest import Ingestor, shown
from autlearn.learning.store import Store
from userdata import png_bytes

SPEC = {"width": 8, "height": 8}


@pytest.fixture
def ingestor(tmp_path):
    store = Store(tmp_path / "state.sqlite")
    yield Ingestor(store, tmp_path / "quarantine", "b", ["0", "1", "2"], 10, 0.2, 1 << 16, 1_000_000, SPEC)
    store.close()


def _images(user_digits, folder: Path, n: int) -> list[Path]:
    images, _ = user_digits
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"s{i:03d}-{'y' * 120}.png"
        p.write_bytes(png_bytes(images[i]))
        out.append(p)
    return out


def records(tmp_path: Path) -> list[list[str]]:
    return [p.read_text().splitlines() for p in sorted((tmp_path / "quarantine").glob("*.reason.txt"))]


def test_a_scan_that_meets_a_full_disk_fails_as_full_and_ingests_everything_once_space_returns(
        tmp_path, ingestor, user_digits, monkeypatch):
    from autlearn.service.worker import _disk_full
    inbox = tmp_path / "inbox"
    files = _images(user_digits, inbox / "1", 200)
    db = ingestor.store.db
    n = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {n + 4}")  # a real SQLITE_FULL part-way through the scan
    real_batch = ingestor.store.batch

    def batch(commit_every_s=0.25):  # commit at every file, so part of the scan is kept
        return real_batch(0)
    monkeypatch.setattr(ingestor.store, "batch", batch)
    with pytest.raises(sqlite3.OperationalError) as e:
        ingestor.scan([str(inbox)])
    assert _disk_full(e.value), e.value  # recognised as the full disk: the service retries the scan
    assert not db.in_transaction
    stored = ingestor.store.sample_counts()["ok"]
    assert stored < len(files)
    db.execute("PRAGMA max_page_count = 1073741823")  # space returns
    rep = ingestor.scan([str(inbox)])
    assert rep.added == len(files) - stored and ingestor.store.sample_counts()["ok"] == len(files)


def test_every_refused_entry_gets_a_reason_record_and_special_files_are_never_opened(tmp_path, ingestor,
                                                                                     user_digits):
    images, _ = user_digits
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (inbox / "2").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes(images[0]))
    os.mkfifo(inbox / "2" / "pipe.png")
    (inbox / "2" / "escape.png").symlink_to(outside / "secret.png")
    (inbox / "2" / "pipelink.png").symlink_to("pipe.png")
    Path(os.fsdecode(os.fsencode(inbox / "2") + b"/caf\xe9.png")).write_bytes(png_bytes(images[1]))
    with open(inbox / "2" / "huge.png", "wb") as f:
        f.truncate(1 << 30)  # sparse, over the limit: must not be read or copied
    (inbox / "2" / "notes.doc").write_bytes(b"x")
    rep = ingestor.scan([str(inbox)])
    assert rep.ignored == 5 and rep.quarantined == 1
    recs = records(tmp_path)
    assert len(recs) == 6 and all(len(r) == 3 and r[0].startswith("path: ") for r in recs)
    by_name = {r[0].rsplit("/", 1)[1]: r for r in recs}
    assert "FIFO" in by_name["pipe.png"][1] and by_name["pipe.png"][2] == "copy: none"
    assert "leads out" in by_name["escape.png"][1]
    assert "FIFO" in by_name["pipelink.png"][1]
    assert "UTF-8" in by_name["caf\\xe9.png"][1]
    assert "over the limit" in by_name["huge.png"][1] and "not read" in by_name["huge.png"][2]
    assert "type .doc" in by_name["notes.doc"][1]
    # only the reason records were written: no copy of any of them, and the special files are untouched
    assert all(p.name.endswith(".reason.txt") for p in (tmp_path / "quarantine").iterdir())
    assert stat.S_ISFIFO(os.lstat(inbox / "2" / "pipe.png").st_mode)
    assert os.path.islink(inbox / "2" / "escape.png")
    # the store holds the same reasons (status lists them)
    assert {r["status"] for r in ingestor.store.problems()} == {"ignored", "quarantined"}
    assert len(ingestor.store.problems()) == 6


def test_a_name_with_control_characters_cannot_forge_a_log_line_or_a_record_line(tmp_path, ingestor, user_digits,
                                                                                 caplog):
    inbox = tmp_path / "inbox"
    (inbox / "1").mkdir(parents=True)
    forged = "x.png\n2026-12-01 00:00:00 ERROR autlearn: forged\r\x1b[2J.png"
    (inbox / "1" / forged).write_bytes(b"not an image")
    with caplog.at_level(logging.INFO, logger="autlearn"):
        rep = ingestor.scan([str(inbox)])
    assert rep.quarantined == 1
    (rec,) = records(tmp_path)
    assert len(rec) == 3 and rec[0].endswith("x.png\\x0a2026-12-01 00:00:00 ERROR autlearn: forged\\x0d\\x1b[2J.png")
    lines = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert lines and all("\n" not in m and "\r" not in m and "\x1b" not in m for m in lines)
    assert shown("a\u2028b\tc") == "a\\u2028b\\x09c"
