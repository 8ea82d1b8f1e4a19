"""autlearnd's own wiring: one log record is one line, whatever names it carries."""

import logging

from autlearn.main import _OneLine


def test_a_log_record_with_control_characters_in_its_arguments_stays_one_line():
    rec = logging.LogRecord("autlearn.x", logging.INFO, __file__, 1, "ignoring %s: %s",
                            ("/in/3/a.png\n2026-12-01 ERROR autlearn: forged", "tab\there\x1b[31m"), None)
    assert _OneLine().filter(rec)
    msg = rec.getMessage()
    assert "\n" not in msg and "\x1b" not in msg and "\t" not in msg
    assert msg == "ignoring /in/3/a.png\\x0a2026-12-01 ERROR autlearn: forged: tab\\x09here\\x1b[31m"
    plain = logging.LogRecord("autlearn.x", logging.INFO, __file__, 1, "round %d done", (3,), None)
    _OneLine().filter(plain)
    assert plain.getMessage() == "round 3 done" and plain.args == (3,)  # untouched when nothing needs escaping
