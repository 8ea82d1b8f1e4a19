"""Builder step for a bundle cut below the head (`autlearn-build image --tail …`, docs/tail.md).

A pretrained classifier (the built-in CNN: `--tail last_block|last2_blocks`; a --model/--backbone: `--tail
last_conv|last_block`) → int8 stem (the base: activation at the cut, flattened) + builtin-only tail, measured.
With a list (`--tail head,last_block,last2_blocks`) the head-only variant carries each deeper cut (`finish_cuts`).

What is measured per cut and written into the variant (docs/bundle-format.md, "Cut below the head"): the
public-validation accuracy of int8 stem + shipped tail, the tail's train step through the LiteRT interpreter
(ms per sample and per epoch of 500 samples, the head's for comparison), and the bytes one cached activation
takes (int8, as the board's feature cache stores it with the stem's output scale and zero point, declared as the
variant's `cache_quantization`; and float32, as it was stored before).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .bundle_writer import Variant
from .errors import BuildError

EPOCH_SAMPLES = 500  # the per-epoch cost is stated for this many cached samples


def tail_flops(shape: tuple[int, int, int], weights: dict[str, np.ndarray], blocks: tuple[int, ...],
               strides: dict[int, int]) -> int:
    """Forward FLOPs of one sample through the tail (a multiply-add counts 2): depthwise, pointwise, pool, head."""
    h, w, c = shape
    flops = 0
    for i in blocks:
        s = strides[i]
        h, w = -(-h // s), -(-w // s)
        flops += 2 * h * w * c * 9
        cout = int(weights[f"pw{i}_w"].shape[-1])
        flops += 2 * h * w * c * cout
        c = cout
    flops += h * w * c
    return int(flops + 2 * (weights["w0"].size + weights["w1"].size))


def train_step_ms(model: bytes, feature_size: int, class_capacity: int, train_batch: int, threads: int = 2,
                  steps: int = 20, image_input: tuple[int, int, int] | None = None) -> float:
    """The fastest of `steps` calls of the converted `train` signature (ms per step), in the LiteRT
    interpreter as the board runs it; lr 0 so the weights stay as shipped. `image_input`: x is
    [B, H, W, C] images (a whole-model signature) instead of [B, feature_size]."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model, num_threads=threads)
    train = interp.get_signature_runner("train")
    rng = np.random.default_rng(0)
    shape = (train_batch, *image_input) if image_input else (train_batch, feature_size)
    args = dict(x=rng.random(shape, np.float32),
                y=(np.arange(train_batch) % 2).astype(np.int32), mask=np.ones(train_batch, np.float32),
                active=np.ones(class_capacity, np.float32), lr=np.array(0.0, np.float32))
    if "l2" in interp.get_signature_list()["train"]["inputs"]:  # a tail: the pull is an input (same cost at any value)
        args.update(l2=np.array(1e-3, np.float32), lr_scale=np.array(0.3, np.float32))
    for _ in range(3):
        train(**args)
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        train(**args)
        best = min(best, time.perf_counter() - t0)
    return best * 1000.0


def finish_cuts(opts, head_only: Callable, below: Callable) -> Variant:
    """The variant for `opts.tail`: one cut as it is (`head_only(opts)` or `below(opts)`); a list (`--tail
    head,last_block,…`) gives the head-only variant carrying each deeper cut, built by `below` with that one cut,
    in its `cuts` (shallowest first; files named `<part>_<variant>_<cut>`; docs/bundle-format.md)."""
    from dataclasses import replace

    cuts = opts.tails
    if len(cuts) == 1:
        return (head_only if cuts[0] == "head" else below)(opts)
    variant = head_only(replace(opts, tail="head"))
    for cut in cuts[1:]:
        deeper = below(replace(opts, tail=cut))
        deeper.name = f"{variant.name}_{cut}"
        variant.cuts.append(deeper)
    return variant


