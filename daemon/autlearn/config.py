"""Every setting declared once: TOML section and key, default, validator, meaning.

Unknown keys and bad values are errors that name the file, the key, the value and what was expected.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import AutlearnError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6, Ubuntu 22.04): the same parser from PyPI (daemon/pyproject.toml)
    import tomli as tomllib


# --- validators: tiny pure functions that return the value or raise ValueError("expected ...") ---

def _number(lo: float, hi: float, integer: bool = False) -> Callable[[Any], Any]:
    """A number in [lo, hi] (an integer if `integer`); NaN and infinity are refused (TOML can write them)."""
    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            raise ValueError("expected " + ("an integer" if integer else "a number"))
        if not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"expected a value between {lo:g} and {hi:g}")
        return v
    check.bounds = (lo, hi, integer)  # type: ignore[attr-defined]  (the property test generates from them)
    return check


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _string_list(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of strings")
    return list(v)


def _delegate(v: Any) -> str:
    from .runtime.interpreter import parse_delegate_spec
    v = _string(v)
    try:
        parse_delegate_spec(v)
    except ValueError as e:
        raise ValueError(f"expected one of auto, cpu, gpu, nnapi, external:<library>[?key=value&…] ({e})") from None
    return v


_TCP = re.compile(r"tcp://(?P<host>\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-]*):(?P<port>[0-9]{1,5})")


def _tcp_endpoint(v: Any) -> str:
    v = _string(v)
    m = _TCP.fullmatch(v)
    if v and (m is None or not 1 <= int(m.group("port")) <= 65535):
        raise ValueError("expected an empty string (off) or tcp://<address or *>:<port 1-65535>, "
                         "e.g. tcp://0.0.0.0:7557")
    return v


_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def parse_window(window: str) -> tuple[int, int] | None:
    """``""`` -> None (always); ``"HH:MM-HH:MM"`` -> (start, end) in minutes after midnight; ValueError otherwise."""
    if window.strip() == "":
        return None
    m = _WINDOW.match(window)
    if not m:
        raise ValueError("expected an empty string or HH:MM-HH:MM, e.g. 22:00-06:00")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError("expected times between 00:00 and 23:59")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError("expected different start and end times (use an empty string for always)")
    return start, end


def _window(v: Any) -> str:
    parse_window(_string(v))
    return v


def _choice(*options: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError("expected one of " + ", ".join(options))
        return v
    check.options = options  # type: ignore[attr-defined]
    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    default: Any
    check: Callable[[Any], Any]
    help: str

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


SETTINGS: tuple[Setting, ...] = (
    Setting("paths", "root", "", _string,
            "If set, state, cache and sockets all live below this directory (development runs)."),
    Setting("data", "watch", [], _string_list,
            "Directories watched for the user's samples: one sub-folder per label."),
    Setting("data", "debounce_s", 1.0, _number(0.0, 60.0),
            "Quiet time after the last file event before files are read (half-written files are not read)."),
    Setting("data", "max_file_mb", 20.0, _number(0.001, 4096.0),
            "Files larger than this are quarantined unread."),
    Setting("data", "min_free_mb", 20.0, _number(0.0, 1e6),
            "Learning pauses while the state or cache file system has less free space than this (MiB)."),
    Setting("data", "max_pixels", 50_000_000, _number(1, 1_000_000_000, integer=True),
            "Images with more pixels than this are refused as decompression bombs."),
    Setting("model", "bundle", "", _string,
            "A bundle directory to install at start (verified first); empty keeps the installed one."),
    Setting("model", "variant", "", _string,
            "Which base variant of the bundle to use; empty = the most accurate one within the budget below, "
            "measured on this board on first use (autlearnctl bench measures again)."),
    Setting("model", "max_latency_ms", 0.0, _number(0.0, 1e6),
            "Budget for choosing a variant: base latency per sample (ms, batch 1) on this board; 0 = no limit."),
    Setting("model", "max_memory_mb", 0.0, _number(0.0, 1e6),
            "Budget for choosing a variant: base model and tensor memory plus the training head's state (MiB); "
            "0 = no limit."),
    Setting("model", "delegate", "auto", _delegate,
            "Delegate for the base model: auto, cpu (XNNPACK), gpu, nnapi or external:<library>."),
    Setting("model", "threads", 2, _number(1, 64, integer=True),
            "Interpreter threads."),
    Setting("control", "group", "autlearn", _string,
            "Group given the control socket (mode 0660): its members may use autlearnctl."),
    Setting("control", "tcp", "", _tcp_endpoint,
            "Optional TCP listener, e.g. tcp://0.0.0.0:7557; only clients with an authorized CURVE key get in. "
            "Empty = off."),
    Setting("control", "authorized_keys", "/etc/autlearn/authorized_keys", _string,
            "Client public keys allowed on the TCP listener, one per line (autlearnctl keygen makes them)."),
    Setting("media", "enabled", True, _bool,
            "Import samples from removable media that carry an autlearn/ folder when they are mounted."),
    Setting("media", "under", ["/media", "/run/media", "/mnt"], _string_list,
            "Mount points below these directories count as removable media."),
    Setting("media", "folder", "autlearn", _string,
            "The folder on a medium that holds samples, one sub-folder per label."),
    Setting("media", "mounts", "/proc/self/mounts", _string,
            "The mount table that is read to find media."),
    Setting("cache", "max_mb", 256.0, _number(1.0, 1_000_000.0),
            "Upper bound of the feature cache; least recently used entries are evicted beyond it."),
    Setting("policy", "require_mains", True, _bool,
            "When the board has a battery, train only on external power."),
    Setting("policy", "max_temp_c", 80.0, _number(0.0, 250.0),
            "Train only while the hottest thermal zone is at or below this (°C); 0 = no limit."),
    Setting("policy", "max_load", 0.0, _number(0.0, 10_000.0),
            "Train only while the 1-minute load average is at or below this; 0 = no limit."),
    Setting("policy", "gpu_max_util", 100, _number(0, 100, integer=True),
            "Train only while every NVIDIA GPU is at most this busy (%, through NVML); 100 = no limit."),
    Setting("policy", "window", "", _window,
            "Train only inside this daily window, HH:MM-HH:MM (may wrap midnight); empty = any time."),
    Setting("policy", "sysfs", "/sys", _string,
            "Where power supplies and thermal zones are read (a test can point this at a fake tree)."),
    Setting("policy", "procfs", "/proc", _string,
            "Where the load average is read."),
    Setting("training", "auto", True, _bool,
            "Start a round by itself when enough new samples have arrived."),
    Setting("training", "min_new_samples", 20, _number(1, 10_000_000, integer=True),
            "New labelled samples that trigger a round."),
    Setting("training", "interval_s", 0.0, _number(0.0, 30 * 86400.0),
            "Also start a round when this many seconds passed since the last one and any new sample waits; 0 = off."),
    Setting("training", "epochs", 30, _number(1, 10_000, integer=True),
            "Passes over the cached features in one round (more when they would make fewer than min_steps "
            "steps; after a promoted round, a share in proportion to the samples its head has not learnt)."),
    Setting("training", "min_steps", 1000, _number(0, 1_000_000, integer=True),
            "Image rounds: optimiser steps a round makes at least; with few samples, epochs are raised; 0 = off."),
    Setting("training", "mode", "offline", _choice("offline", "online"),
            "offline: each round trains epochs over all samples; online (the paper's): each new sample is first "
            "predicted, then learnt from, in arrival order; prequential accuracy is reported."),
    Setting("training", "online_steps", 3, _number(1, 1000, integer=True),
            "Online mode: optimiser steps on each chunk of new samples after it was predicted (the first on the "
            "chunk, the rest on batches replayed from the stream so far; image rounds: raised to make min_steps)."),
    Setting("training", "min_word_count", 2, _number(1, 1_000_000, integer=True),
            "Keyboard: an out-of-vocabulary word the user wrote this often claims a spare output slot."),
    Setting("training", "min_new_words", 500, _number(1, 100_000_000, integer=True),
            "Keyboard: new words of text (counted from what was added to the text files since the last round) "
            "that trigger a round; a keyboard counts words, not files (min_new_samples is for images)."),
    Setting("training", "text_positions", 16_000, _number(100, 10_000_000, integer=True),
            "Keyboard: training positions a round keeps at most (a uniform sample of the new text, the rest "
            "replayed from text learnt before); with the limits below it bounds a round's memory."),
    Setting("training", "text_holdout_positions", 1_000, _number(10, 1_000_000, integer=True),
            "Keyboard: held-out positions (a uniform sample) that judge a candidate and choose its mixing weights."),
    Setting("training", "text_max_steps", 200, _number(1, 10_000_000, integer=True),
            "Keyboard: optimiser steps a round makes at most (epochs over the new text, replay mixed in)."),
    Setting("training", "memory_entries", 10_000, _number(0, 10_000_000, integer=True),
            "Keyboard: contexts the memory (nearest-neighbour next-word model) keeps: the most recent ones."),
    Setting("training", "memory_mb", 4.0, _number(0.0, 100_000.0),
            "Keyboard: the memory's size cap (float16 keys); the smaller of this and memory_entries applies."),
    Setting("training", "cut_budget_s", 600.0, _number(0.0, 7 * 86400.0),
            "Image bundles with deeper cuts: seconds a round may spend training its deeper cuts together (the "
            "bundle's measured cost per sample x samples x epochs, summed); a deeper cut is kept only when it wins "
            "on the holdout."),
    Setting("training", "pull_min_holdout", 100, _number(0, 10_000_000, integer=True),
            "Image bundles whose tails take their pull as inputs: the holdout samples a round needs before it "
            "trains a deeper cut's other settings (free) beside the first (anchored); below it, five candidates "
            "on a few dozen holdout images choose by noise (docs/tail.md)."),
    Setting("training", "augment_copies", 1, _number(0, 8, integer=True),
            "Augmented copies (random crop, rotation, shift) per training image; 1 is the paper's cap, 0 = off."),
    Setting("training", "learning_rate", 0.0, _number(0.0, 10.0),
            "Head learning rate; 0 takes the bundle's."),
    Setting("training", "holdout_fraction", 0.2, _number(0.0, 0.9),
            "Share of samples (chosen by content hash) kept out of training to judge candidates. 0 = no holdout "
            "gate (image bundles): every sample trains and each candidate is promoted without a holdout check. A "
            "round with nothing to judge or learn yet is skipped; automatic rounds then back off (30 s, doubling "
            "up to an hour) as after a failed round."),
    Setting("training", "promote_tolerance", 0.0, _number(0.0, 1.0),
            "A candidate is promoted if its holdout accuracy is at least the current one minus this; a keyboard "
            "candidate must gain: top-1 above the current one minus this, or within it and top-3 above."),
    Setting("training", "seed", 0, _number(0, 2**31 - 1, integer=True),
            "Seed for shuffling: the same data and seed give the same head."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass
class Config:
    values: dict[str, Any] = field(default_factory=lambda: {s.name: s.default for s in SETTINGS})
    source: str = "<defaults>"

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def with_overrides(self, **overrides: Any) -> "Config":
        values = dict(self.values)
        for dotted, v in overrides.items():
            values[dotted] = v
        return Config(values, self.source)


def parse(text: str, source: str) -> Config:
    """Parse and validate TOML text; errors name the file, the key, the value and what was expected."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AutlearnError("bad_config", f"{source}: not valid TOML: {e}") from None
    cfg = Config(source=source)
    for section, table in data.items():
        if not isinstance(table, dict):
            raise AutlearnError("bad_config", f"{source}: '{section}' must be a [section] table")
        for key, value in table.items():
            name = f"{section}.{key}"
            setting = _BY_NAME.get(name)
            if setting is None:
                known = ", ".join(s.name for s in SETTINGS if s.section == section) or \
                    ", ".join(sorted({s.section for s in SETTINGS}))
                raise AutlearnError("bad_config", f"{source}: unknown key '{name}' (known: {known})")
            try:
                cfg.values[name] = setting.check(value)
            except ValueError as e:
                raise AutlearnError("bad_config", f"{source}: {name} = {value!r}: {e}") from None
    return cfg


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise AutlearnError("bad_config", f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise AutlearnError("bad_config", f"{p}: not UTF-8 text") from None
    return parse(text, str(p))
