"""The authorized-keys file of the TCP control listener: `#` is both the comment sign and a Z85 digit
(about one key in three contains one: the TCP test used to fail that often)."""

import zmq

from autlearn.control.curve import authorized


def _public_keys_with_hash(where) -> bytes:
    """A real CURVE public key whose Z85 text has a `#` where `where(text)` wants it."""
    for _ in range(100_000):
        public, _secret = zmq.curve_keypair()
        if where(public.decode()):
            return public
    raise AssertionError("no such key drawn")


def test_keys_that_contain_or_begin_with_a_hash_are_keys_not_comments(tmp_path, caplog):
    inner = _public_keys_with_hash(lambda k: "#" in k[1:-1] and not k.startswith("#"))
    # (a key never begins with `#`: it is Z85's last digit, too large for the first of a 32-bit group)
    first = _public_keys_with_hash(lambda k: k[1] == "#")
    quoted = _public_keys_with_hash(lambda k: "#" in k)
    commented = zmq.curve_keypair()[0]
    f = tmp_path / "authorized_keys"
    f.write_text("# the owner's laptop\n"
                 f"{inner.decode()}\n"
                 f"  {first.decode()}   # the phone, with a trailing comment\n"
                 f'public-key = "{quoted.decode()}"\n'
                 f"#{commented.decode()}\n"  # a key commented out
                 "curve\n"
                 "not a key at all\n")
    assert authorized(f) == {inner, first, quoted}
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and ":7: not a CURVE public key" in warned[0]


def test_a_missing_file_lets_nobody_in(tmp_path):
    assert authorized(tmp_path / "absent") == set()
