"""`make eval-tail`'s `chosen` column (issue 14): one bundle carrying head, last_block and last2_blocks
(`autlearn-build image --tail head,last_block,last2_blocks`), the board choosing the cut per user by the holdout
in a real daemon round, against each cut's own candidate of that same round.

The round trains a candidate at every cut its budget admits, from the same samples, augmented copies, seed and
epochs a one-cut board would use, and keeps the deeper one only when it beats every shallower one on the holdout
(daemon/autlearn/learning/cuts.py), one per setting of the pull where the tails take it as inputs. Here every candidate the round fits is recorded (the Head objects and the
holdout scores `choose` saw) and scored on the user's test images through its own stem: the *fixed* figure of a
cut is its candidate's test accuracy (before the gate against the served version), the *chosen* figure what the
board serves after the round, and *best fixed* the best of the candidates for that user (an oracle: it knows
the test images).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

MULTI = ("head", "last_block", "last2_blocks")


def key_of(head) -> str:
    """A fitted Head's candidate name, as cuts.Candidate names it: `head`, `last_block/anchored`, …"""
    cut = head.variant.info.get("cut") if "@" in head.variant.name else "head"
    return cut if head.setting is None else f"{cut}/{head.setting.name}"


@contextlib.contextmanager
def recording():
    """Within: (fitted, scored, kept): every head a round fits, by its candidate's name (`head`,
    `last_block/anchored`, `last_block/free`, …), the holdout accuracy and loss of each candidate as the round's
    `choose` saw them, and the name of the candidate it kept."""
    from autlearn.learning import head as head_mod
    from autlearn.learning import learner as learner_mod

    fitted, scored, kept = {}, {}, {}
    fit, choose = head_mod.Head.fit, learner_mod.choose

    def fit_recorded(self, *args, **kwargs):
        out = fit(self, *args, **kwargs)
        fitted[key_of(self)] = self
        return out

    def choose_recorded(results, holdout_n):
        scored.update({r.name: (r.holdout_accuracy, r.holdout_loss) for r in results})
        decision = choose(results, holdout_n)
        kept["name"] = decision.keep.name
        return decision

    head_mod.Head.fit, learner_mod.choose = fit_recorded, choose_recorded
    try:
        yield fitted, scored, kept
    finally:
        head_mod.Head.fit, learner_mod.choose = fit, choose


def labels_at(board, cut, weights, x: np.ndarray) -> np.ndarray:
    """The labels (as ints) a head with `weights` at `cut` predicts for images `x`, through that cut's stem."""
    from autlearn.learning.features import FeatureExtractor

    lr = board.eng.learner
    head = lr.new_head(cut)
    head.set_weights(weights)
    probs = head.predict(FeatureExtractor(cut.variant, 2)(x), lr.active())
    names = {slot: name for name, slot in board.slots().items()}
    return np.array([int(names[int(s)]) for s in np.argmax(probs, axis=1)])


def chosen_round(data, user: dict, bundle: Path, work: Path) -> dict:
    """One user's round on the multi-cut bundle (the daemon's defaults, as eval_tail.board_round)."""
    from eval_board import open_board
    from eval_image import _write_inbox

    b = open_board(work / f"{user['name']}-{bundle.name}", bundle, **{"training.seed": 0})
    try:
        _write_inbox(b, data, user["train"])
        b.scan()
        x, y = data.x[user["test"]], data.labels[user["test"]]
        lr = b.eng.learner
        t0 = time.monotonic()
        with recording() as (fitted, scored, kept):
            r = b.round()
        secs = time.monotonic() - t0
        score = lambda cut, w: float(np.mean(labels_at(b, cut, w, x) == y))  # noqa: E731
        served = lr.version_cut(b.version())
        candidates = [cand for c in lr.cuts for cand in c.candidates if cand.name in fitted]
        return {"chosen": score(served, lr.current_weights(b.version())), "served_cut": served.name,
                "served": kept.get("name", r.cut) if r.outcome == "promoted" else served.name,
                "round_cut": r.cut, "cut_reason": r.cut_reason, "outcome": r.outcome,
                "pretrained": score(lr.cuts[0], lr.current_weights(b.initial_version())),
                "test": {cand.name: score(cand.cut, fitted[cand.name].get_weights()) for cand in candidates},
                "holdout": {c: a for c, (a, _) in scored.items()},
                "holdout_loss": {c: loss for c, (_, loss) in scored.items()}, "holdout_before": r.accuracy_before,
                "n_train": r.n_train, "n_augmented": r.n_augmented, "n_holdout": r.n_holdout, "round_seconds": round(secs, 2)}
    finally:
        b.close()


