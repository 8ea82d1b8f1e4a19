"""Conversion to TFLite and the builtin-only check every produced model must pass.

No interpreter the board can use runs Flex (Select TF) or custom ops, so a model holding one is refused
here, naming the op, rather than on the board.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from typing import Iterable

import numpy as np

from .errors import ConversionError


def _converter_failure(what: str, exc: Exception) -> ConversionError:
    """One line for a converter exception, naming the TF ops it could not lower when it says which."""
    text = str(exc)
    ops = sorted(set(re.findall(r"'tf\.([A-Za-z0-9_]+)' op", text)))
    if ops:
        return ConversionError(f"{what}: these TensorFlow ops have no builtin TFLite equivalent: {', '.join(ops)}")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return ConversionError(f"{what}: {lines[0] if lines else type(exc).__name__}")


def list_ops(model: bytes) -> list[str]:
    """Names of all operators used in any subgraph of a .tflite flatbuffer; custom ops (Flex included)
    appear under their custom code, e.g. 'FlexReluGrad'."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        root = schema.Model.GetRootAs(model, 0)
        names_by_code = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        codes = []
        for i in range(root.OperatorCodesLength()):
            oc = root.OperatorCodes(i)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            if code == schema.BuiltinOperator.CUSTOM:
                custom = oc.CustomCode()
                codes.append(custom.decode("utf-8", "replace") if custom else "CUSTOM")
            else:
                codes.append(names_by_code.get(code, f"BUILTIN_{code}"))
        used = set()
        for s in range(root.SubgraphsLength()):
            subgraph = root.Subgraphs(s)
            for o in range(subgraph.OperatorsLength()):
                used.add(codes[subgraph.Operators(o).OpcodeIndex()])
    except (IndexError, ValueError, TypeError) as exc:  # a truncated or foreign buffer
        raise ConversionError(f"not a readable TFLite model: {exc}") from exc
    return sorted(used)


def is_builtin_op(name: str) -> bool:
    from ai_edge_litert import schema_py_generated as schema

    return name not in ("CUSTOM", "DELEGATE") and hasattr(schema.BuiltinOperator, name)


def check_builtin_only(model: bytes, what: str) -> list[str]:
    """Raise ConversionError naming every Flex/custom op in `model`; else return its op names.
    Also loads the model with the LiteRT interpreter (what the board uses) to be sure it resolves."""
    ops = list_ops(model)
    bad = [op for op in ops if not is_builtin_op(op)]
    if bad:
        kinds = ["Flex (Select TF) op" if op.startswith("Flex") else "custom op" for op in bad]
        detail = ", ".join(f"{op} ({kind})" for op, kind in zip(bad, kinds))
        raise ConversionError(f"{what} uses operators the board cannot run: {detail}")
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=model, num_threads=1)
        for name in interpreter.get_signature_list() or {}:
            interpreter.get_signature_runner(name)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise ConversionError(f"{what} does not load in the LiteRT interpreter: {exc}") from exc
    return ops


def convert_base_int8(base, representative: np.ndarray, max_calibration: int = 300) -> bytes:
    """Full-integer int8 conversion of a Keras feature extractor, [None,H,W,C] float → [None,F].
    Input and output tensors are int8 with quantisation parameters (the board (de)quantises)."""
    import tensorflow as tf

    calibration = np.asarray(representative[:max_calibration], dtype=np.float32)

    def representative_dataset() -> Iterable[list[np.ndarray]]:
        for i in range(len(calibration)):
            yield [calibration[i:i + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(base)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        with warnings.catch_warnings():  # int8 input has no float statistics to record: expected
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            model = converter.convert()
    except Exception as exc:  # the converter raises several unrelated types
        raise _converter_failure("int8 conversion of the base failed", exc) from exc
    check_builtin_only(model, "the int8 base model")
    return model


def convert_head(module, signature_keys: Iterable[str]) -> bytes:
    """SavedModel with the head's signatures → TFLite with TFLITE_BUILTINS only and resource variables."""
    import tensorflow as tf

    signature_keys = list(signature_keys)
    with tempfile.TemporaryDirectory(prefix="autlearn-head-") as tmp:
        saved = os.path.join(tmp, "head")
        tf.saved_model.save(module, saved, signatures=module.concrete_signatures())
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=signature_keys)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        try:
            model = converter.convert()
        except Exception as exc:
            raise _converter_failure("the head did not convert with builtin operators only", exc) from exc
    check_builtin_only(model, "the head model")
    return model


def convert_int8_in_subprocess(model, representative: np.ndarray, what: str, *, int8_output: bool = True,
                               max_calibration: int = 200, timeout: float = 1800.0) -> bytes:
    """Full-integer conversion of a Keras model in a child process (see convert_worker): integer inputs
    (token ids) stay int32, float activations and weights become int8, the output is int8 with
    quantisation parameters. A converter crash is reported as a ConversionError, not a dead builder."""
    import json
    import signal
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="autlearn-convert-") as tmp:
        saved = os.path.join(tmp, "model")
        model.export(saved, verbose=False)
        rep = os.path.join(tmp, "representative.npy")
        np.save(rep, np.asarray(representative[:max_calibration]))
        out = os.path.join(tmp, "model.tflite")
        request = os.path.join(tmp, "request.json")
        with open(request, "w", encoding="utf-8") as f:
            json.dump({"saved_model": saved, "representative": rep, "output": out, "int8_output": int8_output}, f)
        try:
            proc = subprocess.run([sys.executable, "-m", "autlearn_build.convert_worker", request],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConversionError(f"int8 conversion of {what} did not finish within {timeout:.0f} s") from None
        if proc.returncode < 0:
            try:
                name = signal.Signals(-proc.returncode).name
            except ValueError:
                name = f"signal {-proc.returncode}"
            raise ConversionError(f"the TFLite converter crashed ({name}) converting {what} to int8")
        if proc.returncode != 0 or not os.path.exists(out):
            message = ""
            for line in reversed(proc.stdout.strip().splitlines()):
                try:
                    message = json.loads(line).get("error", "")
                    break
                except (ValueError, AttributeError):
                    continue
            message = message or (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise _converter_failure(f"int8 conversion of {what} failed", RuntimeError(message))
        with open(out, "rb") as f:
            data = f.read()
    check_builtin_only(data, f"the int8 {what}")
    return data
