"""Faults a board meets unattended: power loss (SIGKILL at random points of ingestion and training, and during a
bundle install), a full disk (state and cache on small tmpfs mounts), a tampered bundle (a flipped byte in each file).

The scenarios live in tools/ (power_loss.py, full_disk.py, tamper.py; each returns a `Tally`): the tests here run
short versions with a fixed seed, `tools/stress.py` (`make stress`) runs the long versions with a random seed and
prints the table. Set AUTLEARN_TEST_SEED to replay a seed the stress run printed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from autlearn.runtime import bundle as bundle_mod
from autlearn.errors import AutlearnError
from faults import SEED, bundle_files, flip_byte
from full_disk import enospc_mid_round, full_disk
from harness import Daemon, call
from power_loss import install_cut, power_loss
from resign import write_manifest
from tamper import tamper_sweep, tampered_daemon


def test_power_loss_at_random_points_loses_nothing(tmp_path, tiny_bundle, user_digits):
    images, labels = user_digits
    print(f"power loss seed: {SEED} (replay: AUTLEARN_TEST_SEED={SEED})")
    t = power_loss(tmp_path, tiny_bundle, images, labels, trials=3, seed=SEED)
    assert t.crashes == 0 and t.samples_lost == 0 and not t.problems, t.problems
    assert t.trials == 3 and t.detail["rounds completed after a restart"] == 4


def test_full_disk_pauses_learning_keeps_answering_and_recovers(tmp_path, tiny_bundle, user_digits):
    images, labels = user_digits
    t = full_disk(tmp_path, tiny_bundle, images, labels, epochs=400)
    if t.skipped:
        pytest.skip(t.skipped)
    assert t.crashes == 0 and t.samples_lost == 0 and not t.problems, t.problems
    assert t.detail["round paused, status said why"] == 1
    assert t.detail["learning waited for space, status said why"] == 1


def test_disk_full_in_the_middle_of_a_rounds_writes(tmp_path, tiny_bundle, user_digits):
    images, labels = user_digits
    t = enospc_mid_round(tmp_path, tiny_bundle, images, labels, cycles=1, seed=SEED)
    if t.skipped:
        pytest.skip(t.skipped)
    assert t.crashes == 0 and t.samples_lost == 0 and not t.problems, t.problems


def test_a_flipped_byte_in_any_file_of_the_bundle_is_refused_naming_the_file(tmp_path, tiny_bundle):
    assert (tiny_bundle / "manifest.sha256").is_file(), "the builder no longer writes manifest.sha256"
    t = tamper_sweep(tiny_bundle, tmp_path, random.Random(SEED), per_file=48)
    assert not t.problems and t.crashes == 0, t.problems
    assert t.detail["refused, naming the file"] == t.faults == 48 * len(bundle_files(tiny_bundle))
    # a flip in the manifest's syntax is refused too, naming manifest.json
    copy = tmp_path / "m"
    shutil.copytree(tiny_bundle, copy)
    flip_byte(copy / "manifest.json", 0, 0x01)  # '{' -> 'z'
    with pytest.raises(AutlearnError) as e:
        bundle_mod.load(copy)
    assert e.value.code == "bad_bundle" and "manifest.json" in e.value.message


def test_manifest_sha256_is_what_sha256sum_checks(tiny_bundle):
    p = subprocess.run(["sha256sum", "--check", "--strict", "manifest.sha256"], cwd=tiny_bundle, capture_output=True,
                       text=True)
    assert p.returncode == 0 and "manifest.json: OK" in p.stdout, p.stdout + p.stderr


def _flip_a_label(manifest: Path) -> None:
    text = manifest.read_bytes()
    flip_byte(manifest, text.index(b'"3"') + 1, 0x01)  # label "3" becomes a second "2"


def test_a_flipped_byte_inside_a_manifest_value_is_refused(tmp_path, tiny_bundle):
    copy = tmp_path / "m"
    shutil.copytree(tiny_bundle, copy)
    _flip_a_label(copy / "manifest.json")
    json.loads((copy / "manifest.json").read_text())  # still valid JSON: only the digest can catch it
    with pytest.raises(AutlearnError) as e:
        bundle_mod.load(copy)
    assert e.value.code == "bad_bundle" and "manifest.json" in e.value.message
    assert "manifest.sha256" in e.value.message


def test_a_damaged_or_wrong_digest_file_is_refused(tmp_path, tiny_bundle):
    copy = tmp_path / "m"
    shutil.copytree(tiny_bundle, copy)
    digest = copy / "manifest.sha256"
    good = digest.read_text()
    for text in ("", "\n", good.upper(), good.replace("manifest.json", "other.json"), good[:-2] + "\n",
                 "0" * 64 + "  manifest.json\n", good + good, "\ufeff" + good):
        digest.write_text(text)
        with pytest.raises(AutlearnError) as e:
            bundle_mod.load(copy)
        assert e.value.code == "bad_bundle" and "manifest.sha256" in e.value.message, (text, e.value.message)
    digest.write_text(good.rstrip("\n"))  # sha256sum without the final newline is still the same line
    assert bundle_mod.load(copy).manifest_covered


def test_a_legacy_bundle_without_manifest_sha256_still_loads(tmp_path, tiny_bundle, caplog):
    """Bundles written before manifest.sha256 existed stay loadable (format_version 1 is unchanged); only the
    manifest's own bytes are unprotected there, which the daemon logs."""
    copy = tmp_path / "legacy"
    shutil.copytree(tiny_bundle, copy)
    (copy / "manifest.sha256").unlink()
    with caplog.at_level("WARNING", logger="autlearn.runtime.bundle"):
        b = bundle_mod.load(copy)
    assert not b.manifest_covered and b.labels == bundle_mod.load(tiny_bundle).labels
    assert "manifest.sha256" in caplog.text
    flip_byte(copy / b.manifest["variants"][0]["base"], 100, 0x40)  # the other files are still covered
    with pytest.raises(AutlearnError):
        bundle_mod.load(copy)


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"format_version": ' + b"9" * 5000 + b"}", b"\xff\xfe", b"NaN",
                                 b'{"format_version": 1, "task": "image_classification", "input": {}, "labels": [], '
                                 b'"class_capacity": 0, "train_batch": 1, "variants": [1], "files": {}}',
                                 b'{"format_version": 1, "task": "image_classification", "input": {}, "labels": [], '
                                 b'"class_capacity": 0, "train_batch": 1, "variants": [{"base": "a", "head": "a"}], '
                                 b'"files": {"a": 5}}'],
                         ids=["deep", "huge-int", "not-utf8", "nan", "variant-not-object", "files-entry-not-object"])
