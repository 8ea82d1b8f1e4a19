"""`autlearnctl`: each verb maps to one daemon API method; readable output, or --json.

Every failure is one sentence on stderr and an exit code: the daemon's error codes map to theirs
(docs/protocol.md); 130 when interrupted, 141 when the reader of the output went away (`| head`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from .client import Client, Events
from .curve import keygen as curve_keygen, load_pair, load_public
from ..errors import AutlearnError
from ..paths import Paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autlearnctl", description="Talk to the AutLearn daemon (autlearnd).")
    p.add_argument("--root", help="the development root the daemon was started with (autlearnd --root)")
    p.add_argument("--socket", help="control endpoint, e.g. ipc:///run/autlearn/control.sock")
    p.add_argument("--events", help="event endpoint, e.g. ipc:///run/autlearn/events.sock")
    p.add_argument("--key", type=Path, help="your CURVE secret key file (NAME.key_secret) for a tcp:// --socket")
    p.add_argument("--server-key", type=Path, help="the daemon's public key file (server.key) for a tcp:// --socket")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON reply")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a reply (default 10)")
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("status", help="what the daemon is doing, its samples, head version and accuracy")
    tr = sub.add_parser("train", help="start a training round now")
    tr.add_argument("--follow", action="store_true", help="show the round's progress until it finishes")
    sub.add_parser("pause", help="pause training (a running round waits at its next step)")
    sub.add_parser("resume", help="allow training again")
    rb = sub.add_parser("rollback", help="make an earlier head version current (default: the one before)")
    rb.add_argument("version", nargs="?", type=int)
    sub.add_parser("config", help="the settings in force")
    sub.add_parser("cache", help="feature cache size, hits and misses")
    sub.add_parser("bench", help="time every base variant on this board again and show the choice")
    kg = sub.add_parser("keygen", help="make a CURVE key pair for the TCP control listener (no daemon needed)")
    kg.add_argument("directory", type=Path)
    kg.add_argument("--name", default="client", help="file name stem (default client)")
    ev = sub.add_parser("events", help="print the daemon's events as they happen")
    ev.add_argument("--count", type=int, default=0, help="stop after this many events (default: never)")
    pr = sub.add_parser("predict", help="classify image files, or suggest the next words after --text")
    pr.add_argument("files", nargs="*", type=Path)
    pr.add_argument("--text", help="keyboard bundles: what was typed so far")
    pr.add_argument("--version", type=int, help="head version to use (default: the promoted one)")
    pr.add_argument("--top", type=int, default=3, help="how many labels to show (default 3)")
    sub.add_parser("versions", help="head versions with their holdout accuracy")
    hi = sub.add_parser("history", help="recent training rounds")
    hi.add_argument("--limit", type=int, default=20)
    return p


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def show_status(r: dict) -> str:
    s, h, c = r["samples"], r["head"], r["cache"]
    lines = [
        f"autlearnd {r['daemon']['version']} (pid {r['daemon']['pid']}, up {r['daemon']['uptime_s']:.0f}s, "
        f"{r['daemon']['runtime']}, base on {r['delegate']['in_use']})",
        f"activity:   {r['activity']} — {r['why_not_training']}",
        f"bundle:     {r['bundle']['id']} {r['bundle']['task']} variant {r['bundle']['variant']}, "
        f"{r['classes_count']}/{r['bundle']['class_capacity']} classes"
        + (f" ({len(r['personal_words'])} personal words)" if "personal_words" in r else ""),
        f"samples:    {s['ok']} usable ({s['holdout']} holdout, {s['new']} not yet trained on), "
        f"{s['quarantined']} quarantined, {s['ignored']} ignored, {s['waiting']} waiting for a class slot",
        f"head:       v{h['version']} ({h['status']}), holdout accuracy {_pct(h['previous_accuracy'])} before → "
        f"{_pct(h['accuracy'])} after"
        + (f", cut {h['cut']} ({h['cut_reason']})" if h.get("cut_reason") else ""),
        f"cache:      {c['entries']} feature vectors, {c['hits']} hits / {c['misses']} misses",
    ]
    lr = r.get("last_round")
    if lr:
        lines.append(f"last round: #{lr['round_id']} {lr['outcome']} in {lr['seconds']:.2f}s — {lr['detail']} "
                     f"(features computed {lr['features_computed']}, from cache {lr['features_cached']})")
    if r.get("round"):
        lines.append(f"round:      running, step {r['round']['step']}")
    if r.get("last_error"):
        lines.append(f"last error: {r['last_error']}")
    return "\n".join(lines)


def show_versions(r: dict) -> str:
    lines = [f"{'':1}{'version':>7}  {'status':9} {'accuracy':>8} {'before':>7} {'train':>6} {'holdout':>7}  created"]
    for v in r["versions"]:
        mark = "*" if v["version"] == r["current"] else " "
        created = datetime.datetime.fromtimestamp(v["created"]).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{mark}{v['version']:>7}  {v['status']:9} {_pct(v['accuracy']):>8} "
                     f"{_pct(v['previous_accuracy']):>7} {v['n_train']:>6} {v['n_holdout']:>7}  {created}")
        if v.get("cut_reason"):  # a bundle with deeper cuts: which one this version trained, and why
            lines.append(f"{'':10}cut {v['cut']}: {v['cut_reason']}")
    return "\n".join(lines)


def show_history(r: dict) -> str:
    lines = []
    for rd in r["rounds"]:
        secs = "—" if rd["seconds"] is None else f"{rd['seconds']:.2f}s"
        lines.append(f"#{rd['round_id']:<4} {rd['outcome'] or 'running':10} {secs:>8}  trigger: {rd['trigger']}; "
                     f"{rd['detail'] or ''}")
    return "\n".join(lines) or "no rounds yet"


def show_predictions(r: dict) -> str:
    lines = []
    for p in r["predictions"]:
        tops = ", ".join(f"{t['label']} {100 * t['p']:.1f}%" for t in p["top"])
        lines.append(f"{p['name']}: {p['label']}  ({tops})")
    return "\n".join(lines)


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


# Events whose line is a template over their data; the others are composed in _event_text.
_EVENT_LINES = {
    "round_finished": "round #{round_id} {outcome} in {seconds:.2f}s: {detail}",
    "round_started": "round #{round_id} started ({trigger})",
    "round_resumed": "round continues", "paused": "training paused", "resumed": "training allowed",
    "rollback": "head v{from} → v{to}",
    "delegate": "base model on {in_use} ({reason})",
    "error": "{where}: {message}",
}


def _event_text(name: str, d: dict) -> str:
    """One readable line per documented event (docs/protocol.md); others as key=value."""
    if name in _EVENT_LINES:
        return _EVENT_LINES[name].format_map(d)
    if name == "trained":
        return f"trained {_n(d['epochs'], 'epoch')}, loss {d['loss_first']:.3f} → {d['loss_last']:.3f}"
    if name in ("features", "augmented"):
        what = "features" if name == "features" else "augmented copies' features"
        return f"{what}: {d['computed']} computed, {d['cached']} from the cache"
    if name == "epoch":
        width = 30
        done = int(width * d["epoch"] / d["epochs"])
        return f"[{'#' * done}{'.' * (width - done)}] epoch {d['epoch']}/{d['epochs']} loss {d['loss']:.4f}"
    if name in ("version_promoted", "version_rejected"):
        return (f"head v{d['version']} {name.split('_')[1]}: holdout accuracy {_pct(d['previous_accuracy'])} → "
                f"{_pct(d['accuracy'])}")
    if name == "import":
        return (f"{_n(d['added'], 'sample')} added, {d['quarantined']} quarantined, {d['ignored']} ignored, "
                f"{d['removed']} removed, {d['waiting']} waiting for a class slot")
    if name == "round_paused":
        return "round paused: " + "; ".join(d["reasons"])
    if name == "config_reloaded":
        return (f"configuration reloaded: {', '.join(d['changed']) or 'nothing'} changed"
                + (f"; after a restart: {', '.join(d['needs_restart'])}" if d["needs_restart"] else ""))
    if name == "media_import":
        return f"{d['mount']}: {d['copied']} copied, {d['already']} already there, {len(d['skipped'])} skipped"
    return ", ".join(f"{k}={v}" for k, v in d.items()) or "—"


def show_event(ev: dict) -> str:
    d = ev["data"]
    name = ev["event"]
    when = datetime.datetime.fromtimestamp(ev["time"]).strftime("%H:%M:%S")
    try:
        text = _event_text(name, d)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        text = ", ".join(f"{k}={v}" for k, v in d.items()) if isinstance(d, dict) else str(d)
    return f"{when} {name}: {text}"


def follow(events: Events, until_round_end: bool, count: int, as_json: bool) -> int:
    seen = 0
    while True:
        ev = events.next()
        _print(json.dumps(ev) if as_json else show_event(ev))
        seen += 1
        if until_round_end and ev["event"] == "round_finished":
            return 0 if ev["data"]["outcome"] in ("promoted", "rejected", "skipped") else 1
        if count and seen >= count:
            return 0


def keygen(args) -> int:
    try:
        public, secret = curve_keygen(args.directory, args.name)
    except AutlearnError as e:
        print(f"autlearnctl: {e.message}", file=sys.stderr)
        return e.exit_code
    print(f"public key: {public}\nsecret key: {secret} (keep it private)\n"
          f"allow it on the daemon: add the public-key line of {public.name} to /etc/autlearn/authorized_keys")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = Paths.under(args.root) if args.root else Paths.packaged()
    endpoint = args.socket or paths.control_endpoint
    if args.verb == "keygen":
        return keygen(args)
    curve = None
    try:
        if endpoint.startswith("tcp://"):
            if not (args.key and args.server_key):
                raise AutlearnError("bad_argument", "a tcp:// control socket needs --key and --server-key")
            public, secret = load_pair(args.key)
            curve = (public, secret, load_public(args.server_key))
    except AutlearnError as e:
        print(f"autlearnctl: {e.message}", file=sys.stderr)
        return e.exit_code
    client = Client(endpoint, args.timeout, curve)
    try:
        return _run(args, paths, client)
    except AutlearnError as e:
        if args.json:
            _print(json.dumps({"error": e.to_dict()}))
        print(f"autlearnctl: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): nothing more can be shown; keep Python from failing at exit, too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("autlearnctl: the output was closed before everything was written", file=sys.stderr)
        return 141
    finally:
        client.close()


def _print(text: str) -> None:
    print(text, flush=True)


def _run(args, paths: Paths, client: Client) -> int:
    if args.verb == "status":
        r, show = client.call("status"), show_status
    elif args.verb == "train":
        events = Events(args.events or paths.events_endpoint, alive=client) if args.follow else None
        r = client.call("train")
        show = lambda r: "round queued" + (" (one is running now; this one follows)" if r["running_round"]
                                           else "") + ("; waiting: " + "; ".join(r["blocked_by"])
                                                       if r["blocked_by"] else "")
        if events is not None:
            if not args.json:  # --json: one JSON event per line, nothing else
                _print(show(r))
            return follow(events, True, 0, args.json)
    elif args.verb == "events":
        return follow(Events(args.events or paths.events_endpoint, alive=client), False, args.count, args.json)
    elif args.verb in ("pause", "resume"):
        r = client.call(args.verb)
        show = lambda r: ("training paused" if r["paused"] else "training allowed") + (
            "; still waiting: " + "; ".join(r["blocked_by"]) if r.get("blocked_by") else "")
    elif args.verb == "rollback":
        r = client.call("rollback", {} if args.version is None else {"version": args.version})
        show = lambda r: f"head v{r['previous']} → v{r['current']}"
    elif args.verb == "config":
        r = client.call("config")
        show = lambda r: f"# in force, from {r['source']}\n" + "\n".join(
            f"{k} = {json.dumps(v)}" for k, v in sorted(r["values"].items()))
    elif args.verb == "bench":
        r = client.call("bench", timeout_s=max(args.timeout, 120))
        show = lambda r: (r.get("table") or f"{r['name']}: {r['reason']}") + (
            f"\nnote: {r['note']}" if r.get("note") else "")
    elif args.verb == "cache":
        r = client.call("cache")
        show = lambda r: (f"{r['entries']} entries, {r['bytes'] / 1e6:.1f} MB of {r['max_bytes'] / 1e6:.0f} MB; "
                          f"{r['hits']} hits, {r['misses']} misses, {r['corrupt']} corrupt, "
                          f"{r['evicted']} evicted")
    elif args.verb == "predict" and args.text is not None:
        a = {"text": args.text, "top": args.top}
        if args.version is not None:
            a["version"] = args.version
        r = client.call("predict", a)
        show = lambda r: "  ".join(f"{s['word']} ({100 * s['p']:.1f}%)" for s in r["suggestions"]) or "—"
    elif args.verb == "predict":
        if not args.files:
            raise AutlearnError("bad_argument", "give image files, or --text for a keyboard bundle")
        for f in args.files:
            if f.is_dir():
                raise AutlearnError("bad_argument", f"{f} is a directory: give image files (e.g. {f}/*.png)")
            if not f.is_file():
                raise AutlearnError("not_found", f"{f}: no such file")
        r, show = client.predict_files(args.files, args.version, args.top), show_predictions
    elif args.verb == "versions":
        r, show = client.call("versions"), show_versions
    elif args.verb == "history":
        r, show = client.call("history", {"limit": args.limit}), show_history
    else:  # argparse guarantees a verb
        raise AssertionError(args.verb)
    _print(json.dumps(r, indent=2) if args.json else show(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
