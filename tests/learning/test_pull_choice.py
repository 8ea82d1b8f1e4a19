"""The pull toward the cloud weights as a runtime choice: each deeper cut trains once per setting, chosen by holdout."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from autlearn.errors import AutlearnError
from autlearn.learning.cuts import Budget, Cut, Trained, choose, plan
from autlearn.runtime import bundle as bundle_mod
from autlearn.runtime.bundle import Regularisation, Variant
from resign import write_manifest

ANCHORED, FREE = Regularisation("anchored", 1e-3, 0.3), Regularisation("free", 0.0, 1.0)
SETTINGS = [{"name": "anchored", "l2": 1e-3, "lr_scale": 0.3}, {"name": "free", "l2": 0.0, "lr_scale": 1.0}]


def _cut(name: str, depth: int, ms: float, nbytes: int, settings=SETTINGS) -> Cut:
    tail = {"train_ms_per_sample": ms, "cache_bytes_per_sample": nbytes, "regularisation": settings}
    v = Variant(name=f"full@{name}", base_path=Path("b"), head_path=Path("h"), base_sha256="0" * 64,
                head_weights=("w0", "b0"), feature_size=nbytes, info={"cut": name, "tail": tail})
    return Cut.of(v, depth)


HEAD = Cut.of(Variant(name="full", base_path=Path("b"), head_path=Path("h"), base_sha256="0" * 64,
                      head_weights=("w0", "b0"), feature_size=64,
                      info={"tail": {"train_ms_per_sample": 0.003}}), 0)
TAIL, DEEP = _cut("last_block", 1, 0.5, 6272), _cut("last2_blocks", 2, 1.0, 12544)


def test_the_manifest_settings_are_the_cuts_candidates_in_order_and_the_budget_counts_each():
    assert TAIL.settings == (ANCHORED, FREE) and HEAD.settings == ()
    assert [c.name for c in TAIL.candidates] == ["last_block/anchored", "last_block/free"]
    p = plan([HEAD, TAIL, DEEP], 200, 30, Budget(60.0, 10 << 20))
    assert [c.name for c in p.candidates] == ["head", "last_block/anchored", "last_block/free",
                                              "last2_blocks/anchored", "last2_blocks/free"]
    assert [c.name for c in p.train] == ["head", "last_block", "last2_blocks"]  # each cut's features read once
    # 200 x 30 x 0.5 ms = 3 s per last_block candidate: one fits 4 s, the second not (6 s > 4 s)
    tight = plan([HEAD, TAIL], 200, 30, Budget(4.0, 10 << 20))
    assert [c.name for c in tight.candidates] == ["head", "last_block/anchored"]
    assert tight.skipped[0][0].name == "last_block/free"
    assert tight.skipped[0][1] == "its training would take ~3 s after ~3 s for last_block/anchored, over the 4 s budget"
    # the cached activations count once per cut (its candidates share them): 1.25 MB fits 1.3 MB for both
    shared = plan([HEAD, TAIL], 200, 30, Budget(60.0, int(1.3e6)))
    assert [c.name for c in shared.candidates] == ["head", "last_block/anchored", "last_block/free"]
    big = plan([HEAD, TAIL], 200, 30, Budget(60.0, 1 << 20))
    assert [c.name for c in big.candidates] == ["head"] and big.skipped[0][0].name == "last_block"
    assert "cached activations" in big.skipped[0][1]



def test_a_small_holdout_trains_only_each_cuts_first_setting():
    """Five candidates judged on a few dozen holdout images choose by noise: below training.pull_min_holdout the
    free settings are left out (and say why); at or above it, or when the holdout is not known, they train."""
    budget = Budget(60.0, 10 << 20, pull_min_holdout=100)
    small = plan([HEAD, TAIL, DEEP], 200, 30, budget, holdout=40)
    assert [c.name for c in small.candidates] == ["head", "last_block/anchored", "last2_blocks/anchored"]
    assert [c.name for c, _ in small.skipped] == ["last_block/free", "last2_blocks/free"]
    assert small.skipped[0][1] == ("a holdout of 40 samples is too few to choose the pull "
                                   "(training.pull_min_holdout = 100)")
    for holdout in (100, None):
        assert len(plan([HEAD, TAIL, DEEP], 200, 30, budget, holdout=holdout).candidates) == 5

def _t(cut, acc, loss, setting=None):
    return Trained(cut, acc, loss, setting)


def test_a_later_candidate_is_kept_only_when_it_beats_the_best_earlier_one():
    head, anch, free = _t(HEAD, 0.90, 0.30), _t(TAIL, 0.92, 0.25, ANCHORED), _t(TAIL, 0.95, 0.20, FREE)
    won = choose([free, head, anch], 40)  # any order in: ordered head, last_block/anchored, last_block/free
    assert won.keep is free and won.reason.startswith("last_block/free beat the earlier candidates on 40")
    assert "head 0.900 (loss 0.300), last_block/anchored 0.920 (loss 0.250), last_block/free 0.950" in won.reason
    # a tie keeps the earlier (anchored) candidate; a loss lower by less than the margin does not displace it
    tie = choose([head, anch, _t(TAIL, 0.92, 0.24, FREE)], 40)
    assert tie.keep is anch and tie.reason.startswith("last_block/anchored beat the earlier candidates")
    by_loss = choose([head, anch, _t(TAIL, 0.92, 0.20, FREE)], 40)
    assert by_loss.keep.setting == FREE and "matched the best earlier candidate's accuracy" in by_loss.reason
    # free at the deeper cut against the best so far (last_block/free), not against its own cut's anchored one
    d_anch, d_free = _t(DEEP, 0.91, 0.1, ANCHORED), _t(DEEP, 0.94, 0.1, FREE)
    assert choose([head, anch, free, d_anch, d_free], 40).keep is free
    kept = choose([head, _t(TAIL, 0.8, 0.5, ANCHORED), _t(TAIL, 0.85, 0.4, FREE)], 40)
    assert kept.keep is head and kept.reason.startswith("kept head: no later candidate beat it on 40")


@pytest.fixture(scope="module")
def rigged_bundle(tiny_cuts_bundle, tmp_path_factory) -> Path:
    """tiny_cuts_bundle with its `anchored` setting made to wreck the tail (the convolutions step with 10^6 x lr):
    the free candidate must beat it, and the head-only one, on the holdout."""
    root = tmp_path_factory.mktemp("rigged") / "b"
    shutil.copytree(tiny_cuts_bundle, root)
    m = json.loads((root / "manifest.json").read_text())
    m["variants"][0]["cuts"][0]["tail"]["regularisation"][0]["lr_scale"] = 1e6
    write_manifest(root, m)
    return root


def _board(tmp_path, bundle, user_digits, write_user, n=200, **overrides):
    from eval_board import engine_of, make_service
    svc = make_service(tmp_path / "root", bundle, **{"training.augment_copies": 0, "training.pull_min_holdout": 0,
                                                      **overrides})
    images, labels = user_digits
    write_user(svc.paths.state.parent / "inbox", images[:n], labels[:n])
    eng = engine_of(svc)
    eng.scan()
    return svc, eng


def test_the_free_candidate_that_wins_on_the_holdout_is_kept_and_rollback_restores_each_setting_exactly(
        tmp_path, rigged_bundle, user_digits, write_user):
    from eval_board import engine_of, never, no_progress
    from autlearn.learning.head import load_weights, save_weights
    # the head-only candidate starts from a broken head (zeros), one epoch at a small learning rate: it stays bad
    svc, eng = _board(tmp_path, rigged_bundle, user_digits, write_user,
                      **{"training.epochs": 1, "training.min_steps": 0, "training.learning_rate": 1e-4})
    v1 = svc.paths.heads / "head-v1.npz"
    save_weights({k: np.zeros_like(v) for k, v in load_weights(v1).items()}, v1)
    eng2 = None
    try:
        r = eng.round("test", no_progress, never)
        assert r.outcome == "promoted" and r.cut == "last_block", r.detail
        # free beat both earlier candidates: by accuracy, or at the anchored one's accuracy by a lower loss (the
        # tiny bundle's tail after one epoch at 1e-4 may reach no more than the wrecked one on 30 samples)
        assert re.match(r"last_block/free (beat the earlier candidates|matched the best earlier candidate's "
                        r"accuracy) on", r.cut_reason), r.cut_reason
        got = {n: (float(a), float(loss)) for n, a, loss in
               re.findall(r"(head|last_block/\w+) (\d\.\d+) \(loss (\d+\.\d+)\)", r.cut_reason)}
        assert got["last_block/free"][0] >= max(got["head"][0], got["last_block/anchored"][0])
        assert got["last_block/free"][1] < 0.9 * got["last_block/anchored"][1]
        assert "cut last_block/free:" in r.detail
        rows = {v["version"]: v for v in svc.versions({})["versions"]}
        assert rows[r.version]["cut"] == "last_block" and rows[r.version]["cut_reason"] == r.cut_reason
        images, labels = user_digits
        paths = sorted((svc.paths.state.parent / "inbox").rglob("*.png"))[:8]
        files = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths]
        free_answers = svc.predict({"files": files, "top": 3})["predictions"]
        # the next round starts both last_block candidates from the free version; at a learning rate this small
        # they tie on the holdout and the earlier (anchored) one is kept: a version trained anchored on top
        write_user(svc.paths.state.parent / "inbox", images[200:260], labels[200:260], prefix="b")
        svc.config = svc.config.with_overrides(**{"training.learning_rate": 1e-12})
        eng2 = engine_of(svc)
        eng2.scan()
        r2 = eng2.round("test", no_progress, never)
        assert r2.outcome == "promoted" and r2.cut == "last_block", r2.detail
        assert r2.cut_reason.startswith("last_block/anchored "), r2.cut_reason
        w_free, w_anch = eng2.learner.current_weights(r.version), eng2.learner.current_weights(r2.version)
        assert svc.current_version() == r2.version
        assert any(not np.array_equal(w_free[k], w_anch[k]) for k in ("dw3_w", "pw3_w"))  # the convs moved
        svc.rollback({"version": r.version})  # back to the free version: its weights, exactly
        assert svc.current_version() == r.version
        assert svc.predict({"files": files, "top": 3})["predictions"] == free_answers
        head = eng2.learner.new_head(eng2.learner.version_cut(r.version))
        head.set_weights(w_free)  # as a rollback restores it: the same names whichever setting trained it
        assert all(np.array_equal(head.get_weights()[k], w_free[k]) for k in w_free)
    finally:
        eng.close()
        if eng2 is not None:
            eng2.close()
        svc.stop()


def test_a_bundle_whose_settings_are_malformed_is_refused_naming_the_cut(tmp_path, tiny_cuts_bundle):
    for bad, match in (([], "not a non-empty list"), ([{"name": "a", "l2": -1, "lr_scale": 1}], "'l2' must be"),
                       ([{"name": "a", "l2": 0, "lr_scale": 0}], "'lr_scale' must be"),
                       ([SETTINGS[0], SETTINGS[0]], "its own name")):
        root = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_cuts_bundle, root)
        m = json.loads((root / "manifest.json").read_text())
        m["variants"][0]["cuts"][0]["tail"]["regularisation"] = bad
        write_manifest(root, m)
        with pytest.raises(AutlearnError, match=f"cut 'last_block': tail.regularisation: .*{match}"):
            bundle_mod.load(root)


CONVS, TAIL_HEAD = ("dw3_w", "pw3_w"), ("w0", "b0", "w1", "b1", "dw3_b", "pw3_b")


def _steps(variant, b, setting, start, x, y, mask, steps=1, lr=1e-2):
    """`start` after `steps` LiteRT train steps with `setting` (a fresh interpreter: a fresh optimiser)."""
    from autlearn.learning.head import Head, active_mask
    h = Head(variant, b.class_capacity, b.train_batch, 1, setting)
    h.set_weights(start)
    for _ in range(steps):
        h.step(x, y, mask, active_mask(b.class_capacity, range(10)), lr)
    return h.get_weights()


def test_the_pull_is_an_input_of_train_and_its_anchor_is_the_cloud_weights_whatever_set_weights_did(
        tiny_tail_bundle):
    from autlearn.learning.head import Head
    b = bundle_mod.load(tiny_tail_bundle)
    v = b.variant()
    assert v.regularisation == (ANCHORED, FREE)  # the builder's defaults (--tail-l2 1e-3 --tail-lr-scale 0.3)
    head = Head(v, b.class_capacity, b.train_batch, 1)
    assert head.takes_pull and head.setting == ANCHORED  # the default: the anchored setting, as before
    shipped = head.get_weights()
    moved = {k: w + (0.05 if k in CONVS else 0.0) for k, w in shipped.items()}
    rng = np.random.default_rng(0)
    x = rng.random((b.train_batch, v.feature_size), np.float32)
    y = (np.arange(b.train_batch) % 10).astype(np.int32)
    none, ones = np.zeros(b.train_batch, np.float32), np.ones(b.train_batch, np.float32)
    # no data in the batch (every row masked): free moves nothing; a pull moves only the convolutions, back toward
    # the shipped (cloud) weights, not toward where set_weights put them
    free = _steps(v, b, FREE, moved, x, y, none, steps=3)
    pulled = _steps(v, b, Regularisation("strong", 1.0, 1.0), moved, x, y, none, steps=3)
    for k in shipped:
        np.testing.assert_array_equal(free[k], moved[k])
    for k in CONVS:
        assert np.abs(pulled[k] - shipped[k]).mean() < 0.6 * np.abs(moved[k] - shipped[k]).mean()
    for k in TAIL_HEAD:
        np.testing.assert_array_equal(pulled[k], moved[k])
    # with data: the same step moves the convolutions differently with l2 > 0 than with 0, the rest the same;
    # lr_scale scales the convolutions' (first, Adam) step and nothing else
    l2_0 = _steps(v, b, Regularisation("a", 0.0, 1.0), moved, x, y, ones)
    l2_1 = _steps(v, b, Regularisation("b", 1.0, 1.0), moved, x, y, ones)
    half = _steps(v, b, Regularisation("c", 0.0, 0.5), moved, x, y, ones)
    for k in CONVS:
        assert np.abs((l2_1[k] - moved[k]) - (l2_0[k] - moved[k])).max() > 1e-3
        np.testing.assert_allclose(half[k] - moved[k], 0.5 * (l2_0[k] - moved[k]), atol=1e-6)
    for k in TAIL_HEAD:
        np.testing.assert_allclose(l2_1[k], l2_0[k], atol=1e-7)
        np.testing.assert_allclose(half[k], l2_0[k], atol=1e-7)


@pytest.fixture(scope="module")
def old_tail_bundle(tiny_tail_bundle, tmp_path_factory) -> Path:
    """tiny_tail_bundle as the builder wrote it before the pull became an input: the tail's train compiles the
    anchored setting in (no l2/lr_scale inputs) and the manifest lists no tail.regularisation."""
    from autlearn.learning.head import Head
    from autlearn_build import tail_module as tm
    from autlearn_build.convert import convert_head
    from autlearn_build.head_module import SIGNATURES, TrainableModule

    class Compiled(tm.TailModule):
        def concrete_signatures(self):
            return TrainableModule.concrete_signatures(self)  # train(x, y, mask, active, lr)

    b = bundle_mod.load(tiny_tail_bundle)
    v = b.variant()
    shipped = Head(v, b.class_capacity, b.train_batch, 1).get_weights()  # the anchors too, as the builder's
    tail = Compiled(shipped, "last_block", tuple(v.info["tail"]["cut_shape"]), b.train_batch)
    root = tmp_path_factory.mktemp("old") / "b"
    shutil.copytree(tiny_tail_bundle, root)
    (root / v.info["head"]).write_bytes(convert_head(tail, SIGNATURES))
    m = json.loads((root / "manifest.json").read_text())
    del m["variants"][0]["tail"]["regularisation"]
    write_manifest(root, m, rehash_files=True)
    return root


def test_an_old_bundle_whose_tail_compiles_the_pull_in_trains_exactly_as_the_anchored_setting(
        tmp_path, old_tail_bundle, tiny_tail_bundle, user_digits, write_user):
    from ai_edge_litert.interpreter import Interpreter
    from autlearn.learning.head import Head
    from eval_board import engine_of, make_service, never, no_progress
    old, new = bundle_mod.load(old_tail_bundle), bundle_mod.load(tiny_tail_bundle)
    model = (old_tail_bundle / old.variant().info["head"]).read_bytes()
    assert sorted(Interpreter(model_content=model).get_signature_list()["train"]["inputs"]) == \
        ["active", "lr", "mask", "x", "y"]
    h = Head(old.variant(), old.class_capacity, old.train_batch, 1)
    assert not h.takes_pull and h.setting is None and old.variant().regularisation == ()
    with pytest.raises(AutlearnError, match="takes no l2/lr_scale inputs"):
        Head(old.variant(), old.class_capacity, old.train_batch, 1, FREE)
    start = {k: w + (0.05 if k in CONVS else 0.0) for k, w in h.get_weights().items()}
    rng = np.random.default_rng(1)
    x = rng.random((old.train_batch, old.variant().feature_size), np.float32)
    y = (np.arange(old.train_batch) % 10).astype(np.int32)
    ones = np.ones(old.train_batch, np.float32)
    was = _steps(old.variant(), old, None, start, x, y, ones, steps=3)
    now = _steps(new.variant(), new, ANCHORED, start, x, y, ones, steps=3)
    for k in was:
        np.testing.assert_allclose(was[k], now[k], atol=1e-6)
    # and a real round on it: one candidate (its only cut), the convolutions trained
    svc = make_service(tmp_path / "root", old_tail_bundle, **{"training.epochs": 2, "training.min_steps": 0})
    images, labels = user_digits
    write_user(svc.paths.state.parent / "inbox", images[:120], labels[:120])
    eng = engine_of(svc)
    try:
        eng.scan()
        r = eng.round("test", no_progress, never)
        assert r.outcome in ("promoted", "rejected") and r.cut == "head" and r.cut_reason is None, r.detail
        trained, initial = eng.learner.current_weights(r.version), eng.learner.current_weights(1)
        assert all(not np.array_equal(trained[k], initial[k]) for k in CONVS)
    finally:
        eng.close()
        svc.stop()
