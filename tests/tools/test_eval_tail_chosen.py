"""eval_tail_chosen's afterwards rules and report lines (issue 14's chosen column)."""

from __future__ import annotations

from eval_tail_chosen import by_rule, markdown


def _round(holdout: dict, test: dict, n: int = 26) -> dict:
    return {"holdout": holdout, "test": test, "n_holdout": n}


def test_the_accuracy_only_rule_keeps_the_shallower_cut_on_a_tie_and_the_other_takes_the_deeper():
    tie = _round({"head": 1.0, "last_block": 1.0, "last2_blocks": 1.0}, {"head": 0.9, "last_block": 0.95,
                                                                          "last2_blocks": 0.97})
    assert by_rule(tie) == {"accuracy_only": {"cut": "head", "test": 0.9, "promoted": True},
                            "deeper_on_tie": {"cut": "last2_blocks", "test": 0.97, "promoted": True}}
    won = _round({"head": 0.8, "last_block": 0.9, "last2_blocks": 0.85}, {"head": 0.7, "last_block": 0.8,
                                                                           "last2_blocks": 0.9})
    assert {r["cut"] for r in by_rule(won).values()} == {"last_block"}  # more accurate: both rules agree
    assert by_rule(_round({}, {})) == {}


def test_a_pick_the_holdout_gate_rejects_scores_the_version_the_board_keeps_serving():
    r = _round({"head": 0.9, "last_block": 0.9}, {"head": 0.91, "last_block": 0.97}) | {
        "holdout_before": 0.95, "pretrained": 0.91}
    picks = by_rule(r)
    assert picks["deeper_on_tie"] == {"cut": "last_block", "test": 0.91, "promoted": False}
    r["holdout_before"] = 0.9  # the gate passes at equal accuracy (promote_tolerance 0)
    assert by_rule(r)["deeper_on_tie"] == {"cut": "last_block", "test": 0.97, "promoted": True}


def test_the_report_names_the_rules_and_shows_the_holdout_losses():
    user = {"name": "u0", "n_train": 60, "n_holdout": 20, "holdout": {"head": 1.0, "last_block": 1.0},
            "holdout_loss": {"head": 0.02, "last_block": 0.004}, "test": {"head": 0.9, "last_block": 0.95},
            "served_cut": "last_block", "chosen": 0.95, "best_fixed": "last_block", "best_fixed_accuracy": 0.95,
            "matches_best": True}
    m = {k: {"mean": v, "min": v} for k, v in (("head", 0.9), ("chosen", 0.95), ("rule_accuracy_only", 0.9))}
    text = "\n".join(markdown({"build_args": "", "loss_margin": 0.1, "g": {
        "users": [user], "methods": m, "round_seconds": 1.0, "matches_best": 1, "candidates": ["head", "last_block"],
        "matches_best_by_rule": {"accuracy_only": 0}}}))
    assert "at least 10 % lower" in text and "| 0.020 / 0.004 |" in text
    assert "Candidates: head / last_block." in text
    assert "| accuracy only (the rule before the loss tie-break) | 90.0 % | 90.0 % |" in text
    assert "for 1 of 1 users (on the same rounds, accuracy only (the rule before the loss tie-break): 0)" in text
