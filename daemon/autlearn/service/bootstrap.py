"""Bringing the daemon's state up: directories, the store, the verified bundle, its variant, the initial head."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..runtime import bundle as bundle_mod
from ..runtime.bundle import Bundle, Variant
from ..config import Config
from .engine import current_key
from ..errors import AutlearnError
from ..learning.featcache import FeatureCache, Stats
from ..learning.head import Head, save_weights
from ..paths import Paths
from ..learning.store import Store

log = logging.getLogger(__name__)


@dataclass
class Booted:
    """What the request thread holds after start-up (its own SQLite handles included)."""
    store: Store
    cache: FeatureCache
    bundle: Bundle
    bundle_id: str
    variant_choice: dict
    variant: Variant


def boot(config: Config, paths: Paths, cache_stats: Stats) -> Booted:
    paths.create()
    store = Store(paths.db)
    store.fail_unfinished_rounds()
    source = config["model.bundle"]
    if source:
        try:
            bundle_mod.install(source, paths.bundle)
        except AutlearnError as e:
            if not (paths.bundle / "manifest.json").exists():
                raise
            log.error("refused bundle %s, keeping the installed one: %s", source, e.message)
    bundle = bundle_mod.load_installed(paths.bundle)  # repairs an install cut off by a power loss
    bundle_id = bundle_mod.sha256_file(paths.bundle / "manifest.json")[:16]
    variant_choice = choose_variant(config, bundle, bundle_id, paths.state, force=False)
    variant = bundle.variant(variant_choice["name"])
    store.ensure_public_classes(bundle_id, bundle.labels)
    cache = FeatureCache(paths.feature_cache, int(config["cache.max_mb"] * (1 << 20)), cache_stats)
    ensure_initial_head(store, bundle, bundle_id, variant, paths.heads)
    return Booted(store, cache, bundle, bundle_id, variant_choice, variant)


def choose_variant(config: Config, bundle: Bundle, bundle_id: str, state_dir: Path, force: bool) -> dict:
    """The configured variant, or the most accurate one this board can afford (measured once, remembered)."""
    if config["model.variant"] and not force:
        return {"name": bundle.variant(config["model.variant"]).name,
                "reason": "set in the configuration (model.variant)"}
    if len(bundle.variant_names) == 1 and not force:
        return {"name": bundle.variant_names[0], "reason": "the bundle has one variant"}
    from ..runtime.variant_table import format_table
    from ..runtime.variants import Budget, choose_variant as choose
    budget = Budget(config["model.max_latency_ms"] or None, config["model.max_memory_mb"] or None)
    choice = choose(bundle, bundle_id, state_dir, config["model.threads"], config["model.delegate"], budget,
                    force=force)
    return {"name": choice.name, "reason": choice.reason, "table": format_table(choice),
            "measurements": choice.as_dict()}


def ensure_initial_head(store: Store, bundle: Bundle, bundle_id: str, variant: Variant, heads_dir: Path) -> None:
    """Head version 1 of a bundle and variant: the bundle's own head, before any learning on the board."""
    key = current_key(bundle_id, variant.name)
    if store.get_meta(key) is not None:
        return
    head = Head(variant, bundle.class_capacity, bundle.train_batch, 1)
    version = store.next_head_version()
    fname = f"head-v{version}.npz"
    save_weights(head.get_weights(), heads_dir / fname)
    store.add_head(bundle_id, variant.name, "initial", fname)
    store.set_meta(key, str(version))
