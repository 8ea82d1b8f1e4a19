"""ZeroMQ adapter over the Service: a ROUTER socket for requests, a PUB socket for events.

The loop never blocks on a client: replies go out with NOBLOCK, a vanished client's reply is dropped.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from pathlib import Path

import zmq

from . import protocol
from .errors import AutlearnError
from .notify import Notifier
from .service import Service
from .watcher import DebouncedWatcher

log = logging.getLogger(__name__)


class EventQueue:
    """Thread-safe hand-over of events from the worker to the loop that owns the PUB socket."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=10_000)

    def __call__(self, name: str, data: dict) -> None:
        try:
            self.q.put_nowait((name, time.time(), data))
        except queue.Full:
            pass  # nobody is draining: drop rather than grow


class ControlServer:
    def __init__(self, service: Service, control: str, events: str, notifier: Notifier, event_queue: EventQueue,
                 watcher: DebouncedWatcher | None):
        self.service = service
        self.notifier = notifier
        self.events = event_queue
        self.watcher = watcher
        self.ctx = zmq.Context.instance()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES + 4096)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.router.setsockopt(zmq.SNDHWM, 1000)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 1000)
        self._bind(self.router, control)
        self._bind(self.pub, events)

    @staticmethod
    def _bind(sock: zmq.Socket, endpoint: str) -> None:
        sock.bind(endpoint)
        if endpoint.startswith("ipc://"):
            os.chmod(Path(endpoint[len("ipc://"):]), 0o660)  # owner and group only

    def handle_frames(self, frames: list[bytes]) -> list[bytes] | None:
        """Route one multipart message: [identity, (empty,) payload]. Returns the reply frames."""
        if len(frames) < 2:
            return None
        envelope, payload = frames[:-1], frames[-1]
        req_id = None
        try:
            msg = protocol.parse_request(payload)
            req_id = msg.get("id")
            result = self.service.handle(msg["cmd"], msg["args"])
            return envelope + [protocol.reply_ok(req_id, result)]
        except AutlearnError as e:
            return envelope + [protocol.reply_error(req_id, e.code, e.message)]
        except Exception as e:  # never let one request take the daemon down
            log.exception("request failed")
            return envelope + [protocol.reply_error(req_id, "internal", f"{type(e).__name__}: {e}")]

    def serve(self, should_stop, on_tick=None) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        last_ping, last_tick, last_status = 0.0, 0.0, ""
        ping_every = self.notifier.watchdog_s / 3 if self.notifier.watchdog_s else 5.0
        while not should_stop():
            for sock, _ in poller.poll(50):
                for _ in range(100):  # drain, but stay responsive to stop and events
                    try:
                        frames = self.router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    reply = self.handle_frames(frames)
                    if reply is not None:
                        try:
                            self.router.send_multipart(reply, zmq.NOBLOCK)
                        except zmq.ZMQError:
                            pass  # the client went away
            self._publish_events()
            if self.watcher is not None and self.watcher.due():
                self.service.request_scan()
            now = time.monotonic()
            if now - last_ping >= ping_every:
                self.notifier.watchdog()
                last_ping = now
            if now - last_tick >= 0.5:
                self.service.tick()
                last_tick = now
            line = self.service.status_line()
            if line != last_status:
                self.notifier.status(line)
                last_status = line
            if on_tick is not None:
                on_tick()
        self._publish_events()

    def _publish_events(self) -> None:
        while True:
            try:
                name, when, data = self.events.q.get_nowait()
            except queue.Empty:
                return
            try:
                self.pub.send_multipart(protocol.event(name, when, data), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def close(self) -> None:
        self.router.close(0)
        self.pub.close(0)
