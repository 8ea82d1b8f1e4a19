"""The Debian package for another architecture: `make deb ARCH=...` refuses one without a LiteRT wheel, and
debian/check-wheel refuses a wheel whose native libraries are for the wrong machine or a newer glibc —
checked on real ELF files (the venv's LiteRT libraries, Debian's arm64 libc when it is installed)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK_WHEEL = REPO / "debian" / "check-wheel"


def _load_check_wheel():
    loader = importlib.machinery.SourceFileLoader("check_wheel", str(CHECK_WHEEL))
    spec = importlib.util.spec_from_loader("check_wheel", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


cw = _load_check_wheel()


def _litert_dir() -> Path:
    ai_edge_litert = pytest.importorskip("ai_edge_litert")
    return Path(ai_edge_litert.__file__).parent


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def x86_wheel(tmp_path_factory) -> Path:
    """A wheel-shaped zip of the venv's own LiteRT: its interpreter module and two real x86-64 libraries."""
    lib = _litert_dir()
    names = ["libpywrap_litert_common.so", "_pywrap_litert_interpreter_wrapper.so", "interpreter.py"]
    members = {f"ai_edge_litert/{n}": (lib / n).read_bytes() for n in names}
    return _wheel(tmp_path_factory.mktemp("w") / "ai_edge_litert-2.3.0-cp311-cp311-manylinux_2_27_x86_64.whl",
                  members)


def _make(*args: str) -> subprocess.CompletedProcess:
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "-f", "mk/deb.mk", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("target", ["deb", "deb-test"])
def test_make_deb_for_an_architecture_without_a_litert_wheel_stops_with_a_sentence(target):
    r = _make(target, "ARCH=riscv64")
    assert r.returncode != 0
    assert re.search(r"no ai-edge-litert [\d.]+ wheel for the architecture riscv64", r.stderr), r.stderr
    assert not (REPO / "build" / "deb" / "wheels-riscv64").exists(), "stopped before downloading anything"


def test_make_deb_knows_the_wheel_machine_of_both_architectures():
    """A dry run (make -n -B): the wheel asked of the registry, its check and the cross build per ARCH."""
    if not shutil.which("dpkg"):
        pytest.skip("not a Debian system")
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    for arch, machine in (("amd64", "x86_64"), ("arm64", "aarch64")):
        r = _make("-n", "-B", "deb", f"ARCH={arch}", "BIN=/nonexistent", "STAMP=/dev/null")
        assert r.returncode == 0, r.stderr
        assert f"--platform manylinux_2_17_{machine}" in r.stdout and f"manylinux_2_36_{machine}" in r.stdout
        assert f"check-wheel {arch} 2.36 build/deb/wheels-{arch}/" in r.stdout
        assert (f"-a{arch}" in r.stdout) == (arch != host), "dpkg-buildpackage -a only for another architecture"


def test_the_venvs_litert_libraries_pass_for_amd64(x86_wheel):
    line = cw.check("amd64", "2.36", str(x86_wheel))
    assert "2 ELF files, all 64-bit x86-64 (e_machine 62)" in line, line


def test_an_x86_64_wheel_is_refused_for_arm64_naming_the_file(x86_wheel):
    with pytest.raises(SystemExit) as e:
        cw.check("arm64", "2.36", str(x86_wheel))
    msg = str(e.value)
    assert x86_wheel.name in msg and "is not for arm64" in msg
    assert "ai_edge_litert/libpywrap_litert_common.so is a 64-bit x86-64 ELF file (e_machine 62)" in msg
    assert "AArch64 (e_machine 183)" in msg


