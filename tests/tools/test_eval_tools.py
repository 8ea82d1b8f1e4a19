"""The evaluation's own machinery (tools/partition.py, tools/eval_*.py) on tiny sizes: the Dirichlet partition,
the bookkeeping (mean/spread, top-k), that a method that cannot learn scores at chance through the pipeline,
and the online (prequential) accounting through the board's real online round. No timing is asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from partition import (accuracy, dirichlet_partition, evaluate_per_user, label_skew, summarise, topk_accuracy,
                       train_test_split_user)


# ------------------------------------------------------------------------------------------ partition

@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_partition_uses_every_index_exactly_once(alpha):
    labels = np.random.default_rng(3).integers(0, 10, 1797)
    users = dirichlet_partition(labels, 12, alpha, seed=0, min_size=10)
    assert len(users) == 12 and all(len(u) >= 10 for u in users)
    allidx = np.concatenate(users)
    assert len(allidx) == len(labels) and np.array_equal(np.sort(allidx), np.arange(len(labels)))
    assert dirichlet_partition(labels, 12, alpha, seed=0, min_size=10)[3].tolist() == users[3].tolist()


def test_label_skew_responds_to_alpha():
    labels = np.repeat(np.arange(10), 180)
    skews = [np.mean([label_skew(labels, dirichlet_partition(labels, 10, a, seed=s, min_size=5)) for s in range(3)])
             for a in (0.05, 0.5, 5.0, 500.0)]
    assert skews == sorted(skews, reverse=True)  # smaller alpha, stronger skew
    assert skews[0] > 0.6 and skews[-1] < 0.1
    assert label_skew(labels, [np.arange(len(labels))]) == 0.0  # one user holding everything: no skew


def test_user_split_is_disjoint_and_complete():
    idx = np.arange(100, 150)
    tr, te = train_test_split_user(idx, 0.3, seed=1)
    assert len(te) == 15 and len(tr) == 35
    assert not set(tr) & set(te) and set(tr) | set(te) == set(idx.tolist())
    tr1, te1 = train_test_split_user(np.array([5, 6]), 0.01, seed=0)
    assert len(tr1) == 1 and len(te1) == 1  # both sides non-empty for two samples


# ------------------------------------------------------------------------------------------ bookkeeping

def test_mean_and_spread_over_users_leave_missing_users_out():
    s = summarise([0.5, 1.0, None, float("nan"), 0.0])
    assert s.n == 3 and s.mean == pytest.approx(0.5) and s.std == pytest.approx(np.std([0.5, 1.0, 0.0]))
    assert (s.min, s.max, s.median) == (0.0, 1.0, 0.5)
    assert summarise([]).mean is None and summarise([None]).n == 0
    users = [{"test_y": np.array([1, 1, 0, 0])}, {"test_y": np.array([2, 2])}, {"test_y": np.array([], int)}]
    r = evaluate_per_user(users, lambda u: np.ones(len(u["test_y"]), int))
    assert r["per_user"] == [0.5, 0.0, None] and r["mean"] == 0.25 and r["n_users"] == 2  # mean of users


def test_topk_and_word_scoring():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    truth = np.array([2, 0, 1])
    assert topk_accuracy(probs, truth, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(probs, truth, 2) == pytest.approx(1.0)
    assert accuracy(np.argmax(probs, 1), truth) == pytest.approx(1 / 3)
    from eval_text import score_words, truth_of

    truth_words = truth_of([["to", "be", "or"], ["not"]])
    assert truth_words == ["to", "be", "or", None, "not", None]  # sentence ends are not counted
    top = [["to", "a", "b"], ["a", "be", "c"], ["x", "y", "z"], ["<eos>", "a", "b"], [None, "not", "a"], ["q"] * 3]
    assert score_words(top, truth_words) == {"top1": 0.25, "top3": 0.75, "words": 4}


def test_constant_word_predictor_scores_its_words_share():
    from eval_text import score_words, truth_of

    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(50)]
    sents = [[vocab[j] for j in rng.integers(0, 50, 12)] for _ in range(200)]
    truth = truth_of(sents)
    words = [w for w in truth if w is not None]
    r = score_words([["w1", "w2", "w3"]] * len(truth), truth)
    assert r["top1"] == pytest.approx(np.mean([w == "w1" for w in words]))
    assert r["top3"] == pytest.approx(np.mean([w in ("w1", "w2", "w3") for w in words]))
    assert abs(r["top3"] - 3 / 50) < 0.02  # chance for 3 guesses among 50 equally likely words


def test_prequential_accounting():
    from eval_board import prequential_curve

    c = prequential_curve([(1, 4), (3, 4), (2, 2)])
    assert c["seen"] == 10 and c["accuracy"] == pytest.approx(0.6)
    assert c["seen_after_chunk"] == [4, 8, 10] and c["cumulative"] == pytest.approx([0.25, 0.5, 0.6])
    assert prequential_curve([])["accuracy"] is None
    with pytest.raises(ValueError):
        prequential_curve([(5, 4)])


# ------------------------------------------------------------------------------------------ through the pipeline

@pytest.fixture(scope="module")
def tiny_users(tiny_bundle, tmp_path_factory):
    import eval_image as ei

    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    work = tmp_path_factory.mktemp("eval")
    # near-IID users (large alpha): a test set balanced over the 10 digits, so chance is about 1/10
    data = ei.load_users(work, manifest["input"], 3, 1000.0, 0.3, seed=0, limit=450)
    return ei, manifest, work, data


def test_board_online_round_accounts_every_training_sample_once(tiny_users, tiny_bundle):
    ei, manifest, work, data = tiny_users
    u = data.users[0]
    r = ei.board_user(data, u, tiny_bundle, work / "boards", epochs=2, augment_copies=1)
    online = r["online_prequential"]
    rnd = r["autlearn_online_round"]
    # every training sample the board kept for learning (not its holdout) is predicted once, before training
    assert online["seen"] == rnd["n_train"] == r["pretrained_stream"]["seen"]
    assert rnd["n_train"] + rnd["n_holdout"] == len(u["train"])
    assert online["cumulative"][-1] == pytest.approx(online["accuracy"])
    assert r["autlearn_offline_aug_round"]["n_augmented"] > 0 and r["autlearn_offline_round"]["n_augmented"] == 0
    for m in ("pretrained", "autlearn_offline", "autlearn_offline_aug", "autlearn_online"):
        assert 0.0 <= r[m] <= 1.0
    assert r["n_test"] == len(u["test"])


@pytest.mark.slow
def test_a_model_trained_on_shuffled_labels_scores_at_chance(tiny_users):
    ei, manifest, work, data = tiny_users
    rng = np.random.default_rng(0)
    shuffled = {u["name"]: rng.permutation(data.labels[u["train"]]) for u in data.users}
    accs = ei.local_only(data, manifest, epochs=3, seed=0, train_labels=shuffled)
    n_test = sum(len(u["test"]) for u in data.users)
    assert len(accs) == 3 and n_test >= 120
    assert abs(float(np.mean(accs)) - 0.1) < 0.1  # labels carry no information: about 1 in 10 right


@pytest.mark.slow
def test_optimizer_reset_between_users_keeps_the_learning_rate():
    """Local-only and FedAvg re-use one compiled Keras model: a fresh Adam state per user/client must not
    zero the learning rate (it did once, and those baselines silently never trained)."""
    import tensorflow as tf

    from eval_text import _reset_optimizer

    m = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    m.compile(optimizer=tf.keras.optimizers.Adam(1e-2), loss="mse")
    x, y = np.ones((8, 3), np.float32), np.ones((8, 2), np.float32)
    m.fit(x, y, verbose=0)
    _reset_optimizer(m)
    state = {(getattr(v, "path", None) or v.name): np.array(v) for v in m.optimizer.variables}
    assert any("learning_rate" in k and v == pytest.approx(1e-2) for k, v in state.items())
    assert all(not np.any(v) for k, v in state.items() if "learning_rate" not in k)
    before = [np.array(w) for w in m.get_weights()]
    m.fit(x, y, verbose=0)
    assert any(not np.allclose(a, b) for a, b in zip(before, m.get_weights()))  # it still learns


# ------------------------------------------------------------------------------------------ Chinese group

_ZH_PUBLIC = ("\x1b[32m《行为准则》\x1b[m第一条\n请接受这一事实，并保持礼貌。意见不一致并不是借口。\n%\n"
              "古人云：锦瑟无端五十弦，一弦一柱思华年。\n%\n我们之中的许多贡献者\n使用不同的语言。\n%\n")
_ZH_TANG = ("\x1b[32m《锦瑟》\x1b[m\n\x1b[33m作者：李商隐\x1b[m\n锦瑟无端五十弦，一弦一柱思华年。\n"
            "庄生晓梦迷蝴蝶，望帝春心托杜鹃。\n%\n\x1b[32m《无题》\x1b[m\n\x1b[33m作者：李商隐\x1b[m\n"
            "昨夜星辰昨夜风，画楼西畔桂堂东。\n身无彩凤双飞翼，心有灵犀一点通。\n%\n"
            "\x1b[32m《静夜思》\x1b[m\n\x1b[33m作者：李白\x1b[m\n床前明月光，疑是地上霜。\n%\n")
_ZH_SONG = ("\x1b[32m词牌:《念奴娇》\x1b[m\n\x1b[33m作者:苏轼（１０３７－１１０１）\x1b[m\n"
            "大江东去，浪淘尽，千古风流人物。\n故垒西边，人道是，三国周郎赤壁。\n%\n")


def _zh_tree(root):
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (("chinese", _ZH_PUBLIC), ("tang300", _ZH_TANG), ("song100", _ZH_SONG)):
        (root / name).write_text(text, encoding="utf-8")
    return root


def _zh_split_is_disjoint(ez, root, dest, min_chars):
    users = ez.make_users(min_chars, 4000, 0.3, 0, None, root=root)
    folder = ez.public_folder(dest, root=root)
    public = "\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt")))
    assert users and public.strip() and "\x1b" not in public
    for u in users:
        assert u["train"] and u["test"] and not set(u["train"]) & set(u["test"])
        text = "\n".join(u["train"] + u["test"])
        assert not any(ln.startswith(("作者", "《")) for ln in text.splitlines()) and "\x1b" not in text
        assert not ez.clauses(text) & ez.clauses(public), u["name"]  # no poem line in the pretraining text
    return users, public


def test_chinese_group_users_are_poets_disjoint_from_the_public_text(tmp_path):
    import eval_zh as ez

    root = _zh_tree(tmp_path / "fortunes")
    assert sorted(ez.poet_units(root)) == ["zh/李商隐", "zh/李白", "zh/苏轼"]
    users, public = _zh_split_is_disjoint(ez, root, tmp_path / "public", 40)
    assert [u["name"] for u in users] == ["zh/李商隐"]  # the only poet with >= 40 characters
    assert "锦瑟" not in public and "贡献者" in public and "请接受这一事实" in public  # the quoting entry is left out
    assert ez.n_chars("床前明月光，疑是地上霜。abc") == 10


def test_chinese_group_on_the_installed_fortunes_zh(tmp_path):
    import eval_zh as ez

    if not (ez.ZH_DIR / ez.PUBLIC_FILE).is_file():
        pytest.skip("fortunes-zh is not installed (make eval installs it)")
    users, public = _zh_split_is_disjoint(ez, ez.ZH_DIR, tmp_path / "public", 1000)
    assert len(users) >= 4 and len(public) > 300_000


def test_centralised_and_fedavg_take_the_chinese_public_text_the_bundle_was_built_on(tmp_path):
    """eval_text's public text is the corpus's documents that the manifest does not hold out: the Chinese
    group's own folder (not Shakespeare), in the builder's order, as the builder split it."""
    import eval_text as et
    import eval_zh as ez
    from autlearn_build import text_data as td

    root = _zh_tree(tmp_path / "fortunes")
    folder = ez.public_folder(tmp_path / "public", root=root, per_file=1)
    corpus = td.load_corpus(str(folder), "cjk")
    _, held = td.split_documents(corpus, 0.5)
    manifest = {"metrics": {"held_out_documents": [d.name for d in held]}}
    train = et.public_text(manifest, corpus)
    assert [d.name for d in train] == [d.name for d in corpus.documents if d not in held] and train
    assert any("礼" in s for d in train for s in d.sentences) and not any("贡" in s for d in train for s in d.sentences)
    with pytest.raises(AssertionError, match="held-out"):
        et.public_text({"metrics": {"held_out_documents": ["hamlet"]}}, corpus)


def test_chinese_targets_compare_autlearn_with_every_other_method():
    import evaluate

    def m(top1, top3):
        return {"top1": {"mean": top1}, "top3": {"mean": top3}}

    zh = {"methods": {"pretrained": m(0.0, 0.01), "local_only": m(0.02, 0.04), "centralised": m(0.01, 0.05),
                      "fedavg": m(0.01, 0.02), "autlearn_offline_aug": m(0.015, 0.03)}}
    got = {t["target"]: t["met"] for t in evaluate.targets({"keyboard_zh": zh})}
    assert got == {f"keyboard (Chinese poets): AutLearn {k} >= {r}": met for k, r, met in [
        ("top1", "centralised", True), ("top1", "fedavg", True), ("top1", "local_only", False),
        ("top1", "pretrained", True), ("top3", "centralised", False), ("top3", "fedavg", True),
        ("top3", "local_only", False), ("top3", "pretrained", True)]}
