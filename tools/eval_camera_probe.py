"""The camera scenario's ceiling of the frozen features: a linear probe on the board's own features (make eval-camera)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# logistic regression on the board's own int8 features of every training shot, and of the shots the board trains
# on (its holdout, by content hash, left out)
PROBES = ["probe_all_shots", "probe_without_holdout"]


def probe(data, bundle: Path, root: Path, names: list[str] = PROBES) -> dict[str, list[float]]:
    """Per user, the test accuracy of a logistic regression (scikit-learn, C=1) on the board's features of the
    frozen base (autlearn's extractor, the bundle's int8 model): on every training shot, and on the shots left
    after the board's own holdout rule (autlearn.intake.ingest.holdout_of on each file's SHA-256, at the daemon's
    default fraction). How far a head on these features can go, and what the holdout's share costs."""
    import hashlib

    from sklearn.linear_model import LogisticRegression

    from autlearn.config import Config
    from autlearn.intake.ingest import holdout_of
    from eval_board import open_board

    fraction = Config()["training.holdout_fraction"]
    b = open_board(root, bundle, **{"training.seed": 0})
    try:
        feats = b.eng.extractor(data.x)
    finally:
        b.close()
    out: dict[str, list[float]] = {m: [] for m in names}
    for u in data.users:
        tr, te = np.asarray(u["train"]), np.asarray(u["test"])
        held = np.array([holdout_of(hashlib.sha256(Path(data.files[i]).read_bytes()).hexdigest(), fraction)
                         for i in tr], bool)
        for name, idx in zip(names, (tr, tr[~held])):
            model = LogisticRegression(max_iter=5000, C=1.0).fit(feats[idx], data.labels[idx])
            out[name].append(float(np.mean(model.predict(feats[te]) == data.labels[te])))
    return out


def probe_line(probes: dict) -> str:
    """The report's sentence on the probe of one group (`probes`: name → {mean, per_user})."""
    every, kept = probes["probe_all_shots"], probes["probe_without_holdout"]
    per = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(every["per_user"], kept["per_user"]))
    return ("Ceiling of the frozen features (not a method the board runs): a logistic regression on the board's own "
            f"int8 features reaches {every['mean']:.3f} trained on every training shot and {kept['mean']:.3f} on the "
            f"shots the board trains on, its holdout share left out (per user: {per}).")