def test_the_command_line_refuses_before_packaging(x86_wheel):
    r = subprocess.run(["/usr/bin/python3", str(CHECK_WHEEL), "arm64", "2.36", str(x86_wheel)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "refusing to package it" in r.stderr, r.stderr
    rules = (REPO / "debian" / "rules").read_text()
    assert rules.index("debian/check-wheel") < rules.index("debian/vendor-wheel"), "check before unpacking"
    assert "debian/check-wheel $(DEB_ARCH)" in (REPO / "mk" / "deb.mk").read_text()


def test_needed_glibc_matches_readelf_and_a_lower_limit_is_refused(x86_wheel):
    lib = _litert_dir() / "libpywrap_litert_common.so"
    *_, versions = cw.elf_info(lib.read_bytes())
    need = cw.glibc_needed(versions)
    if shutil.which("readelf"):
        out = subprocess.run(["readelf", "-V", "-W", str(lib)], capture_output=True, text=True, check=True).stdout
        section = out[out.index(".gnu.version_r"):]
        seen = {tuple(int(p) for p in v.split(".")) for v in re.findall(r"Name: GLIBC_([\d.]+)", section)}
        assert need == max(seen), (need, max(seen))
    assert (2, 17) <= need <= (2, 36), "the manylinux wheel must load on Debian 12"
    lower = f"{need[0]}.{need[1] - 1}"
    with pytest.raises(SystemExit) as e:
        cw.check("amd64", lower, str(x86_wheel))
    assert f"needs glibc {'.'.join(map(str, need))}, newer than the target's {lower}" in str(e.value)


def test_a_damaged_or_fake_library_is_refused(tmp_path):
    real = (_litert_dir() / "libpywrap_litert_common.so").read_bytes()
    truncated = _wheel(tmp_path / "t.whl", {"ai_edge_litert/libx.so": real[:200]})
    with pytest.raises(SystemExit, match=r"libx\.so: truncated or damaged ELF file"):
        cw.check("amd64", "2.36", str(truncated))
    fake = _wheel(tmp_path / "f.whl", {"ai_edge_litert/liby.so": b"#!/bin/sh\necho not a library\n"})
    with pytest.raises(SystemExit, match=r"liby\.so is named like a shared library but is not an ELF file"):
        cw.check("amd64", "2.36", str(fake))
    empty = _wheel(tmp_path / "e.whl", {"ai_edge_litert/__init__.py": b""})
    with pytest.raises(SystemExit, match="no native libraries"):
        cw.check("amd64", "2.36", str(empty))
    with pytest.raises(SystemExit, match="no LiteRT wheel for the architecture riscv64"):
        cw.check("riscv64", "2.36", str(empty))


def _aarch64_elf() -> Path:
    for wheel in sorted((REPO / "build" / "deb" / "wheels-arm64").glob("ai_edge_litert-*.whl")):
        return wheel
    libc = Path("/usr/lib/aarch64-linux-gnu/libc.so.6")
    if libc.exists():
        return libc
    pytest.skip("no aarch64 ELF file here (make deb ARCH=arm64 downloads the arm64 wheel and installs libc6:arm64)")


def test_a_real_aarch64_library_passes_for_arm64_and_is_refused_for_amd64(tmp_path):
    src = _aarch64_elf()
    wheel = src if src.suffix == ".whl" else _wheel(tmp_path / "ai_edge_litert-0-cp311-cp311-linux_aarch64.whl",
                                                    {f"ai_edge_litert/{src.name}": src.read_bytes()})
    assert "all 64-bit AArch64 (e_machine 183)" in cw.check("arm64", "2.36", str(wheel))
    with pytest.raises(SystemExit, match=r"is not for amd64: .* is a 64-bit AArch64 ELF file \(e_machine 183\)"):
        cw.check("amd64", "2.36", str(wheel))


def test_the_quick_litert_check_names_a_missing_head_model(tmp_path):
    """tools/deb_test_litert.sh (the aarch64 wheel's `train` under qemu) stops before unpacking anything."""
    missing = tmp_path / "no_head.tflite"
    r = subprocess.run([str(REPO / "tools" / "deb_test_litert.sh"), str(missing)], cwd=REPO, capture_output=True,
                       text=True, timeout=60, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEB_TEST_DIR": str(tmp_path / "w")})
    assert r.returncode == 2
    assert (f"no head model {missing}" in r.stderr) or ("run as root" in r.stderr)
    assert not (tmp_path / "w").exists()
