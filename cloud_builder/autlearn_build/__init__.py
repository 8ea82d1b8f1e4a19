"""AutLearn cloud builder: pretrains on public data and writes bundles for the board (full TensorFlow)."""

__version__ = "0.1.0"
