"""Hostile requests on the control socket: a raw client, the reply contract, Hypothesis strategies and attacks.

A raw DEALER (`Wire`), envelopes and frames, fuzzing, wrong types everywhere, oversize frames, concurrent and
vanishing clients. A short run is derandomized; `fuzz_protocol(..., seed=N)` replays a seeded one.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import socket
import threading
import time
from collections import Counter

import numpy as np
import zmq
from hypothesis import HealthCheck, given, seed as hyp_seed, settings, strategies as st

from autlearn.control import protocol
from autlearn.errors import CATALOGUE
from userdata import png_bytes

COMMANDS = ("status", "train", "predict", "versions", "history", "pause", "resume", "rollback", "config", "cache")
ARG_KEYS = ("files", "version", "top", "limit", "name", "data")
NO_ARG_COMMANDS = ("status", "versions", "pause", "resume", "config", "cache", "train")
CLIENT_ERRORS = {"bad_argument", "not_found", "bad_input", "busy"}
V = protocol.PROTOCOL_VERSION


# ---------------------------------------------------------------------------------------------- plumbing

class Wire:
    """A raw DEALER on the control socket: send frames, get the one reply (or None)."""

    def __init__(self, endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        self.sock.connect(endpoint)

    def roundtrip(self, frames: list[bytes], timeout_ms: int = 10_000) -> list[bytes] | None:
        # a DEALER with no live peer (e.g. its CURVE handshake was refused) blocks in send: bound that, too
        self.sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
        try:
            self.sock.send_multipart(frames)
        except zmq.Again:
            return None
        if not self.sock.poll(timeout_ms):
            return None
        return self.sock.recv_multipart()

    def close(self) -> None:
        self.sock.close(0)


def decode_reply(frames: list[bytes] | None) -> dict:
    assert frames is not None, "no reply"
    msg = json.loads(frames[-1])
    assert msg["v"] == protocol.PROTOCOL_VERSION and isinstance(msg["ok"], bool), msg
    if not msg["ok"]:
        assert msg["error"]["code"] in CATALOGUE and msg["error"]["message"], msg
        assert msg["error"]["code"] != "internal", f"internal error: {msg['error']['message']}"
    return msg


def not_json(v) -> bool:
    """NaN or ±Infinity anywhere: Python's json writes them, but JSON has none, and the daemon refuses them."""
    if isinstance(v, float):
        return not math.isfinite(v)
    if isinstance(v, dict):
        return any(not_json(x) for x in v.values())
    if isinstance(v, list):
        return any(not_json(x) for x in v)
    return False


def expected_envelope_error(msg) -> str | None:
    """The error parse_request must give `msg` (a decoded JSON value), None if the envelope is fine."""
    if not_json(msg) or not isinstance(msg, dict):
        return "bad_request"
    if type(msg.get("v")) is not int or msg["v"] != V:
        return "protocol_version"
    if not isinstance(msg.get("cmd"), str):
        return "bad_request"
    if msg.get("args", {}) is not None and not isinstance(msg.get("args", {}), dict):
        return "bad_request"
    if msg["cmd"] not in COMMANDS + ("bench",):
        return "unknown_command"
    return None


def check_request(wire: Wire, msg, counts: Counter) -> None:
    """Send one JSON request; its reply must be the one the contract gives."""
    frame = json.dumps(msg).encode()
    reply = decode_reply(wire.roundtrip([b"", frame]))
    counts["requests"] += 1
    want = expected_envelope_error(msg)
    if want is not None:
        assert not reply["ok"] and reply["error"]["code"] == want, (msg, reply)
        counts[f"error {want}"] += 1
        return
    assert json.dumps(reply["id"]) == json.dumps(msg.get("id")), "the id was not echoed"
    if reply["ok"]:
        counts["ok"] += 1
    else:
        assert reply["error"]["code"] in CLIENT_ERRORS, reply
        counts[f"error {reply['error']['code']}"] += 1
    if msg["cmd"] in NO_ARG_COMMANDS:
        assert reply["ok"], f"{msg['cmd']} must succeed whatever its args: {reply}"


# ---------------------------------------------------------------------------------------------- strategies

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 80), max_value=2 ** 80)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                                 max_size=4),
                           max_leaves=12)
b64 = st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode())
file_entries = st.fixed_dictionaries({"name": st.text(max_size=20) | json_values, "data": b64 | json_values})
arg_values = {
    "files": st.lists(file_entries, max_size=3) | json_values,
    "version": st.integers(min_value=-3, max_value=5) | json_values,
    "top": st.integers(min_value=-2, max_value=20) | json_values,
    "limit": st.integers(min_value=-2, max_value=50) | json_values,
}


often = st.sampled_from([True, True, True, True, True, False])  # Hypothesis shrinks toward the first: True
rarely = st.sampled_from([False, False, False, False, False, True])


