"""The board choosing the cut (issue 14): deeper cuts within the budget, kept only when they win on the holdout."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from autlearn.errors import AutlearnError
from autlearn.learning.cuts import Budget, Cut, Trained, choose, cuts_of, plan
from autlearn.runtime import bundle as bundle_mod
from autlearn.runtime.bundle import Variant
from resign import write_manifest


def _cut(name: str, depth: int, ms: float | None, nbytes: int) -> Cut:
    info = {"cut": name, "tail": {} if ms is None else {"train_ms_per_sample": ms, "cache_bytes_per_sample": nbytes}}
    v = Variant(name=f"full@{name}", base_path=Path("b"), head_path=Path("h"), base_sha256="0" * 64,
                head_weights=("w0", "b0"), feature_size=nbytes, info=info)
    return Cut.of(v, depth)


HEAD, TAIL = _cut("head", 0, 0.003, 64), _cut("last_block", 1, 0.5, 6272)


def test_a_deeper_cut_trains_only_within_the_time_and_cache_budget():
    assert [c.name for c in plan([HEAD, TAIL], 200, 30, Budget(60.0, 10 << 20)).train] == ["head", "last_block"]
    slow = plan([HEAD, TAIL], 200, 30, Budget(1.0, 10 << 20))  # 200 x 30 x 0.5 ms = 3 s > 1 s
    assert [c.name for c in slow.train] == ["head"] and "3 s, over the 1 s budget" in slow.describe()
    big = plan([HEAD, TAIL], 200, 30, Budget(60.0, 1 << 20))  # 200 x 6272 B = 1.25 MB > 1.05 MB
    assert [c.name for c in big.train] == ["head"] and "cached activations" in big.skipped[0][1]
    unknown = plan([HEAD, _cut("last2_blocks", 1, None, 100)], 10, 1, Budget(1e9, 1 << 40))
    assert [c.name for c in unknown.train] == ["head"] and "does not state" in unknown.skipped[0][1]
    # the deeper cuts together: each fits alone (3 s, 6 s), both do not (9 s > 8 s): the shallower one trains
    deep2 = _cut("last2_blocks", 2, 1.0, 12544)
    assert [c.name for c in plan([HEAD, deep2], 200, 30, Budget(8.0, 10 << 20)).train] == ["head", "last2_blocks"]
    both = plan([HEAD, TAIL, deep2], 200, 30, Budget(8.0, 10 << 20))
    assert [c.name for c in both.train] == ["head", "last_block"]
    assert both.skipped[0][1] == "its training would take ~6 s after ~3 s for last_block, over the 8 s budget"
    held = plan([HEAD, TAIL, deep2], 200, 30, Budget(60.0, 3 << 20))  # 1.25 MB + 2.5 MB > 3.1 MB
    assert [c.name for c in held.train] == ["head", "last_block"] and "besides 1.3 MB of last_block" in held.skipped[0][1]


def test_a_deeper_cut_that_loses_or_ties_on_the_holdout_is_not_promoted():
    lost = choose([Trained(TAIL, 0.80), Trained(HEAD, 0.85)], 40)
    assert lost.keep.cut is HEAD and "no deeper cut beat it on 40 holdout samples" in lost.reason
    assert "last_block 0.800" in lost.reason and "head 0.850" in lost.reason
    assert choose([Trained(HEAD, 0.85), Trained(TAIL, 0.85)], 40).keep.cut is HEAD  # a tie keeps the cheaper cut
    # less accurate on the holdout: never kept, however much lower its loss
    assert choose([Trained(HEAD, 0.85, 0.9), Trained(TAIL, 0.80, 0.1)], 40).keep.cut is HEAD
    won = choose([Trained(HEAD, 0.85), Trained(TAIL, 0.90)], 40)
    assert won.keep.cut is TAIL and won.reason.startswith("last_block beat the shallower cuts")
    blind = choose([Trained(HEAD, None), Trained(TAIL, None)], 0)
    assert blind.keep.cut is HEAD and "no holdout" in blind.reason
    assert choose([Trained(HEAD, 0.5)], 10).reason == "trained head only"


def test_at_equal_holdout_accuracy_a_deeper_cut_is_kept_only_with_a_loss_lower_by_the_margin():
    from autlearn.learning.cuts import LOSS_MARGIN
    deep2 = _cut("last2_blocks", 2, 1.9, 12544)
    won = choose([Trained(HEAD, 1.0, 0.20), Trained(TAIL, 1.0, 0.10)], 26)
    assert won.keep.cut is TAIL and won.reason.startswith(
        "last_block matched the best shallower cut's accuracy on 26 holdout samples with a loss at least 10 % lower")
    assert "head 1.000 (loss 0.200)" in won.reason and "last_block 1.000 (loss 0.100)" in won.reason
    near = (1.0 - LOSS_MARGIN / 2) * 0.20  # lower, but by less than the margin
    kept = choose([Trained(HEAD, 1.0, 0.20), Trained(TAIL, 1.0, near)], 26)
    assert kept.keep.cut is HEAD and "by a loss 10 % lower at equal accuracy" in kept.reason
    assert choose([Trained(HEAD, 1.0, 0.20), Trained(TAIL, 1.0, 0.30)], 26).keep.cut is HEAD
    # each deeper cut against the best so far: last_block wins on accuracy, last2_blocks ties it with a lower loss
    chain = choose([Trained(HEAD, 0.9, 0.3), Trained(TAIL, 1.0, 0.2), Trained(deep2, 1.0, 0.1)], 30)
    assert chain.keep.cut is deep2 and "matched the best shallower cut's accuracy" in chain.reason
    # ... but a loss lower than the head's only does not displace a more accurate last_block
    assert choose([Trained(HEAD, 0.9, 0.3), Trained(TAIL, 1.0, 0.2), Trained(deep2, 0.9, 0.01)], 30).keep.cut is TAIL


def test_the_builder_writes_a_bundle_with_several_cuts_that_the_board_lists_shallowest_first(
        tmp_path, tiny_cuts_bundle, tiny_bundle, tiny_tail_bundle):
    from autlearn.learning.features import FeatureExtractor
    b = bundle_mod.load(tiny_cuts_bundle)  # verifies every sha256, the cuts' stems and tails too
    m = b.manifest
    v, one_head, one_tail = (json.loads((d / "manifest.json").read_text())["variants"][0]
                             for d in (tiny_cuts_bundle, tiny_bundle, tiny_tail_bundle))
    assert m["build"]["tail"] == "head,last_block"  # given as last_block,head: shallowest first
    # the same shapes as a one-cut bundle's: the head-only variant plus `cuts`, each cut a tail variant (no name)
    assert set(v) == set(one_head) | {"cuts"} and set(v["cuts"][0]) == set(one_tail) - {"name"}
    cuts = cuts_of(b)
    assert [c.name for c in cuts] == ["head", "last_block"] and [c.depth for c in cuts] == [0, 1]
    deep = v["cuts"][0]
    assert cuts[1].variant.feature_size == 7 * 7 * 128 == deep["tail"]["cache_bytes_per_sample"]
    assert cuts[1].train_ms_per_sample == deep["tail"]["train_ms_per_sample"] > 0  # the builder's measure
    assert cuts[1].cache_bytes_per_sample == 7 * 7 * 128 and deep["tail"]["train_ms_per_epoch"] > 0
    assert 0 <= deep["accuracy_int8"] <= 1 and cuts[1].variant.head_weights[:2] == ("dw3_w", "dw3_b")
    assert {deep["base"], deep["head"]} == {"base_full_last_block_int8.tflite", "head_full_last_block.tflite"}
    assert cuts[1].variant.base_sha256 != cuts[0].variant.base_sha256  # its own stem: its own cache keys
    quant = FeatureExtractor(cuts[1].variant, 1).cache_quant  # the declaration agrees with the stem's output
    assert quant == (pytest.approx(deep["cache_quantization"]["scale"]), deep["cache_quantization"]["zero_point"])
    assert b.variant().name == cuts[0].variant.name == "full"  # the served variant is still the head-only one

    root = tmp_path / "broken"
    shutil.copytree(tiny_cuts_bundle, root)
    m["variants"][0]["cuts"][0]["base"] = "missing.tflite"
    write_manifest(root, m)
    with pytest.raises(AutlearnError, match="cut 'last_block': base file not listed"):
        bundle_mod.load(root)


def _board(tmp_path, tiny_cuts_bundle, user_digits, write_user, **overrides):
    from eval_board import engine_of, make_service
    svc = make_service(tmp_path / "root", tiny_cuts_bundle,
                       **{"training.augment_copies": 0, "training.pull_min_holdout": 0, **overrides})
    images, labels = user_digits
    write_user(svc.paths.state.parent / "inbox", images[:200], labels[:200])
    eng = engine_of(svc)
    eng.scan()
    return svc, eng


def _through(cut: Cut, weights_file: Path, data: bytes, svc) -> np.ndarray:
    """What a version at `cut` predicts for one file, computed here: its stem, then its head."""
    from autlearn.intake import imaging
    from autlearn.learning.features import FeatureExtractor
    from autlearn.learning.head import Head, active_mask, load_weights
    x = imaging.load_input(data, "x.png", svc.bundle.input, svc.config["data.max_pixels"])
    f = FeatureExtractor(cut.variant, 1)(x[None])
    head = Head(cut.variant, svc.bundle.class_capacity, svc.bundle.train_batch, 1)
    head.set_weights(load_weights(weights_file))
    return head.predict(f, active_mask(svc.bundle.class_capacity, svc.store.classes(svc.bundle_id).values()))[0]


def test_a_deeper_cut_that_wins_on_the_holdout_is_promoted_and_predict_and_rollback_use_its_stem(
        tmp_path, tiny_cuts_bundle, user_digits, write_user):
    from eval_board import never, no_progress
    from autlearn.learning.head import load_weights, save_weights
    # The head-only cut starts from a broken head (all zeros: it answers one class) and trains one epoch at a
    # small learning rate, so it stays bad; the tail starts from the bundle's trained tail: it must win.
    svc, eng = _board(tmp_path, tiny_cuts_bundle, user_digits, write_user,
                      **{"training.epochs": 1, "training.min_steps": 0, "training.learning_rate": 1e-4})
    v1 = svc.paths.heads / "head-v1.npz"
    save_weights({k: np.zeros_like(v) for k, v in load_weights(v1).items()}, v1)
    try:
        r = eng.round("test", no_progress, never)
        assert r.outcome == "promoted" and r.cut == "last_block", r.detail
        # both settings of the tail's pull trained; one of them beat the head-only candidate and was kept
        assert re.match(r"last_block/(anchored|free) beat the earlier candidates on", r.cut_reason), r.cut_reason
        assert "last_block/anchored 0." in r.cut_reason and "last_block/free 0." in r.cut_reason
        assert "cut last_block/" in r.detail
        st = svc.status({})
        assert st["head"]["version"] == r.version and st["head"]["cut"] == "last_block"
        rows = {v["version"]: v for v in svc.versions({})["versions"]}
        assert rows[1]["cut"] == "head" and rows[r.version]["cut"] == "last_block"
        assert rows[r.version]["cut_reason"] == r.cut_reason
        tail = cuts_of(svc.bundle)[1]
        f = sorted((svc.paths.state.parent / "inbox").rglob("*.png"))[0]
        data = f.read_bytes()
        ans = svc.predict({"files": [{"name": f.name, "data": base64.b64encode(data).decode()}], "top": 10})
        assert ans["version"] == r.version
        got = {t["label"]: t["p"] for t in ans["predictions"][0]["top"]}
        want = _through(tail, svc.paths.heads / rows[r.version]["file"], data, svc)
        slots = svc.store.classes(svc.bundle_id)
        assert all(abs(got[name] - float(want[slot])) < 1e-5 for name, slot in slots.items() if name in got)
        # rolled back to v1, predict answers through the head-only stem again (64 features, its own head)
        svc.rollback({"version": 1})
        back = svc.predict({"files": [{"name": f.name, "data": base64.b64encode(data).decode()}], "top": 10})
        want1 = _through(cuts_of(svc.bundle)[0], v1, data, svc)
        got1 = {t["label"]: t["p"] for t in back["predictions"][0]["top"]}
        assert back["version"] == 1 and all(abs(got1[n] - float(want1[s])) < 1e-5 for n, s in slots.items()
                                            if n in got1)
        # the next round starts from v1 (head only) and judges it through its own stem
        r2 = eng.round("test", no_progress, never)
        assert r2.outcome in ("promoted", "rejected") and r2.accuracy_before is not None
    finally:
        eng.close()
        svc.stop()


def test_a_deeper_cut_over_the_budget_is_not_trained_and_the_version_says_why(
        tmp_path, tiny_cuts_bundle, user_digits, write_user):
    from eval_board import never, no_progress
    svc, eng = _board(tmp_path, tiny_cuts_bundle, user_digits, write_user,
                      **{"training.cut_budget_s": 0.0})
    try:
        r = eng.round("test", no_progress, never)
        assert r.outcome == "promoted" and r.cut == "head"
        # each setting is a candidate the budget counts: both are left out, each saying why
        assert r.cut_reason.startswith("trained head only; not last_block/anchored: its training would take")
        assert "; not last_block/free: its training would take" in r.cut_reason
        assert "over the 0 s budget" in r.cut_reason
        row = svc.versions({})["versions"][-1]
        assert row["cut"] == "head" and row["cut_reason"] == r.cut_reason
        assert svc.status({})["head"]["cut"] == "head"
    finally:
        eng.close()
        svc.stop()


def _plant_tail_version(svc, weights_of) -> None:
    """A promoted `last_block` version holding `weights_of(the tail's initial weights)`: where the tail's
    candidate of the next round starts."""
    from autlearn.learning.head import Head, save_weights
    tail = cuts_of(svc.bundle)[1]
    w = Head(tail.variant, svc.bundle.class_capacity, svc.bundle.train_batch, 1).get_weights()
    save_weights(weights_of(w), svc.paths.heads / "tail-planted.npz")
    svc.store.add_head(svc.bundle_id, svc.variant.name, "promoted", "tail-planted.npz", cut="last_block")


def test_a_deeper_cut_that_loses_on_the_holdout_in_a_round_keeps_the_head_only_candidate(
        tmp_path, tiny_cuts_bundle, user_digits, write_user):
    from eval_board import never, no_progress
    svc, eng = _board(tmp_path, tiny_cuts_bundle, user_digits, write_user,
                      **{"training.epochs": 1, "training.min_steps": 0, "training.learning_rate": 1e-4})
    try:
        # an earlier tail version that is broken (all zeros: one class for every input) is where the tail's
        # candidate starts; the head-only one starts from the bundle's head: the tail trains, and loses
        _plant_tail_version(svc, lambda w: {k: np.zeros_like(v) for k, v in w.items()})
        r = eng.round("test", no_progress, never)
        assert r.cut == "head" and r.outcome == "promoted", r.detail
        assert r.cut_reason.startswith(f"kept head: no later candidate beat it on {r.n_holdout} holdout samples")
        assert "last_block/anchored 0." in r.cut_reason and "last_block/free 0." in r.cut_reason  # trained, scored
        row = svc.versions({})["versions"][-1]
        assert row["version"] == r.version and row["cut"] == "head" and row["cut_reason"] == r.cut_reason
    finally:
        eng.close()
        svc.stop()


def _one_class(w: dict, slot: int, logit: float) -> dict:
    """`w` zeroed but for the last bias (the logits'), `logit` at `slot`: the head answers `slot` for every input,
    with a confidence that `logit` sets."""
    out = {k: np.zeros_like(v) for k, v in w.items()}
    out[list(w)[-1]][slot] = logit
    return out


@pytest.mark.parametrize("head_logit, tail_logit, kept", [(5.0, 1.0, "last_block"), (1.0, 5.0, "head")])
def test_at_equal_holdout_accuracy_a_round_keeps_the_deeper_cut_only_when_its_holdout_loss_is_lower(
        tmp_path, tiny_cuts_bundle, user_digits, write_user, head_logit, tail_logit, kept):
    from eval_board import never, no_progress
    from autlearn.learning.head import load_weights, save_weights
    # Both cuts' candidates start from a head that answers one class for every input (so they tie on any holdout),
    # one more sure of it than the other, and train one epoch at a tiny learning rate (the answer stays): the one
    # that is less sure has the lower cross-entropy on the holdout (9 of its 10 classes are wrong either way).
    svc, eng = _board(tmp_path, tiny_cuts_bundle, user_digits, write_user,
                      **{"training.epochs": 1, "training.min_steps": 0, "training.learning_rate": 1e-6})
    try:
        slot = svc.store.classes(svc.bundle_id)[str(int(user_digits[1][0]))]
        v1 = svc.paths.heads / "head-v1.npz"
        save_weights(_one_class(load_weights(v1), slot, head_logit), v1)
        _plant_tail_version(svc, lambda w: _one_class(w, slot, tail_logit))
        r = eng.round("test", no_progress, never)
        assert r.cut == kept, r.detail
        if kept == "last_block":  # anchored and free tie too (same start, a tiny step): the earlier one is kept
            assert r.cut_reason.startswith(f"last_block/anchored matched the best earlier candidate's accuracy on "
                                           f"{r.n_holdout} holdout samples with a loss at least 10 % lower"), r.cut_reason
        else:
            assert r.cut_reason.startswith(f"kept head: no later candidate beat it on {r.n_holdout} holdout samples")
        acc = [float(a) for a in re.findall(r"(?:head|last_block/\w+) (\d\.\d+) \(loss", r.cut_reason)]
        assert len(acc) == 3 and acc[0] == acc[1] == acc[2]  # they tied on accuracy: the loss decided
        row = {v["version"]: v for v in svc.versions({})["versions"]}.get(r.version)
        assert row is None or (row["cut"] == kept and row["cut_reason"] == r.cut_reason)
    finally:
        eng.close()
        svc.stop()


def test_a_round_training_two_cuts_decodes_each_file_once_and_feeds_each_stem_its_own_features(
        tmp_path, tiny_cuts_bundle, user_digits, write_user):
    from eval_board import never
    from autlearn.intake import augment, imaging
    from autlearn.learning.features import FeatureExtractor
    svc, eng = _board(tmp_path, tiny_cuts_bundle, user_digits, write_user,
                      **{"training.augment_copies": 1, "training.epochs": 1, "training.min_steps": 0})
    try:
        events = []
        r = eng.round("test", lambda name, data: events.append((name, data)), never)
        assert "last_block/free 0." in r.cut_reason  # both cuts trained and were scored
        feats = next(d for name, d in events if name == "features")
        n = r.n_train + r.n_holdout
        assert n == 200 and feats["files_read"] == 200  # one read and decode per file for both stems
        assert sum(eng.learner.source(c).files_read for c in cuts_of(svc.bundle)) == 200  # (400: once per stem)
        # computed by each stem: every sample (the head-only stem's copies count in `augmented_computed`, the
        # deeper stem's in features_computed, as before the shared pass)
        assert r.extras.augmented_computed == r.extras.n_augmented > 0
        assert r.features_computed == 200 + 200 + r.extras.n_augmented
        # what each stem got is its own output for the sample (and for the copy made once for both stems)
        samples = eng.learner.store.usable_samples()[:6]
        for c in cuts_of(svc.bundle):
            src = eng.learner.source(c)
            train = [not s.holdout for s in samples]
            (x, kept, computed, cached), (xa, kept_a, _, _) = src.with_copies(samples, train, 1, eng_seed(svc))
            assert computed == 0 and cached == len(samples) and len(kept_a) == sum(train) > 0
            inputs = [imaging.load_input(Path(s.path).read_bytes(), s.path, svc.bundle.input,
                                         svc.config["data.max_pixels"]) for s in samples]
            ext = FeatureExtractor(c.variant, 1)
            np.testing.assert_allclose(x, ext(np.stack(inputs)), atol=1e-6)
            copies = [augment.augment_image(inputs[i], vseed) for i, s in enumerate(samples) if train[i]
                      for _, vseed in augment.image_variants(1, eng_seed(svc), s.sha256)]
            np.testing.assert_allclose(xa, ext(np.stack(copies)), atol=1e-6)
            assert x.shape[1] == (7 * 7 * 128 if c.depth else 64)
    finally:
        eng.close()
        svc.stop()


def eng_seed(svc) -> int:
    """The seed a round's augmented copies are drawn with (training.seed)."""
    return int(svc.config["training.seed"])
