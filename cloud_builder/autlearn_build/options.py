"""Build options declared once: dataclass fields whose metadata makes the parser and the validation.

A field's `Spec` (flag, help, metavar, argparse type, choices, group, rule) gives both the argparse argument of
a subcommand and the check of the value a build function receives (`Options.validate`).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from .distribute import STRATEGIES
from .errors import InputError


def _whole(least: int, must: str) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `least` (`must` says so in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{must}: {text!r}")
        return value

    return parse


positive_int = _whole(1, "must be at least 1")
non_negative_int = _whole(0, "must not be negative")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


@dataclass(frozen=True)
class Rule:
    """A check of a parsed value and what it must be, e.g. Rule(lambda v: v >= 1, "must be at least 1")."""

    ok: Callable[[Any], bool]
    must: str


def between(lo, hi) -> Rule:
    return Rule(lambda v: lo <= v <= hi, f"must be between {lo:g} and {hi:g}")


def at_least(lo, unit: str = "") -> Rule:
    return Rule(lambda v: v >= lo, f"must be at least {lo:g}" + (f" {unit}" if unit else ""))


def in_range(lo, hi, *, closed_hi: bool = True) -> Rule:
    """lo < v <= hi (or < hi): written (lo, hi] / (lo, hi)."""
    if closed_hi:
        return Rule(lambda v: lo < v <= hi, f"must be in ({lo:g}, {hi:g}]")
    return Rule(lambda v: lo < v < hi, f"must be in ({lo:g}, {hi:g})")


@dataclass(frozen=True)
class Spec:
    """What a field is on the command line: its flag (default --field-name), help, metavar, argparse type
    (`parse`), choices, the argparse group it is listed in, an argparse action, and its `rule`."""

    help: str
    flag: str | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    rule: Rule | None = None
    group: str | None = None
    action: str | None = None

    def flag_of(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


def option(default: Any = dataclasses.MISSING, *, help: str, **spec) -> Any:  # noqa: A002
    """A dataclass field that is also a command-line option (keywords: those of Spec); no default = required."""
    return dataclasses.field(default=default, metadata={"option": Spec(help=help, **spec)})


def specs(cls) -> list[tuple[dataclasses.Field, Spec]]:
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]


class Options:
    """Base of a command's options: `GROUPS` names the argparse groups (title, description) fields list in."""

    GROUPS: ClassVar[dict[str, tuple[str, str]]] = {}

    def validate(self) -> None:
        """Raise InputError naming the first option whose value breaks its choices or rule."""
        for f, spec in specs(type(self)):
            value = getattr(self, f.name)
            if value is None:
                continue
            flag = spec.flag_of(f.name)
            if spec.choices is not None and value not in spec.choices:
                raise InputError(f"{flag} {value!r} is not known (known: {', '.join(spec.choices)})")
            if spec.rule is not None and not spec.rule.ok(value):
                raise InputError(f"{flag} {spec.rule.must}")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One argparse argument per field, in field order, each in its group (created on first use)."""
        groups: dict[str, Any] = {}
        for f, spec in specs(cls):
            target = parser
            if spec.group is not None:
                if spec.group not in groups:
                    groups[spec.group] = parser.add_argument_group(*cls.GROUPS[spec.group])
                target = groups[spec.group]
            kwargs: dict[str, Any] = {"dest": f.name, "help": spec.help}
            if spec.action == "store_true":
                kwargs["action"] = "store_true"
            else:
                required = f.default is dataclasses.MISSING
                kwargs.update(required=required, metavar=spec.metavar, choices=spec.choices,
                              type=spec.parse or (Path if f.type in ("Path", Path) else None))
                if not required:
                    kwargs["default"] = f.default
                if spec.action is not None:
                    kwargs["action"] = spec.action
            target.add_argument(spec.flag_of(f.name), **{k: v for k, v in kwargs.items() if v is not None})

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


# Rules and options that more than one command declares alike.
NOT_NEGATIVE = Rule(lambda v: v >= 0, "must not be negative")
FRACTION_HELD_OUT = in_range(0.0, 0.5)
LEARNING_RATE = in_range(0.0, 1.0, closed_hi=False)


def out_option():
    return option(help="bundle directory to create; it must not exist or be empty (see --force)", metavar="DIR")


def learning_rate_option():
    return option(2e-3, metavar="LR", parse=positive_float, rule=LEARNING_RATE,
                  help="peak Adam learning rate of pretraining (cosine decay)")


def head_lr_option():
    return option(1e-3, flag="--head-lr", metavar="LR", parse=positive_float, rule=LEARNING_RATE,
                  help="Adam learning rate the board should use for head training (written to the manifest's "
                       "optimizer)")


def force_option():
    return option(False, action="store_true", help="replace an existing non-empty output directory")


def strategy_option():
    return option("default", choices=STRATEGIES,
                  help="TensorFlow distribution strategy for pretraining: default (one device), mirrored (all GPUs "
                       "of this machine, or its CPU), multi-worker (MultiWorkerMirroredStrategy across machines: "
                       "start the same command on each with its own TF_CONFIG; only the chief - the 'chief' task, "
                       "or worker 0 - writes the bundle, the others exit after pretraining)")