@st.composite
def requests(draw) -> dict:
    """Mostly well-formed envelopes (so the commands' own argument checks are reached), with every field
    sometimes missing or of a wrong type."""
    msg: dict = {}
    if draw(often):
        msg["v"] = V if draw(often) else draw(json_values)
    msg["id"] = draw(json_values)
    if draw(often):
        msg["cmd"] = draw(st.sampled_from(COMMANDS)) if draw(often) else draw(st.text(max_size=12) | json_values)
    if draw(often):
        keys = draw(st.lists(st.sampled_from(ARG_KEYS) | st.text(max_size=6), max_size=4, unique=True))
        msg["args"] = {k: draw(arg_values.get(k, json_values)) for k in keys}
    elif draw(often):
        msg["args"] = draw(json_values)
    if draw(rarely):
        msg[draw(st.text(max_size=6))] = draw(json_values)  # unknown fields are tolerated
    return msg


def _settings(examples: int, seed: int | None):
    return settings(max_examples=examples, derandomize=seed is None, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def fuzz_protocol(endpoint: str, examples: int, seed: int | None = None) -> Counter:
    """Hypothesis against the live daemon: envelopes and args, raw bytes, text, JSON values, multipart.
    seed None: derandomized (the same examples every run)."""
    counts: Counter = Counter()
    wire = Wire(endpoint)

    def run(test):
        test = _settings(examples, seed)(test)
        if seed is not None:
            test = hyp_seed(seed)(test)
        test()

    @given(requests())
    def envelopes(msg):
        check_request(wire, msg, counts)

    @given(st.binary(max_size=3000))
    def raw_bytes(frame):
        reply = decode_reply(wire.roundtrip([b"", frame]))
        counts["raw frames"] += 1
        assert not reply["ok"]

    @given(st.text(max_size=500))
    def text(s):
        reply = decode_reply(wire.roundtrip([b"", s.encode("utf-8", "surrogatepass")]))
        counts["text frames"] += 1
        assert not reply["ok"]

    @given(json_values)
    def values(v):
        check_request(wire, v, counts)

    @given(st.lists(st.binary(max_size=80), min_size=1, max_size=6))
    def multipart(frames):
        reply = wire.roundtrip(frames)
        counts["multipart messages"] += 1
        assert reply is not None and reply[:-1] == frames[:-1], "the envelope did not come back"
        decode_reply(reply)

    for test in (envelopes, raw_bytes, text, values, multipart):
        run(test)
    wire.close()
    return counts


def wrong_types_everywhere(endpoint: str) -> Counter:
    """Every command, every argument it reads, every JSON type: an answer, never an internal error."""
    counts: Counter = Counter()
    wire = Wire(endpoint)
    bad = [None, True, False, -1, 0, 2 ** 63, 2 ** 80, -(2 ** 80), 1.5, float("nan"), float("inf"), "", "x", "1",
           [], [1], [{}], [{"name": 1, "data": 2}], [{"name": "a", "data": "!!"}], {}, {"a": 1}]
    for cmd in COMMANDS:
        for key in ARG_KEYS + ("zzz",):
            for value in bad:
                check_request(wire, {"v": V, "id": [cmd, key], "cmd": cmd, "args": {key: value}}, counts)
        for args in bad:
            check_request(wire, {"v": V, "id": cmd, "cmd": cmd, "args": args}, counts)
    check_request(wire, {"v": V, "id": "b", "cmd": "bench", "args": {"files": 1, "x": [None]}}, counts)
    for frame, code in [(b"[" * 100_000, "bad_request"), (b'{"v": V, "id": ' + b"9" * 5000 + b"}", "bad_request"),
                        (b'{"v": true, "cmd": "status"}', "protocol_version"), (b"\xff\xfe", "bad_request"),
                        (b"", "bad_request"), (b"null", "bad_request"), (b"NaN", "bad_request")]:
        reply = decode_reply(wire.roundtrip([b"", frame]))
        assert not reply["ok"] and reply["error"]["code"] == code, (frame[:40], reply)
        counts["requests"] += 1
    wire.close()
    return counts


def oversize(endpoint: str) -> Counter:
    """Over the limit: an error reply (with 2 and 16 MiB too). Past MAXMSGSIZE: dropped by ZeroMQ, and the same
    socket works again."""
    counts: Counter = Counter()
    wire = Wire(endpoint)
    ok = protocol.request("status", None, 1)
    reply = decode_reply(wire.roundtrip([b"", b" " * (protocol.MAX_MESSAGE_BYTES + 100)]))
    assert reply["error"]["code"] == "bad_request" and "over the limit" in reply["error"]["message"]
    pad = protocol.MAX_MESSAGE_BYTES - len(ok) - 1
    assert decode_reply(wire.roundtrip([b"", ok[:-1] + b" " * pad + b"}"]))["ok"]  # exactly at the limit: fine
    for size in (1_052_677, 2 << 20, 16 << 20, protocol.MAX_FRAME_BYTES):
        reply = decode_reply(wire.roundtrip([b"", b"x" * size], timeout_ms=30_000))
        assert reply["error"]["code"] == "bad_request" and f"{size} bytes is over the limit" in reply["error"]["message"]
        counts["oversize frames answered"] += 1
    assert wire.roundtrip([b"", b"x" * (protocol.MAX_FRAME_BYTES + 1)], timeout_ms=1500) is None  # transport drop
    assert decode_reply(wire.roundtrip([b"", ok]))["ok"]  # and the client's next request is answered
    counts["requests"] += 8
    wire.close()
    return counts


def concurrent_clients(endpoint: str, clients: int = 20, per_client: int = 50) -> Counter:
    """`clients` threads, each its own DEALER, `per_client` requests each, good and bad mixed."""
    counts: Counter = Counter()
    lock = threading.Lock()
    image = base64.b64encode(png_bytes(np.eye(8, dtype=np.uint8) * 255)).decode()
    errors: list[str] = []
    latencies: list[float] = []

    def client(k: int) -> None:
        wire = Wire(endpoint)
        rng = random.Random(k)
        try:
            for i in range(per_client):
                kind = rng.choice(["status", "status", "versions", "history", "predict", "garbage", "unknown"])
                rid = f"{k}-{i}"
                if kind == "predict":
                    frame = protocol.request("predict", {"files": [{"name": "e.png", "data": image}]}, rid)
                elif kind == "garbage":
                    frame = b"\x00not json" + bytes([k, i])
                elif kind == "unknown":
                    frame = protocol.request("fly", None, rid)
                else:
                    frame = protocol.request(kind, None, rid)
                t0 = time.monotonic()
                reply = decode_reply(wire.roundtrip([b"", frame]))
                dt = time.monotonic() - t0
                good = kind not in ("garbage", "unknown")
                assert reply["ok"] == good and (not good or reply["id"] == rid), (kind, reply)
                with lock:
                    counts["requests"] += 1
                    counts["ok" if good else "errors"] += 1
                    latencies.append(dt)
        except Exception as e:
            with lock:
                errors.append(f"client {k}: {type(e).__name__}: {e}")
        finally:
            wire.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    counts["wall ms"] = round(1000 * (time.monotonic() - t0))
    counts["max latency ms"] = round(1000 * max(latencies)) if latencies else -1
    assert not errors, errors
    return counts


def vanishing_clients(endpoint: str, rounds: int = 200, seed: int = 0) -> Counter:
    """Clients that send and disappear before the reply, raw sockets that send half a greeting or garbage and
    hang up, idle connections held open, and one client that floods without ever reading."""
    counts: Counter = Counter()
    rng = random.Random(seed)
    path = endpoint[len("ipc://"):]
    big = protocol.request("predict", {"files": [{"name": f"v{i}.png", "data": base64.b64encode(
        png_bytes(np.full((8, 8), i, np.uint8))).decode()} for i in range(20)]}, "v")
    ctx = zmq.Context.instance()
    for i in range(rounds):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        s.send_multipart([b"", big if i % 3 == 0 else protocol.request("status", None, i)])
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0, 0.003))
        s.close(0)
        counts["vanished mid-request"] += 1
    for i in range(rounds // 2):
        r = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        r.connect(path)
        greeting = b"\xff" + b"\0" * 8 + b"\x7f\x03\x00NULL" + b"\0" * 16
        r.sendall(rng.choice([greeting[:rng.randint(1, len(greeting))], os.urandom(rng.randint(1, 300)), b""]))
        r.close()
        counts["raw sockets with garbage"] += 1
    held = []
    for _ in range(50):
        r = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        r.connect(path)
        held.append(r)
    wire = Wire(endpoint)
    for i in range(100):  # answered while 50 idle connections are held open
        assert decode_reply(wire.roundtrip([b"", protocol.request("status", None, i)], 5000))["ok"]
        counts["answered beside held connections"] += 1
    for r in held:
        r.close()
    flood = ctx.socket(zmq.DEALER)
    flood.setsockopt(zmq.LINGER, 0)
    flood.setsockopt(zmq.SNDHWM, 0)
    flood.connect(endpoint)
    for i in range(5000):
        flood.send_multipart([b"", protocol.request("status", None, i)])
    time.sleep(1.0)
    flood.close(0)
    counts["flood requests never read"] += 5000
    assert decode_reply(wire.roundtrip([b"", protocol.request("status", None, "after")], 10_000))["ok"]
    wire.close()
    return counts
