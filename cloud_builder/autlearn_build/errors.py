"""Errors of the builder: each carries the exit code the CLI returns and a one-line message."""

from __future__ import annotations


class BuildError(Exception):
    """A build failure shown to the user as one line; `exit_code` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InputError(BuildError):
    """Bad input from the user (options, data folder, output directory): exit code 2."""

    exit_code = 2


class ConversionError(BuildError):
    """A model did not convert to a builtin-only TFLite model: exit code 3."""

    exit_code = 3
