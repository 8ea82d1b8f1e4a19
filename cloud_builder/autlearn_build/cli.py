"""`autlearn-build`: build AutLearn bundles in the cloud. One subcommand per task: `image`, `text`.

Each subcommand's arguments are generated from its options dataclass (image_options.py, text_options.py).

Exit codes: 0 built, 2 bad input (options, data, output directory), 3 a model did not convert to
builtin-only TFLite, 1 any other build failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .errors import BuildError
from .image_options import ImageOptions
from .text_options import TextOptions

PROG = "autlearn-build"


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


def _run_image(opts: ImageOptions) -> int:
    from .summary import image_summary

    if opts.from_model:
        from .model_build import build_model_bundle

        result = build_model_bundle(opts, progress=lambda line: print(line, flush=True))
    else:
        from .image_build import build_image_bundle

        result = build_image_bundle(opts, progress=lambda line: print(line, flush=True))
    if result.out is not None:
        print(image_summary(result), flush=True)
    return 0


def _run_text(opts: TextOptions) -> int:
    from .summary import text_summary
    from .text_build import build_text_bundle

    result = build_text_bundle(opts, progress=lambda line: print(line, flush=True))
    if result.out is not None:
        print(text_summary(result), flush=True)
    return 0


COMMANDS = ((ImageOptions, _run_image), (TextOptions, _run_text))


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
    for options, run in COMMANDS:
        sub = tasks.add_parser(options.COMMAND, help=options.HELP, description=options.DESCRIPTION,
                               formatter_class=_HelpFormatter)
        options.add_arguments(sub)
        sub.set_defaults(options=options, run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Quiet TensorFlow's C++ logging before anything imports it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args.options.from_args(args))
    except BuildError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
