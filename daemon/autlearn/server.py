"""ZeroMQ adapter over the Service: a ROUTER socket for requests, a PUB socket for events.

The loop never blocks on a client: replies go out with NOBLOCK, a vanished client's reply is dropped.
"""

from __future__ import annotations

import grp
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

# A request as the ROUTER sees it: [identity, envelope frames (b"" from DEALER/REQ clients, routing frames from
# a proxy), JSON]. The envelope is echoed in the reply, so it is bounded (ZMQ_MAXMSGSIZE bounds each frame only).
MAX_FRAMES = 16
MAX_ENVELOPE_BYTES = 4096


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
                 watcher: DebouncedWatcher | None, group: str = "", tcp: str = "", curve_keys=None,
                 authorized_keys: Path | None = None, media=None):
        self.service = service
        self.notifier = notifier
        self.events = event_queue
        self.watcher = watcher
        self.group = group
        self.media = media
        self.ctx = zmq.Context.instance()
        self.router = self._router()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 1000)
        self.routers = [self.router]
        self.auth = None
        self._ipc_files: list[Path] = []
        try:
            self._bind(self.router, control)
            self._bind(self.pub, events)
            if tcp:
                self._listen_tcp(tcp, curve_keys, authorized_keys)
        except BaseException:
            self.close()  # a listener that cannot bind leaves no socket or authenticator thread behind
            raise

    def _router(self) -> zmq.Socket:
        r = self.ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES + 4096)
        r.setsockopt(zmq.LINGER, 0)
        r.setsockopt(zmq.ROUTER_MANDATORY, 0)
        r.setsockopt(zmq.SNDHWM, 1000)
        return r

    def _listen_tcp(self, endpoint: str, curve_keys: tuple[bytes, bytes], authorized_keys: Path) -> None:
        """A CURVE-encrypted listener that lets in only clients whose public key is authorized."""
        from zmq.auth.thread import ThreadAuthenticator

        from .curve import AuthorizedKeys
        self.auth = ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve_callback("*", credentials_provider=AuthorizedKeys(authorized_keys))
        r = self._router()
        r.curve_publickey, r.curve_secretkey = curve_keys
        r.curve_server = True
        self.routers.append(r)
        r.bind(endpoint)
        log.info("TCP control listener on %s (CURVE; authorized keys in %s)", endpoint, authorized_keys)

    def _bind(self, sock: zmq.Socket, endpoint: str) -> None:
        sock.bind(endpoint)
        if endpoint.startswith("ipc://"):
            path = Path(endpoint[len("ipc://"):])
            self._ipc_files.append(path)
            os.chmod(path, 0o660)  # owner and group only
            if self.group:
                try:
                    os.chown(path, -1, grp.getgrnam(self.group).gr_gid)
                except KeyError:
                    log.info("group %r does not exist: only the daemon's own user can use %s", self.group, path)
                except PermissionError as e:
                    log.warning("cannot give %s to group %r: %s", path, self.group, e)

    def handle_message(self, frames: list[zmq.Frame]) -> list[bytes] | None:
        """One message as received (frames not copied). One with too many or too large envelope frames is
        refused without being copied or echoed."""
        if len(frames) > MAX_FRAMES or sum(len(f) for f in frames[1:-1]) > MAX_ENVELOPE_BYTES:
            return [frames[0].bytes, b"", protocol.reply_error(
                None, "bad_request", f"a request is one JSON frame after at most {MAX_FRAMES - 2} envelope frames "
                                     f"of {MAX_ENVELOPE_BYTES} bytes in all; this message had {len(frames) - 1} "
                                     "frames")]
        return self.handle_frames([f.bytes for f in frames])

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
        for r in self.routers:
            poller.register(r, zmq.POLLIN)
        last_ping, last_tick, last_media, last_status = 0.0, 0.0, 0.0, ""
        ping_every = self.notifier.watchdog_s / 3 if self.notifier.watchdog_s else 5.0
        while not should_stop():
            for sock, _ in poller.poll(50):
                for _ in range(100):  # drain, but stay responsive to stop and events
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    reply = self.handle_message(frames)
                    del frames  # a large refused message is freed before the next one is read
                    if reply is not None:
                        try:
                            sock.send_multipart(reply, zmq.NOBLOCK)
                        except zmq.ZMQError:
                            pass  # the client went away
            self._publish_events()
            if self.watcher is not None and (changes := self.watcher.due()):
                self.service.request_scan(changes)
            now = time.monotonic()
            if now - last_ping >= ping_every:
                self.notifier.watchdog()
                last_ping = now
            if self.media is not None and (self.media.wake.is_set() or now - last_media >= 2.0):
                for mount in sorted(self.media.new_media()):
                    self.service.request_import(mount)
                last_media = now
            if now - last_tick >= 0.5 or self.service.tick_soon.is_set():
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
        for r in self.routers:
            r.close(0)
        self.pub.close(0)
        if self.auth is not None:
            self.auth.stop()
        for path in self._ipc_files:  # no stale socket file for a client to wait on (the lock says they are ours)
            path.unlink(missing_ok=True)
