"""The `autlearnctl bench` table: one row per variant of a choice, the chosen one marked, then the reason."""

from __future__ import annotations

from .measure import TRAIN_BATCH
from .variants import Choice, human_bytes


def _ms(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4f}" if x < 10 else f"{x:.1f}"


def format_table(choice: Choice) -> str:
    """The `autlearnctl bench` table: one row per variant, the chosen one marked *, then the reason."""
    batch = next((r["batch"] for r in choice.table if r.get("batch")), TRAIN_BATCH)
    rows = [("variant", "params", "MFLOPs", "ms/sample b1", f"ms/sample b{batch}", "memory", "acc int8",
             "in budget", "chosen")]
    for r in choice.table:
        acc = r.get("accuracy_int8")
        rows.append((
            r["variant"], str(r["params"]), f"{r['flops'] / 1e6:.3f}",
            _ms(r.get("ms_per_sample")), _ms(r.get("ms_per_sample_batch")), human_bytes(r.get("memory_bytes")),
            "n/a" if acc is None else f"{acc:.4f}",
            ("error" if r.get("error") else "yes" if r["within_budget"] else "no"),
            "*" if r["chosen"] else "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    left = {0, 7, 8}
    lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    delegates = sorted({r["delegate"] for r in choice.table if r.get("delegate")})
    key = choice.key or {}
    facts = [f"budget: {choice.budget.describe()}"]
    if key:
        facts.append(f"delegate {key.get('delegate')}" + (f" -> {', '.join(delegates)}" if delegates else "")
                     + f", {key.get('threads')} thread(s), {key.get('runtime')}")
    if choice.measured_at:
        facts.append(f"measured {choice.measured_at}" + (" (recorded)" if choice.from_record else " (now)"))
    lines.append("; ".join(facts))
    for r in choice.table:
        if r.get("error"):
            lines.append(f"{r['variant']}: {r['error']}")
    lines.append(f"chosen: {choice.reason}")
    return "\n".join(lines)
