"""Runs one TFLite conversion in its own process: `python -m autlearn_build.convert_worker REQUEST.json`.

The converter can crash (segfault) on int8 recurrent models (see docs/architecture.md); in a child process such a
crash becomes an error message of the builder instead of killing it. The request names a SavedModel, a
.npy file of representative inputs and the output path; on failure the last stdout line is a JSON object
{"error": "..."}.
"""

from __future__ import annotations

import json
import os
import sys
import warnings


def main(argv: list[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    request = json.loads(open(argv[1], encoding="utf-8").read())
    import numpy as np
    import tensorflow as tf

    calibration = np.load(request["representative"])

    def representative_dataset():
        for i in range(len(calibration)):
            yield [calibration[i:i + 1]]

    converter = tf.lite.TFLiteConverter.from_saved_model(request["saved_model"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if request.get("int8_output", True):
        converter.inference_output_type = tf.int8
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            model = converter.convert()
    except Exception as exc:  # noqa: BLE001 - reported to the parent as text
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    with open(request["output"], "wb") as f:
        f.write(model)
    print(json.dumps({"ok": True, "bytes": len(model)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
