import json
import re
from pathlib import Path

import pytest

from autlearn import errors
from autlearn.control import protocol
from autlearn.errors import AutlearnError

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
V = protocol.PROTOCOL_VERSION


def test_document_and_code_agree_on_the_version():
    m = re.search(r"^Protocol version: (\d+)$", DOC.read_text(), re.M)
    assert m and int(m.group(1)) == protocol.PROTOCOL_VERSION


def test_document_lists_every_error_code():
    text = DOC.read_text()
    for code, kind in errors.CATALOGUE.items():
        assert f"`{code}` ({kind.exit_code})" in text


@pytest.mark.parametrize("frame, code", [
    (b"\xff\xfe", "bad_request"),
    (b"not json", "bad_request"),
    (b"[1, 2]", "bad_request"),
    (b'"scalar"', "bad_request"),
    (json.dumps({"v": 99, "cmd": "status"}).encode(), "protocol_version"),
    (json.dumps({"v": V, "cmd": 5}).encode(), "bad_request"),
    (json.dumps({"v": V, "cmd": "status", "args": [1]}).encode(), "bad_request"),
    (b"x" * (protocol.MAX_MESSAGE_BYTES + 1), "bad_request"),
    (b'{"v": 2, "id": NaN, "cmd": "status"}', "bad_request"),  # Python's json reads it; JSON has no NaN
    (b'{"v": 2, "cmd": "status", "args": {"limit": -Infinity}}', "bad_request"),
])
def test_bad_frames_get_a_coded_error(frame, code):
    with pytest.raises(AutlearnError) as e:
        protocol.parse_request(frame)
    assert e.value.code == code


def test_good_request_round_trips_and_unknown_fields_are_tolerated():
    msg = json.loads(protocol.request("status", {"a": 1}, 3))
    msg["extra"] = "ignored"
    parsed = protocol.parse_request(json.dumps(msg).encode())
    assert parsed["cmd"] == "status" and parsed["args"] == {"a": 1} and parsed["id"] == 3


def test_exit_codes_are_distinct_per_meaning():
    assert errors.CATALOGUE["not_running"].exit_code != errors.CATALOGUE["internal"].exit_code
    with pytest.raises(ValueError):
        AutlearnError("no_such_code", "x")


def test_every_command_of_the_service_is_documented():
    from autlearn.service.api import Service
    text = DOC.read_text()
    for cmd in Service.COMMANDS:
        assert f"| `{cmd}` |" in text, cmd


@pytest.mark.parametrize("msg, says", [
    ({"id": 7, "cmd": "status"}, "has no 'v' field"),
    ({"v": float(V), "id": 7, "cmd": "status"}, "must be an integer"),
    ({"v": True, "id": 7, "cmd": "status"}, "must be an integer"),
    ({"v": 1, "id": 7, "cmd": "status"}, "client speaks protocol version 1, this daemon speaks 2"),
    ({"v": V, "id": 7, "cmd": 5}, "'cmd' must be a string"),
    ({"v": V, "id": 7, "cmd": "status", "args": [1]}, "'args' must be a JSON object"),
])
def test_envelope_errors_keep_the_readable_id_and_say_what_is_wrong(msg, says):
    with pytest.raises(protocol.EnvelopeError) as e:
        protocol.parse_request(json.dumps(msg).encode())
    assert e.value.req_id == 7 and says in e.value.message and "None" not in e.value.message


def test_a_version_1_request_is_refused_by_name():
    with pytest.raises(protocol.EnvelopeError) as e:
        protocol.parse_request(protocol.request("status", None, 3, version=1))
    assert e.value.code == "protocol_version" and e.value.req_id == 3