def finish_tail_variant(name: str, classifier, train, val, active: np.ndarray, opts,
                        progress: Callable[[str], None], quiet_call, predict) -> Variant:
    """A float classifier → int8 stem below `opts.tail` + the tail trained `opts.head_epochs` epochs on the
    stem's own int8 activations of the public training images with the tail's own train step → Variant."""
    from . import image_model
    from . import tail_module as tm
    from .convert import convert_base_int8
    from .evaluate import BaseRunner, accuracy
    from .head_module import train_head

    t0 = time.perf_counter()
    cut = opts.tail
    stem = tm.stem_of(classifier, cut)
    shape = tm.cut_shape(classifier, cut)
    stem_model = quiet_call(convert_base_int8, stem, train.x)
    runner = BaseRunner(stem_model)
    latency = runner.latency_ms(val.x if len(val) else train.x)
    pretrained = tm.tail_weights(classifier, cut)

    def module(weights):
        return tm.TailModule(weights, cut, shape, opts.train_batch, l2=opts.tail_l2,
                             conv_lr_scale=opts.tail_lr_scale)

    logits_float = predict(classifier, val.x)
    accuracy_float = accuracy(logits_float, val.y)
    if len(val):  # the tail's math must reproduce the Keras classifier on the same (float) activations
        import tensorflow as tf

        diff = float(np.max(np.abs(module(pretrained).numpy_probs(predict(stem, val.x), active)
                                   - tf.nn.softmax(logits_float).numpy())))
        if diff > 1e-3:
            raise BuildError(f"variant {name}: the {cut} tail does not reproduce the pretrained classifier "
                             f"(max probability difference {diff:.2e})")
    val_int8 = runner.features(val.x)
    accuracy_pretrained_tail = accuracy(module(pretrained).numpy_probs(val_int8, active), val.y)
    weights = pretrained
    if opts.head_epochs > 0:
        weights = train_head(module(pretrained), runner.features(train.x), train.y.astype(np.int32), active,
                             epochs=opts.head_epochs, lr=opts.head_learning_rate, seed=opts.seed)
    tail = module(weights)  # fresh: Adam state at zero, anchors = the shipped weights
    tail_model, probs_int8 = _converted(tail, val_int8, active, f"variant {name}: the converted {cut} tail", quiet_call)
    accuracy_int8 = accuracy(probs_int8, val.y)
    feature_size = int(np.prod(shape))
    step_ms = train_step_ms(tail_model, feature_size, opts.class_capacity, opts.train_batch)
    batches = -(-EPOCH_SAMPLES // opts.train_batch)
    tail_params = int(sum(np.prod(w.shape) for w in weights.values()))
    head_params = int(sum(weights[n].size for n in tm.HEAD_NAMES))
    flops_tail = tail_flops(shape, weights, tm.TAIL_BLOCKS[cut], tm.STRIDES)
    params, flops = image_model.count_params(stem), image_model.count_flops(stem)
    cost = {
        "cut": cut,
        "cut_layer": tm.CUT_LAYER[cut],
        "cut_shape": list(shape),
        "trainable": list(tail.names),
        "trainable_params": tail_params,
        "conv_params": tail_params - head_params,
        "train_ms_per_step": round(step_ms, 4),
        "train_ms_per_sample": round(step_ms / opts.train_batch, 5),
        "train_ms_per_epoch": round(step_ms * batches, 3),
        "epoch_samples": EPOCH_SAMPLES,
        "cache_bytes_per_sample": feature_size,
        "cache_bytes_per_sample_float32": 4 * feature_size,
        "l2_to_pretrained": opts.tail_l2,
        "conv_lr_scale": opts.tail_lr_scale,
        "regularisation": tm.regularisation(opts.tail_l2, opts.tail_lr_scale),
        "accuracy_int8_pretrained_tail": None if accuracy_pretrained_tail != accuracy_pretrained_tail
        else round(float(accuracy_pretrained_tail), 4),
    }
    progress(f"  variant {name}, cut {cut} ({'x'.join(map(str, shape))} = {feature_size} values cached per "
             f"sample, {feature_size} bytes int8): stem {params} params, int8 {len(stem_model)} bytes, "
             f"{latency:.4f} ms/image; tail {tail_params} params, {flops_tail / 1e6:.3f} MFLOPs, train "
             f"{step_ms / opts.train_batch:.3f} ms/sample ({step_ms * batches:.1f} ms per epoch of "
             f"{EPOCH_SAMPLES}); val acc float {accuracy_float:.4f}, int8 {accuracy_int8:.4f}  "
             f"{time.perf_counter() - t0:.1f}s")
    return Variant(name=name, base_model=stem_model, head_model=tail_model, head_weights=list(tail.names),
                   feature_size=feature_size, params=params, flops=flops, latency_ms=latency,
                   accuracy_int8=accuracy_int8, accuracy_float=accuracy_float,
                   extra={"head_params": tail_params, "head_flops": flops_tail, "cut": cut, "tail": cost,
                          "cache_quantization": output_quantization(stem_model)})


def output_quantization(model: bytes) -> dict:
    """The int8 stem's output scale and zero point: the board's feature cache stores the activation at the cut
    as those int8 values (daemon/autlearn/learning/featcache.py)."""
    from ai_edge_litert.interpreter import Interpreter

    out = Interpreter(model_content=model).get_output_details()[0]
    scale, zero = out["quantization"]
    if out["dtype"] != np.int8 or not scale:
        raise BuildError(f"the stem's output is {np.dtype(out['dtype']).name}, not quantised int8")
    return {"scale": float(scale), "zero_point": int(zero)}


def finish_backbone_tail(user, train, val, active: np.ndarray, opts, progress: Callable[[str], None], quiet_call,
                         predict) -> Variant:
    """A backbone cut at its feature layer (model_import.UserModel) → int8 stem below `opts.tail` (the activation
    at the cut, e.g. MobileNetV2's 5x5x320 before Conv_1, or 5x5x160 before block_16) + the builtin-only tail
    (block_16 for `last_block`, the last 1x1 convolution, ReLU6, pool, softmax head) → Variant. The convolutions
    ship as pretrained; the head starts from the model's own last layer when it fits the labels, else is
    trained `opts.head_epochs` epochs on the tail's pooled features of the stem's int8 activations (the
    convolutions then train on the board)."""
    from . import tail_module as tm
    from .convert import convert_base_int8, convert_head
    from .evaluate import BaseRunner, accuracy
    from .head_module import SIGNATURES, SoftmaxHead, train_head
    from .model_import import head_from_dense

    t0 = time.perf_counter()
    cut, capacity = opts.tail, len(active)
    if cut not in tm.BACKBONE_CUTS:
        raise BuildError(f"--tail {cut} is not a cut of a backbone (known: head, {', '.join(tm.BACKBONE_CUTS)})")
    stem = tm.backbone_stem(user.base, cut)
    shape = tuple(int(d) for d in stem.layers[-1].input.shape[1:])
    feature_size = int(np.prod(shape))
    stem_model = quiet_call(convert_base_int8, stem, train.x, max_calibration=opts.calibration)
    runner = BaseRunner(stem_model)
    latency = runner.latency_ms(val.x if len(val) else train.x, repeats=20, warmup=3)
    a_train, a_val = runner.features(train.x), runner.features(val.x)
    convs = tm.backbone_tail_convs(user.model, cut)
    width = int(convs["conv_w"].shape[1])
    zero_head = {"w0": np.zeros((width, capacity), np.float32), "b0": np.zeros(capacity, np.float32)}

    def module(weights):
        return tm.BackboneTail(weights, cut, shape, opts.train_batch, l2=opts.tail_l2,
                               conv_lr_scale=opts.tail_lr_scale)

    probe = module({**convs, **zero_head})
    if len(val):  # the tail's math must reproduce the backbone's pooled features on the same (float) activations
        diff = float(np.max(np.abs(probe.numpy_features(predict(stem, val.x)) - predict(user.base, val.x))))
        if diff > 1e-3:
            raise BuildError(f"the {cut} tail does not reproduce the backbone's features (max difference {diff:.2e})")
    head, why = head_from_dense(user, int(active.sum()), capacity)
    if head is not None:
        head_source = f"the model's own {why}"
    else:
        f_train = probe.numpy_features(a_train)
        rng = np.random.default_rng(opts.seed)
        limit = np.sqrt(6.0 / (f_train.shape[1] + capacity))
        init = {"w0": rng.uniform(-limit, limit, zero_head["w0"].shape).astype(np.float32), "b0": zero_head["b0"]}
        head = train_head(SoftmaxHead(init, opts.train_batch), f_train, train.y.astype(np.int32), active,
                          epochs=opts.head_epochs, lr=opts.head_learning_rate, seed=opts.seed)
        head_source = f"trained {opts.head_epochs} epochs on the tail's features of the stem's int8 activations"
    weights = {**convs, "w0": head["w0"], "b0": head["b0"]}
    tail = module(weights)
    tail_model, probs_int8 = _converted(tail, a_val, active, f"the converted {cut} tail", quiet_call)
    accuracy_int8 = accuracy(probs_int8, val.y)
    float_probs = tail.numpy_probs(predict(stem, val.x), active)
    accuracy_float = accuracy(float_probs, val.y)
    step_ms = train_step_ms(tail_model, feature_size, capacity, opts.train_batch)
    head_model = quiet_call(convert_head, SoftmaxHead(head, opts.train_batch), SIGNATURES)
    head_step_ms = train_step_ms(head_model, width, capacity, opts.train_batch)
    batches = -(-EPOCH_SAMPLES // opts.train_batch)
    tail_params = int(sum(np.prod(w.shape) for w in weights.values()))
    flops_tail = tm.backbone_tail_flops(shape, weights)
    from .image_model import count_flops
    from .model_build import _flops

    params, flops = int(stem.count_params()), _flops(stem, count_flops)
    cost = {
        "cut": cut, "cut_layer": tm.BACKBONE_CUTS[cut][0], "cut_shape": list(shape),
        "trainable": list(tail.names), "trainable_params": tail_params,
        "conv_params": int(sum(v.size for v in convs.values())),
        "train_ms_per_step": round(step_ms, 4),
        "train_ms_per_sample": round(step_ms / opts.train_batch, 5),
        "train_ms_per_epoch": round(step_ms * batches, 3),
        "head_only_train_ms_per_sample": round(head_step_ms / opts.train_batch, 5),
        "epoch_samples": EPOCH_SAMPLES,
        "cache_bytes_per_sample": feature_size,
        "cache_bytes_per_sample_float32": 4 * feature_size,
        "l2_to_pretrained": opts.tail_l2, "conv_lr_scale": opts.tail_lr_scale,
        "regularisation": tm.regularisation(opts.tail_l2, opts.tail_lr_scale),
    }
    progress(f"  variant full, cut {cut} ({'x'.join(map(str, shape))} = {feature_size} int8 values cached per "
             f"sample): stem {params} params, int8 {len(stem_model)} bytes, {latency:.3f} ms/image; tail "
             f"{tail_params} params ({head_source}), {flops_tail / 1e6:.1f} MFLOPs, train "
             f"{step_ms / opts.train_batch:.3f} ms/sample (head only {head_step_ms / opts.train_batch:.4f}), "
             f"{step_ms * batches:.0f} ms per epoch of {EPOCH_SAMPLES}; val acc float {accuracy_float:.4f}, "
             f"int8 {accuracy_int8:.4f}  {time.perf_counter() - t0:.1f}s")
    return Variant(name="full", base_model=stem_model, head_model=tail_model, head_weights=list(tail.names),
                   feature_size=feature_size, params=params, flops=flops, latency_ms=latency,
                   accuracy_int8=accuracy_int8, accuracy_float=accuracy_float,
                   extra={"head_params": tail_params, "head_flops": flops_tail, "head_source": head_source,
                          "cut": cut, "tail": cost, "cache_quantization": output_quantization(stem_model)})


def _converted(tail, x_val: np.ndarray, active: np.ndarray, what: str, quiet_call):
    """The tail converted builtin-only (ConversionError, exit 3, naming a non-builtin op) and its probabilities on
    the validation activations, refused when they differ from the eager module's."""
    from .convert import convert_head
    from .evaluate import head_probs
    from .head_module import SIGNATURES

    tail_model = quiet_call(convert_head, tail, SIGNATURES)
    probs = head_probs(tail_model, x_val, active)
    if len(x_val):
        diff = float(np.max(np.abs(probs - tail.numpy_probs(x_val, active))))
        if diff > 1e-3:
            raise BuildError(f"{what} differs from the eager one (max probability difference {diff:.2e})")
    return tail_model, probs
