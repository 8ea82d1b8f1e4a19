"""Simulated users for the evaluation: a Dirichlet label-skew partition and per-user bookkeeping.

A Dirichlet label-skew partition (non-IID, as in Hsu et al. 2019 and the
federated-learning literature), per-user train/test splits, a measure of skew, and the bookkeeping of
per-user accuracies (mean and spread). Pure numpy: the tests run it without TensorFlow."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def dirichlet_partition(labels: np.ndarray, n_users: int, alpha: float, seed: int = 0,
                        min_size: int = 1, max_tries: int = 1000) -> list[np.ndarray]:
    """Split sample indices among `n_users` with label skew: for every class c, the shares of its samples
    going to each user are drawn from Dirichlet(alpha, …, alpha). Small alpha → each user holds few classes;
    large alpha → every user close to the global label distribution.

    Every index appears in exactly one user's array (sorted); every user gets at least `min_size` samples
    (the draw is repeated, at most `max_tries` times, until it does — the usual practice)."""
    labels = np.asarray(labels)
    if n_users < 1:
        raise ValueError("n_users must be at least 1")
    if not alpha > 0:
        raise ValueError("alpha must be positive")
    if n_users * min_size > len(labels):
        raise ValueError(f"{len(labels)} samples cannot give {n_users} users {min_size} each")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        users: list[list[int]] = [[] for _ in range(n_users)]
        for c in classes:
            idx = np.flatnonzero(labels == c)
            idx = idx[rng.permutation(len(idx))]
            shares = rng.dirichlet(np.full(n_users, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for u, part in enumerate(np.split(idx, cuts)):
                users[u].extend(part.tolist())
        if min(len(u) for u in users) >= min_size:
            return [np.sort(np.array(u, dtype=np.int64)) for u in users]
    raise RuntimeError(f"no Dirichlet(alpha={alpha}) draw gave every one of {n_users} users {min_size} samples "
                       f"in {max_tries} tries")


def train_test_split_user(indices: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A user's own split (random, seeded): (train indices, test indices); both non-empty when len >= 2."""
    indices = np.asarray(indices)
    rng = np.random.default_rng(seed)
    order = indices[rng.permutation(len(indices))]
    n_test = int(round(len(order) * test_fraction))
    if len(order) >= 2:
        n_test = min(max(n_test, 1), len(order) - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def label_skew(labels: np.ndarray, users: list[np.ndarray]) -> float:
    """Mean total-variation distance between each user's label distribution and the global one (0 = IID,
    towards 1 = every user holds classes the others do not)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    glob = np.array([np.mean(labels == c) for c in classes])
    tv = []
    for u in users:
        if len(u) == 0:
            continue
        lu = labels[u]
        p = np.array([np.mean(lu == c) for c in classes])
        tv.append(0.5 * np.abs(p - glob).sum())
    return float(np.mean(tv)) if tv else 0.0


# ------------------------------------------------------------------------------------------ bookkeeping

def accuracy(predicted: np.ndarray, truth: np.ndarray) -> float | None:
    """Share of exact matches; None for an empty test set (it is left out of means, never counted as 0)."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"{predicted.shape} predictions for {truth.shape} labels")
    if len(truth) == 0:
        return None
    return float(np.mean(predicted == truth))


def topk_accuracy(probs: np.ndarray, truth: np.ndarray, k: int) -> float | None:
    truth = np.asarray(truth)
    if len(truth) == 0:
        return None
    top = np.argsort(-np.asarray(probs), axis=1)[:, :k]
    return float(np.mean(np.any(top == truth[:, None], axis=1)))


@dataclass
class Summary:
    mean: float | None
    std: float | None  # population standard deviation over users
    median: float | None
    min: float | None
    max: float | None
    n: int  # users with a figure

    def as_dict(self) -> dict:
        r = lambda v: None if v is None else round(float(v), 4)  # noqa: E731
        return {"mean": r(self.mean), "std": r(self.std), "median": r(self.median), "min": r(self.min),
                "max": r(self.max), "n_users": self.n}


def summarise(values: list[float | None]) -> Summary:
    """Mean and spread over users; users without a figure (None, NaN) are left out and not counted."""
    v = np.array([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if len(v) == 0:
        return Summary(None, None, None, None, None, 0)
    return Summary(float(v.mean()), float(v.std()), float(np.median(v)), float(v.min()), float(v.max()), len(v))


def evaluate_per_user(users: list[dict], predict_for_user) -> dict:
    """Run one method over every user: `predict_for_user(user) -> predicted labels` for user["test_y"].
    Returns {"per_user": [...], **summary}. A user dict carries at least "test_y" (and whatever the method
    needs)."""
    per_user = [accuracy(np.asarray(predict_for_user(u)), np.asarray(u["test_y"])) for u in users]
    return {"per_user": [None if a is None else round(a, 4) for a in per_user], **summarise(per_user).as_dict()}


def chance_level(n_classes: int) -> float:
    """Expected accuracy of a guess independent of the input, on a test set balanced over `n_classes`."""
    return 1.0 / n_classes
