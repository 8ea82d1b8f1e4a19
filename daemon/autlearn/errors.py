"""One catalogue of errors: a code, a phrase for people, and an exit code for autlearnctl."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    code: str
    phrase: str
    exit_code: int


CATALOGUE: dict[str, ErrorKind] = {
    k.code: k
    for k in (
        ErrorKind("bad_request", "the request is not a valid AutLearn control message", 2),
        ErrorKind("protocol_version", "the client and the daemon speak different protocol versions", 3),
        ErrorKind("unknown_command", "the daemon does not know this command", 2),
        ErrorKind("bad_argument", "an argument of the command is missing or has the wrong type", 2),
        ErrorKind("not_found", "the named file, sample or version does not exist", 4),
        ErrorKind("bad_input", "the input file cannot be used", 5),
        ErrorKind("busy", "the daemon cannot do this while a round is running", 6),
        ErrorKind("no_bundle", "no verified model bundle is installed", 7),
        ErrorKind("bad_bundle", "the model bundle failed verification", 7),
        ErrorKind("bad_config", "the configuration is invalid", 8),
        ErrorKind("not_running", "the daemon is not running or its control socket cannot be reached", 9),
        ErrorKind("internal", "the daemon hit an unexpected error; see its log", 10),
    )
}


class AutlearnError(Exception):
    """The one domain exception: caught once at the top, shown as one line."""

    def __init__(self, code: str, message: str):
        if code not in CATALOGUE:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def exit_code(self) -> int:
        return CATALOGUE[self.code].exit_code

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}
