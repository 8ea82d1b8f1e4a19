"""ZeroMQ adapter over the Service: a ROUTER socket for requests, a PUB socket for events.

The loop never blocks on a client: replies go out with NOBLOCK, a vanished client's reply is dropped. Slow
requests (predict, bench) run on the service's answerer thread, whose replies come back through a queue and a
wake-up pipe, so a status sent during a large predict is answered at once. Periodic work runs in one guard.
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
from ..errors import AutlearnError
from .protocol import EnvelopeError
from .notify import Notifier
from ..service.api import Service
from ..intake.watcher import DebouncedWatcher

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
        self.media = media
        self.ctx = zmq.Context.instance()
        self.router = self._router()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 1000)
        self.routers = [self.router]
        self.auth = None
        # replies of slow requests, from the answerer thread: (socket, frames); a byte on the pipe wakes the loop
        self._later: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._ipc_files: list[Path] = []
        try:
            self._bind(self.router, control, group)
            self._bind(self.pub, events, group)
            if tcp:
                self._listen_tcp(tcp, curve_keys, authorized_keys)
        except BaseException:
            self.close()  # a listener that cannot bind leaves no socket or authenticator thread behind
            raise

    def _router(self) -> zmq.Socket:
        r = self.ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
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

    def _bind(self, sock: zmq.Socket, endpoint: str, group: str) -> None:
        """Bind; an ipc socket file is made the owner's and `group`'s only (empty: the owner's)."""
        sock.bind(endpoint)
        if endpoint.startswith("ipc://"):
            path = Path(endpoint[len("ipc://"):])
            self._ipc_files.append(path)
            os.chmod(path, 0o660)  # owner and group only
            if group:
                try:
                    os.chown(path, -1, grp.getgrnam(group).gr_gid)
                except KeyError:
                    log.info("group %r does not exist: only the daemon's own user can use %s", group, path)
                except PermissionError as e:
                    log.warning("cannot give %s to group %r: %s", path, group, e)

    def handle_message(self, frames: list[zmq.Frame], sock: zmq.Socket | None = None) -> list[bytes] | None:
        """One message as received (frames not copied). One with too many or too large envelope frames, or a
        payload over the limit, is refused without being copied or echoed / parsed."""
        if len(frames) > MAX_FRAMES or sum(len(f) for f in frames[1:-1]) > MAX_ENVELOPE_BYTES:
            return [frames[0].bytes, b"", protocol.reply_error(
                None, "bad_request", f"a request is one JSON frame after at most {MAX_FRAMES - 2} envelope frames "
                                     f"of {MAX_ENVELOPE_BYTES} bytes in all; this message had {len(frames) - 1} "
                                     "frames")]
        if len(frames) >= 2 and len(frames[-1]) > protocol.MAX_MESSAGE_BYTES:
            return [f.bytes for f in frames[:-1]] + [protocol.reply_error(
                None, "bad_request", f"message of {len(frames[-1])} bytes is over the limit of "
                                     f"{protocol.MAX_MESSAGE_BYTES}")]
        return self.handle_frames([f.bytes for f in frames], sock)

    def handle_frames(self, frames: list[bytes], sock: zmq.Socket | None = None) -> list[bytes] | None:
        """Route one multipart message: [identity, (empty,) payload]. Returns the reply frames, or None when
        there is none to send now (a slow request: its reply is sent when the answerer has run it)."""
        if len(frames) < 2:
            return None
        envelope, payload = frames[:-1], frames[-1]
        req_id = None
        try:
            msg = protocol.parse_request(payload)
            req_id = msg.get("id")
            if sock is not None and msg["cmd"] in self.service.SLOW:
                self.service.submit(msg["cmd"], msg["args"], self._answer_later(sock, envelope, req_id))
                return None
            result = self.service.handle(msg["cmd"], msg["args"])
            return envelope + [protocol.reply_ok(req_id, result)]
        except EnvelopeError as e:
            return envelope + [protocol.reply_error(e.req_id, e.code, e.message)]
        except AutlearnError as e:
            return envelope + [protocol.reply_error(req_id, e.code, e.message)]
        except Exception as e:  # never let one request take the daemon down
            log.exception("request failed")
            return envelope + [protocol.reply_error(req_id, "internal", f"{type(e).__name__}: {e}")]

    def _answer_later(self, sock: zmq.Socket, envelope: list[bytes], req_id):
        """The `done` of a slow request: runs on the answerer thread, hands the reply to the loop."""
        def done(ok: bool, value) -> None:
            try:
                reply = (protocol.reply_ok(req_id, value) if ok else
                         protocol.reply_error(req_id, value.code, value.message))
            except Exception as e:  # an unencodable result: still one reply
                reply = protocol.reply_error(req_id, "internal", f"{type(e).__name__}: {e}")
            self._later.put((sock, envelope + [reply]))
            try:
                os.write(self._wake_w, b"!")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already
        return done

    def _send_later(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                sock, reply = self._later.get_nowait()
            except queue.Empty:
                return
            self._send(sock, reply)

    @staticmethod
    def _send(sock: zmq.Socket, reply: list[bytes]) -> None:
        try:
            sock.send_multipart(reply, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client went away

    def guarded(self, step: str, fn, *args) -> None:
        """The one guard around the loop's periodic work: a step that raises is logged, recorded in
        `status.last_error` (and an `error` event), and skipped for a while (1 s doubling up to a minute, reset
        when it succeeds again); requests are answered throughout."""
        now = time.monotonic()
        if now < self._retry_at.get(step, 0.0):
            return
        try:
            fn(*args)
        except Exception as e:
            n = self._failures[step] = self._failures.get(step, 0) + 1
            delay = min(60.0, 2.0 ** (n - 1))
            self._retry_at[step] = now + delay
            log.exception("%s failed (%d in a row); tried again in %.0f s, requests are still answered", step, n,
                          delay)
            try:
                self.service.record_error(step, e)
            except Exception:
                log.exception("cannot record the failure of %s", step)
        else:
            if step in self._failures:
                log.info("%s works again", step)
                del self._failures[step]

    def serve(self, should_stop, on_tick=None) -> None:
        poller = zmq.Poller()
        for r in self.routers:
            poller.register(r, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        clock = {"ping": 0.0, "tick": 0.0, "media": 0.0, "status": ""}
        while not should_stop():
            for sock, _ in poller.poll(50):
                if sock == self._wake_r:
                    self._send_later()
                    continue
                for _ in range(100):  # drain, but stay responsive to stop and events
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    reply = self.handle_message(frames, sock)
                    del frames  # a large refused message is freed before the next one is read
                    if reply is not None:
                        self._send(sock, reply)
            self.guarded("publishing events", self._publish_events)
            if self.watcher is not None:
                self.guarded("watching files", self._watch)
            now = time.monotonic()
            if now - clock["ping"] >= self._ping_every():
                self.guarded("watchdog", self.notifier.watchdog)
                clock["ping"] = now
            if self.media is not None and (self.media.wake.is_set() or now - clock["media"] >= 2.0):
                self.guarded("removable media", self._media)
                clock["media"] = now
            if now - clock["tick"] >= 0.5 or self.service.tick_soon.is_set():
                self.guarded("scheduling", self.service.tick)
                clock["tick"] = now
            self.guarded("status line", self._status_line, clock)
            if on_tick is not None:
                self.guarded("signals", on_tick)
        self._send_later()
        self._publish_events()

    def _ping_every(self) -> float:
        return self.notifier.watchdog_s / 3 if self.notifier.watchdog_s else 5.0

    def _watch(self) -> None:
        changes = self.watcher.due()
        if changes is not None:
            self.service.request_scan(changes)

    def _media(self) -> None:
        for mount in sorted(self.media.new_media()):
            self.service.request_import(mount)

    def _status_line(self, clock: dict) -> None:
        line = self.service.status_line()
        if line != clock["status"]:
            self.notifier.status(line)
            clock["status"] = line

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
        os.close(self._wake_r)
        os.close(self._wake_w)
        for r in self.routers:
            r.close(0)
        self.pub.close(0)
        if self.auth is not None:
            self.auth.stop()
        for path in self._ipc_files:  # no stale socket file for a client to wait on (the lock says they are ours)
            path.unlink(missing_ok=True)
