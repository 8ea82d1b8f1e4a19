"""Languages written without spaces: the builder's `cjk` tokenizer (one token per Chinese/Japanese character),
chosen by `--tokenizer auto`, recorded in the manifest and reproduced by the board (a child process in which
TensorFlow cannot be imported); a build whose held-out text is mostly <unk> fails and names the tokenizer; a
build whose model is no better than suggesting the most frequent characters says so (a 1-epoch Chinese build
was such a model: ~0 % top-1 on other text, no warning)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from conftest import no_tensorflow_env  # noqa: E402

SUBJECTS = ["我", "你", "他们", "老师", "我的朋友", "妈妈"]
VERBS = ["喜欢", "买了", "看见", "想要", "送给我", "推荐"]
OBJECTS = ["这本书", "新手机", "那只猫", "一杯咖啡", "苹果", "两张电影票"]
ENDS = ["。", "！", "？", "；"]
PROBE = ("我今天买了iPhone 12，很好用！她说：「真的吗？」\n第二行没有句号\n\n日本語のテキストも、文字ごとに。Café 3 ü\n\n"
         "\x1b[33m    -- Debian \x1b[32m《行为准则》\x1b[m第一条\x1b[m\n与他人合\n作，\x07共同\x08努力。")

BOARD = r'''
import json, sys
try:
    import tensorflow  # noqa: F401
    tf = True
except ImportError:
    tf = False
from autlearn.runtime.bundle import load
from autlearn.intake.kbtext import Tokenizer
b = load(sys.argv[1])
tok = Tokenizer(b.manifest["tokenizer"])
text = sys.argv[2]
print(json.dumps({"tf": tf, "kind": tok.kind, "sentences": tok.sentences(text),
                  "streamed": list(tok.stream(iter(text.splitlines(keepends=True))))}))
'''


def _corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for f in range(3):
        lines = [f"{rng.choice(SUBJECTS)}{rng.choice(VERBS)}{rng.choice(OBJECTS)}{rng.choice(ENDS)}"
                 for _ in range(220)]
        (root / f"part{f}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _build(tmp: Path, tokenizer: str) -> tuple[int, Path]:
    from autlearn_build.cli import main
    out = tmp / f"bundle-{tokenizer}"
    rc = main(["text", "--data", str(_corpus(tmp / "corpus")), "--out", str(out), "--epochs", "2", "--seed", "0",
               "--vocab", "60", "--seq-len", "8", "--embed", "8", "--hidden", "16", "--spare-slots", "6",
               "--train-batch", "16", "--val-fraction", "0.34", "--batch-size", "16", "--tokenizer", tokenizer])
    return rc, out


def test_cjk_tokenizer_takes_each_character_and_keeps_other_words():
    from autlearn_build.text_data import choose_tokenizer, sentences
    assert sentences("我今天去市场。你呢？Hello world", "cjk") == [["我", "今", "天", "去", "市", "场"],
                                                              ["你", "呢"], ["hello", "world"]]
    assert sentences("合\n作", "cjk") == [["合", "作"]]  # a line end inside a paragraph is a wrap
    assert sentences("一行\n\n二行", "cjk") == [["一", "行"], ["二", "行"]]  # a blank line ends a sentence
    assert sentences("一行！\n二行；三", "cjk") == [["一", "行"], ["二", "行"], ["三"]]  # full-width ！；
    assert sentences("我今天去市场。你呢？") == [["我今天去市场", "你呢"]]  # the word tokenizer: runs, no 。
    assert choose_tokenizer("auto", "我今天去市场买了很多东西 and english") == "cjk"
    assert choose_tokenizer("auto", "english text with one 字") == "word"


def test_a_chinese_build_with_the_word_tokenizer_fails_and_names_the_right_one(tmp_path, capsys):
    rc, out = _build(tmp_path, "word")
    err = capsys.readouterr().err
    assert rc != 0 and not (out / "manifest.json").exists()
    assert "<unk>" in err and "--tokenizer cjk" in err, err


def test_frequency_baseline_scores_the_three_most_frequent_training_words():
    from autlearn_build.text_build import frequency_baseline

    # ids 0-3 are special (never counted); training words by frequency: 7 (4x), 5 (3x), 9 (2x), 6 (1x)
    y_train = np.array([[7, 7, 5, 3, 1, 2], [7, 5, 9, 7, 9, 5], [6, 0, 0, 3, 2, 1]])
    y_val = np.array([[7, 6, 5, 3], [8, 9, 1, 2]])  # counted: 7 6 5 8 9
    b = frequency_baseline(y_train, y_val)
    assert b["top1"] == pytest.approx(1 / 5) and b["top3"] == pytest.approx(3 / 5)
    assert np.isnan(frequency_baseline(y_train, np.array([[1, 2, 3]]))["top1"])


def test_a_model_at_the_frequency_baseline_is_reported_as_not_learning_from_context():
    from autlearn_build.text_build import context_warning

    w = context_warning(0.0282, 0.0218, 237)
    assert w and "frequency baseline" in w and "237 optimiser steps" in w and "--epochs" in w
    assert context_warning(0.08, 0.0218, 939) is None  # past the plateau: no warning
    assert context_warning(float("nan"), 0.02, 10) is None


@pytest.mark.slow
def test_chinese_bundle_board_tokenizes_like_the_builder(tmp_path):
    from autlearn_build.text_data import sentences
    rc, out = _build(tmp_path, "auto")
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["tokenizer"]["kind"] == "cjk"
    assert m["metrics"]["unk_rate"] < 0.2
    assert "我" in m["vocabulary"] and "买" in m["vocabulary"]
    assert 0.0 < m["metrics"]["frequency_top1"] <= m["metrics"]["frequency_top3"] <= 1.0
    assert m["metrics"]["pretrain_steps"] >= 2
    p = subprocess.run([sys.executable, "-c", BOARD, str(out), PROBE], capture_output=True, text=True, timeout=120,
                       env=no_tensorflow_env())
    assert p.returncode == 0, p.stderr[-3000:]
    board = json.loads(p.stdout.strip().splitlines()[-1])
    assert board["tf"] is False and board["kind"] == "cjk"
    expected = sentences(PROBE, "cjk")
    assert board["sentences"] == expected and board["streamed"] == expected
    assert ["第", "二", "行", "没", "有", "句", "号"] in expected and ["café", "3", "ü"] in expected
    assert ["debian", "行", "为", "准", "则", "第", "一", "条", "与", "他", "人", "合", "作", "共", "同", "努", "力"] \
        in expected  # colour codes removed, the wrapped line goes on, BEL and backspace removed
    assert not any("33m" in w or "32m" in w for s in expected for w in s)


V1_CJK = {"version": 1, "kind": "cjk", "normalization": "NFKC", "lowercase": True, "apostrophes": "\u2019",
          "word_pattern": "[\u4e00-\u9fff]|[^\\W_\u4e00-\u9fff]+", "sentence_end_pattern": "[.!?;\u3002\\n]+",
          "paragraph_break_pattern": "\\n[ \\t\\r\\f\\v]*\\n"}  # a bundle built before tokenizer version 2


def test_a_bundle_of_tokenizer_version_1_keeps_its_token_stream():
    from autlearn.intake.kbtext import Tokenizer

    old = Tokenizer(V1_CJK)
    assert old.sentences("一行\n二行") == [["一", "行"], ["二", "行"]]  # its line end still ends a sentence
    assert old.sentences("\x1b[31m红\x1b[0m") == [["31m", "红", "0m"]]  # its escape codes still give tokens
    assert list(old.stream(iter(["\x1b[31m红\x1b", "[0m"]))) == [["31m", "红", "0m"]]


def test_board_stream_removes_an_escape_code_cut_between_pieces():
    from autlearn_build.text_data import sentences, tokenizer_manifest

    from autlearn.intake.kbtext import Tokenizer

    tok = Tokenizer(tokenizer_manifest("cjk"))
    text = "红色\x1b[1;31m警告\x1b]0;标题\x07结束\x1b(B。好"
    expected = sentences(text, "cjk")
    assert expected == [["红", "色", "警", "告", "结", "束"], ["好"]]
    for cut in range(len(text) + 1):  # every place a read piece can end
        assert list(tok.stream(iter([text[:cut], text[cut:]]))) == expected, cut
    assert tok.context("\x1b[32m你好\x1b[m世") == ["你", "好", "世"]


def test_coloured_text_is_text_not_binary():
    from autlearn.intake.kbtext import text_problem

    assert text_problem(("\x1b[33m    -- Debian \x1b[32m《准则》\x1b[m第一条\x1b[m\n" * 50).encode()) is None
    assert "binary" in text_problem(bytes(range(1, 32)) * 20)
