"""Shared fixtures: one tiny bundle per test session (built by the real builder), simulated user images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
# Until no test imports another: every package folder of tests/ is importable by module name.
sys.path[1:1] = [str(d) for d in sorted((ROOT / "tests").iterdir()) if d.is_dir() and d.name not in ("fixtures", "delegate", "block_tensorflow", "__pycache__")]
BIN = Path(sys.executable).parent


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~10 s (deselect with -m 'not slow')")


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


def no_tensorflow_env() -> dict:
    """Environment for a child process in which `import tensorflow` fails."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "tests" / "block_tensorflow") + os.pathsep + env.get("PYTHONPATH", "")
    return env

