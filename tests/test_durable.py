"""Durable writes: the old content or the new one, never half, and no temporary file left by a failed write."""

import errno
import os

import numpy as np
import pytest

from autlearn.durable import remove_temporaries, write_atomic, write_text_atomic


def test_write_atomic_replaces_the_file_and_a_failed_write_keeps_the_old_content(tmp_path):
    p = tmp_path / "head-v1.npz"
    write_atomic(p, lambda f: np.savez(f, w=np.arange(3)))
    with np.load(p) as z:
        assert list(z["w"]) == [0, 1, 2]

    def full_disk(f):
        f.write(b"half of it")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as e:
        write_atomic(p, full_disk)
    assert e.value.errno == errno.ENOSPC
    with np.load(p) as z:  # the previous version is whole
        assert list(z["w"]) == [0, 1, 2]
    assert [q.name for q in tmp_path.iterdir()] == ["head-v1.npz"]  # no temporary file stays behind
    write_text_atomic(tmp_path / "r.txt", "path: a\n")
    assert (tmp_path / "r.txt").read_text() == "path: a\n"


def test_temporaries_of_writes_cut_short_are_hidden_from_the_scan_and_removed_at_start(tmp_path):
    from autlearn.intake.ingest import walk_files
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "a.png").write_bytes(b"x")
    (tmp_path / "3" / f".a.png.{os.getpid()}.1.tmp").write_bytes(b"half")  # what a power cut leaves
    assert [p.name for p, _ in walk_files(tmp_path)] == ["a.png"]
    assert remove_temporaries(tmp_path) == 1
    assert sorted(p.name for p in (tmp_path / "3").iterdir()) == ["a.png"]
