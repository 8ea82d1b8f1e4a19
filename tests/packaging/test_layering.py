"""Data flows one way through the daemon's rooms: no module imports one from a room above its own.

The rooms, lowest first (docs/architecture.md draws them):

    base      errors, paths, durable, the package root (versions)
    runtime   the interpreter seam, the bundle, measuring and choosing variants
    storage   the SQLite state (samples, classes, heads, rounds) and its schema versions
    intake    files in: ingest, imaging, text pieces, media, the watcher, augmentation
    learning  features, the feature cache, heads, the learners
    config    every setting declared once (lower rooms take plain, already validated values)
    service   bootstrap, scheduler, worker, answerer, policy, the API object
    control   the protocol, the ZeroMQ server, the client and autlearnctl
    main      autlearnd's entry point

Every import counts, the lazy ones inside functions included. A module may import its own room and any room
below it; an import upward must be listed in ALLOWED with its reason (and is checked to still exist).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "autlearn"

ROOMS = ["base", "runtime", "storage", "intake", "learning", "config", "service", "control", "main"]

# Modules whose room is not their folder's name (the rest: the sub-package, or "base" at the top level).
ROOM_OF = {
    "autlearn.config": "config",
    "autlearn.main": "main",
    # The sample store is the hand-over between intake (which writes samples) and learning (which reads them):
    # storage, below both. It sits in learning/ until learner.py, keyboard.py, engine.py (round) and
    # featcache.py (cut) import it from a storage/ folder.
    "autlearn.learning.store": "storage",
    "autlearn.learning.schema": "storage",
}

# (importer, imported): why the upward import stays for now.
ALLOWED = {
    ("autlearn.runtime.bundle", "autlearn.intake.imaging"):
        "manifest checks use imaging's COLOR_MODES/RESIZE_POLICIES; they belong to the bundle format (cut's file)",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room(module: str) -> str:
    if module in ROOM_OF:
        return ROOM_OF[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "base"


def imports(path: Path) -> set[str]:
    """The autlearn modules `path` imports (a `from package import name` counts as package.name when that
    is a module, else as the package)."""
    return imports_of(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    package = module if is_package else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "autlearn"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "autlearn":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if _is_module(sub) else target)
    out.discard(module)
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def all_imports() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def upward() -> dict[tuple[str, str], str]:
    found = {}
    for importer, targets in all_imports().items():
        for target in targets:
            if ROOMS.index(room(target)) > ROOMS.index(room(importer)):
                found[(importer, target)] = f"{importer} ({room(importer)}) imports {target} ({room(target)})"
    return found


def test_every_module_is_in_a_known_room():
    unknown = {m: room(m) for m in all_imports() if room(m) not in ROOMS}
    assert not unknown, f"modules in no room of ROOMS (add the sub-package to ROOMS and the docs): {unknown}"


def test_no_module_imports_a_room_above_its_own():
    bad = [text for pair, text in sorted(upward().items()) if pair not in ALLOWED]
    assert not bad, "imports against the one-way flow:\n" + "\n".join(bad)


def test_every_allowed_upward_import_still_exists():
    stale = sorted(set(ALLOWED) - set(upward()))
    assert not stale, f"remove these from ALLOWED, they no longer happen: {stale}"


def test_the_checker_sees_relative_lazy_and_absolute_imports():
    """The parser itself: an upward import written in each form is found, so a pass means something."""
    src = ("from ..service import api\nimport autlearn.control.server\n"
           "def f():\n    from ..learning.head import Head\n    from .. import config\n    from . import bundle\n")
    got = imports_of(src, "autlearn.runtime.probe")
    assert got == {"autlearn.service.api", "autlearn.control.server", "autlearn.learning.head", "autlearn.config",
                   "autlearn.runtime.bundle"}
    assert [room(m) for m in sorted(got)] == ["config", "control", "learning", "runtime", "service"]
