"""The bench's baselines: what a user would run instead of the daemon's round, timed to its accuracy.

The reference Keras classifier fine-tuned in full TensorFlow (head only or whole), and whole-model training
through a flex-free TFLite `train` signature (tools/tflite_whole.py).
"""

from __future__ import annotations

import time

import numpy as np

def keras_run(ref, mode: str, train_paths, train_y, test_x, test_y, max_epochs: int, target: float, lr: float,
              batch: int = 32) -> dict:
    """Fine-tune the reference classifier in full TensorFlow (see the module docstring)."""
    import tensorflow as tf
    from reference import decode_pngs

    clf = ref.fresh()
    for layer in clf.layers:
        layer.trainable = mode == "whole" or layer.name.startswith("head_")
    eval_cpu = [0.0]
    accs: list[float] = []
    epoch_s: list[float] = []
    cpu_cum: list[float] = []  # CPU seconds of this process up to the end of each epoch, evaluation left out
    marks = {}

    class Clock(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            marks["train_begin"] = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            marks["epoch"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_s.append(time.perf_counter() - marks["epoch"])
            c0 = time.process_time()
            cpu_cum.append(c0 - cpu0 - eval_cpu[0])
            logits = np.concatenate([clf(test_x[i:i + 500], training=False).numpy()
                                     for i in range(0, len(test_x), 500)])
            accs.append(float(np.mean(np.argmax(logits, 1) == test_y)))
            eval_cpu[0] += time.process_time() - c0

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    x = decode_pngs(train_paths, ref.input_spec)
    t_loaded = time.perf_counter()
    clf.compile(optimizer=tf.keras.optimizers.Adam(lr),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t_fit = time.perf_counter()
    clf.fit(x, np.asarray(train_y), batch_size=batch, epochs=max_epochs, shuffle=True, verbose=0, callbacks=[Clock()])
    cpu = time.process_time() - cpu0 - eval_cpu[0]
    fixed = (t_loaded - t0) + (marks["train_begin"] - t_loaded)  # decode + compile + fit's own setup
    return _baseline_result(fixed, epoch_s, accs, target, cpu, cpu_cum, {"load_s": t_loaded - t0,
                                                                "compile_setup_s": marks["train_begin"] - t_loaded,
                                                                "fit_call_s": time.perf_counter() - t_fit})


def time_to_target(fixed_s: float, epoch_s: list[float], accs: list[float], target: float) -> dict:
    """Wall time until the test accuracy after an epoch first reaches `target`: the fixed set-up plus every epoch
    up to and including that one. Never reached: the whole run is charged and `reached` is False (a speed-up
    computed from it is a lower bound)."""
    if len(epoch_s) != len(accs) or not accs:
        raise ValueError("one accuracy per epoch, at least one epoch")
    hit = next((i for i, a in enumerate(accs) if a >= target), None)
    last = hit if hit is not None else len(epoch_s) - 1
    return {"seconds": fixed_s + float(np.sum(epoch_s[:last + 1])), "reached": hit is not None,
            "epochs": None if hit is None else hit + 1}


def _baseline_result(fixed_s: float, epoch_s: list[float], accs: list[float], target: float, cpu_s: float,
                     cpu_cum: list[float], extra: dict) -> dict:
    t = time_to_target(fixed_s, epoch_s, accs, target)
    if len(cpu_cum) != len(epoch_s):
        raise ValueError("one CPU reading per epoch")
    # "warm": the first epoch (graph tracing, XNNPACK set-up) counted at the median epoch's cost
    warm_epochs = list(epoch_s)
    if len(warm_epochs) > 1:
        warm_epochs[0] = float(np.median(epoch_s[1:]))
    return {
        **extra,
        "fixed_s": fixed_s,
        "epoch_s": [round(e, 5) for e in epoch_s],
        "test_accuracy_per_epoch": [round(a, 4) for a in accs],
        "target_accuracy": round(target, 4),
        "reached": t["reached"],
        "epochs_to_target": t["epochs"],
        "time_to_target_s": t["seconds"],
        "time_to_target_warm_s": time_to_target(fixed_s, warm_epochs, accs, target)["seconds"],
        "full_s": fixed_s + float(np.sum(epoch_s)),
        "best_accuracy": max(accs),
        "final_accuracy": accs[-1],
        "cpu_s": cpu_s,
        "cpu_to_target_s": float(cpu_cum[(t["epochs"] or len(cpu_cum)) - 1]),
    }


def tflite_whole_run(model: bytes, ref, train_paths, train_y, test_x, test_y, max_epochs: int, target: float,
                     lr: float, batch: int, seed: int) -> dict:
    from reference import decode_pngs
    from tflite_whole import TFLiteWholeTrainer

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    x = decode_pngs(train_paths, ref.input_spec)
    y = np.asarray(train_y, np.int32)
    t_loaded = time.perf_counter()
    trainer = TFLiteWholeTrainer(model, batch, ref.class_capacity, threads=2)
    active = ref.active()
    t_ready = time.perf_counter()
    rng = np.random.default_rng(seed)
    epoch_s, accs, eval_cpu, cpu_cum = [], [], 0.0, []
    for _ in range(max_epochs):
        e0 = time.perf_counter()
        trainer.fit_epoch(x, y, active, lr, rng)
        epoch_s.append(time.perf_counter() - e0)
        c0 = time.process_time()
        cpu_cum.append(c0 - cpu0 - eval_cpu)
        accs.append(float(np.mean(np.argmax(trainer.predict(test_x, active), 1) == test_y)))
        eval_cpu += time.process_time() - c0
    cpu = time.process_time() - cpu0 - eval_cpu
    return _baseline_result(t_ready - t0, epoch_s, accs, target, cpu, cpu_cum,
                            {"load_s": t_loaded - t0, "interpreter_s": t_ready - t_loaded})
