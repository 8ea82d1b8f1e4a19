"""The bench's figures from its raw records: statistics, the targets of issue 7 and their verdicts.

median / percentile / spread, `bench_report` (summary and verdicts) and `summarise` (the derived part of
reports/bench.json).
"""

from __future__ import annotations

import statistics

import numpy as np

# Targets of issue 7 (benchmarks, not timed tests)
TARGETS = {
    "speedup_vs_keras_whole": (">=", 30.0),
    "speedup_vs_keras_head": (">=", 3.0),
    "incremental_round_ratio": ("<=", 0.20),
    "daemon_peak_rss_mb": ("<=", 120.0),
    "status_p99_ms": ("<=", 10.0),
    "ready_s": ("<=", 1.5),
}
REQUIRED_KEYS = tuple(TARGETS)

def median(xs):
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def percentile(xs, q: float):
    xs = [x for x in xs if x is not None]
    return float(np.percentile(np.asarray(xs, float), q)) if xs else None


def spread(xs) -> dict:
    xs = [float(x) for x in xs if x is not None]
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": round(median(xs), 6), "min": round(min(xs), 6), "max": round(max(xs), 6), "n": len(xs),
            "values": [round(x, 6) for x in xs]}


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _verdict(value, op: str, limit: float) -> str:
    if value is None:
        return "not measured"
    ok = value >= limit if op == ">=" else value <= limit
    return "met" if ok else "missed"


def bench_report(m: dict) -> dict:
    """The summary figures (and targets) from the raw measurements.

    `m` holds per-repetition lists: daemon_round_s, daemon_round2_s, daemon_round_internal_s,
    daemon_round2_internal_s, daemon_cpu_s, daemon_accuracy, daemon_peak_rss_mb, ready_s, ready_restart_s,
    status_ms (every status round trip during long rounds, all repetitions pooled), and baselines:
    {name: {time_to_target_s, full_s, accuracy (best over the run), reached (bools), cpu_s}} for keras_head,
    keras_whole and tflite_whole. Anything missing comes out as None (and the target as 'not measured')."""
    b = m.get("baselines", {})
    d_round = median(m.get("daemon_round_s", []))

    def base(name, key):
        return median(b.get(name, {}).get(key, []))

    out = {
        "speedup_vs_keras_whole": _ratio(base("keras_whole", "time_to_target_s"), d_round),
        "speedup_vs_keras_head": _ratio(base("keras_head", "time_to_target_s"), d_round),
        "speedup_vs_tflite_whole": _ratio(base("tflite_whole", "time_to_target_s"), d_round),
        "incremental_round_ratio": median([_ratio(a, c) for a, c in zip(m.get("daemon_round2_s", []),
                                                                         m.get("daemon_round_s", []))]),
        "incremental_round_ratio_internal": median([_ratio(a, c) for a, c in zip(
            m.get("daemon_round2_internal_s", []), m.get("daemon_round_internal_s", []))]),
        "daemon_peak_rss_mb": max(m["daemon_peak_rss_mb"]) if m.get("daemon_peak_rss_mb") else None,
        "status_p50_ms": percentile(m.get("status_ms", []), 50),
        "status_p99_ms": percentile(m.get("status_ms", []), 99),
        "ready_s": median(m.get("ready_s", [])),
        "ready_restart_s": median(m.get("ready_restart_s", [])),
        "daemon_round_s": d_round,
        "daemon_cpu_s_per_round": median(m.get("daemon_cpu_s", [])),
        "daemon_accuracy": median(m.get("daemon_accuracy", [])),
        "cpu_ratio_vs_keras_whole": _ratio(base("keras_whole", "cpu_to_target_s"), median(m.get("daemon_cpu_s", []))),
        "cpu_ratio_vs_keras_head": _ratio(base("keras_head", "cpu_to_target_s"), median(m.get("daemon_cpu_s", []))),
        "incremental_cpu_ratio": median([_ratio(a, c) for a, c in zip(m.get("daemon_cpu2_s", []),
                                                                       m.get("daemon_cpu_s", []))]),
        "speedup_round_only_vs_keras_whole": _ratio(base("keras_whole", "time_to_target_s"),
                                                    median(m.get("daemon_round_internal_s", []))),
        "speedup_round_only_vs_keras_head": _ratio(base("keras_head", "time_to_target_s"),
                                                   median(m.get("daemon_round_internal_s", []))),
    }
    d_hi = median(m.get("daemon_more_epochs_s", []))
    out["daemon_more_epochs_s"] = d_hi
    out["daemon_more_epochs_accuracy"] = median(m.get("daemon_more_epochs_accuracy", []))
    for name in ("keras_head", "keras_whole", "tflite_whole"):
        if name in b and b[name].get("time_to_more_epochs_target_s"):
            out[f"speedup_more_epochs_vs_{name}"] = _ratio(base(name, "time_to_more_epochs_target_s"), d_hi)
            out[f"{name}_reached_more_epochs_target"] = all(b[name].get("reached_more_epochs_target", []))
    for name in ("keras_head", "keras_whole", "tflite_whole"):
        if name in b:
            reached = b[name].get("reached", [])
            out[f"{name}_accuracy"] = base(name, "accuracy")
            out[f"{name}_reached_target"] = bool(reached) and all(reached)
    out = {k: (None if v is None else (round(v, 4) if isinstance(v, float) else v)) for k, v in out.items()}
    d_acc = out["daemon_accuracy"]
    verdicts = {}
    for key, (op, limit) in TARGETS.items():
        v = _verdict(out.get(key), op, limit)
        note = ""
        if key.startswith("speedup_vs_keras_"):
            name = key[len("speedup_vs_"):]
            acc = out.get(f"{name}_accuracy")
            if acc is not None and d_acc is not None and d_acc < acc:
                note = f"the daemon's accuracy {d_acc:.4f} is below {name}'s best {acc:.4f}"
                if v == "met":
                    v = "met on time, missed on accuracy"
            if not out.get(f"{name}_reached_target", True):
                note = (note + "; " if note else "") + (f"{name} did not reach the daemon's accuracy within its epoch "
                                                        f"budget in every repetition (the speed-up is a lower bound)")
                if v == "missed":
                    v = "undetermined (a lower bound below the target)"
        verdicts[key] = {"value": out.get(key), "target": f"{op} {limit:g}", "verdict": v, "note": note}
    out["targets"] = verdicts
    return out


