"""AutLearn board side: on-device learning with the LiteRT interpreter. Never imports TensorFlow."""

__version__ = "0.1.0"
# The control protocol's version (docs/protocol.md): `status` reports it, control/protocol.py speaks it.
PROTOCOL_VERSION = 2
