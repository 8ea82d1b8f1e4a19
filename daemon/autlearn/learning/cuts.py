"""Which cut a round trains and which it keeps (issue 14, docs/tail.md "Choosing the cut by holdout").

A deeper tail trains only within the board's budget, once per setting of its pull toward the cloud weights
(`Regularisation`) where its `train` takes the pull as inputs, and a candidate is kept only when it beats every
earlier one on the user's holdout (by accuracy, or by a lower loss at equal accuracy); the reason in words is for
`status` and `versions`."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AutlearnError
from ..runtime.bundle import Bundle, Regularisation, Variant

HEAD = "head"


@dataclass(frozen=True)
class Cut:
    """One trainable part of a bundle's variant: `head` (the variant itself) or a deeper tail it carries."""
    name: str
    variant: Variant
    depth: int                      # 0: the head only; each deeper cut of the variant one more
    train_ms_per_sample: float | None  # the builder's measure of one sample through `train` (None: not measured)
    cache_bytes_per_sample: int     # what one cached activation at this cut takes
    settings: tuple[Regularisation, ...] = ()  # the pulls its `train` takes as inputs, tried in this order

    @property
    def candidates(self) -> tuple["Candidate", ...]:
        """What a round trains at this cut: one candidate per setting (one without, for a compiled-in pull)."""
        return tuple(Candidate(self, s) for s in self.settings) or (Candidate(self, None),)

    @staticmethod
    def of(variant: Variant, depth: int) -> "Cut":
        tail = variant.info.get("tail") or {}
        ms = tail.get("train_ms_per_sample")
        return Cut(name=str(variant.info.get("cut")) if depth else HEAD, variant=variant,
                   depth=depth, train_ms_per_sample=float(ms) if isinstance(ms, (int, float)) else None,
                   cache_bytes_per_sample=int(tail.get("cache_bytes_per_sample", variant.feature_size)),
                   settings=variant.regularisation)


class _Named:
    """The `name` and `order` of a cut with one setting of its pull (`cut`, `setting`: Candidate, Trained)."""
    cut: Cut
    setting: Regularisation | None

    @property
    def name(self) -> str:
        return candidate_name(self.cut, self.setting)

    @property
    def order(self) -> tuple[int, int]:
        """Shallowest cut first; at one cut the manifest's order of the settings (anchored before free)."""
        return self.cut.depth, self.cut.settings.index(self.setting) if self.setting in self.cut.settings else 0


@dataclass(frozen=True)
class Candidate(_Named):
    """One thing a round may train: a cut with one setting of its pull (None: the cut's train has no such
    inputs). Named `cut/setting` (`last_block/free`), or by the cut alone when it has no settings."""
    cut: Cut
    setting: Regularisation | None = None


def candidate_name(cut: Cut, setting: Regularisation | None) -> str:
    return cut.name if setting is None else f"{cut.name}/{setting.name}"


def cuts_of(bundle: Bundle, variant: str = "") -> list[Cut]:
    """The variant's cuts, shallowest (head only) first."""
    return [Cut.of(v, depth) for depth, v in enumerate(bundle.cut_variants(variant))]


@dataclass(frozen=True)
class Budget:
    """What a round may spend on a deeper cut: seconds of tail training and bytes of cached activations."""
    train_seconds: float
    cache_bytes: int
    pull_min_holdout: int = 0  # holdout samples needed to train a cut's settings after its first


@dataclass(frozen=True)
class Plan:
    candidates: tuple[Candidate, ...]     # the shallowest cut's first, then the deeper candidates that fit
    skipped: tuple[tuple[Candidate, str], ...]  # deeper candidates (or whole cuts: setting None) left out, with why

    @property
    def train(self) -> tuple[Cut, ...]:
        """The cuts whose features the round reads (each once, however many of its settings train)."""
        return tuple({c.cut.name: c.cut for c in self.candidates}.values())

    @staticmethod
    def only(cut: Cut) -> "Plan":
        """One candidate: `cut` with its first setting (the round that trains only the current or head cut)."""
        return Plan((cut.candidates[0],), ())

    def without(self, cut: Cut, why: str) -> "Plan":
        return Plan(tuple(c for c in self.candidates if c.cut.name != cut.name),
                    self.skipped + ((Candidate(cut), why),))

    def describe(self) -> str:
        parts = [f"training {', '.join(c.name for c in self.candidates)}"]
        parts += [f"not {c.name}: {why}" for c, why in self.skipped]
        return "; ".join(parts)