def _pick(names: list[str], r: dict, use_loss: bool) -> str:
    """cuts.choose's rule on recorded scores: a later candidate displaces the best earlier one by accuracy, or
    (use_loss) at equal accuracy by a loss LOSS_MARGIN lower."""
    from autlearn.learning.cuts import Trained, _beats

    t = {n: Trained(None, r["holdout"][n], r["holdout_loss"].get(n) if use_loss else None) for n in names}
    best = names[0]
    for n in names[1:]:
        if _beats(t[n], t[best]):
            best = n
    return best


def by_rule(r: dict) -> dict:
    """Which candidate other rules would have kept from this round's recorded holdout scores (candidates in the
    round's order): `accuracy_only` (without the losses: the rule before the loss tie-break), `deeper_on_tie`
    (the last of the most accurate), `anchored_only` (the board's rule among head and the anchored candidates:
    what a bundle with one compiled-in setting chose before) and `free_only` (the same among head and the free
    ones). Each: the candidate, whether the round's gate would promote it, and the test accuracy of what the board
    would then serve (the served version's when the gate rejects the pick)."""
    names = [c for c in r["test"] if r["holdout"].get(c) is not None]
    if not names:
        return {}
    picks = {"accuracy_only": _pick(names, r, False),
             "deeper_on_tie": max(names, key=lambda c: (r["holdout"][c], names.index(c)))}
    for rule, keep, drop in (("anchored_only", "/anchored", "/free"), ("free_only", "/free", "/anchored")):
        sub = [c for c in names if not c.endswith(drop)]
        if len(sub) < len(names) and any(c.endswith(keep) for c in sub):
            picks[rule] = _pick(sub, r, True)
    return {rule: {"cut": c, "test": r["test"][c] if gated_in(r, c) else r["pretrained"], "promoted": gated_in(r, c)}
            for rule, c in picks.items()}


def gated_in(r: dict, name: str) -> bool:
    """Whether the round's holdout gate (the daemon's default training.promote_tolerance = 0) would promote the
    candidate `name`: its holdout accuracy at least the served version's. A rejected pick leaves the board serving
    that version, whose test accuracy on the first round is `pretrained`."""
    before = r.get("holdout_before")
    return before is None or r["holdout"][name] >= before


def chosen_group(name: str, data, bundle: Path, work: Path, memo, local: list[float], cut_info) -> dict:
    """Every user of `data` through `chosen_round`; per user the cut chosen and the best fixed one."""
    from partition import summarise

    rows = []
    for u, loc in zip(data.users, local):
        r = memo.get(f"chosen/{name}/{u['name']}", lambda: chosen_round(data, u, bundle, work / "boards"))
        order = list(r["test"])  # the round's order of its candidates
        best = max(order, key=lambda c: (r["test"][c], -order.index(c)))  # ties: the earlier candidate
        rows.append({"name": u["name"], "n_test": int(len(u["test"])), **r, "rules": by_rule(r), "best_fixed": best,
                     "best_fixed_accuracy": r["test"][best], "local_only": loc,
                     "matches_best": r["chosen"] >= r["test"][best] - 1e-9})
        print(f"   chosen {name} {u['name']}: served {r['served']} {r['chosen']:.3f}; candidates "
              + ", ".join(f"{c} {a:.3f} (holdout {r['holdout'].get(c) or 0:.3f}, loss "
                        f"{r['holdout_loss'].get(c) or 0:.3f})" for c, a in r["test"].items())
              + f"; {r['round_seconds']:.0f}s", flush=True)
    names = list(dict.fromkeys(c for row in rows for c in row["test"]))
    per = {c: [row["test"].get(c) for row in rows] for c in names}
    methods = {c: summarise(v).as_dict() | {"per_user": [round(a, 4) for a in v]}
               for c, v in per.items() if all(a is not None for a in v)}
    for key in ("chosen", "best_fixed_accuracy", "local_only", "pretrained"):
        v = [row[key] for row in rows]
        methods[key] = summarise(v).as_dict() | {"per_user": [round(a, 4) for a in v]}
    for rule in RULE_NAMES:
        if all(rule in row["rules"] for row in rows):
            v = [row["rules"][rule]["test"] for row in rows]
            methods[f"rule_{rule}"] = summarise(v).as_dict() | {"per_user": [round(a, 4) for a in v]}
    return {"users": rows, "methods": methods, "candidates": names, "bundle": bundle.name, "cuts": cut_info(bundle),
            "matches_best": sum(row["matches_best"] for row in rows),
            "matches_best_by_rule": {rule: sum(row["rules"][rule]["test"] >= row["best_fixed_accuracy"] - 1e-9
                                               for row in rows) for rule in RULE_NAMES
                                     if all(rule in row["rules"] for row in rows)},
            "round_seconds": round(float(np.mean([row["round_seconds"] for row in rows])), 2)}


