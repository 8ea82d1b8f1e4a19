#!/usr/bin/env python3
"""`make stress`: the long versions of the reliability and adversarial tests (issue 8).

Runs, against real daemons (subprocesses, real SIGKILL, real tmpfs mounts, real sockets), the scenarios whose
short versions `make test` runs (tests/system/test_reliability.py, tests/intake/test_hostile_files.py,
tests/control/test_protocol_fuzz.py; the scenarios are tools/power_loss.py, full_disk.py, tamper.py, hostile.py and
hostile_clients.py), prints a summary table and writes reports/stress.json and reports/stress.md.

The seed is random unless given (--seed, or AUTLEARN_TEST_SEED); it is printed first, and the same seed replays
the same kill points, corpus, flips and fuzzing examples (timing on a loaded machine still varies where a kill
lands within a few milliseconds). Exit status 1 if any scenario found a problem, a crash or a lost sample.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import full_disk  # noqa: E402
import hostile  # noqa: E402
import hostile_clients  # noqa: E402
import power_loss  # noqa: E402
import tamper  # noqa: E402
from faults import Tally  # noqa: E402
from userdata import digits  # noqa: E402

LEGEND = """What the rows check (a *trial* ends with every invariant checked; *faults injected* are kills, disk
fills and flipped bytes; *bad inputs* are hostile files, frames and connections):

* **power loss**: SIGKILL while the daemon starts, scans or at a random event of a round (+0–10 ms), sometimes with
  a half-copied file; after each restart every fully written sample is stored exactly once, both SQLite files pass
  `PRAGMA integrity_check`, the current head is a persisted promoted version whose answers match its file, and a
  new round completes.
* **power loss during a bundle install**: the daemon starts with the other of two bundles configured and is
  SIGKILLed 0–10 ms after `state/bundle.new` appears; the next start (with that source, or with none) comes up with
  one of the two bundles whole (the configured one, if any) and leaves no `bundle.new`/`bundle.old`.
* **full disk**: state and cache on 24 MB tmpfs mounts, filled during a round, below `min_free_mb`, and to the last
  byte while files arrive: the round pauses and status says why, status keeps answering, nothing stored is lost,
  learning continues once space returns. *Mid-write*: `min_free_mb = 0`, filled at a random step of a round.
* **tampered bundle**: one flipped byte (random mask) at every offset of every file (`manifest.json`,
  `manifest.sha256`, the models): every copy refused with a message naming the file. *Given to the daemon*:
  the daemon restarts with it, logs the refusal naming the file, and keeps answering with its installed bundle.
* **hostile files**: the corpus of tools/hostile.py (truncated/corrupt PNG/JPEG, bombs, an 8 GiB
  sparse file, FIFOs, sockets, devices, symlinks out of the tree, odd and non-UTF-8 names, a 1,100-level tree)
  plus mutated images of six formats: each learnt, quarantined or ignored with a reason; the user's folder is
  unchanged; peak RSS bounded; the good files are learnt.
