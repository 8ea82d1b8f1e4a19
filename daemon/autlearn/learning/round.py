"""The one round template both learners plug into, and a round's result.

The template: start, stop checks, candidate, holdout gate, promote or reject, events, result.

A scenario (learner.ImageRound, keyboard.KeyboardRound) supplies the steps that differ — which samples and
features, how a candidate is trained and scored, what is saved with its weights, what its detail says and which
extras its result carries; `run_round` owns the order, the store's round and head records, the events and the
stop checks.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

from .store import Store

log = logging.getLogger(__name__)

Progress = Callable[[str, dict], None]
# Called at step boundaries of a round: it blocks while training must pause (on battery, too hot, paused by the
# user: that may be hours) and returns True when the round must stop (the daemon is stopping).
Checkpoint = Callable[[], bool]
# `epoch` events per round at most: every epoch up to this many, then every k-th and the last.
MAX_EPOCH_EVENTS = 100


def epoch_events(progress: Progress, round_id: int, epochs: int) -> Callable[[int, int, float], None]:
    """Head.fit's on_epoch callback that publishes `epoch` events, thinned so that a long round cannot flood
    the PUB socket's queue (past it, later events — the round's outcome — would be dropped)."""
    every = -(-epochs // MAX_EPOCH_EVENTS)

    def on_epoch(e: int, n: int, loss: float) -> None:
        if e % every == 0 or e == n:
            progress("epoch", {"round_id": round_id, "epoch": e, "epochs": n, "loss": loss})

    return on_epoch


@dataclass
class ImageExtras:
    """What an image round adds to its result: the augmented copies it trained on and where their features
    came from."""
    n_augmented: int = 0
    augmented_computed: int = 0
    augmented_cached: int = 0

    def reply_fields(self) -> dict:
        return {"n_augmented": self.n_augmented, "augmented_computed": self.augmented_computed,
                "augmented_cached": self.augmented_cached}

    def event_fields(self) -> dict:
        return {}


@dataclass
class KeyboardExtras:
    """What a keyboard round adds to its result (`keyboard` in `round_finished`): the text it read, the bounded
    samples it kept, and top-1/top-3 on the held-out words of each head it scored. The fields after
    `memory_entries` are set by the steps the round reached."""
    personal_words: list[str]
    sentences: int
    holdout_sentences: int
    new_sentences: int
    words: int
    train_positions: int
    sampled: dict  # new, replayed, augmented, holdout, holdout_seen
    augmented_positions: int
    memory_entries: int
    pretrained: dict | None = None  # top1, top3 of the cloud head
    current: dict | None = None  # top1, top3 of the head the candidate is judged against
    prequential_top3_hits: int | None = None  # online mode
    steps: int | None = None  # offline mode: optimiser steps
    fine_tuned: dict | None = None  # top1, top3, interpolation toward the cloud head
    with_memory: dict | None = None  # top1, top3, mix of the context memory

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def reply_fields(self) -> dict:  # a keyboard round augments text positions, not images
        return {"n_augmented": 0, "augmented_computed": 0, "augmented_cached": 0}

    def event_fields(self) -> dict:
        return {"keyboard": self.as_dict()}


def _reply_field(name: str) -> property:
    return property(lambda self: self.extras.reply_fields()[name])


@dataclass
class RoundResult:
    """One round's outcome, its counts and holdout scores, and the scenario's extras."""
    round_id: int
    outcome: str
    detail: str
    n_train: int
    n_holdout: int
    features_computed: int
    features_cached: int
    accuracy_before: float | None
    accuracy_after: float | None
    version: int | None
    seconds: float
    mode: str = "offline"
    prequential: list[tuple[int, int]] | None = None  # online mode: (hits, seen) per chunk, predicted before training
    extras: ImageExtras | KeyboardExtras = field(default_factory=ImageExtras)
    cut: str = "head"  # the cut the candidate was trained at (docs/tail.md, "Choosing the cut by holdout")
    cut_reason: str | None = None  # why that cut: the holdout comparison, or why no deeper cut trained

    @property
    def prequential_accuracy(self) -> float | None:
        seen = sum(n for _, n in self.prequential or [])
        return sum(h for h, _ in self.prequential) / seen if seen else None

    # an image round's augmentation counts, as every reply answers them (0 for a keyboard round)
    n_augmented = _reply_field("n_augmented")
    augmented_computed = _reply_field("augmented_computed")
    augmented_cached = _reply_field("augmented_cached")

    @property
    def keyboard(self) -> dict | None:
        """A keyboard round's extras as `round_finished` carries them; None for an image round."""
        return self.extras.as_dict() if isinstance(self.extras, KeyboardExtras) else None

    def as_dict(self) -> dict:
        """The result as `status.last_round` answers it (the same fields for every scenario)."""
        scenario = ("mode", "prequential", "extras", "cut", "cut_reason")
        common = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in scenario}
        return {**common, **self.extras.reply_fields(), "mode": self.mode, "prequential": self.prequential,
                "prequential_accuracy": self.prequential_accuracy, "cut": self.cut, "cut_reason": self.cut_reason}

    def event(self) -> dict:
        """The `round_finished` event: the result plus the scenario's own object (`keyboard`)."""
        return {**self.as_dict(), **self.extras.event_fields()}


@dataclass
class Prepared:
    """What a round read: the counts its record and result carry."""
    n_train: int
    n_holdout: int
    features_computed: int
    features_cached: int


@dataclass(frozen=True)
class Skip:
    """A round that scored the current head and then found nothing to learn; `judged` False records no
    accuracy_before (the keyboard's online round, as it always did)."""
    detail: str
    judged: bool = True