RULE_NAMES = ("accuracy_only", "deeper_on_tie", "anchored_only", "free_only")
RULES = {"chosen": "chosen (accuracy, then the loss on a tie)",
         "rule_accuracy_only": "accuracy only (the rule before the loss tie-break)",
         "rule_deeper_on_tie": "deeper cut on a tie (not the board's rule)",
         "rule_anchored_only": "chosen among head + anchored only (one compiled-in setting, as before)",
         "rule_free_only": "chosen among head + free only"}


def markdown(chosen: dict) -> list[str]:
    """The chosen section of reports/tail.md."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["## chosen: the board picks the cut and the pull per user (one bundle carrying head, last_block, "
             "last2_blocks)", "",
             f"Bundles: `autlearn-build image --tail {','.join(MULTI)} {chosen.get('build_args', '')}` (the options "
             "of the one-cut bundles above otherwise). Per user one real daemon round (defaults, as above) trains a "
             "candidate at every cut and, where the bundle's tails take their pull toward the cloud weights as "
             "inputs (`tail.regularisation`), one per setting at each deeper cut (`anchored`: --tail-l2/"
             "--tail-lr-scale, `free`: no pull); candidates in the order head, last_block/anchored, "
             "last_block/free, last2_blocks/anchored, …, a later one kept only when it beats the best earlier "
             "one on the holdout, by accuracy or, at equal accuracy, by a holdout loss (mean cross-entropy) at "
             f"least {100 * chosen.get('loss_margin', 0.1):.0f} % lower; *fixed* = that candidate of the same "
             "round on the user's test images (before the gate against the served version); *chosen* = what the "
             "board serves after the round; *best fixed* = the best candidate for that user (an oracle that knows "
             "the test images). The other rules are applied afterwards to the holdout scores each round "
             "recorded, each pick then through the round's holdout gate against the served version (a rejected "
             "pick serves the pretrained model, as the board does): *accuracy only* keeps a later candidate only when it is more accurate, *deeper cut on a "
             "tie* takes the last of the most accurate, *head + anchored only* is the board's rule without the "
             "free candidates (what a bundle with the pull compiled in chose), *head + free only* without the "
             "anchored ones.", ""]
    for group, g in ((k, v) for k, v in chosen.items() if isinstance(v, dict) and "users" in v):
        m = g["methods"]
        names = g.get("candidates") or [c for c in MULTI if c in m]
        heads = " / ".join(names)
        lines += [f"### {group} ({len(g['users'])} users; mean round {g['round_seconds']} s)", "",
                  f"Candidates: {heads}.", "",
                  "| user | train / holdout | holdout accuracy | holdout loss | test accuracy | served | chosen test "
                  "| best fixed | match |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for u in g["users"]:
            hold = " / ".join(pct(u["holdout"].get(c)) for c in names)
            loss = " / ".join("n/a" if u.get("holdout_loss", {}).get(c) is None else f"{u['holdout_loss'][c]:.3f}"
                              for c in names)
            test = " / ".join(pct(u["test"].get(c)) for c in names)
            lines.append(f"| {u['name']} | {u['n_train']} / {u['n_holdout']} | {hold} | {loss} | {test} | "
                         f"{u.get('served', u['served_cut'])} | {pct(u['chosen'])} | {u['best_fixed']} "
                         f"{pct(u['best_fixed_accuracy'])} | {'yes' if u['matches_best'] else 'no'} |")
        lines += ["", "| method | mean | min |", "|---|---|---|"]
        for key in (*names, "chosen", *(f"rule_{r}" for r in RULE_NAMES), "best_fixed_accuracy", "local_only"):
            if key in m:
                lines.append(f"| {RULES.get(key, key)} | {pct(m[key]['mean'])} % | {pct(m[key]['min'])} % |")
        by = g.get("matches_best_by_rule", {})
        others = ", ".join(f"{RULES['rule_' + k]}: {n}" for k, n in by.items())
        lines += ["", f"The choice matches the best candidate for {g['matches_best']} of {len(g['users'])} users"
                  f"{' (on the same rounds, ' + others + ')' if others else ''}.", ""]
    return lines