* **hostile clients**: Hypothesis fuzzing of envelopes, raw bytes, text, JSON values and multipart frames,
  every command × argument × wrong type, oversize frames, concurrent clients, clients that vanish mid-request,
  raw garbage connections, 50 idle connections, a 5,000-request flood never read: every request answered (an
  error code from the catalogue, never `internal`), RSS and descriptors bounded. *TCP*: unknown CURVE key, plain
  client, wrong server key, raw garbage: no reply, no action."""

COLUMNS = ("scenario", "trials", "faults injected", "samples lost", "crashes", "bad inputs tried", "result", "time")


def build_bundle(out: Path) -> Path:
    """The same small real bundle the test suite builds (tests/conftest.py: tiny_bundle)."""
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "autlearn-build"), "image", "--data", "mnist5k", "--limit", "1500", "--epochs", "2",
                    "--out", str(out), "--seed", "0"], check=True, capture_output=True, timeout=900)
    return out


def result_of(t) -> str:
    if t.skipped:
        return "skipped"
    return "FAIL" if t.problems or t.crashes or t.samples_lost else "pass"


def row_of(t) -> dict:
    return {"scenario": t.name, "trials": t.trials, "faults injected": t.faults, "samples lost": t.samples_lost,
            "crashes": t.crashes, "bad inputs tried": t.bad_inputs, "result": result_of(t),
            "time": f"{t.seconds:.0f} s"}


def table(rows: list[dict], markdown: bool) -> str:
    cells = [[str(r[c]) for c in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in
                                                                    range(len(COLUMNS))) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(COLUMNS)]
    fmt = lambda xs: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(xs, widths)))
    return "\n".join([fmt(COLUMNS), fmt(["-" * w for w in widths])] + [fmt(c) for c in cells])


def total_row(tallies) -> dict:
    ran = [t for t in tallies if not t.skipped]
    return {"scenario": "total", "trials": sum(t.trials for t in ran), "faults injected": sum(t.faults for t in ran),
            "samples lost": sum(t.samples_lost for t in ran), "crashes": sum(t.crashes for t in ran),
            "bad inputs tried": sum(t.bad_inputs for t in ran),
            "result": "FAIL" if any(result_of(t) == "FAIL" for t in ran) else "pass",
            "time": f"{sum(t.seconds for t in tallies):.0f} s"}


def repeat(runs: int, work: Path, scenario):
    """Run a scenario `runs` times (each in its own directory) and add up its tallies."""
    total = None
    for i in range(runs):
        t = scenario(work / f"run{i}")
        if total is None:
            total = t
            continue
        for k in ("trials", "faults", "samples_lost", "crashes", "bad_inputs", "seconds"):
            setattr(total, k, getattr(total, k) + getattr(t, k))
        total.problems += [f"run {i}: {p}" for p in t.problems]
        total.known += [k for k in t.known if k not in total.known]
        for k, v in t.detail.items():
            if isinstance(v, (int, float)) and "(ms)" in k:
                total.detail[k] = max(total.detail[k], v)
            elif isinstance(v, (int, float)):
                total.detail[k] += v
        total.skipped = total.skipped or t.skipped
        if t.skipped:
            break
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    env_seed = os.environ.get("AUTLEARN_TEST_SEED")
    ap.add_argument("--seed", type=int, default=int(env_seed) if env_seed else None,
                    help="replay a seed (default: AUTLEARN_TEST_SEED, else random)")
    ap.add_argument("--power-trials", type=int, default=30, help="SIGKILL trials (default 30)")
    ap.add_argument("--install-trials", type=int, default=30, help="SIGKILLs during a bundle install (default 30)")
    ap.add_argument("--disk-runs", type=int, default=3, help="runs of the full-disk scenario (default 3)")
    ap.add_argument("--enospc-cycles", type=int, default=8, help="disk-full-mid-round cycles (default 8)")
    ap.add_argument("--tamper-per-file", type=int, default=0,
                    help="flipped bytes per bundle file (default 0: every byte of every file)")
    ap.add_argument("--tamper-daemon-per-file", type=int, default=2, help="daemon restarts per bundle file")
    ap.add_argument("--mutations", type=int, default=5000, help="mutated images in the hostile corpus")
    ap.add_argument("--examples", type=int, default=1000, help="Hypothesis examples per fuzzing strategy (5 of them)")
    ap.add_argument("--clients", type=int, default=20, help="concurrent clients")
    ap.add_argument("--per-client", type=int, default=100, help="requests per concurrent client")
    ap.add_argument("--vanishing", type=int, default=1000, help="clients that send and vanish")
    ap.add_argument("--curve-attempts", type=int, default=10, help="connection attempts per kind of intruder")
    ap.add_argument("--only", nargs="*", default=None,
                    help="scenarios to run: power install disk enospc tamper tamper-daemon hostile-files clients "
                         "curve")
    ap.add_argument("--work", type=Path, default=None, help="work directory (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--report", type=Path, default=ROOT / "reports" / "stress", help="writes <this>.json and .md")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2 ** 31)
    print(f"stress seed {seed}  (replay: AUTLEARN_TEST_SEED={seed} make stress, or tools/stress.py --seed {seed})",
          flush=True)

    os.environ["AUTLEARN_TEST_SEED"] = str(seed)  # for the daemons' children, as before
    work = args.work or Path(tempfile.mkdtemp(prefix="autlearn-stress-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    t0 = time.monotonic()
    print(f"work directory {work}; building the test bundle…", flush=True)
    bundle = build_bundle(work / "bundle")
    build_s = time.monotonic() - t0
    images, labels = digits(0)

    def say(line: str) -> None:
        print(f"    {line}", flush=True)

    scenarios = [
        ("power", lambda w: power_loss.power_loss(w, bundle, images, labels, trials=args.power_trials, seed=seed,
                                                  say=say)),
        ("install", lambda w: power_loss.install_cut(w, bundle, trials=args.install_trials, seed=seed, say=say)),
        ("disk", lambda w: repeat(args.disk_runs, w, lambda w2: full_disk.full_disk(w2, bundle, images, labels,
                                                                                    say=say))),
        ("enospc", lambda w: full_disk.enospc_mid_round(w, bundle, images, labels, cycles=args.enospc_cycles,
                                                        seed=seed, say=say)),
        ("tamper", lambda w: tamper.tamper_sweep(bundle, w, random.Random(seed), per_file=args.tamper_per_file)),
        ("tamper-daemon", lambda w: tamper.tampered_daemon(w, bundle, random.Random(seed),
                                                           per_file=args.tamper_daemon_per_file, say=say)),
        ("hostile-files", lambda w: hostile.hostile_files(w, bundle, images, labels, seed, n_mutations=args.mutations,
                                                          say=say)),
        ("clients", lambda w: hostile_clients.hostile_clients(w, bundle, args.examples, seed, clients=args.clients,
                                                              per_client=args.per_client,
                                                              vanishing_rounds=args.vanishing, say=say)),
        ("curve", lambda w: hostile_clients.curve_gate(w, bundle, attempts=args.curve_attempts, say=say)),
    ]
    names = [n for n, _ in scenarios]
    for n in args.only or []:
        if n not in names:
            ap.error(f"unknown scenario {n!r} (known: {' '.join(names)})")
    tallies = []
    for name, run in scenarios:
        if args.only is not None and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        w = work / name
        w.mkdir(parents=True, exist_ok=True)
        t1 = time.monotonic()
        try:
            t = run(w)
        except Exception as e:  # the harness or an assertion inside a scenario: a failure, never a silent pass
            t = Tally(name)
            t.problem(f"the scenario stopped: {type(e).__name__}: {e}")
            traceback.print_exc()
        if not t.seconds:
            t.seconds = time.monotonic() - t1
        tallies.append(t)
        print(f"   {result_of(t)}: {row_of(t)}", flush=True)
        for p in t.problems[:20]:
            print(f"   PROBLEM: {p}", flush=True)
        for k in t.known:
            print(f"   known: {k}", flush=True)
        if t.skipped:
            print(f"   skipped: {t.skipped}", flush=True)

    rows = [row_of(t) for t in tallies] + [total_row(tallies)]
    total_s = time.monotonic() - started
    print()
    print(table(rows, markdown=False))
    print(f"\nseed {seed}; {total_s / 60:.1f} min in all (bundle build {build_s:.0f} s)")

    failed = any(result_of(t) == "FAIL" for t in tallies)
    report = {
        "seed": seed,
        "replay": f"AUTLEARN_TEST_SEED={seed} make stress",
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "kernel": platform.release()},
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "report"},
        "seconds": round(total_s, 1),
        "result": "FAIL" if failed else "pass",
        "scenarios": [{**row_of(t), "seconds": round(t.seconds, 1), "skipped": t.skipped, "problems": t.problems,
                       "known": t.known, "detail": {k: v for k, v in t.detail.items()}} for t in tallies],
        "total": rows[-1],
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    md = [f"# Stress run ({report['date']})", "",
          f"`make stress` (tools/stress.py), seed {seed} — replay with `AUTLEARN_TEST_SEED={seed} make stress`. "
          f"{total_s / 60:.1f} min on {report['host']['cpus']} CPUs ({report['host']['machine']}).", "",
          table(rows, markdown=True), "", LEGEND, ""]
    for t in tallies:
        md.append(f"## {t.name}")
        md.append("")
        if t.skipped:
            md.append(f"Skipped: {t.skipped}")
        for p in t.problems:
            md.append(f"* PROBLEM: {p}")
        for k in t.known:
            md.append(f"* known: {k}")
        if t.detail:
            md.append("* " + "; ".join(f"{k}: {v}" for k, v in t.detail.items()))
        md.append("")
    args.report.with_suffix(".md").write_text("\n".join(md))
    print(f"wrote {args.report.with_suffix('.json')} and {args.report.with_suffix('.md')}")

    if failed or args.keep:
        print(f"work directory kept: {work}")
    else:
        hostile.remove_deep(work / "hostile-files" / "hostile" / "inbox" / "5" / "d")
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
