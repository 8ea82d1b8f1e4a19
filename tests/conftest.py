"""Shared fixtures: the bundles the tests share (each built once per session by the real builder), user images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # the harness, fault injectors and corpora the tests share with the tools
sys.path.insert(0, str(ROOT / "tests"))
BIN = Path(sys.executable).parent

from autlearn.runtime import bundle as bundle_mod  # noqa: E402
from resign import write_manifest  # noqa: E402  (tools/ is on the path from here)


# What makes a test slow here: a real bundle built by the builder (30-120 s on two cores, once per session), a
# daemon subprocess or TensorFlow training. Tests that use one of these fixtures are marked slow automatically;
# others carry @pytest.mark.slow by hand. `pytest -m "not slow"` is the fast part (about a minute);
# `make test` runs everything.
BUILT_FIXTURES = {"tiny_bundle", "tiny_tail_bundle", "tiny_cuts_bundle", "text_bundle", "text_variant_bundle",
                  "two_variant_bundle", "image_bundle", "photos", "saved_models", "whole_model", "tiny_users",
                  "daemon_wheel", "board_check", "board",
                  "digits"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: needs a built bundle, a daemon subprocess or TensorFlow training "
                                       "(deselect with -m 'not slow')")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if BUILT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A small real bundle: MNIST-5k subset, one epoch. Built once per session."""
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    subprocess.run([str(BIN / "autlearn-build"), "image", "--data", "mnist5k", "--limit", "1500", "--epochs", "2",
                    "--out", str(out), "--seed", "0"], check=True, capture_output=True, timeout=900)
    return out


@pytest.fixture(scope="session")
def tiny_tail_bundle(tmp_path_factory) -> Path:
    """A small real bundle cut below the head (`--tail last_block`): the base is the int8 stem, the head the
    trainable last block + head. Built once per session."""
    out = tmp_path_factory.mktemp("bundle") / "tiny-tail"
    subprocess.run([str(BIN / "autlearn-build"), "image", "--data", "mnist5k", "--limit", "600", "--epochs", "1",
                    "--head-epochs", "1", "--tail", "last_block", "--out", str(out), "--seed", "0"],
                   check=True, capture_output=True, timeout=900)
    return out


@pytest.fixture(scope="session")
def tiny_cuts_bundle(tmp_path_factory) -> Path:
    """A small real bundle carrying two cuts (`--tail last_block,head`, listed deepest first on purpose): the
    head-only variant with the last_block cut (its own stem and tail) in its `cuts`. Built once per session."""
    out = tmp_path_factory.mktemp("bundle") / "tiny-cuts"
    subprocess.run([str(BIN / "autlearn-build"), "image", "--data", "mnist5k", "--limit", "600", "--epochs", "1",
                    "--head-epochs", "1", "--tail", "last_block,head", "--out", str(out), "--seed", "0"],
                   check=True, capture_output=True, timeout=900)
    return out


@pytest.fixture(scope="session")
def text_bundle(tmp_path_factory) -> Path:
    """A small real keyboard bundle (Shakespeare, 300 words, 10-token windows). Built once per session
    (AUTLEARN_TEST_TEXT_BUNDLE names one already built with these options, to save the build when iterating)."""
    if os.environ.get("AUTLEARN_TEST_TEXT_BUNDLE"):
        return Path(os.environ["AUTLEARN_TEST_TEXT_BUNDLE"])
    out = tmp_path_factory.mktemp("textbundle") / "kb"
    subprocess.run([str(BIN / "autlearn-build"), "text", "--data", "shakespeare", "--limit", "20000", "--epochs", "2",
                    "--vocab", "300", "--seq-len", "10", "--spare-slots", "20", "--embed", "16", "--hidden", "32",
                    "--out", str(out), "--seed", "0"], check=True, capture_output=True, timeout=900)
    return out


@pytest.fixture(scope="session")
def text_variant_bundle(tmp_path_factory) -> Path:
    """text_bundle's build with one pruned width beside the full one (`--hidden-widths 16`: variants full, h16)."""
    out = tmp_path_factory.mktemp("textvariants") / "kb"
    subprocess.run([str(BIN / "autlearn-build"), "text", "--data", "shakespeare", "--limit", "20000", "--epochs", "2",
                    "--vocab", "300", "--seq-len", "10", "--spare-slots", "20", "--embed", "16", "--hidden", "32",
                    "--hidden-widths", "16", "--out", str(out), "--seed", "0"], check=True, capture_output=True,
                   timeout=900)
    return out


VARIANT_ACCURACY = {"full": 0.95, "half": 0.90}  # two_variant_bundle: the larger variant is the more accurate one


def _build_image(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "autlearn-build"), "image", "--data", "mnist5k", "--limit", "600",
                             "--epochs", "1", "--seed", "0", "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture(scope="session")
def two_variant_bundle(tmp_path_factory) -> Path:
    """A verified bundle with variants 'full' (width 1.0) and 'half' (width 0.5)."""
    work = tmp_path_factory.mktemp("variants")
    procs = {"full": _build_image(work / "full"), "half": _build_image(work / "half", "--width-mult", "0.5")}
    for name, p in procs.items():
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, f"build of {name} failed:\n{out.decode(errors='replace')[-3000:]}"
    root = work / "bundle"
    shutil.copytree(work / "full", root)
    manifest = json.loads((root / "manifest.json").read_text())
    half = json.loads((work / "half" / "manifest.json").read_text())["variants"][0]
    half_files = {"base": "base_half_int8.tflite", "head": "head_half.tflite"}
    for key, fname in half_files.items():
        src = half[key]
        shutil.copyfile(work / "half" / src, root / fname)
        half[key] = fname
        manifest["files"][fname] = {}
    half["name"] = "half"
    manifest["variants"][0]["accuracy_int8"] = VARIANT_ACCURACY["full"]
    half["accuracy_int8"] = VARIANT_ACCURACY["half"]
    manifest["variants"].append(half)
    write_manifest(root, manifest, rehash_files=True)
    b = bundle_mod.load(root)  # verifies every sha256
    assert b.variant_names == ["full", "half"]
    return root


@pytest.fixture(scope="session")
def user_digits():
    """The simulated private user: UCI digits (images uint8 [N,8,8], labels), fixed order."""
    from userdata import digits
    return digits(0)


@pytest.fixture
def write_user():
    from userdata import write_user
    return write_user


@pytest.fixture
def fake_battery():
    """`fake_battery(sysfs, status, online)`: a sysfs tree with one battery (BAT0, 41 %) and a mains supply (AC)."""
    def write(sysfs: Path, status: str, online: int) -> None:
        bat = sysfs / "class" / "power_supply" / "BAT0"
        ac = sysfs / "class" / "power_supply" / "AC"
        for d in (bat, ac):
            d.mkdir(parents=True, exist_ok=True)
        (bat / "type").write_text("Battery\n")
        (bat / "status").write_text(status + "\n")
        (bat / "capacity").write_text("41\n")
        (bat / "present").write_text("1\n")
        (ac / "type").write_text("Mains\n")
        (ac / "online").write_text(f"{online}\n")
    return write


def no_tensorflow_env() -> dict:
    """Environment for a child process in which `import tensorflow` fails."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "tests" / "block_tensorflow") + os.pathsep + env.get("PYTHONPATH", "")
    return env

