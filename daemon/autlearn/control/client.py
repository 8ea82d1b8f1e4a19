"""A small client for the control socket, used by autlearnctl, the demo and the tests."""

from __future__ import annotations

import base64
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import zmq

from . import protocol
from ..errors import CATALOGUE, AutlearnError


def connect(sock: zmq.Socket, endpoint: str) -> None:
    """Connect, or raise a one-sentence `bad_argument` for an endpoint ZeroMQ cannot use (foo://bar)."""
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as e:
        sock.close(0)
        raise AutlearnError("bad_argument", f"cannot use the endpoint {endpoint!r} ({zmq.strerror(e.errno)}); "
                                            "give ipc:///PATH or tcp://HOST:PORT") from None


class Client:
    def __init__(self, endpoint: str, timeout_s: float = 10.0, curve: tuple[bytes, bytes, bytes] | None = None):
        """`curve` = (client public key, client secret key, server public key) for a TCP listener."""
        self.endpoint = endpoint
        self.curve = curve
        self.timeout_ms = int(timeout_s * 1000)
        self._ids = itertools.count(1)
        self._ctx = zmq.Context.instance()
        self._sock = None

    def _check_reachable(self) -> None:
        if not self.endpoint.startswith("ipc://"):
            return
        path = Path(self.endpoint[len("ipc://"):])
        try:
            exists = path.exists()
        except PermissionError:
            exists = True  # a directory on the way is closed to us: say so below
        if not exists:
            raise AutlearnError("not_running", f"no control socket at {path}: is autlearnd running?")
        if not os.access(path, os.R_OK | os.W_OK):
            raise AutlearnError("not_running", f"permission denied on {path}: "
                                               "run as root or as a member of the 'autlearn' group")

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            self._check_reachable()
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                s.curve_publickey, s.curve_secretkey, s.curve_serverkey = self.curve
            connect(s, self.endpoint)
            self._sock = s
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def call(self, cmd: str, args: dict | None = None, timeout_s: float | None = None) -> Any:
        """Send one request; return its result or raise AutlearnError with the daemon's code and sentence."""
        timeout_ms = self.timeout_ms if timeout_s is None else int(timeout_s * 1000)
        sock = self._socket()
        req_id = next(self._ids)
        sock.send_multipart([b"", protocol.request(cmd, args, req_id)])
        while True:
            if not sock.poll(timeout_ms):
                self.close()  # a late reply must not be read as the answer to the next request
                raise AutlearnError("not_running", f"no reply from {self.endpoint} within {timeout_ms} ms: "
                                                   "is autlearnd running?")
            frames = sock.recv_multipart()
            try:
                msg = json.loads(frames[-1])
            except (ValueError, UnicodeDecodeError):
                raise AutlearnError("bad_request", "the daemon sent a reply that is not JSON") from None
            if msg.get("id") not in (req_id, None):
                continue  # a stale reply to an earlier request
            if msg.get("v") != protocol.PROTOCOL_VERSION:
                raise AutlearnError("protocol_version", f"daemon speaks protocol {msg.get('v')!r}, "
                                                        f"this client speaks {protocol.PROTOCOL_VERSION}")
            if msg.get("ok"):
                return msg.get("result")
            err = msg.get("error") or {}
            raise AutlearnError(err.get("code", "internal") if err.get("code") in CATALOGUE else "internal",
                                err.get("message", "unknown error"))

    def predict_files(self, paths: list[str | Path], version: int | None = None, top: int = 3) -> dict:
        files = [{"name": str(p), "data": base64.b64encode(Path(p).read_bytes()).decode()} for p in paths]
        args: dict = {"files": files, "top": top}
        if version is not None:
            args["version"] = version
        return self.call("predict", args)


class Events:
    """Subscriber to the daemon's event socket. With `alive` (a Client), `next` checks every few quiet seconds
    that the daemon still answers, so that waiting for events never hangs silently on a daemon that is gone."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("",), alive: Client | None = None,
                 check_every_s: float = 5.0):
        self._alive = alive
        self._check_every_s = check_every_s
        if endpoint.startswith("ipc://") and not Path(endpoint[len("ipc://"):]).exists():
            raise AutlearnError("not_running", f"no event socket at {endpoint[len('ipc://'):]}: is autlearnd "
                                               "running?")
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        for t in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        connect(self._sock, endpoint)
        if alive is not None:
            alive.call("status")  # the daemon answers: not a stale socket file
        time.sleep(0.1)  # let the subscription reach the publisher before the caller triggers anything

    def next(self, timeout_s: float | None = None) -> dict:
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = self._check_every_s if self._alive is not None else None
            if end is not None:
                left = max(0.0, end - time.monotonic())
                wait = left if wait is None else min(wait, left)
            if self._sock.poll(None if wait is None else int(wait * 1000)):
                return json.loads(self._sock.recv_multipart()[-1])
            if end is not None and time.monotonic() >= end:
                raise TimeoutError("no event")
            if self._alive is not None:  # else the poll came back a little early (whole milliseconds): wait on
                self._alive.call("status")  # raises not_running when the daemon has gone

    def close(self) -> None:
        self._sock.close(0)
