"""Put on PYTHONPATH of a child process: makes importing TensorFlow (or Keras) impossible in it."""

import sys


class _Block:
    BLOCKED = ("tensorflow", "tf_keras", "keras")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ImportError(f"{name} is blocked: the board side must never import TensorFlow")
        return None


sys.meta_path.insert(0, _Block())
