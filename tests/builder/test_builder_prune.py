"""Model compression in the builder: magnitude-based filter pruning, the budget search, and a bundle with a
family of variants that the board reads with `autlearn.runtime.bundle.load` and runs without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from conftest import no_tensorflow_env  # noqa: E402

TINY = {"conv0": 8, "pw1": 12, "pw2": 16, "head_hidden": 8}


def _tiny_classifier(sizes=None, seed=0):
    from autlearn_build import image_model

    image_model.set_seed(seed)
    factory = image_model.classifier_factory((12, 12, 1), 8, 4, 3)
    model = factory(dict(sizes or TINY))
    # non-trivial BatchNorm statistics, so that inference mode exercises every sliced weight
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
                               rng.uniform(0.5, 1.5, n)])
    return model, factory


def test_budgets_parse_with_suffixes_and_reject_nonsense():
    from autlearn_build.errors import InputError
    from autlearn_build.prune import parse_budgets

    budgets = parse_budgets(["flops=1.5M,params=15k", "latency_ms=0.08ms"])
    assert [(b.metric, b.limit, b.name) for b in budgets] == [
        ("flops", 1.5e6, "flops-1.5M"), ("params", 15e3, "params-15k"), ("latency_ms", 0.08, "latency-0.08ms")]
    for bad in ("flops", "size=3", "params=-4", "params=abc", "latency_ms=3k", "flops=1M,flops=1M"):
        with pytest.raises(InputError):
            parse_budgets(bad)


def test_chain_analysis_and_analytic_costs_match_the_model():
    from autlearn_build import image_model, prune

    model, _ = _tiny_classifier()
    info = prune.analyse(model)
    assert info.prunable == ["conv0", "pw1", "pw2", "head_hidden"]
    assert info.feature_group == "pw3"  # the feature vector is never pruned
    cost = prune.chain_cost(info)
    assert cost == {"params": image_model.count_params(model), "flops": image_model.count_flops(model)}


def _set_pw1_kernel_with_norms(model, norms):
    layer = model.get_layer("pw1")
    kernel = np.random.default_rng(1).standard_normal(layer.kernel.shape)
    kernel /= np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), axis=0)
    kernel *= norms
    layer.set_weights([kernel.astype(np.float32)])
    bn = model.get_layer("pw1_bn")
    n = len(norms)
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([np.ones(n), beta, mean, np.ones(n)])  # equal BN scale: kernel norms decide
    return kernel


def test_pruned_layer_lost_exactly_its_lowest_norm_filters():
    from autlearn_build import prune

    model, factory = _tiny_classifier()
    norms = np.array([5.0, 0.3, 2.0, 0.1, 7.0, 1.0, 0.7, 3.0, 0.2, 4.0, 6.0, 0.5])
    kernel = _set_pw1_kernel_with_norms(model, norms)
    np.testing.assert_allclose(prune.filter_norms(model, "pw1"), norms / np.sqrt(1 + 1e-3), rtol=1e-5)

    pruned, removed = prune.prune_layer(model, "pw1", 4, factory)
    assert removed.tolist() == [1, 3, 8, 11]  # norms 0.3, 0.1, 0.2, 0.5: the four smallest
    keep = [0, 2, 4, 5, 6, 7, 9, 10]
    new_kernel = pruned.get_layer("pw1").get_weights()[0]
    assert new_kernel.shape == (1, 1, 8, 8)
    np.testing.assert_array_equal(new_kernel, kernel[..., keep].astype(np.float32))
    # the rest of the depthwise-separable chain follows the same channels
    for name in ("pw1_bn", "dw2_bn"):
        for new, old in zip(pruned.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(new, old[keep])
    np.testing.assert_array_equal(pruned.get_layer("dw2").get_weights()[0],
                                  model.get_layer("dw2").get_weights()[0][:, :, keep])
    np.testing.assert_array_equal(pruned.get_layer("pw2").get_weights()[0],
                                  model.get_layer("pw2").get_weights()[0][:, :, keep, :])
    for name in ("conv0", "pw3", "head_hidden", "head_logits"):  # untouched layers
        for new, old in zip(pruned.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(new, old)

    # Function: the pruned model equals the original with the removed channels silenced (zero filters,
    # zero BatchNorm offsets and means along the chain), so nothing else changed.
    silenced, _ = _tiny_classifier()
    silenced.set_weights(model.get_weights())
    k = silenced.get_layer("pw1").get_weights()[0]
    k[..., removed] = 0.0
    silenced.get_layer("pw1").set_weights([k])
    for name in ("pw1_bn", "dw2_bn"):
        gamma, beta, mean, var = silenced.get_layer(name).get_weights()
        beta[removed], mean[removed] = 0.0, 0.0
        silenced.get_layer(name).set_weights([gamma, beta, mean, var])
    x = np.random.default_rng(2).random((6, 12, 12, 1)).astype(np.float32)
    np.testing.assert_allclose(pruned(x, training=False).numpy(), silenced(x, training=False).numpy(),
                               rtol=1e-4, atol=1e-4)


def test_norms_include_the_batchnorm_scale_and_dense_units_prune_by_column():
    from autlearn_build import prune

    model, factory = _tiny_classifier()
    _set_pw1_kernel_with_norms(model, np.arange(1.0, 13.0))
    bn = model.get_layer("pw1_bn")
    gamma, beta, mean, var = bn.get_weights()
    gamma[11] = 1e-3  # the largest kernel is switched off by its BatchNorm: the board's filter is tiny
    bn.set_weights([gamma, beta, mean, var])
    assert prune.lowest_norm_filters(prune.filter_norms(model, "pw1"), 1).tolist() == [11]

    dense = model.get_layer("head_hidden")
    w, b = dense.get_weights()
    w = (w / np.linalg.norm(w, axis=0) * np.array([3, 1, 4, 0.5, 9, 2, 6, 5])).astype(np.float32)
    dense.set_weights([w, b])
    pruned, removed = prune.prune_layer(model, "head_hidden", 3, factory)
    assert removed.tolist() == [1, 3, 5]
    np.testing.assert_array_equal(pruned.get_layer("head_hidden").get_weights()[0], w[:, [0, 2, 4, 6, 7]])
    np.testing.assert_array_equal(pruned.get_layer("head_logits").get_weights()[0],
                                  model.get_layer("head_logits").get_weights()[0][[0, 2, 4, 6, 7]])
    with pytest.raises(ValueError, match="cannot be pruned"):
        prune.prune_layer(model, "pw3", 1, factory)  # the feature layer keeps its size


def test_pruned_model_converts_builtin_only_and_is_cheaper():
    from autlearn_build import image_model, prune
    from autlearn_build.convert import convert_base_int8, list_ops

    model, factory = _tiny_classifier()
    before = prune.chain_cost(prune.analyse(model))
    pruned, _ = prune.prune_layer(model, "pw2", 6, factory)
    pruned, _ = prune.prune_layer(pruned, "conv0", 3, factory)
    after = prune.chain_cost(prune.analyse(pruned))
    assert after["params"] < before["params"] and after["flops"] < before["flops"]
    assert after == {"params": image_model.count_params(pruned), "flops": image_model.count_flops(pruned)}
    base = image_model.base_of(pruned)
    assert base.output.shape[-1] == 8  # the feature size is kept
    x = np.random.default_rng(0).random((40, 12, 12, 1)).astype(np.float32)
    model_bytes = convert_base_int8(base, x)  # raises ConversionError on any non-builtin op
    ops = list_ops(model_bytes)
    assert "CONV_2D" in ops and "DEPTHWISE_CONV_2D" in ops
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]


def test_search_meets_budgets_in_order():
    from autlearn_build import prune, prune_search

    model, factory = _tiny_classifier()
    rng = np.random.default_rng(0)
    x = rng.random((64, 12, 12, 1)).astype(np.float32)
    y = (x[:, :6].mean(axis=(1, 2, 3)) > x[:, 6:].mean(axis=(1, 2, 3))).astype(np.int64)
    full = prune.chain_cost(prune.analyse(model))
    budgets = prune.parse_budgets(f"params={int(full['params'] * 0.8)},flops={int(full['flops'] * 0.7)},"
                                  f"params={full['params'] * 2}")
    lines: list[str] = []
    result = prune_search.search(model, factory, x[:48], y[:48], x[48:], y[48:], budgets,
                                 prune_search.SearchOptions(step_fraction=0.15, retrain_fraction=0.5,
                                                            finetune_epochs=0),
                                 progress=lines.append)
    assert [b.text for b in result.met_by_full] == [str(full["params"] * 2)]
    assert not result.unmet
    assert {e.budget.metric for e in result.emitted} == {"params", "flops"}
    for e in result.emitted:
        assert e.cost[e.budget.metric] <= e.budget.limit
        assert prune.analyse(e.model).sizes["pw3"] == 8
    assert result.rounds and any("round" in line for line in lines)


BOARD_SIDE = textwrap.dedent(r'''
    import json, sys
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from autlearn.runtime import bundle as bundle_mod

    b = bundle_mod.load(sys.argv[1])
    rng = np.random.default_rng(0)
    spec = b.input
    x = rng.random((9, spec["height"], spec["width"], spec["channels"])).astype(np.float32)
    out = {"variants": b.variant_names, "runs": {}}
    for name in b.variant_names:
        v = b.variant(name)
        base = Interpreter(model_path=str(v.base_path), num_threads=1)
        inp = base.get_input_details()[0]
        base.resize_tensor_input(inp["index"], [len(x), *inp["shape"][1:]])
        base.allocate_tensors()
        inp, o = base.get_input_details()[0], base.get_output_details()[0]
        s, z = inp["quantization"]
        base.set_tensor(inp["index"], np.clip(np.round(x / s + z), -128, 127).astype(np.int8))
        base.invoke()
        feats = (base.get_tensor(o["index"]).astype(np.float32) - o["quantization"][1]) * o["quantization"][0]
        head = Interpreter(model_path=str(v.head_path), num_threads=1)
        active = np.zeros(b.class_capacity, np.float32)
        active[:len(b.labels)] = 1
        probs = head.get_signature_runner("infer")(x=feats, active=active)["probs"]
        weights = head.get_signature_runner("get_weights")()
        B = b.train_batch
        train = head.get_signature_runner("train")
        xb = np.resize(feats, (B, feats.shape[1])).astype(np.float32)
        losses = [float(train(x=xb, y=np.arange(B, dtype=np.int32) % 3, mask=np.ones(B, np.float32),
                              active=active, lr=np.float32(0.01))["loss"]) for _ in range(15)]
        out["runs"][name] = {"features": list(feats.shape), "probs_sum": float(probs.sum(axis=1).mean()),
                             "w0": list(weights["w0"].shape), "losses": [losses[0], losses[-1]]}
    print(json.dumps(out))
''')


@pytest.mark.slow
def test_bundle_with_pruned_variants_loads_on_the_board(tmp_path):
    from autlearn_build.cli import main

    out = tmp_path / "bundle"
    # width 0.25 (8/16/32 channels), 12-wide features: full ≈ 4.1k params + head, ≈ 0.28 MFLOPs
    rc = main(["image", "--data", "mnist5k", "--limit", "300", "--epochs", "1", "--seed", "0",
               "--width-mult", "0.25", "--feature-size", "12", "--out", str(out),
               "--budget", "params=3.4k,flops=0.12M", "--prune-step", "0.25", "--prune-retrain", "0.3",
               "--prune-finetune", "0.5", "--head-epochs", "1"])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    names = [v["name"] for v in m["variants"]]
    assert names[0] == "full" and set(names[1:]) == {"params-3.4k", "flops-0.12M"}
    full = m["variants"][0]
    for v in m["variants"][1:]:
        total = {"params": v["params"] + v["head_params"], "flops": v["flops"] + v["head_flops"]}
        assert total[v["budget"]["metric"]] <= v["budget"]["limit"]
        assert v["flops"] + v["head_flops"] < full["flops"] + full["head_flops"]
        assert v["feature_size"] == 12 and v["size_bytes"] < full["size_bytes"]
        assert 0 <= v["accuracy_int8"] <= 1 and 0 <= v["accuracy_float"] <= 1 and v["latency_ms"] > 0
        assert {v["base"], v["head"]} <= set(m["files"])
    assert m["build"]["pruning"]["rounds"] and not m["build"]["pruning"]["unmet"]

    script = tmp_path / "board.py"
    script.write_text(BOARD_SIDE)
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=120,
                          env=no_tensorflow_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    board = json.loads(proc.stdout.strip().splitlines()[-1])
    assert board["variants"] == names
    for name, run in board["runs"].items():
        assert run["features"] == [9, 12], name
        assert abs(run["probs_sum"] - 1) < 1e-4
        assert run["losses"][1] < run["losses"][0], name
    widths = [tuple(sorted(v["widths"].items())) for v in m["variants"][1:]]
    assert len(set(widths)) == 2, "the two budgets should give two different models"
