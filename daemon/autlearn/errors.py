"""One catalogue of errors: a code, a phrase for people, and an exit code for autlearnctl."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    code: str
    phrase: str
    exit_code: int


# autlearnctl's exit code -> the errors that end with it, each with a phrase for people.
_BY_EXIT_CODE: dict[int, dict[str, str]] = {
    2: {"bad_request": "the request is not a valid AutLearn control message",
        "unknown_command": "the daemon does not know this command",
        "bad_argument": "an argument of the command is missing or has the wrong type"},
    3: {"protocol_version": "the client and the daemon speak different protocol versions"},
    4: {"not_found": "the named file, sample or version does not exist"},
    5: {"bad_input": "the input file cannot be used"},
    6: {"busy": "the daemon cannot do this while a round is running"},
    7: {"no_bundle": "no verified model bundle is installed",
        "bad_bundle": "the model bundle failed verification"},
    8: {"bad_config": "the configuration is invalid"},
    9: {"not_running": "the daemon is not running or its control socket cannot be reached"},
    10: {"internal": "the daemon hit an unexpected error; see its log"},
}
CATALOGUE: dict[str, ErrorKind] = {code: ErrorKind(code, phrase, exit_code)
                                   for exit_code, kinds in _BY_EXIT_CODE.items() for code, phrase in kinds.items()}


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
