"""The shape a newcomer can read: every module of the daemon and the builder opens with one line saying what
it holds, and none is over about 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = [REPO / "daemon" / "autlearn", REPO / "cloud_builder" / "autlearn_build"]
MAX_LINES = 400

# Modules whose docstring's first sentence still runs over more than one line, with the helper that owns them.
SUMMARY_PENDING = {
}
# Modules over MAX_LINES, with the helper splitting them.
SIZE_PENDING: dict[str, str] = {
}


def modules() -> list[Path]:
    return sorted(p for root in ROOTS for p in root.rglob("*.py"))


def rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


def summary_problem(p: Path) -> str | None:
    doc = ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")), clean=True)
    if not doc or not doc.strip():
        return "has no module docstring"
    first = doc.strip().split("\n\n")[0]
    if "\n" in first:
        return "its docstring's first sentence runs over more than one line"
    return None


def test_there_are_modules_to_check():
    assert len(modules()) > 50


def test_every_module_opens_with_one_line_saying_what_it_holds():
    bad = {rel(p): why for p in modules() if (why := summary_problem(p)) and rel(p) not in SUMMARY_PENDING}
    assert not bad, bad


def test_pending_summaries_are_still_pending():
    fixed = sorted(m for m in SUMMARY_PENDING if summary_problem(REPO / m) is None)
    assert not fixed, f"these now open with one line: remove them from SUMMARY_PENDING: {fixed}"


def _lines(p: Path) -> int:
    return len(p.read_text(encoding="utf-8").splitlines())


def test_no_module_is_over_about_400_lines():
    big = {rel(p): _lines(p) for p in modules() if _lines(p) > MAX_LINES and rel(p) not in SIZE_PENDING}
    assert not big, big


def test_pending_sizes_are_still_pending():
    small = sorted(m for m in SIZE_PENDING if not (REPO / m).exists() or _lines(REPO / m) <= MAX_LINES)
    assert not small, f"these are within {MAX_LINES} lines now: remove them from SIZE_PENDING: {small}"


def test_the_summary_check_tells_one_line_from_a_wrapped_one(tmp_path):
    one, wrapped, none = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    one.write_text('"""What it holds.\n\nMore detail\nover lines."""\n')
    wrapped.write_text('"""What it holds, in a sentence\nthat wraps."""\n')
    none.write_text("x = 1\n")
    assert summary_problem(one) is None
    assert "more than one line" in summary_problem(wrapped)
    assert "no module docstring" in summary_problem(none)
