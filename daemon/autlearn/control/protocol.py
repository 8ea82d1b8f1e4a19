"""The control protocol's envelope (docs/protocol.md): versioned JSON, one message per frame."""

from __future__ import annotations

import json
from typing import Any

from .. import PROTOCOL_VERSION
from ..errors import AutlearnError

MAX_MESSAGE_BYTES = 1 << 20
# The transport's bound on one frame (ZMQ_MAXMSGSIZE): a request between MAX_MESSAGE_BYTES and this gets a
# bad_request reply; past it ZeroMQ itself drops the connection (no reply can be sent: the frame never arrives).
MAX_FRAME_BYTES = 32 << 20


class EnvelopeError(AutlearnError):
    """A request refused before its command ran; carries the request's id when it could be read."""

    def __init__(self, code: str, message: str, req_id: Any = None):
        super().__init__(code, message)
        self.req_id = req_id


def request(cmd: str, args: dict | None = None, req_id: Any = None, version: int = PROTOCOL_VERSION) -> bytes:
    return json.dumps({"v": version, "id": req_id, "cmd": cmd, "args": args or {}}).encode()


def _not_json(name: str):
    raise ValueError(f"{name} is not a JSON value")


def parse_request(frame: bytes) -> dict:
    """Validate the envelope; raise EnvelopeError with the code a client should see (and its id, if readable)."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise EnvelopeError("bad_request", f"message of {len(frame)} bytes is over the limit of {MAX_MESSAGE_BYTES}")
    try:
        msg = json.loads(frame.decode("utf-8"), parse_constant=_not_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EnvelopeError("bad_request", f"not UTF-8 JSON: {e}") from None
    except RecursionError:
        raise EnvelopeError("bad_request", "JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise EnvelopeError("bad_request", f"unreadable JSON: {e}") from None
    if not isinstance(msg, dict):
        raise EnvelopeError("bad_request", "a request must be a JSON object")
    req_id = msg.get("id")
    if "v" not in msg:
        raise EnvelopeError("protocol_version", f"the request has no 'v' field (the protocol version); this daemon "
                                                f"speaks protocol version {PROTOCOL_VERSION}", req_id)
    v = msg["v"]
    if type(v) is not int:  # not 2.0, not true
        raise EnvelopeError("protocol_version", f"field 'v' must be an integer protocol version, not {_show(v)}; "
                                                f"this daemon speaks protocol version {PROTOCOL_VERSION}", req_id)
    if v != PROTOCOL_VERSION:
        raise EnvelopeError("protocol_version", f"client speaks protocol version {_show(v)}, this daemon speaks "
                                                f"{PROTOCOL_VERSION} (docs/protocol.md lists the changes)", req_id)
    if not isinstance(msg.get("cmd"), str):
        raise EnvelopeError("bad_request", "field 'cmd' must be a string", req_id)
    args = msg.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise EnvelopeError("bad_request", "field 'args' must be a JSON object", req_id)
    msg["args"] = args
    return msg


def _show(v: Any) -> str:
    """A client's value in an error sentence, bounded (it may be a megabyte of JSON)."""
    try:
        text = json.dumps(v)
    except (RecursionError, ValueError, TypeError):
        text = type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


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