def measurements_from_raw(raw: dict) -> dict:
    """Per-repetition lists (what bench_report takes) from the raw records of a run."""
    measurements = {
        "daemon_round_s": [d["round1"]["landing_to_promoted_s"] for d in raw["daemon"]],
        "daemon_round2_s": [d["round2"]["landing_to_promoted_s"] for d in raw["daemon"]],
        "daemon_round_internal_s": [d["round1"]["round_seconds"] for d in raw["daemon"]],
        "daemon_round2_internal_s": [d["round2"]["round_seconds"] for d in raw["daemon"]],
        "daemon_cpu_s": [d["round1"]["cpu_s"] for d in raw["daemon"]],
        "daemon_cpu2_s": [d["round2"]["cpu_s"] for d in raw["daemon"]],
        "daemon_accuracy": [d["round1"]["test_accuracy"] for d in raw["daemon"]],
        "daemon_peak_rss_mb": [d["peak_rss_mb"] for d in raw["daemon"]],
        "daemon_more_epochs_s": [d["more_epochs"]["landing_to_promoted_s"] for d in raw["daemon"] if d.get("more_epochs")],
        "daemon_more_epochs_accuracy": [d["more_epochs"]["test_accuracy"] for d in raw["daemon"] if d.get("more_epochs")],
        "ready_s": [d["ready_fresh_s"] for d in raw["daemon"]],
        "ready_restart_s": [x for d in raw["daemon"] for x in d["ready_restart_s"]],
        "status_ms": [x for d in raw["daemon"] for x in d["status"]["latencies_ms"]],
        "baselines": {name: {"time_to_target_s": [r["time_to_target_s"] for r in raw[name]],
                             "time_to_target_warm_s": [r["time_to_target_warm_s"] for r in raw[name]],
                             "full_s": [r["full_s"] for r in raw[name]],
                             "accuracy": [r["best_accuracy"] for r in raw[name]],
                             "reached": [r["reached"] for r in raw[name]],
                             "cpu_s": [r["cpu_s"] for r in raw[name]],
                             "cpu_to_target_s": [r.get("cpu_to_target_s") for r in raw[name]],
                             "time_to_more_epochs_target_s": [r["more_epochs_target"]["seconds"] for r in raw[name]
                                                             if r.get("more_epochs_target")],
                             "reached_more_epochs_target": [r["more_epochs_target"]["reached"] for r in raw[name]
                                                            if r.get("more_epochs_target")]}
                      for name in ("keras_head", "keras_whole", "tflite_whole")},
    }
    return measurements


def summarise(raw: dict) -> dict:
    """The derived part of bench.json (required keys, summary, spreads, status, per-variant latency)."""
    measurements = measurements_from_raw(raw)
    report = bench_report(measurements)
    variants = {}
    for d in raw["daemon"]:
        for row in d["variants"]:
            variants.setdefault(row["name"], []).append(row)
    per_variant = {name: {"ms_per_sample_batch1": spread([r["ms_per_sample"] for r in rows]),
                          f"ms_per_sample_batch{rows[0]['batch']}": spread([r["ms_per_sample_batch"] for r in rows]),
                          "memory_bytes": rows[0]["memory_bytes"], "delegate": rows[0]["delegate"]}
                   for name, rows in variants.items()}
    return {
        **{k: report[k] for k in REQUIRED_KEYS},
        "summary": report,
        "spread": {k: spread(v) for k, v in measurements.items() if k not in ("baselines", "status_ms")},
        "baselines": {name: {k: spread(v) for k, v in vals.items() if not k.startswith("reached")}
                      | {k: v for k, v in vals.items() if k.startswith("reached")}
                      for name, vals in measurements["baselines"].items()},
        "status_ms": {"p50": report["status_p50_ms"], "p99": report["status_p99_ms"],
                      "max": max(measurements["status_ms"]) if measurements["status_ms"] else None,
                      "calls_during_training": len(measurements["status_ms"])},
        "per_variant_feature_latency": per_variant,
        "pretrained_accuracy": median([d["pretrained_accuracy"] for d in raw["daemon"]]),
        "per_epoch_ms": per_epoch_ms(raw),
    }


def per_epoch_ms(raw: dict) -> dict:
    """Training alone, one epoch over the same images (median; the baselines' first, tracing epoch left out):
    the daemon's head on cached features (its `trained` event after the last `augmented` one; 2 copies per
    image) against the baselines' epochs."""
    out = {"daemon_head": median([1000.0 * d["round1"]["training_s"] / d["round1"]["epochs_trained"]
                                  for d in raw["daemon"] if d["round1"].get("training_s") is not None
                                  and d["round1"].get("epochs_trained")])}
    for name in ("keras_head", "keras_whole", "tflite_whole"):
        rows = [median(r["epoch_s"][1:] or r["epoch_s"]) for r in raw.get(name, [])]
        out[name] = None if not rows else 1000.0 * median(rows)
    return out
