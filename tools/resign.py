"""Re-signing a bundle whose manifest a test or a tool changed on purpose, as the builder signs one."""

from __future__ import annotations

import json
from pathlib import Path

from autlearn.runtime import bundle as bundle_mod


def write_manifest(root: Path, manifest: dict, rehash_files: bool = False) -> None:
    """Write `manifest` as root/manifest.json and its manifest.sha256 line; with `rehash_files`, first set the
    sha256 and size of every listed file from the file itself (for files copied or replaced in the bundle)."""
    if rehash_files:
        for name, meta in manifest["files"].items():
            meta["sha256"] = bundle_mod.sha256_file(root / name)
            meta["bytes"] = (root / name).stat().st_size
    raw = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
    (root / bundle_mod.MANIFEST).write_bytes(raw)
    (root / bundle_mod.MANIFEST_DIGEST).write_text(bundle_mod.manifest_digest_line(raw))
