"""The image learner: the samples a round reads, the head it starts from, and the image scenario's steps.

A round, in the order data flows: samples → features (cache first) → head training → holdout evaluation →
promote the candidate head or keep the current one (the template: round.run_round).

Runs in the worker thread; everything it touches (interpreters, SQLite handles) belongs to that thread.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from ..runtime.bundle import Bundle, Variant
from ..errors import AutlearnError
from .cuts import HEAD, Budget, Cut, Plan, Trained, choose, cut_of_row, cuts_of, plan
from .featsource import FeatureSource, with_copies_at
from .features import FeatureExtractor
from .head import Head, Weights, active_mask, epochs_for, load_weights, save_weights
from .round import (Checkpoint, ImageExtras, Prepared, Progress, RoundContext, RoundResult, RoundScenario, Skip,
                    epoch_events, run_round)
from .store import Sample, Store

log = logging.getLogger(__name__)

# A round from a head that has learnt from the store replays at most REPLAY_MAX of the training samples it learnt
# (a random draw, new each round) next to all the new ones, and judges on a stable sample of at most HOLDOUT_MAX
# holdout samples plus the new holdout ones: its cost follows the new files, not how many the board holds.
REPLAY_MAX = 2048
HOLDOUT_MAX = 2048


def accuracy(probs: np.ndarray, y: np.ndarray) -> float | None:
    if len(y) == 0:
        return None
    return float(np.mean(np.argmax(probs, axis=1) == y))


def cross_entropy(probs: np.ndarray, y: np.ndarray) -> float | None:
    """Mean -log p(true label) (p floored at 1e-7, as a head that is sure and wrong costs 16, not infinity)."""
    if len(y) == 0:
        return None
    return float(np.mean(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-7))))


class Learner:
    """The image scenario's learner: the samples a round reads, the head it starts from; `run` plays one round
    of the template (round.run_round) with an ImageRound."""

    def __init__(self, bundle: Bundle, bundle_id: str, variant: Variant, store: Store, features: FeatureSource,
                 heads_dir: Path, threads: int, budget: Budget | None = None, delegate: str = "cpu"):
        self.bundle, self.bundle_id, self.variant, self.store = bundle, bundle_id, variant, store
        self.features, self.heads_dir, self.threads = features, heads_dir, threads
        self.budget, self.delegate = budget, delegate  # budget None: deeper cuts never train
        self.cuts = cuts_of(bundle, variant.name)
        self._sources: dict[str, FeatureSource] = {}

    def new_head(self, cut: Cut | None = None, setting=None) -> Head:
        """A head at `cut` (default the variant's own); a tail that takes its pull as inputs steps with `setting`
        (default its first, the anchored one)."""
        return Head(cut.variant if cut else self.variant, self.bundle.class_capacity, self.bundle.train_batch,
                    self.threads, setting)

    def source(self, cut: Cut) -> FeatureSource:
        """The features at `cut`: its own stem, so its own cache keys (the head-only cut's are `features`)."""
        if cut.depth == 0:
            return self.features
        if cut.name not in self._sources:
            f = self.features
            self._sources[cut.name] = FeatureSource(self.bundle, cut.variant,
                                                    FeatureExtractor(cut.variant, self.threads, self.delegate),
                                                    f.cache, f.max_pixels, f.max_file_bytes)
        return self._sources[cut.name]

    def version_cut(self, version: int) -> Cut:
        """The cut head `version` was trained at (its stem and its head)."""
        return cut_of_row(self.cuts, self.store.head(version), self.variant.name)

    def start_weights(self, cut: Cut, version: int) -> tuple[Weights | None, bool]:
        """What a candidate at `cut` starts from, and whether that is head `version` itself: the current head
        when it was trained at `cut`, else the latest promoted head at `cut`, else (None) the bundle's own."""
        if self.version_cut(version).name == cut.name:
            return self.current_weights(version), True
        rows = [h for h in self.store.heads(self.bundle_id) if h["cut"] == cut.name
                and h["variant"] == self.variant.name and h["status"] in ("initial", "promoted")]
        return (load_weights(self.heads_dir / rows[-1]["file"]), False) if rows else (None, False)

    def active(self) -> np.ndarray:
        return active_mask(self.bundle.class_capacity, self.store.classes(self.bundle_id).values())

    def unlearnt_share(self, version: int, kept: list, hold: np.ndarray) -> float:
        """The share of this round's training samples the current head has not learnt yet. A round trains its
        candidate from the current head, so after a round that learnt most of the samples a budget in proportion
        to the new ones is enough (10 % new files: a tenth of the epochs, at least one): the cached features
        already save the base's work, this saves the head's. The bundle's own head (it learnt none of them) and
        a head rolled back to one that learnt fewer get the full budget."""
        n_train = int((~hold).sum())
        row = self.store.head(version)
        learnt = int(row.get("n_train") or 0) if row else 0
        if n_train == 0 or learnt == 0:
            return 1.0
        unseen = sum(1 for s, h in zip(kept, hold) if not h and not s.trained)
        return min(1.0, max(unseen, n_train - learnt) / n_train)

    def round_samples(self, version: int, seed: int) -> tuple[list[Sample], str]:
        """The samples a round reads, and a note on what it left out. Few samples: all of them (new ones in
        arrival order). Many, from a head that has learnt from the store: every new sample, a random draw of
        REPLAY_MAX learnt training samples and a stable sample of HOLDOUT_MAX holdout ones, read through indexes."""
        counts = self.store.counts()
        learnt = counts["ok"] - counts["holdout"] - counts["new_train"]
        row = self.store.head(version)
        replay = bool(row and row.get("n_train")) and learnt > REPLAY_MAX
        if not replay and counts["holdout"] <= HOLDOUT_MAX:
            return self.store.usable_samples(), ""
        new = self.store.new_samples()
        ids = {s.id for s in new}
        hold = [s for s in self.store.holdout_sample(HOLDOUT_MAX) if s.id not in ids]
        if replay:
            old = self.store.learnt_training_sample(REPLAY_MAX, seed)
        else:
            old = [s for s in self.store.usable_samples() if not s.holdout and s.trained]
        notes = []
        if replay:
            notes.append(f"replayed {len(old)} of {learnt} learnt samples")
        if counts["holdout"] > HOLDOUT_MAX:
            notes.append(f"judged on {len(hold) + sum(s.holdout for s in new)} of {counts['holdout']} holdout samples")
        return old + hold + new, "; ".join(notes) + "; " if notes else ""

    def current_weights(self, version: int) -> Weights:
        row = self.store.head(version)
        if row is None:
            raise AutlearnError("not_found", f"head version {version} is not recorded")
        return load_weights(self.heads_dir / row["file"])

    def run(self, version: int, trigger: str, epochs: int, learning_rate: float, tolerance: float, seed: int,
            progress: Progress, checkpoint: Checkpoint, augment_copies: int = 0, mode: str = "offline",
            online_steps: int = 3, min_steps: int = 0, holdout: bool = True) -> RoundResult:
        """One round. With `holdout` false (training.holdout_fraction = 0) there is no holdout gate: every
        sample trains and the candidate is promoted without a holdout check (its accuracy is not measured).
        `checkpoint` is called at step boundaries and may block while training must pause (round.Checkpoint)."""
        sc = ImageRound(self, epochs, learning_rate, seed, augment_copies, mode, online_steps, min_steps, holdout)
        return run_round(sc, version, trigger, tolerance, progress, checkpoint)


class ImageRound(RoundScenario):
    """The image scenario's steps of one round: features of the chosen samples (cache first) and their
    augmented copies, the candidate head trained offline (epochs) or online (predict each chunk, then learn it),
    holdout accuracy before and after."""

    def __init__(self, learner: Learner, epochs: int, learning_rate: float, seed: int, augment_copies: int,
                 mode: str, online_steps: int, min_steps: int, holdout: bool):
        super().__init__(learner.store, learner.bundle_id, learner.variant.name, learner.heads_dir, mode)
        self.learner, self.epochs, self.learning_rate, self.seed = learner, epochs, learning_rate, seed
        self.augment_copies, self.online_steps, self.min_steps = augment_copies, online_steps, min_steps
        self.gated = holdout
        self.bounded = ""
        self.kept_name = ""  # the kept candidate (`last_block/free`), when the round chose among several
        self.aug = ImageExtras()

    def prepare(self, ctx: RoundContext):
        learner, round_id = self.learner, ctx.round_id
        slots = self.store.classes(self.bundle_id)
        chosen, self.bounded = learner.round_samples(ctx.version, self.seed + round_id)
        samples = [s for s in chosen if s.label in slots]
        augmenting = self.augment_copies > 0 and self.mode == "offline"
        train = [augmenting and not (s.holdout and self.gated) for s in samples]  # the holdout judges real data
        self.current_cut = learner.version_cut(ctx.version)
        expected = sum(not (s.holdout and self.gated) for s in samples) + self.augment_copies * sum(train)
        holdout = sum(s.holdout and self.gated for s in samples)
        self.plan = self._plan(expected, holdout)  # from the samples chosen: a file that cannot be read makes it fewer
        deeper = list({c.name: c for c in (*self.plan.train, self.current_cut) if c.depth}.values())
        sources = [learner.features, *(learner.source(c) for c in deeper)]
        read0 = sum(src.files_read for src in sources)
        got = with_copies_at(sources, samples, train, self.augment_copies, self.seed)  # each file decoded once
        (x, kept, computed, cached), (xa, kept_a, aug_computed, aug_cached) = got[0]
        ctx.progress("features", {"round_id": round_id, "computed": computed, "cached": cached,
                                  "files_read": sum(src.files_read for src in sources) - read0})
        yield None  # waits here while training must pause
        y = np.array([slots[s.label] for s in kept], np.int32)
        hold = np.array([s.holdout and self.gated for s in kept], bool)
        xtr, ytr, self.xho, self.yho = x[~hold], y[~hold], x[hold], y[hold]
        if augmenting and len(ytr):
            self.aug.augmented_computed, self.aug.augmented_cached = aug_computed, aug_cached
            if len(kept_a):
                xtr = np.concatenate([xtr, xa])
                ytr = np.concatenate([ytr, np.array([slots[s.label] for s in kept_a], np.int32)])
            ctx.progress("augmented", {"round_id": round_id, "computed": aug_computed, "cached": aug_cached})
        n_original = int((~hold).sum())
        self.aug.n_augmented = len(ytr) - n_original
        self.x, self.y, self.kept, self.hold, self.xtr, self.ytr = x, y, kept, hold, xtr, ytr
        self.active = learner.active()
        self.at = {HEAD: (x, xtr, self.xho)}  # per cut: all kept samples', training and holdout features
        for c, g in zip(deeper, got[1:]):
            more = self._features_at(c, g, kept, hold, kept_a)
            computed, cached = computed + more[0], cached + more[1]
        yield Prepared(n_original, len(self.yho), computed, cached)

    def _plan(self, n_train: int, holdout: int) -> Plan:
        """The cuts this round trains: deeper ones only offline, gated, within the budget (cuts.plan)."""
        learner, cuts = self.learner, self.learner.cuts
        if len(cuts) == 1 or self.mode != "offline" or not self.gated or learner.budget is None:
            return Plan.only(self.current_cut if self.mode == "online" else cuts[0])
        epochs = epochs_for(n_train, learner.bundle.train_batch, self.epochs, self.min_steps)  # as Head.fit runs
        return plan(cuts, n_train, epochs, learner.budget, holdout)

    def _features_at(self, c: Cut, got: tuple, kept: list[Sample], hold: np.ndarray,
                     kept_a: list[Sample]) -> tuple[int, int]:
        """Cut `c`'s features of the round's samples (and augmented copies), read in the same pass as the
        head-only ones; a cut that could not read exactly the same samples is left out of the round (the current
        head's cut too: then the round is not ready)."""
        (xc, kc, computed, cached), (xa, ka, ca, ha) = got
        computed, cached = computed + ca, cached + ha
        if [s.id for s in kc] == [s.id for s in kept]:
            xtr = xc[~hold]
            if kept_a:
                xtr = np.concatenate([xtr, xa]) if [s.id for s in ka] == [s.id for s in kept_a] else None
            if xtr is not None:
                self.at[c.name] = (xc, xtr, xc[hold])
                return computed, cached
        self.plan = self.plan.without(c, "a sample changed while the round read it")
        return computed, cached

    def not_ready(self) -> str | None:
        if self.current_cut.name not in self.at:
            return f"a sample changed while the round read it at cut {self.current_cut.name}"
        if len(self.ytr) == 0:
            return "no training samples yet"
        if len(self.yho) == 0 and self.gated:
            return "no holdout samples yet: a candidate could not be judged"
        return None

    def score_current(self, ctx: RoundContext) -> float | None:
        self.head = self.learner.new_head(self.current_cut)
        self.head.set_weights(self.learner.current_weights(ctx.version))
        return accuracy(self.head.predict(self.at[self.current_cut.name][2], self.active), self.yho)

    def train(self, ctx: RoundContext) -> Skip | None:
        """The planned candidates (each cut, each setting of its pull) on the same training samples; the one
        `choose` keeps (by the same holdout samples) becomes the round's candidate, its cut and the reason
        (naming the setting) recorded with it. Candidates at one cut start from the same weights, each in its own
        interpreter (its own optimiser state)."""
        round_id = ctx.round_id
        if self.mode == "online":
            x = self.at[self.current_cut.name][0]
            stream = [i for i, s in enumerate(self.kept) if not s.holdout and not s.trained]
            self.losses = self._online(x[stream], self.y[stream], self.seed + round_id, ctx)
            self.cut = self.current_cut.name
            return None if self.losses else Skip("no new samples to learn from online")
        results, heads, scored_head = [], {}, self.head
        for cand in self.plan.candidates:
            c = cand.cut
            if c.name == self.current_cut.name and scored_head is not None and scored_head.setting == cand.setting:
                head, from_current, scored_head = scored_head, True, None  # the interpreter that scored the current
            else:
                head = self.learner.new_head(c, cand.setting)
                weights, from_current = self.learner.start_weights(c, ctx.version)
                if weights is not None:
                    head.set_weights(weights)
            xtr, xho = self.at[c.name][1], self.at[c.name][2]
            epochs = head.epochs_for(len(xtr), self.epochs, self.min_steps)
            share = self.learner.unlearnt_share(ctx.version, self.kept, self.hold) if from_current else 1.0
            if share < 1.0:  # the incremental round: the head continues from what it already knows
                epochs = max(1, math.ceil(epochs * share))
            events = epoch_events(ctx.progress, round_id, epochs) if c.depth == 0 else (lambda *a: None)
            losses = head.fit(xtr, self.ytr, self.active, epochs, self.learning_rate, self.seed + round_id,
                              ctx.checkpoint, events)
            heads[cand.name] = (head, losses)
            probs = head.predict(xho, self.active)
            results.append(Trained(c, accuracy(probs, self.yho), cross_entropy(probs, self.yho), cand.setting))
        decision = choose(results, len(self.yho))
        self.head, self.losses = heads[decision.keep.name]
        self.cut, self.after = decision.keep.cut.name, decision.keep.holdout_accuracy
        self.kept_name = decision.keep.name
        if len(self.learner.cuts) > 1:
            self.cut_reason = "; ".join([decision.reason] + [f"not {c.name}: {why}" for c, why in self.plan.skipped])
        return None

    def _online(self, xs: np.ndarray, ys: np.ndarray, seed: int, ctx: RoundContext) -> list[float]:
        """The paper's online mode: each chunk of new samples (in arrival order) is first predicted with the
        head as it stands — that is the prequential score — and only then learnt: one step on the chunk, the
        rest on batches replayed from everything the stream has brought so far (the samples stay on the board,
        so revisiting them costs only time, and a chunk alone would pull the head toward its few labels).
        `online_steps` per chunk, raised so that the round makes `min_steps` in all."""
        head, active, b = self.head, self.active, self.head.batch
        chunks = -(-len(xs) // b)
        per_chunk = max(self.online_steps, -(-self.min_steps // chunks)) if chunks else self.online_steps
        rng = np.random.default_rng(seed)
        losses = []
        xb = np.zeros((b, xs.shape[1]), np.float32)
        yb = np.zeros(b, np.int32)
        mb = np.zeros(b, np.float32)
        for i in range(0, len(xs), b):
            xc, yc = xs[i:i + b], ys[i:i + b]
            hits = int(np.sum(np.argmax(head.predict(xc, active), axis=1) == yc))
            ctx.prequential.append((hits, len(yc)))
            seen = i + len(yc)
            for k in range(per_chunk):
                rows = np.arange(i, seen) if k == 0 else rng.choice(seen, size=min(b, seen), replace=False)
                xb[:], yb[:], mb[:] = 0.0, 0, 0.0
                xb[:len(rows)], yb[:len(rows)], mb[:len(rows)] = xs[rows], ys[rows], 1.0
                losses.append(head.step(xb, yb, mb, active, self.learning_rate))
            if ctx.checkpoint():
                break
        return losses

    def score_candidate(self, ctx: RoundContext) -> float | None:
        ctx.progress("trained", {"round_id": ctx.round_id, "epochs": len(self.losses),
                                 "loss_first": self.losses[0], "loss_last": self.losses[-1]})
        if self.mode == "online":
            return accuracy(self.head.predict(self.at[self.cut][2], self.active), self.yho)
        return self.after

    def save(self, path: Path) -> None:
        save_weights(self.head.get_weights(), path)

    def describe(self, ctx: RoundContext, before: float | None, after: float | None) -> str:
        online = ""
        if ctx.prequential:
            seen = sum(n for _, n in ctx.prequential)
            online = f"online: {sum(h for h, _ in ctx.prequential) / seen:.3f} predicted right before learning {seen}; "
        if self.cut_reason:
            online += f"cut {self.kept_name or self.cut}: {self.cut_reason}; "
        if not self.gated:
            return online + self.bounded
        return online + self.bounded + f"holdout accuracy {before:.3f} → {after:.3f} on {len(self.yho)} samples; "

    def learnt(self, round_id: int) -> None:
        self.store.mark_trained([s.id for s in self.kept], round_id)

    def extras(self) -> ImageExtras:
        return self.aug

    def reported_prequential(self, chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
        return chunks  # an image round that predicted no chunk answers [] (as it always did)
