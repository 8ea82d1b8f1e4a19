"""docs/protocol.md against the daemon: the documented result fields of every command are the ones a real daemon
answers with, and every event the code emits is documented."""

from __future__ import annotations

import re
from pathlib import Path

from autlearn.service.api import Service
from daemon_helpers import Daemon, ctl
from test_service import ready

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"


def parse_fields(text: str) -> list[dict]:
    """The result-fields column: top-level fields `name`, separated by commas; `a` \\| `b`: exactly one of them is
    answered; `name`?: answered only in the case the notes say; (x, y (p, q)): the fields of that object or of
    each item of that list; [v, w]: the values it takes. → [{name: sub-fields or None}, ...] (one dict per
    comma-separated group, its keys the alternatives; an optional field has None among its alternatives)."""
    text = text.replace("\\|", "|")
    pos = 0

    def skip() -> None:
        nonlocal pos
        while pos < len(text) and text[pos] == " ":
            pos += 1

    def take(pattern: str):
        nonlocal pos
        skip()
        m = re.compile(pattern).match(text, pos)
        if m:
            pos = m.end()
        return m

    def field(top: bool):
        m = take(r"`([a-z_]+)`(\?)?" if top else r"([a-z_0-9]+)")
        assert m, f"cannot read a field at {text[pos:pos + 30]!r}"
        inner = sub() if take(r"\(") else None
        if take(r"\["):
            assert take(r"[^\]]*\]"), f"unclosed [ at {text[pos:pos + 30]!r}"
        return m.group(1), inner, top and bool(m.group(2))

    def sub() -> dict:
        out = {}
        while True:
            name, inner, _ = field(False)
            out[name] = inner
            if take(","):
                continue
            assert take(r"\)"), f"expected ')' at {text[pos:pos + 30]!r}"
            return out

    groups = []
    while True:
        group = {}
        while True:
            name, inner, optional = field(True)
            group[name] = inner
            if optional:
                group[None] = None
            if not take(r"\|"):
                break
        groups.append(group)
        if not take(","):
            break
    skip()
    assert pos == len(text), f"unread text in the field list: {text[pos:]!r}"
    return groups


def documented_results() -> dict[str, list]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `([a-z_]+)` \| (.*?) \| (.*?) \| (.*) \|$", line)
        if m and m.group(1) in Service.COMMANDS:
            rows[m.group(1)] = parse_fields(m.group(3))
    return rows


def check(value, spec: dict | None, where: str) -> None:
    if spec is None or value is None:
        return
    items = value if isinstance(value, list) else [value]
    for item in items[:3]:
        assert isinstance(item, dict), f"{where}: documented with fields but is {item!r}"
        assert set(item) == set(spec), f"{where}: answered {sorted(item)}, documented {sorted(spec)}"
        for k, inner in spec.items():
            check(item[k], inner, f"{where}.{k}")


def check_result(cmd: str, result: dict, doc: dict[str, list]) -> None:
    expected = set()
    for group in doc[cmd]:
        present = [n for n in group if n is not None and n in result]
        assert len(present) == 1 or (not present and None in group), \
            f"{cmd}: exactly one of {sorted(n for n in group if n)} should be answered, got {sorted(result)}"
        for name in present:
            expected.add(name)
            check(result[name], group[name], f"{cmd}.{name}")
    assert set(result) == expected, f"{cmd}: answered {sorted(result)}, documented {sorted(expected)}"


def test_the_field_parser_reads_nesting_and_alternatives():
    got = parse_fields("`a` (x, y (p, q)), `b` \\| `c` (z), `d` [v, w], `e`?")
    assert got == [{"a": {"x": None, "y": {"p": None, "q": None}}}, {"b": None, "c": {"z": None}}, {"d": None},
                   {"e": None, None: None}]


def test_every_command_is_documented_with_its_fields():
    doc = documented_results()
    assert set(doc) == set(Service.COMMANDS)
    assert all(doc.values())


def test_every_emitted_event_is_documented():
    text = DOC.read_text()
    events = set(re.findall(r"^\| `([a-z_]+)` \| ", text[text.index("## Events"):], re.M))
    emitted = set()
    for path in (ROOT / "daemon" / "autlearn").rglob("*.py"):
        src = path.read_text()
        emitted |= set(re.findall(r"""(?:emit|progress)\(\s*["']([a-z_]*[a-z])["']""", src))
        emitted |= {"version_" + s for s in ("promoted", "rejected") if '"version_" + status' in src}
    assert emitted and emitted <= events, f"emitted but not documented: {sorted(emitted - events)}"
    assert "error" in emitted


def test_the_daemon_answers_exactly_the_documented_fields(tmp_path, tiny_bundle, user_digits, write_user):
    doc = documented_results()
    d = ready(Daemon(tmp_path / "r", tiny_bundle, training="auto = false\nepochs = 5\n"))
    try:
        images, labels = user_digits
        write_user(d.inbox, images[:40], labels[:40])
        files = sorted(d.inbox.rglob("*.png"))[:2]
        ctl(d.root, "train")
        d.wait_round(0)
        answers = {
            "status": ctl(d.root, "status"), "versions": ctl(d.root, "versions"),
            "history": ctl(d.root, "history"), "config": ctl(d.root, "config"), "cache": ctl(d.root, "cache"),
            "predict": ctl(d.root, "predict", *map(str, files)), "bench": ctl(d.root, "bench"),
            "pause": ctl(d.root, "pause"), "train": ctl(d.root, "train"), "resume": ctl(d.root, "resume"),
        }
        d.wait_round(answers["status"]["last_round"]["round_id"])
        answers["rollback"] = ctl(d.root, "rollback", "1")
        assert set(answers) == set(Service.COMMANDS)
        for cmd, result in answers.items():
            check_result(cmd, result, doc)
        assert answers["bench"]["note"]
    finally:
        assert d.stop() == 0
