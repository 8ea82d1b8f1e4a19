"""Removable media: found in a mount table, copied whole (never half), imported by the running daemon."""

from __future__ import annotations

import pytest

import os
from pathlib import Path

from autlearn.intake.media import Importer, MediaWatcher, removable_mounts
from harness import Daemon, wait_until


def stick(root: Path, name: str, files: dict[str, bytes]) -> Path:
    mount = root / name
    for rel, data in files.items():
        p = mount / "autlearn" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return mount


def mounts_line(point: Path) -> str:
    return f"/dev/sdb1 {str(point).replace(' ', chr(92) + '040')} vfat rw,nosuid 0 0\n"


def test_mount_table_finds_only_media_with_the_folder(tmp_path):
    media = tmp_path / "media"
    with_folder = stick(media, "MY STICK", {"3/a.png": b"x"})
    without = media / "camera"
    without.mkdir(parents=True)
    table = tmp_path / "mounts"
    table.write_text("proc /proc proc rw 0 0\n" + mounts_line(with_folder) + mounts_line(without) +
                     mounts_line(tmp_path / "elsewhere"))
    assert removable_mounts(table, [str(media)], "autlearn") == {str(with_folder)}
    w = MediaWatcher(table, [str(media)], "autlearn")
    assert w.new_media() == {str(with_folder)}
    assert w.new_media() == set()  # only once per insertion
    table.write_text("")
    assert w.new_media() == set()
    table.write_text(mounts_line(with_folder))
    assert w.new_media() == {str(with_folder)}  # plugged in again


def test_import_copies_whole_files_with_their_hash_and_skips_vanished_ones(tmp_path, user_digits, write_user):
    images, labels = user_digits
    mount = tmp_path / "stick"
    write_user(mount / "autlearn", images[:6], labels[:6])
    (mount / "autlearn" / "loose.png").write_bytes(b"no label folder")
    dest = tmp_path / "imported"
    (dest / "3").mkdir(parents=True)
    (dest / "3" / ".leftover.png.77.1.tmp").write_bytes(b"half")  # what a pulled stick left last time
    imp = Importer(dest)
    assert imp.clean_partial() == 1
    files = sorted((mount / "autlearn").glob("*/*.png"))
    victim = files[-1]
    victim_bytes = victim.read_bytes()
    seen = []

    def pull_one_file():  # the stick loses a file while the import runs
        seen.append(1)
        if len(seen) == 2:
            victim.unlink()
        return False

    report = imp.import_mount(str(mount), pull_one_file)
    assert report.copied == 5 and any("not inside a label folder" in r for r in report.skipped)
    copies = sorted(dest.rglob("*.png"))
    assert len(copies) == 5 and not list(dest.rglob("*.tmp"))
    assert victim_bytes not in [c.read_bytes() for c in copies]
    import hashlib
    for c in copies:
        assert c.name.startswith(hashlib.sha256(c.read_bytes()).hexdigest()[:24])
    again = imp.import_mount(str(mount))
    assert again.copied == 0 and again.already == 5


def test_daemon_imports_a_stick_when_it_is_mounted(tmp_path, tiny_bundle, user_digits, write_user):
    images, labels = user_digits
    media, table = tmp_path / "media", tmp_path / "mounts"
    table.write_text("")
    mount = media / "stick"
    write_user(mount / "autlearn", images[:30], labels[:30])
    d = Daemon(tmp_path / "r", tiny_bundle,
                     extra_config=f'[media]\nmounts = "{table}"\nunder = ["{media}"]\n').up()
    try:
        assert d.status()["samples"]["ok"] == 0
        table.write_text(mounts_line(mount))  # the stick is mounted
        st = wait_until(lambda: (s := d.status())["samples"]["ok"] == 30 and s, 30, "the import")
        assert st["last_import"]["copied"] == 30
        table.write_text("")  # pulled out again: the samples stay, they were copied
        import shutil
        shutil.rmtree(mount)
        d.proc.send_signal(__import__("signal").SIGHUP)  # any later scan keeps them
        wait_until(lambda: d.status()["activity"] == "idle", 10, "idle")
        assert d.status()["samples"]["ok"] == 30
    finally:
        assert d.stop() == 0


@pytest.mark.slow
def test_a_stick_with_a_tree_deeper_than_the_recursion_limit_is_imported_with_the_deep_part_refused(
        tmp_path, user_digits, write_user):
    from autlearn.intake.ingest import MAX_DEPTH
    from hostile import deep_dirs, remove_deep
    images, labels = user_digits
    mount = tmp_path / "stick"
    write_user(mount / "autlearn", images[:3], labels[:3])
    deep = deep_dirs(mount / "autlearn" / "4", 1100)
    (deep / "deep.png").write_bytes(b"x")
    try:
        report = Importer(tmp_path / "imported").import_mount(str(mount))
        assert report.copied == 3
        assert any(f"more than {MAX_DEPTH} levels" in r for r in report.skipped)
    finally:
        remove_deep(mount / "autlearn" / "4" / "d")
