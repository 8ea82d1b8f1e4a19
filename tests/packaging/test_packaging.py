"""Fast checks of the Debian packaging and the systemd unit against the daemon they package.

The full proof (build, install into a clean Debian 12 root, run, upgrade, purge) is `make deb-test`; these
catch drift between the daemon and its packaging in a second: a new dependency Debian must provide, a
path moved in the daemon but not in the unit, a config that no longer validates, a unit systemd rejects.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from autlearn import __version__
from autlearn import main as daemon_main
from autlearn.paths import Paths

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "autlearnd.service"
DEBIAN = REPO / "debian"
CONFIG = REPO / "configs" / "autlearnd.toml"

# Python distribution (pyproject) / import name -> the Debian package that provides it.
DEBIAN_PACKAGES = {
    "numpy": "python3-numpy",
    "pillow": "python3-pil",
    "pyzmq": "python3-zmq",
    "pyudev": "python3-pyudev",
}
IMPORT_TO_DIST = {"numpy": "numpy", "PIL": "pillow", "zmq": "pyzmq", "pyudev": "pyudev"}
# Not in Debian: shipped inside the package under /usr/lib/autlearn/vendor (debian/vendor-wheel).
VENDORED = {"ai-edge-litert": "ai_edge_litert"}
# Imported lazily, optional (the daemon falls back without them), and in Debian: Recommends.
RECOMMENDED = {"systemd": "python3-systemd"}
# Imported lazily, optional, not in Debian 12 (README.packaging.md says why they are not shipped).
OPTIONAL_IMPORTS = {"pynvml", "tflite_runtime"}
# Imported only on Pythons older than Debian 12's (config.py: tomllib's stand-in below 3.11).
OLDER_PYTHON_IMPORTS = {"tomli"}


def unit_directives(path: Path = UNIT) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> every value given, in order (systemd keys may repeat)."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a KEY=VALUE line: {raw!r}"
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def control_depends(field: str = "Depends") -> set[str]:
    text = (DEBIAN / "control").read_text()
    binary = text[text.index("\nPackage: autlearn"):]
    m = re.search(rf"^{field}:(.*?)(?=^\S)", binary + "\nEnd:", re.S | re.M)
    assert m, f"debian/control: no {field} of the autlearn package"
    return {re.split(r"[\s(]", d.strip())[0] for d in m.group(1).split(",") if d.strip()}


# The Python of Debian 12 (bookworm), the one the package runs on.
DEBIAN_PYTHON = "3.11"


def pyproject_dependencies() -> list[str]:
    """The daemon's dependencies on Debian 12's Python (a marker like python_version < "3.11" can drop one)."""
    from packaging.requirements import Requirement
    deps = tomllib.loads((REPO / "daemon" / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = [Requirement(d) for d in deps]
    env = {"python_version": DEBIAN_PYTHON, "python_full_version": DEBIAN_PYTHON + ".2"}
    return [r.name.lower() for r in reqs if r.marker is None or r.marker.evaluate(env)]


# --- the unit ------------------------------------------------------------------------------------------

def test_unit_has_the_required_directives():
    d = unit_directives()
    s = lambda key: d.get(("Service", key), [])  # noqa: E731
    assert s("Type") == ["notify"]
    assert s("WatchdogSec") and s("WatchdogSec")[-1] not in ("0", "infinity")
    assert s("Restart") == ["on-failure"]
    assert s("User") == ["autlearn"] and s("Group") == ["autlearn"]
    assert s("PrivateNetwork") == ["yes"], "the privacy promise: no network unless a drop-in says so"
    assert s("RestrictAddressFamilies") == ["AF_UNIX"]
    assert s("ProtectSystem") == ["strict"]
    assert s("ProtectHome") and s("ProtectHome")[-1] in ("yes", "tmpfs", "read-only")
    assert s("NoNewPrivileges") == ["yes"]
    assert s("SystemCallFilter") and "@system-service" in s("SystemCallFilter")[0]
    assert s("CapabilityBoundingSet") == [""]
    assert s("ExecReload") and "HUP" in s("ExecReload")[0]
    assert d.get(("Install", "WantedBy")) == ["multi-user.target"]


def test_unit_paths_are_the_daemons_packaged_paths():
    d = unit_directives()
    packaged = Paths.packaged()
    assert Path("/var/lib") / d[("Service", "StateDirectory")][0] == packaged.state
    assert Path("/var/cache") / d[("Service", "CacheDirectory")][0] == packaged.cache
    assert Path("/run") / d[("Service", "RuntimeDirectory")][0] == packaged.run
    exec_start = d[("Service", "ExecStart")][0].split()
    assert exec_start[0] == "/usr/bin/autlearnd"
    assert exec_start[exec_start.index("--config") + 1] == daemon_main.DEFAULT_CONFIG


# --- debian/ -------------------------------------------------------------------------------------------

def test_control_depends_on_a_debian_package_for_every_daemon_dependency():
    depends = control_depends()
    for dist in pyproject_dependencies():
        if dist in VENDORED:
            continue
        assert dist in DEBIAN_PACKAGES, (
            f"daemon/pyproject.toml depends on {dist!r}: add its Debian package to debian/control and to "
            "DEBIAN_PACKAGES here, or vendor it (debian/vendor-wheel) and explain in README.packaging.md")
        assert DEBIAN_PACKAGES[dist] in depends, f"debian/control lacks {DEBIAN_PACKAGES[dist]} (for {dist})"
    assert "adduser" in depends, "the postinst creates the autlearn user with adduser"
    reload_cmd = unit_directives()[("Service", "ExecReload")][0].split()[0]
    if reload_cmd == "/bin/kill":
        assert "procps" in depends, "ExecReload=/bin/kill needs procps (not in a minimal Debian)"


def test_every_third_party_import_of_the_daemon_is_packaged():
    stdlib = set(sys.stdlib_module_names)
    provided = set(IMPORT_TO_DIST) | set(VENDORED.values()) | set(RECOMMENDED) | OPTIONAL_IMPORTS | OLDER_PYTHON_IMPORTS
    missing = {}
    for py in sorted((REPO / "daemon" / "autlearn").glob("*.py")):
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top != "autlearn" and top not in provided:
                    missing.setdefault(top, py.name)
    assert not missing, f"imports with no Debian package or vendored copy: {missing} (see debian/control)"
    for top, dist in IMPORT_TO_DIST.items():
        assert DEBIAN_PACKAGES[dist] in control_depends()
    for top, package in RECOMMENDED.items():
        assert package in control_depends() | control_depends("Recommends")


def test_vendored_interpreter_comes_from_the_pinned_wheel():
    pins = dict(line.split("==") for line in (REPO / "requirements-dev.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert "ai-edge-litert" in pins, "mk/deb.mk vendors the ai-edge-litert version pinned in requirements-dev.txt"
    rules = (DEBIAN / "rules").read_text()
    assert "vendor-wheel" in rules and "/vendor" in rules
    for wrapper in ("autlearnd", "autlearnctl"):
        text = (DEBIAN / "wrappers" / wrapper).read_text()
        assert '"/usr/lib/autlearn/vendor"' in text and '"/usr/lib/autlearn"' in text


def test_wrappers_call_the_console_scripts_entry_points():
    scripts = tomllib.loads((REPO / "daemon" / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, func = target.split(":")
        text = (DEBIAN / "wrappers" / name).read_text()
        assert f"from {module} import {func}" in text, f"debian/wrappers/{name} must call {target}"


def test_config_is_installed_under_etc_so_it_is_a_conffile():
    rules = (DEBIAN / "rules").read_text()
    assert re.search(r"install .*configs/autlearnd\.toml \$\(PKG\)/etc/autlearn/", rules)
    assert not (DEBIAN / "autlearn.conffiles").exists(), "dh_installdeb marks /etc files by itself"
    debs = sorted((REPO / "build" / "deb").glob("autlearn_*.deb"))
    if not debs or not shutil.which("dpkg-deb"):
        pytest.skip("no built package in build/deb (make deb) to read the conffile list of")
    conffiles = subprocess.run(["dpkg-deb", "--info", str(debs[-1]), "conffiles"], capture_output=True,
                               text=True, check=True).stdout.split()
    assert daemon_main.DEFAULT_CONFIG in conffiles


def test_packaged_defaults_match_what_the_package_installs():
    cfg = tomllib.loads(CONFIG.read_text())
    rules = (DEBIAN / "rules").read_text()
    assert cfg["model"]["bundle"] == "/usr/share/autlearn/bundle"
    assert "$(PKG)/usr/share/autlearn/bundle" in rules, "the config's default bundle must be in the package"
    postinst = (DEBIAN / "autlearn.postinst").read_text()
    for watched in cfg["data"]["watch"]:
        assert watched in postinst, f"the postinst must create the default watched folder {watched}"


def test_sample_config_passes_check_config():
    autlearnd = Path(sys.executable).parent / "autlearnd"
    cmd = [str(autlearnd)] if autlearnd.exists() else [sys.executable, "-m", "autlearn.main"]
    r = subprocess.run(cmd + ["--check-config", str(CONFIG)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout


def test_changelog_version_is_the_daemon_version():
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    m = re.match(r"autlearn \(([^)]+)\) \S+; urgency=\w+$", first)
    assert m, first
    assert re.split(r"[-+~]", m.group(1))[0] == __version__, "bump debian/changelog with autlearn.__version__"


def test_maintainer_scripts_parse_and_purge_cleans_up():
    for name in ("autlearn.postinst", "autlearn.postrm"):
        subprocess.run(["sh", "-n", str(DEBIAN / name)], check=True)
        assert "#DEBHELPER#" in (DEBIAN / name).read_text()
    postrm = (DEBIAN / "autlearn.postrm").read_text()
    purge = postrm[postrm.index('"$1" = purge'):]
    for path in ("/var/lib/autlearn", "/var/cache/autlearn"):
        assert path in purge
    assert "deluser" in purge and "delgroup" in purge


# --- systemd-analyze -----------------------------------------------------------------------------------

def _analyze_or_skip() -> str:
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return tool


def _verify(tool: str, unit_dir: Path) -> str:
    """systemd-analyze verify of the unit as packaged (plus any drop-ins beside it in unit_dir), with
    ExecStart= pointing at this checkout's autlearnd and the package's man pages; returns its output."""
    autlearnd = Path(sys.executable).parent / "autlearnd"
    if not autlearnd.exists():
        pytest.skip(f"no {autlearnd} to stand in for /usr/bin/autlearnd")
    if not shutil.which("man"):
        pytest.skip("man is not installed: systemd-analyze verify checks the unit's Documentation= pages")
    text = UNIT.read_text().replace("ExecStart=/usr/bin/autlearnd", f"ExecStart={autlearnd}")
    (unit_dir / "autlearnd.service").write_text(text)
    for page in DEBIAN.glob("*.[18]"):
        (unit_dir / "man" / f"man{page.suffix[1:]}").mkdir(parents=True, exist_ok=True)
        shutil.copy(page, unit_dir / "man" / f"man{page.suffix[1:]}" / page.name)
    r = subprocess.run([tool, "verify", str(unit_dir / "autlearnd.service")], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "MANPATH": str(unit_dir / "man")}, timeout=60)
    return f"exit status {r.returncode}\n{r.stdout}{r.stderr}".strip() if r.returncode else (r.stdout + r.stderr).strip()


def test_systemd_analyze_verify_is_clean(tmp_path):
    assert _verify(_analyze_or_skip(), tmp_path) == ""


@pytest.mark.parametrize("example", sorted(p.name for p in (DEBIAN / "examples").glob("*.conf")))
def test_documented_drop_ins_verify_clean(tmp_path, example):
    listed = (DEBIAN / "autlearn.examples").read_text().split()
    assert f"debian/examples/{example}" in listed, "debian/autlearn.examples installs every example"
    tool = _analyze_or_skip()
    (tmp_path / "autlearnd.service.d").mkdir()
    shutil.copy(DEBIAN / "examples" / example, tmp_path / "autlearnd.service.d" / example)
    assert _verify(tool, tmp_path) == ""


def test_systemd_analyze_security_offline_is_at_most_2():
    tool = _analyze_or_skip()
    r = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(UNIT)], capture_output=True,
                       text=True, timeout=60)
    if "--offline" in r.stderr and "unrecognized" in r.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    m = re.search(r"Overall exposure level for autlearnd\.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout
