"""Shared fixtures: one tiny bundle per test session (built by the real builder), simulated user images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # the harness, fault injectors and corpora the tests share with the tools
sys.path.insert(0, str(ROOT / "tests"))
BIN = Path(sys.executable).parent


# What makes a test slow here: a real bundle built by the builder (30-120 s on two cores, once per session), a
# daemon subprocess or TensorFlow training. Tests that use one of these fixtures are marked slow automatically;
# others carry @pytest.mark.slow by hand. `pytest -m "not slow"` is the fast part (about a minute);
# `make test` runs everything.
BUILT_FIXTURES = {"tiny_bundle", "tiny_tail_bundle", "text_bundle", "two_variant_bundle", "image_bundle",
                  "photos", "saved_models", "whole_model", "tiny_users", "daemon_wheel", "board_check", "board",
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

