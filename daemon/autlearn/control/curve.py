"""CURVE keys for the optional TCP control listener: the server's key pair, and the owner's authorized keys.

Key files use ZeroMQ's certificate format (`zmq.auth.create_certificates`): `NAME.key` holds the public key,
`NAME.key_secret` the secret one (mode 0600). An authorized-keys file lists one client public key per line
(the Z85 text, or a `public-key = "..."` line as in a `.key` file), optionally followed by blanks and a
`# comment`; any other line starting with `#` is a comment. (`#` is itself a Z85 digit, so a key may begin
with or contain one: a line is a key when it is one, before it is a comment.) The file is read on every
connection, so adding or removing a key needs no restart.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import zmq
import zmq.auth

from ..errors import AutlearnError

log = logging.getLogger(__name__)

_Z85 = r"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}"
_Z85_KEY = re.compile(rf'^(?:public-key\s*=\s*"(?P<q>{_Z85})"|(?P<bare>{_Z85}))(?:\s+#.*)?$')


def keygen(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret (0600) into `directory`; refuse to overwrite."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise AutlearnError("bad_argument", f"{directory} exists and is not a directory: give the directory the "
                                            "key files go into") from None
    except OSError as e:
        raise AutlearnError("bad_argument", f"cannot create the directory {directory}: {e.strerror}") from None
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise AutlearnError("bad_argument", f"{public} already exists; remove it first or choose another name")
    old = os.umask(0o077)
    try:
        zmq.auth.create_certificates(str(directory), name)
    except OSError as e:
        raise AutlearnError("bad_argument", f"cannot write key files into {directory}: {e.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def load_pair(secret_file: Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(str(secret_file))
    except (OSError, ValueError) as e:
        raise AutlearnError("bad_argument", f"{secret_file}: not a CURVE secret key file ({e})") from None
    if secret is None:
        raise AutlearnError("bad_argument", f"{secret_file}: holds no secret key (use the .key_secret file)")
    return public, secret


def load_public(key_file: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(key_file))
    except (OSError, ValueError) as e:
        raise AutlearnError("bad_argument", f"{key_file}: not a CURVE key file ({e})") from None
    return public


def server_pair(state_dir: Path) -> tuple[bytes, bytes]:
    """The daemon's own key pair, made on first use and kept in the state directory."""
    keys = state_dir / "curve"
    if not (keys / "server.key_secret").exists():
        keygen(keys, "server")
        log.info("made the control listener's CURVE key pair; clients need %s", keys / "server.key")
    return load_pair(keys / "server.key_secret")


def authorized(path: Path) -> set[bytes]:
    """Client public keys allowed in; a missing file allows nobody."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    except (OSError, UnicodeDecodeError) as e:
        log.error("cannot read authorized keys %s: %s; refusing every TCP client", path, e)
        return set()
    keys = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        m = _Z85_KEY.match(line)
        if m:
            keys.add((m.group("q") or m.group("bare")).encode())
        elif line and not line.startswith("#") and line not in ("curve", "metadata"):
            log.warning("%s:%d: not a CURVE public key, ignored", path, n)
    return keys


class AuthorizedKeys:
    """Credentials provider for pyzmq's authenticator: consults the file on every handshake."""

    def __init__(self, path: Path):
        self.path = path

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in authorized(self.path)
        if not ok:
            log.warning("TCP control: refused a client with an unknown CURVE key %s", key.decode(errors="replace"))
        return ok