def plan(cuts: list[Cut], samples: int, epochs: int, budget: Budget, holdout: int | None = None) -> Plan:
    """The candidates this round trains: always the shallowest cut's first; deeper ones, shallowest cut first and
    at each cut its settings in order, while their training (samples x epochs x the cut's measured ms per sample,
    counted for each candidate) and their cached activations (samples x bytes per sample, counted once per cut:
    its candidates share them), summed over what was admitted so far, fit the budget: the round trains them one
    after the other and the cache holds them all. A deeper cut whose cost the bundle does not state is not
    trained (its cost could be anything). A cut's settings after its first are trained only when the round's
    `holdout` (None: not known, no limit) has at least `budget.pull_min_holdout` samples."""
    if not cuts:
        raise ValueError("a variant has at least its head-only cut")
    train, skipped, held_by = [cuts[0].candidates[0]], [], []
    spent_s, spent_bytes = 0.0, 0
    for c in cuts[1:]:
        if c.train_ms_per_sample is None:
            skipped.append((Candidate(c), "the bundle does not state its training cost"))
            continue
        seconds = samples * max(1, epochs) * c.train_ms_per_sample / 1000.0
        cache = samples * c.cache_bytes_per_sample
        if spent_s + seconds <= budget.train_seconds and spent_bytes + cache > budget.cache_bytes:
            held = f" besides {spent_bytes / 1e6:.1f} MB of {', '.join(held_by)}" if spent_bytes else ""
            skipped.append((Candidate(c), f"its cached activations would take {cache / 1e6:.1f} MB{held}, over the "
                                          f"{budget.cache_bytes / 1e6:.1f} MB cache"))
            continue
        for k, cand in enumerate(c.candidates):
            if k and holdout is not None and holdout < budget.pull_min_holdout:
                skipped.append((cand, f"a holdout of {holdout} samples is too few to choose the pull (training."
                                      f"pull_min_holdout = {budget.pull_min_holdout})"))
                continue
            before = f" after ~{spent_s:.0f} s for {', '.join(t.name for t in train[1:])}" if spent_s else ""
            if spent_s + seconds > budget.train_seconds:
                skipped.append((cand, f"its training would take ~{seconds:.0f} s{before}, over the "
                                      f"{budget.train_seconds:.0f} s budget"))
                continue
            train.append(cand)
            spent_s += seconds
            if c.name not in held_by:
                spent_bytes += cache
                held_by.append(c.name)
    return Plan(tuple(train), tuple(skipped))


@dataclass(frozen=True)
class Trained(_Named):
    """One candidate after the round (its cut and setting): its accuracy and mean cross-entropy on the user's
    holdout (None: no holdout, or the loss not measured)."""
    cut: Cut
    holdout_accuracy: float | None
    holdout_loss: float | None = None
    setting: Regularisation | None = None


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
    """The candidate to compare with the served version. The candidates in order (head only; then each deeper cut,
    shallowest first, at each cut its settings in the manifest's order: anchored before free): the first, unless
    a later one beats the best earlier one on the holdout, by accuracy, or at equal accuracy by a holdout loss
    LOSS_MARGIN lower (anything less keeps the earlier, cheaper or more anchored one: the head-only result is
    the one a head-only round would have given). A later candidate less accurate on the holdout is never kept,
    whatever its loss. Without a holdout the first is kept: nothing shows that a later one generalises."""
    if not results:
        raise ValueError("no cut was trained")
    results = sorted(results, key=lambda r: r.order)
    best, by = results[0], None
    if len(results) == 1:
        return Decision(best, f"trained {best.name} only")
    # the words of the rule: a bundle whose tails compile their pull in has one candidate per cut
    settings = any(r.setting is not None for r in results)
    later, earlier = ("later candidate", "earlier candidate") if settings else ("deeper cut", "shallower cut")
    if holdout_n == 0 or any(r.holdout_accuracy is None for r in results):
        return Decision(best, f"kept {best.name}: no holdout to compare the {'candidates' if settings else 'cuts'} on")
    for r in results[1:]:
        why = _beats(r, best)
        if why:
            best, by = r, why
    scores = ", ".join(f"{r.name} {r.holdout_accuracy:.3f}"
                       + ("" if r.holdout_loss is None else f" (loss {r.holdout_loss:.3f})") for r in results)
    margin = f"{100 * LOSS_MARGIN:.0f} %"
    if best is results[0]:
        return Decision(best, f"kept {best.name}: no {later} beat it on {holdout_n} holdout samples, by "
                              f"accuracy or by a loss {margin} lower at equal accuracy ({scores})")
    if by == "loss":
        return Decision(best, f"{best.name} matched the best {earlier}'s accuracy on {holdout_n} holdout "
                              f"samples with a loss at least {margin} lower ({scores})")
    return Decision(best, f"{best.name} beat the {earlier}s on {holdout_n} holdout samples ({scores})")


def cut_of_row(cuts: list[Cut], row: dict | None, variant: str) -> Cut:
    """The Cut a head record was trained at; a cut the bundle's variant no longer carries is an error."""
    name = (row or {}).get("cut") or HEAD
    for c in cuts:
        if c.name == name:
            return c
    raise AutlearnError("bad_bundle", f"head v{(row or {}).get('version')} was trained at cut {name!r}, which "
                                      f"variant {variant!r} of the installed bundle does not carry")
