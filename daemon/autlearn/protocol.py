"""The control protocol's envelope (docs/protocol.md): versioned JSON, one message per frame."""

from __future__ import annotations

import json
from typing import Any

from .errors import AutlearnError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20


def request(cmd: str, args: dict | None = None, req_id: Any = None) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "id": req_id, "cmd": cmd, "args": args or {}}).encode()


def _not_json(name: str):
    raise ValueError(f"{name} is not a JSON value")


def parse_request(frame: bytes) -> dict:
    """Validate the envelope; raise AutlearnError with the code a client should see."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise AutlearnError("bad_request", f"message of {len(frame)} bytes is over the limit of {MAX_MESSAGE_BYTES}")
    try:
        msg = json.loads(frame.decode("utf-8"), parse_constant=_not_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AutlearnError("bad_request", f"not UTF-8 JSON: {e}") from None
    except RecursionError:
        raise AutlearnError("bad_request", "JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise AutlearnError("bad_request", f"unreadable JSON: {e}") from None
    if not isinstance(msg, dict):
        raise AutlearnError("bad_request", "a request must be a JSON object")
    if isinstance(msg.get("v"), bool) or msg.get("v") != PROTOCOL_VERSION:
        raise AutlearnError("protocol_version",
                            f"client speaks protocol version {msg.get('v')!r}, this daemon speaks {PROTOCOL_VERSION}")
    if not isinstance(msg.get("cmd"), str):
        raise AutlearnError("bad_request", "field 'cmd' must be a string")
    args = msg.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise AutlearnError("bad_request", "field 'args' must be a JSON object")
    msg["args"] = args
    return msg


def _dump(msg: dict) -> bytes:
    """Encode a reply. An `id` the encoder cannot write back (nested to the recursion limit) is replaced by null:
    the client still gets its one reply, never an exception in the daemon's loop."""
    try:
        return json.dumps(msg).encode()
    except (RecursionError, ValueError, TypeError):
        if msg.get("id") is None:
            raise
        return json.dumps({**msg, "id": None}).encode()


def reply_ok(req_id: Any, result: Any) -> bytes:
    return _dump({"v": PROTOCOL_VERSION, "id": req_id, "ok": True, "result": result})


def reply_error(req_id: Any, code: str, message: str) -> bytes:
    return _dump({"v": PROTOCOL_VERSION, "id": req_id, "ok": False, "error": {"code": code, "message": message}})


def event(name: str, when: float, data: dict) -> list[bytes]:
    return [name.encode(), json.dumps({"v": PROTOCOL_VERSION, "event": name, "time": when, "data": data}).encode()]