@dataclass
class RoundContext:
    """What the steps of one round share: its id, the head it starts from, its events and stop checks, and the
    online chunks it predicted before learning them."""
    round_id: int
    version: int
    progress: Progress
    checkpoint: Checkpoint
    prequential: list[tuple[int, int]] = field(default_factory=list)


class RoundScenario(ABC):
    """The steps of one round that differ between scenarios; one instance per round (it holds the round's data
    between steps)."""

    gated = True  # False: no holdout gate, the candidate is promoted without a check (training.holdout_fraction = 0)
    cut = "head"  # the cut the candidate was trained at; a scenario that chooses among cuts sets it in `train`
    cut_reason: str | None = None

    def __init__(self, store: Store, bundle_id: str, variant_name: str, heads_dir: Path, mode: str):
        self.store, self.bundle_id, self.variant_name = store, bundle_id, variant_name
        self.heads_dir, self.mode = heads_dir, mode

    @abstractmethod
    def prepare(self, ctx: RoundContext) -> Iterator[Prepared | None]:
        """Samples → features (emitting `features`, …). A generator: each bare `yield` is a step boundary where
        the template checks for a pause or stop; its last item is the round's Prepared counts."""

    @abstractmethod
    def not_ready(self) -> str | None:
        """Why there is nothing to train or judge yet (the round is skipped), or None."""

    @abstractmethod
    def score_current(self, ctx: RoundContext) -> float | None:
        """The current head's holdout score (accuracy_before); the candidate starts from it."""

    @abstractmethod
    def train(self, ctx: RoundContext) -> Skip | None:
        """Train the candidate (calling ctx.checkpoint at its steps); a Skip when there was nothing to learn."""

    @abstractmethod
    def score_candidate(self, ctx: RoundContext) -> float | None:
        """The candidate's holdout score (accuracy_after), once training ended without a stop."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write the candidate's weights to `path` (and what belongs with them)."""

    @abstractmethod
    def describe(self, ctx: RoundContext, before: float | None, after: float | None) -> str:
        """The start of the round's detail, before the verdict ("promoted (vN)" or "candidate vN rejected…")."""

    @abstractmethod
    def learnt(self, round_id: int) -> None:
        """After a round that made a candidate (promoted or rejected): remember what it learnt from."""

    @abstractmethod
    def extras(self) -> ImageExtras | KeyboardExtras:
        """The scenario's extras for the result."""

    def promotes(self, before: float, after: float, tolerance: float) -> bool:
        """The holdout gate: the candidate's score is no worse than the current head's minus `tolerance`."""
        return after >= before - tolerance

    def reported_prequential(self, chunks: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
        """The result's `prequential`: the chunks predicted before learning, None when there were none."""
        return chunks or None


def run_round(sc: RoundScenario, version: int, trigger: str, tolerance: float, progress: Progress,
              checkpoint: Checkpoint) -> RoundResult:
    """One round of `sc` from head `version`: the candidate is promoted when `sc.promotes` says its holdout score
    passes the gate against the current head's (or always, when `sc` is not gated), else rejected and kept on
    record."""
    t0 = time.monotonic()
    store = sc.store
    round_id = store.start_round(trigger)
    progress("round_started", {"round_id": round_id, "trigger": trigger})
    ctx = RoundContext(round_id, version, progress, checkpoint)
    stopping, counts = False, None
    for item in sc.prepare(ctx):
        if item is None:
            stopping = checkpoint() or stopping  # a step boundary: waits here while training must pause
        else:
            counts = item
    assert counts is not None, "a scenario's prepare ends with its Prepared counts"

    def finish(outcome: str, detail: str, before=None, after=None, new_version=None) -> RoundResult:
        secs = time.monotonic() - t0
        store.finish_round(round_id, n_train=counts.n_train, n_holdout=counts.n_holdout,
                           features_computed=counts.features_computed, features_cached=counts.features_cached,
                           accuracy_before=before, accuracy_after=after, outcome=outcome, detail=detail,
                           seconds=secs)
        if outcome in ("promoted", "rejected"):
            sc.learnt(round_id)
        res = RoundResult(round_id, outcome, detail, counts.n_train, counts.n_holdout, counts.features_computed,
                          counts.features_cached, before, after, new_version, secs, sc.mode,
                          sc.reported_prequential(ctx.prequential), sc.extras(), sc.cut, sc.cut_reason)
        progress("round_finished", res.event())
        log.info("round %d %s: %s (%.2fs)", round_id, outcome, detail, secs)
        return res

    if stopping:
        return finish("stopped", "the daemon is stopping")
    why = sc.not_ready()
    if why:
        return finish("skipped", why)
    before = sc.score_current(ctx)
    skip = sc.train(ctx)
    if skip is not None:
        return finish("skipped", skip.detail, before if skip.judged else None)
    if checkpoint():
        return finish("stopped", "the daemon is stopping; the candidate was discarded", before)
    after = sc.score_candidate(ctx)
    new_version = store.next_head_version()
    fname = f"head-v{new_version}.npz"
    sc.save(sc.heads_dir / fname)
    promote = not sc.gated or sc.promotes(before, after, tolerance)
    status = "promoted" if promote else "rejected"
    store.add_head(sc.bundle_id, sc.variant_name, status, fname, after, before, counts.n_train, counts.n_holdout,
                   round_id, sc.cut, sc.cut_reason)
    if not sc.gated:
        verdict = f"promoted without a holdout check (training.holdout_fraction = 0) (v{new_version})"
    elif promote:
        verdict = f"promoted (v{new_version})"
    else:
        verdict = f"candidate v{new_version} rejected, kept the current head (v{version})"
    progress("version_" + status, {"version": new_version, "accuracy": after, "previous_accuracy": before})
    return finish(status, sc.describe(ctx, before, after) + verdict, before, after, new_version)
