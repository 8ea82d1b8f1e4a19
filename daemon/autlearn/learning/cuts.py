"""Which cut a round trains and which it keeps (issue 14, docs/tail.md "Choosing the cut by holdout").

A deeper tail trains only within the board's budget and is kept only when it beats the shallower cut on the
user's holdout (by accuracy, or by a lower loss at equal accuracy); the reason in words is for `status` and
`versions`."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AutlearnError
from ..runtime.bundle import Bundle, Variant

HEAD = "head"


@dataclass(frozen=True)
class Cut:
    """One trainable part of a bundle's variant: `head` (the variant itself) or a deeper tail it carries."""
    name: str
    variant: Variant
    depth: int                      # 0: the head only; each deeper cut of the variant one more
    train_ms_per_sample: float | None  # the builder's measure of one sample through `train` (None: not measured)
    cache_bytes_per_sample: int     # what one cached activation at this cut takes

    @staticmethod
    def of(variant: Variant, depth: int) -> "Cut":
        tail = variant.info.get("tail") or {}
        ms = tail.get("train_ms_per_sample")
        return Cut(name=str(variant.info.get("cut")) if depth else HEAD, variant=variant,
                   depth=depth, train_ms_per_sample=float(ms) if isinstance(ms, (int, float)) else None,
                   cache_bytes_per_sample=int(tail.get("cache_bytes_per_sample", variant.feature_size)))


def cuts_of(bundle: Bundle, variant: str = "") -> list[Cut]:
    """The variant's cuts, shallowest (head only) first."""
    return [Cut.of(v, depth) for depth, v in enumerate(bundle.cut_variants(variant))]


@dataclass(frozen=True)
class Budget:
    """What a round may spend on a deeper cut: seconds of tail training and bytes of cached activations."""
    train_seconds: float
    cache_bytes: int


@dataclass(frozen=True)
class Plan:
    train: tuple[Cut, ...]          # the head-only cut first, then the deeper cuts that fit
    skipped: tuple[tuple[Cut, str], ...]  # deeper cuts left out, each with why

    def describe(self) -> str:
        parts = [f"training {', '.join(c.name for c in self.train)}"]
        parts += [f"not {c.name}: {why}" for c, why in self.skipped]
        return "; ".join(parts)


def plan(cuts: list[Cut], samples: int, epochs: int, budget: Budget) -> Plan:
    """The cuts this round trains: always the shallowest; deeper ones, shallowest first, while their training
    (samples x epochs x each one's measured ms per sample) and their cached activations (samples x bytes per
    sample), summed over the deeper cuts admitted so far, fit the budget: the round trains them one after the
    other and the cache holds them all. A deeper cut whose cost the bundle does not state is not trained (its
    cost could be anything)."""
    if not cuts:
        raise ValueError("a variant has at least its head-only cut")
    train, skipped = [cuts[0]], []
    spent_s, spent_bytes = 0.0, 0
    for c in cuts[1:]:
        if c.train_ms_per_sample is None:
            skipped.append((c, "the bundle does not state its training cost"))
            continue
        seconds = samples * max(1, epochs) * c.train_ms_per_sample / 1000.0
        cache = samples * c.cache_bytes_per_sample
        before = f" after ~{spent_s:.0f} s for {', '.join(t.name for t in train[1:])}" if spent_s else ""
        held = f" besides {spent_bytes / 1e6:.1f} MB of {', '.join(t.name for t in train[1:])}" if spent_bytes else ""
        if spent_s + seconds > budget.train_seconds:
            skipped.append((c, f"its training would take ~{seconds:.0f} s{before}, over the "
                               f"{budget.train_seconds:.0f} s budget"))
        elif spent_bytes + cache > budget.cache_bytes:
            skipped.append((c, f"its cached activations would take {cache / 1e6:.1f} MB{held}, over the "
                               f"{budget.cache_bytes / 1e6:.1f} MB cache"))
        else:
            train.append(c)
            spent_s, spent_bytes = spent_s + seconds, spent_bytes + cache
    return Plan(tuple(train), tuple(skipped))


@dataclass(frozen=True)
class Trained:
    """One cut's candidate after the round: its accuracy and mean cross-entropy on the user's holdout (None: no
    holdout, or the loss not measured)."""
    cut: Cut
    holdout_accuracy: float | None
    holdout_loss: float | None = None


@dataclass(frozen=True)
class Decision:
    keep: Trained
    reason: str


# At equal holdout accuracy a deeper cut is kept when its holdout loss is at least this share lower than the best
# shallower one's: a holdout of 10-40 images mostly ties the cuts (often all at 1.000), and the loss still tells
# how confidently each candidate answers it.
LOSS_MARGIN = 0.10


def _beats(r: Trained, best: Trained) -> str | None:
    """Why the deeper candidate `r` displaces `best` ("accuracy" or "loss"), or None when it does not."""
    if r.holdout_accuracy > best.holdout_accuracy:
        return "accuracy"
    if (r.holdout_accuracy == best.holdout_accuracy and r.holdout_loss is not None
            and best.holdout_loss is not None and r.holdout_loss < (1.0 - LOSS_MARGIN) * best.holdout_loss):
        return "loss"
    return None


def choose(results: list[Trained], holdout_n: int) -> Decision:
    """The candidate to compare with the served version: the head-only one, unless a deeper cut beats every
    shallower one on the holdout, by accuracy, or at equal accuracy by a holdout loss LOSS_MARGIN lower (anything
    less keeps the shallower, cheaper cut, whose result is the one a head-only round would have given). A deeper
    cut less accurate on the holdout is never kept, whatever its loss. Without a holdout the head-only result is
    kept: nothing shows that the deeper cut generalises."""
    if not results:
        raise ValueError("no cut was trained")
    results = sorted(results, key=lambda r: r.cut.depth)
    best, by = results[0], None
    if len(results) == 1:
        return Decision(best, f"trained {best.cut.name} only")
    if holdout_n == 0 or any(r.holdout_accuracy is None for r in results):
        return Decision(best, f"kept {best.cut.name}: no holdout to compare the cuts on")
    for r in results[1:]:
        why = _beats(r, best)
        if why:
            best, by = r, why
    scores = ", ".join(f"{r.cut.name} {r.holdout_accuracy:.3f}"
                       + ("" if r.holdout_loss is None else f" (loss {r.holdout_loss:.3f})") for r in results)
    margin = f"{100 * LOSS_MARGIN:.0f} %"
    if best.cut.depth == 0:
        return Decision(best, f"kept {best.cut.name}: no deeper cut beat it on {holdout_n} holdout samples, by "
                              f"accuracy or by a loss {margin} lower at equal accuracy ({scores})")
    if by == "loss":
        return Decision(best, f"{best.cut.name} matched the best shallower cut's accuracy on {holdout_n} holdout "
                              f"samples with a loss at least {margin} lower ({scores})")
    return Decision(best, f"{best.cut.name} beat the shallower cuts on {holdout_n} holdout samples ({scores})")


def cut_of_row(cuts: list[Cut], row: dict | None, variant: str) -> Cut:
    """The Cut a head record was trained at; a cut the bundle's variant no longer carries is an error."""
    name = (row or {}).get("cut") or HEAD
    for c in cuts:
        if c.name == name:
            return c
    raise AutlearnError("bad_bundle", f"head v{(row or {}).get('version')} was trained at cut {name!r}, which "
                                      f"variant {variant!r} of the installed bundle does not carry")
