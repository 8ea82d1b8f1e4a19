"""The daemon's promise to boards that are not Debian 12: Python >= 3.10 (proved with vermin), a wheel
without TensorFlow whose metadata says so, and the tomli fallback that replaces tomllib below 3.11."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAEMON = REPO / "daemon"
PYPROJECT = tomllib.loads((DAEMON / "pyproject.toml").read_text())
VERMIN = Path(sys.executable).parent / "vermin"


def _minimum_python() -> tuple[int, int]:
    m = re.fullmatch(r">=\s*(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"].strip())
    assert m, "daemon/pyproject.toml: requires-python must be a plain '>=X.Y' (the oldest Python it runs on)"
    return int(m.group(1)), int(m.group(2))


def _vermin(*args: str) -> subprocess.CompletedProcess:
    if not VERMIN.exists():
        pytest.fail(f"{VERMIN} missing: vermin is pinned in requirements-dev.txt (make venv installs it)")
    return subprocess.run([str(VERMIN), "--no-tips", "--no-parse-comments", "--eval-annotations", "--processes=1",
                           *args], capture_output=True, text=True, timeout=300)


def test_pyproject_states_python_3_10():
    assert _minimum_python() == (3, 10), "JetPack 6 (Ubuntu 22.04) has Python 3.10"
    pins = (REPO / "requirements-dev.txt").read_text()
    assert re.search(r"^vermin==\S+$", pins, re.M), "pin vermin in requirements-dev.txt"


def test_vermin_proves_the_daemon_runs_on_the_stated_minimum_python():
    major, minor = _minimum_python()
    r = _vermin(f"--target={major}.{minor}-", "--violations", str(DAEMON / "autlearn"))
    assert r.returncode == 0, f"constructs newer than Python {major}.{minor} in daemon/autlearn:\n{r.stdout}{r.stderr}"
    found = re.search(r"Minimum required versions: (\d+)\.(\d+)", r.stdout)
    assert found and (int(found.group(1)), int(found.group(2))) <= (major, minor), r.stdout


def test_vermin_would_catch_a_3_11_construct(tmp_path):
    """The check above can fail: an unguarded tomllib import and an except* are both reported."""
    (tmp_path / "new.py").write_text("import tomllib\n\ntry:\n    pass\nexcept* ValueError:\n    pass\n")
    r = _vermin("--target=3.10-", "--violations", str(tmp_path))
    assert r.returncode != 0
    assert "tomllib" in r.stdout and "3.11" in r.stdout, r.stdout


def test_below_3_11_the_config_is_parsed_by_tomli(tmp_path):
    """The Python 3.10 branch of autlearn.config, run for real with tomli: the sample config validates and a
    TOML syntax error is still a bad_config error naming the file."""
    pytest.importorskip("tomli", reason="tomli is pinned in requirements-dev.txt")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    code = f"""
import sys
sys.version_info = (3, 10, 12, "final", 0)
from autlearn import config
from autlearn.errors import AutlearnError
assert config.tomllib.__name__ == "tomli", config.tomllib
config.parse(open({str(REPO / "configs" / "autlearnd.toml")!r}).read(), "autlearnd.toml")
try:
    config.parse(open({str(bad)!r}).read(), {str(bad)!r})
except AutlearnError as e:
    print("refused:", e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(DAEMON), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and str(bad) in r.stdout and "not valid TOML" in r.stdout, r.stdout


@pytest.fixture(scope="module")
def daemon_wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps` of a copy of daemon/ (links into systemd/, configs/ followed), offline."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "daemon"
    shutil.copytree(DAEMON, src, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(work / "out"), str(src)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list((work / "out").glob("autlearn-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_daemon_wheel_metadata_python_and_dependencies(daemon_wheel):
    assert daemon_wheel.name.endswith("-py3-none-any.whl"), "pure Python: one wheel for every board"
    with zipfile.ZipFile(daemon_wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
        names = z.namelist()
        entry_points = z.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    assert meta["Requires-Python"] == ">=3.10"
    requires = meta.get_all("Requires-Dist")
    dists = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower(): r for r in requires}
    assert not {d for d in dists if d.startswith(("tensorflow", "tf-", "keras", "jax", "torch"))}, requires
    assert {"numpy", "ai-edge-litert", "pillow", "pyzmq", "pyudev", "tomli"} <= set(dists), requires
    assert re.fullmatch(r'tomli>=[\d.]+; python_version < "3\.11"', dists["tomli"]), dists["tomli"]
    assert "autlearnd = autlearn.main:main" in entry_points and "autlearnctl = autlearn.control.ctl:main" in entry_points
    assert not [n for n in names if n.startswith("autlearn_build")], "the cloud builder stays out of the wheel"
    for data in ("autlearnd.service", "autlearnd.toml", "accelerator.conf"):
        assert f"autlearn/data/{data}" in names, f"docs/jetpack.md installs autlearn/data/{data}"


def test_wheel_ships_the_unit_and_config_of_the_repository(daemon_wheel):
    with zipfile.ZipFile(daemon_wheel) as z:
        assert z.read("autlearn/data/autlearnd.service") == (REPO / "systemd" / "autlearnd.service").read_bytes()
        assert z.read("autlearn/data/autlearnd.toml") == (REPO / "configs" / "autlearnd.toml").read_bytes()