def test_a_malformed_manifest_without_a_digest_is_refused_not_a_crash(tmp_path, raw):
    (tmp_path / "manifest.json").write_bytes(raw)
    with pytest.raises(AutlearnError) as e:
        bundle_mod.load(tmp_path)
    assert e.value.code == "bad_bundle" and "manifest.json" in e.value.message

def test_a_daemon_given_a_tampered_bundle_keeps_the_installed_one(tmp_path, tiny_bundle):
    # manifest.json (its label), manifest.sha256 and a model here; every file in tools/stress.py
    only = ["manifest.sha256", sorted(bundle_mod.load(tiny_bundle).manifest["files"])[0]]
    t = tampered_daemon(tmp_path, tiny_bundle, random.Random(SEED), per_file=1, only=only)
    assert t.crashes == 0 and not t.problems, t.problems
    assert t.detail["refused, kept the installed bundle"] == 3


# ---------------------------------------------------------------------------------------------- install cut off

def _installed(tmp_path: Path, tiny_bundle: Path) -> tuple[Path, str]:
    state = tmp_path / "state"
    state.mkdir()
    bundle_mod.install(tiny_bundle, state / "bundle")
    return state, bundle_mod.sha256_file(state / "bundle" / "manifest.json")


def _other_bundle(tmp_path: Path, tiny_bundle: Path) -> Path:
    """A second valid bundle (another label order), written the way the builder writes one."""
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    m = json.loads((other / "manifest.json").read_text())
    m["labels"] = list(reversed(m["labels"]))
    write_manifest(other, m)
    bundle_mod.load(other)
    return other


def test_install_cut_between_its_two_renames_is_repaired(tmp_path, tiny_bundle):
    state, old_sha = _installed(tmp_path, tiny_bundle)
    other = _other_bundle(tmp_path, tiny_bundle)
    new_sha = bundle_mod.sha256_file(other / "manifest.json")
    # cut after bundle -> bundle.old, with a whole bundle.new: the install is finished
    shutil.copytree(other, state / "bundle.new")
    os.rename(state / "bundle", state / "bundle.old")
    assert "finished" in bundle_mod.recover(state / "bundle")
    assert bundle_mod.sha256_file(state / "bundle" / "manifest.json") == new_sha
    assert sorted(p.name for p in state.iterdir()) == ["bundle"]
    # cut with a bundle.new that does not verify (a real power loss before its data reached the disk): roll back
    shutil.copytree(state / "bundle", state / "bundle.new")
    os.rename(state / "bundle", state / "bundle.old")
    victim = state / "bundle.new" / bundle_mod.load(state / "bundle.new").manifest["variants"][0]["base"]
    victim.write_bytes(victim.read_bytes()[:100])
    assert "restored" in bundle_mod.recover(state / "bundle")
    assert sorted(p.name for p in state.iterdir()) == ["bundle"]
    assert bundle_mod.load_installed(state / "bundle").root == state / "bundle"
    # leftovers beside a whole bundle are removed; nothing to do is nothing done
    (state / "bundle.old").mkdir()
    (state / "bundle.new").mkdir()
    assert bundle_mod.recover(state / "bundle") == ""
    assert sorted(p.name for p in state.iterdir()) == ["bundle"]
    # an install that finds only bundle.old (e.g. cut again) keeps it until the new one is in place
    os.rename(state / "bundle", state / "bundle.old")
    with pytest.raises(AutlearnError):
        bundle_mod.install(tmp_path / "missing", state / "bundle")
    assert bundle_mod.sha256_file(state / "bundle" / "manifest.json") == new_sha
    assert old_sha != new_sha


def test_nothing_to_recover_is_still_no_bundle(tmp_path):
    with pytest.raises(AutlearnError) as e:
        bundle_mod.load_installed(tmp_path / "bundle")
    assert e.value.code == "no_bundle"

def test_power_loss_while_the_daemon_installs_a_bundle(tmp_path, tiny_bundle):
    t = install_cut(tmp_path, tiny_bundle, trials=2, seed=SEED)
    assert t.crashes == 0 and not t.problems, t.problems
    assert t.trials == 2


def test_power_cut_between_the_two_renames_of_a_bundle_install(tmp_path, tiny_bundle):
    root = tmp_path / "r"
    d = Daemon(root, tiny_bundle)
    assert d.came_up()
    good = call(root, "status")["bundle"]["id"]
    assert d.stop() == 0
    os.rename(root / "state" / "bundle", root / "state" / "bundle.old")  # where install() was cut off
    d = Daemon(root, "")  # model.bundle = "": keep the installed bundle
    try:
        assert d.came_up(30), (root / "autlearnd.log").read_text()
        assert call(root, "status")["bundle"]["id"] == good
        assert "restored the previous bundle" in (root / "autlearnd.log").read_text()
    finally:
        d.stop()
