"""AutLearn board side: on-device learning with the LiteRT interpreter. Never imports TensorFlow."""

__version__ = "0.1.0"
