"""The learning pipeline wired for one thread: ingest → features (cache) → train → evaluate → promote."""

from __future__ import annotations

import os

from ..runtime.bundle import Bundle, Variant
from ..config import Config
from ..learning.cuts import Budget
from ..learning.featcache import FeatureCache, Stats
from ..learning.features import FeatureExtractor
from ..intake.ingest import IngestReport, Ingestor
from ..learning.featsource import FeatureSource
from ..learning.learner import Learner
from ..learning.round import Checkpoint, Progress, RoundResult
from ..paths import Paths
from ..learning.store import Store
from ..intake.watcher import Changes


def current_key(bundle_id: str, variant: str) -> str:
    return f"current_version:{bundle_id}:{variant}"


class Engine:
    """Owns its interpreters and SQLite handles: create one per thread that learns."""

    def __init__(self, config: Config, paths: Paths, bundle: Bundle, bundle_id: str, variant: Variant,
                 cache_stats: Stats | None = None):
        self.config = config
        self.bundle = bundle
        self.bundle_id = bundle_id
        self.variant = variant
        self.paths = paths
        self.store = Store(paths.db)
        self.cache = FeatureCache(paths.feature_cache, int(config["cache.max_mb"] * (1 << 20)), cache_stats)
        self.extractor = FeatureExtractor(variant, config["model.threads"], config["model.delegate"])
        max_file_bytes = int(config["data.max_file_mb"] * (1 << 20))
        self.features = FeatureSource(bundle, variant, self.extractor, self.cache, config["data.max_pixels"],
                                      max_file_bytes)
        if bundle.task == "next_word":
            from ..learning.keyboard import KeyboardLearner
            from ..learning.kbsample import limits_of
            self.learner = KeyboardLearner(bundle, bundle_id, variant, self.store, self.extractor, self.cache,
                                           paths.heads, config["model.threads"], config["training.holdout_fraction"],
                                           config["training.min_word_count"], max_file_bytes, limits_of(config))
        else:
            budget = Budget(config["training.cut_budget_s"], int(config["cache.max_mb"] * (1 << 20)),
                            config["training.pull_min_holdout"])
            self.learner = Learner(bundle, bundle_id, variant, self.store, self.features, paths.heads,
                                   config["model.threads"], budget, config["model.delegate"])
        self.ingestor = Ingestor(self.store, paths.quarantine, bundle_id, bundle.labels, bundle.class_capacity,
                                 config["training.holdout_fraction"], max_file_bytes,
                                 config["data.max_pixels"], variant.input, bundle.task)

    def close(self) -> None:
        self.store.close()
        self.cache.close()

    def current_version(self) -> int:
        return int(self.store.get_meta(current_key(self.bundle_id, self.variant.name)))

    def scan(self, changes: Changes | None = None) -> IngestReport:
        """Every watched directory, or only what `changes` names (the watcher's events)."""
        roots = [os.path.abspath(p) for p in self.config["data.watch"]] + [str(self.paths.imported)]
        if changes is not None and not changes.full:
            return self.ingestor.scan_paths(roots, changes.paths)
        return self.ingestor.scan(roots)

    def rebuild_extractor(self) -> None:
        """Choose the delegate again (an accelerator came or went)."""
        self.extractor = FeatureExtractor(self.variant, self.config["model.threads"], self.config["model.delegate"])
        self.features.extractor = self.extractor
        self.learner.extractor = self.extractor
        if hasattr(self.learner, "_sources"):
            self.learner._sources.clear()  # the deeper cuts' stems too

    def _gate(self) -> dict:
        """Image rounds: training.holdout_fraction = 0 means no holdout gate (the keyboard always has one)."""
        return {} if self.bundle.task == "next_word" else {"holdout": self.config["training.holdout_fraction"] > 0}

    def round(self, trigger: str, progress: Progress, checkpoint: Checkpoint) -> RoundResult:
        """One round of the bundle's scenario; `checkpoint` may block while training must pause (round.Checkpoint)."""
        learning_rate = self.config["training.learning_rate"] or self.bundle.learning_rate
        if self.bundle.task == "next_word":
            from ..learning.kbsample import limits_of
            self.learner.limits = limits_of(self.config)  # a reloaded configuration applies from this round on
        result = self.learner.run(self.current_version(), trigger, self.config["training.epochs"], learning_rate,
                                  self.config["training.promote_tolerance"], self.config["training.seed"],
                                  progress, checkpoint, self.config["training.augment_copies"],
                                  self.config["training.mode"], self.config["training.online_steps"],
                                  self.config["training.min_steps"], **self._gate())
        if result.outcome == "promoted":
            self.store.set_meta(current_key(self.bundle_id, self.variant.name), str(result.version))
        return result
