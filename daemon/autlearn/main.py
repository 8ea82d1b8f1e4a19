"""`autlearnd`: parse, validate, and hand explicit settings to the service and its control server."""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import zmq

from . import __version__, config as config_mod
from .errors import AutlearnError
from .intake.ingest import shown
from .intake.media import MediaWatcher
from .control.notify import Notifier
from .paths import Paths
from .control.server import ControlServer, EventQueue
from .service.api import Service
from .intake.watcher import DebouncedWatcher

log = logging.getLogger("autlearn")

DEFAULT_CONFIG = "/etc/autlearn/autlearnd.toml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autlearnd", description="AutLearn on-device learning daemon. "
                                "Watches data folders, learns a personal head on the board, answers autlearnctl.")
    p.add_argument("--config", help=f"TOML configuration file (default {DEFAULT_CONFIG} if it exists)")
    p.add_argument("--root", help="development root: state, cache and sockets all live below this directory")
    p.add_argument("--watch", action="append", default=[], help="a data directory to watch (repeatable; "
                   "adds to data.watch)")
    p.add_argument("--bundle", help="install this bundle directory at start (verified first)")
    p.add_argument("--check-config", nargs="?", const="", metavar="FILE",
                   help="validate the configuration (or FILE) and exit")
    p.add_argument("--debug", action="store_true", help="debug logging and full tracebacks")
    p.add_argument("--version", action="version", version=f"autlearnd {__version__}")
    return p


class _OneLine(logging.Filter):
    """Control characters in a message (a file name with a newline, an escape sequence) are written escaped:
    one record is one line, and no name can forge another."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        safe = shown(msg)
        if safe != msg:
            record.msg, record.args = safe, None
        return True


def setup_logging(debug: bool) -> None:
    """The journal (with structured fields) when systemd started us and systemd-python exists; else stderr."""
    level = logging.DEBUG if debug else logging.INFO
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        try:
            from systemd.journal import JournalHandler  # type: ignore
        except ImportError:
            pass
        else:
            handler = JournalHandler(SYSLOG_IDENTIFIER="autlearnd")
            handler.addFilter(_OneLine())
            logging.basicConfig(level=level, handlers=[handler])
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_OneLine())
    logging.basicConfig(level=level, handlers=[handler], format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def load_config(args) -> tuple[config_mod.Config, str | None, dict]:
    """The configuration file's settings, then the command line's overrides (kept for reloads)."""
    path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    cfg = config_mod.load(path) if path else config_mod.Config()
    overrides = {}
    if args.root:
        overrides["paths.root"] = args.root
    if args.watch:
        overrides["data.watch"] = cfg["data.watch"] + [os.path.abspath(w) for w in args.watch]
    if args.bundle:
        overrides["model.bundle"] = os.path.abspath(args.bundle)
    return cfg.with_overrides(**overrides), path, overrides


def reload_config(service: Service, path: str | None, overrides: dict) -> None:
    """SIGHUP: read the file again; an invalid file is refused and the settings in force stay."""
    if path is None:
        log.info("SIGHUP: no configuration file to reload")
        return
    try:
        new = config_mod.load(path).with_overrides(**overrides)
    except AutlearnError as e:
        log.error("SIGHUP: new configuration refused, the old settings stay in force: %s", e.message)
        service.record_error("reload", f"new configuration refused, the old settings stay in force: {e.message}")
        return
    later = service.reload(new)
    log.info("SIGHUP: configuration %s reloaded%s", path,
             f"; these take effect after a restart: {', '.join(later)}" if later else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    try:
        if args.check_config is not None:
            path = args.check_config or args.config
            if path is None and not os.path.exists(DEFAULT_CONFIG):
                print(f"no {DEFAULT_CONFIG}: autlearnd runs on the built-in defaults, which are valid")
                return 0
            config_mod.load(path or DEFAULT_CONFIG)
            print(f"{path or DEFAULT_CONFIG}: configuration is valid")
            return 0
        cfg, path, overrides = load_config(args)
        return run(cfg, path, overrides)
    except AutlearnError as e:
        if args.debug:
            log.exception("fatal")
        print(f"autlearnd: {e.message}", file=sys.stderr)
        return e.exit_code


def run(cfg: config_mod.Config, config_path: str | None = None, overrides: dict | None = None) -> int:
    overrides = overrides or {}
    paths = Paths.under(cfg["paths.root"]) if cfg["paths.root"] else Paths.packaged()
    try:
        paths.create()
    except OSError as e:
        where = f"paths.root = {cfg['paths.root']}" if cfg["paths.root"] else "the packaged paths"
        raise AutlearnError("bad_config", f"{where}: cannot create {e.filename}: {e.strerror}") from None
    lock = open(paths.run / "autlearnd.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AutlearnError("busy", f"another autlearnd already runs with {paths.run}") from None
    notifier = Notifier()
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    reload_requested = threading.Event()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda signum, frame: reload_requested.set())
    events = EventQueue()
    service = Service(cfg, paths, emit=events)
    service.start()
    service.use_policy()
    watcher = DebouncedWatcher([os.path.abspath(w) for w in cfg["data.watch"]], cfg["data.debounce_s"])
    service.watcher_state = watcher.state
    curve_keys = None
    if cfg["control.tcp"]:
        from .control.curve import server_pair
        curve_keys = server_pair(paths.state)
    media = None
    if cfg["media.enabled"]:
        media = MediaWatcher(Path(cfg["media.mounts"]), cfg["media.under"], cfg["media.folder"],
                             on_accelerator_change=service.accelerator_changed)
        media.start()
    try:
        server = ControlServer(service, paths.control_endpoint, paths.events_endpoint, notifier, events, watcher,
                               group=cfg["control.group"], tcp=cfg["control.tcp"], curve_keys=curve_keys,
                               authorized_keys=Path(cfg["control.authorized_keys"]), media=media)
    except zmq.ZMQError as e:
        if media is not None:
            media.stop()
        service.stop()
        where = f"control.tcp = {cfg['control.tcp']!r}" if cfg["control.tcp"] else paths.control_endpoint
        raise AutlearnError("bad_config", f"cannot listen on {where}: {e}") from None
    watcher.start()
    notifier.ready(service.status_line())
    log.info("control socket %s, events %s", paths.control_endpoint, paths.events_endpoint)

    def on_tick() -> None:
        if reload_requested.is_set():
            reload_requested.clear()
            reload_config(service, config_path, overrides)

    try:
        server.serve(stop.is_set, on_tick)
    finally:
        notifier.stopping()
        watcher.stop()
        if media is not None:
            media.stop()
        service.stop()
        server.close()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
