"""The table `autlearn-build` prints after a build: one row per variant, then a line about the bundle."""

from __future__ import annotations


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _fmt(value, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def image_summary(result) -> str:
    manifest = result.manifest
    rows = [("variant", "params b+h", "MFLOPs b+h", "base bytes", "head bytes", "ms/image", "acc float",
             "acc int8", "int8-float")]
    for v in manifest["variants"]:
        cost = None
        if v["accuracy_int8"] is not None and v["accuracy_float"] is not None:
            cost = f"{v['accuracy_int8'] - v['accuracy_float']:+.4f}"
        rows.append((v["name"], str(v["params"] + v.get("head_params", 0)),
                     f"{(v['flops'] + v.get('head_flops', 0)) / 1e6:.3f}",
                     str(manifest["files"][v["base"]]["bytes"]), str(manifest["files"][v["head"]]["bytes"]),
                     f"{v['latency_ms']:.4f}", _fmt(v["accuracy_float"]), _fmt(v["accuracy_int8"]),
                     cost or "n/a"))
    lines = _table(rows)
    pruning = f", pruning search {result.prune_seconds:.1f} s" if result.prune_seconds else ""
    lines.append(f"bundle {result.out}: {len(manifest['labels'])} labels, class capacity "
                 f"{manifest['class_capacity']}, train batch {manifest['train_batch']}, "
                 f"{result.train_size} training / {result.val_size} held-out images; "
                 f"built in {result.seconds:.1f} s (pretraining {result.pretrain_seconds:.1f} s{pruning})")
    lines.append("acc int8: int8 base + the shipped head (trained on that base's int8 features); int8-float: its "
                 "difference to the float model")
    lines.extend(f"note: {note}" for note in getattr(result, "notes", []))
    return "\n".join(lines)


def text_summary(result) -> str:
    m = result.manifest
    rows = [("variant", "base params", "MFLOPs/seq", "base bytes", "head bytes", "ms/seq", "top-1 float",
             "top-1 int8", "top-3 float", "top-3 int8", "int8-float (top-1)")]
    pct = lambda a: "n/a" if a is None else f"{a * 100:.2f}%"  # noqa: E731
    for v in m["variants"]:
        cost = "n/a"
        if v["accuracy_int8"] is not None and v["accuracy_float"] is not None:
            cost = f"{(v['accuracy_int8'] - v['accuracy_float']) * 100:+.2f} pt"
        rows.append((v["name"], str(v["params"]), f"{v['flops'] / 1e6:.2f}", str(m["files"][v["base"]]["bytes"]),
                     str(m["files"][v["head"]]["bytes"]), f"{v['latency_ms']:.4f}", pct(v["accuracy_float"]),
                     pct(v["accuracy_int8"]), pct(v["top3_float"]), pct(v["top3_int8"]), cost))
    lines = _table(rows)
    v = m["variants"][0]
    lines.append(f"bundle {result.out}: task next_word, vocabulary {len(m['vocabulary'])} + {m['spare_slots']} "
                 f"spare = capacity {m['class_capacity']}, seq_len {m['seq_len']}, features {v['feature_size']} per "
                 f"position; {m['synonyms']['words']} words with synonyms; {result.train_size} training / "
                 f"{result.val_size} held-out tokens ({', '.join(m['metrics']['held_out_documents'])}); built in "
                 f"{result.seconds:.1f} s (pretraining {result.pretrain_seconds:.1f} s"
                 + (f", pruned variants {result.prune_seconds:.1f} s)" if result.prune_seconds else ")"))
    return "\n".join(lines)
