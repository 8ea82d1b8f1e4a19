"""The keyboard on the board: personal words, the memory of the user's contexts, fine-tuning, online mode,
`predict --text`. A real tiny text bundle from the builder, the real interpreter, SQLite and files."""

from __future__ import annotations

import hashlib
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from eval_board import engine_of, make_service, never, no_progress
from harness import BIN

NAMES = ["zorbek", "quilla", "mardok", "tevvy"]
PLACES = ["market", "garden", "river", "church"]


def user_text(n: int, seed: int) -> str:
    """A writer with their own words and phrasing: names the public corpus never saw, in fixed phrases."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        name, place = rng.choice(NAMES), rng.choice(PLACES)
        lines.append(rng.choice([f"I met {name} at the {place} today.", f"Tomorrow {name} and I go to the {place}.",
                                 f"Have you seen {name} lately?"]))
    return "\n".join(lines) + "\n"


def test_keyboard_round_learns_personal_words_and_phrasing(tmp_path, text_bundle):
    svc = make_service(tmp_path / "root", text_bundle, **{"training.epochs": 5})
    inbox = svc.paths.state.parent / "inbox"
    (inbox / "notes.txt").write_text(user_text(300, 0), encoding="utf-8")
    (inbox / "bad.txt").write_bytes(b"caf\xe9 au lait")  # Latin-1, not UTF-8
    eng = engine_of(svc)
    rep = eng.scan()
    assert rep.added == 1 and rep.quarantined == 1
    r = eng.round("test", no_progress, never)
    kb = r.extras
    assert set(NAMES) <= set(kb.personal_words)  # the user's own words claimed spare slots
    assert r.outcome == "promoted"
    assert kb.with_memory["top3"] >= kb.pretrained["top3"] + 0.10  # the user's phrasing is learnt
    assert kb.fine_tuned["top1"] >= kb.pretrained["top1"]
    assert kb.augmented_positions > 0  # synonym replacement from the bundle's table added training text
    s = svc.predict({"text": "Lunch was fine. Then I met"})
    assert s["context"] == ["then", "i", "met"]  # the sentence being typed
    assert len(s["suggestions"]) == 3
    assert any(x["word"] in NAMES for x in s["suggestions"])  # a personal word is now predictable
    assert all(not x["word"].startswith("<") for x in s["suggestions"])
    # before personalisation no personal word could be suggested
    before = svc.predict({"text": "Lunch was fine. Then I met", "version": 1})
    assert not any(x["word"] in NAMES for x in before["suggestions"])
    svc.stop()
    eng.close()


def test_keyboard_online_mode_scores_each_sentence_before_learning_it(tmp_path, text_bundle):
    svc = make_service(tmp_path / "root", text_bundle, **{"training.mode": "online"})
    inbox = svc.paths.state.parent / "inbox"
    (inbox / "a.txt").write_text(user_text(200, 1), encoding="utf-8")
    eng = engine_of(svc)
    eng.scan()
    r = eng.round("test", no_progress, never)
    assert r.mode == "online" and r.prequential
    first = r.prequential[:3]
    last = r.prequential[-3:]
    acc = lambda chunks: sum(h for h, _ in chunks) / max(1, sum(n for _, n in chunks))
    assert acc(last) > acc(first)  # predicted before learning: early chunks could not know the names yet
    svc.stop()
    eng.close()


def test_tokenizer_matches_the_builder(text_bundle):
    from autlearn.runtime.bundle import load
    from autlearn.learning.keyboard import Tokenizer
    from autlearn_build import text_data  # the cloud's own tokenizer (importing it loads no TensorFlow)
    tok = Tokenizer(load(text_bundle).manifest["tokenizer"])
    sample = "O’er the hills! Don't go…\n\nA new paragraph, with 3 numbers? 'Tis “quoted” — ÉTÉ."
    assert tok.sentences(sample) == text_data.sentences(sample)


def test_synonym_augmentation_uses_the_bundle_table(text_bundle, tmp_path):
    from autlearn.runtime.bundle import load
    from autlearn.learning.keyboard import load_synonyms
    table = load_synonyms(load(text_bundle))
    assert table and all(isinstance(v, list) and all(isinstance(w, str) for w in v) for v in table.values())
    svc = make_service(tmp_path / "root", text_bundle)
    eng = engine_of(svc)
    word = next(iter(table))
    sentences = [[word, "and", word]] * 20
    aug = eng.learner.augmented(sentences, 1, 0, rate=1.0)
    assert aug and all(len(a) >= 3 for a in aug)
    assert all(a[0] in table[word] or a[0] == word for a in aug)
    assert eng.learner.augmented(sentences, 1, 0, rate=1.0) == aug  # seeded: reproducible
    svc.stop()
    eng.close()


def test_daemon_keyboard_end_to_end_with_autlearnctl(tmp_path, text_bundle):
    from harness import Daemon, ctl
    d = Daemon(tmp_path / "r", text_bundle, training="min_new_samples = 1\nepochs = 5\n").up()
    try:
        (tmp_path / "notes.txt").write_text(user_text(300, 2), encoding="utf-8")
        (tmp_path / "notes.txt").rename(d.inbox / "notes.txt")
        st = d.wait_round()
        assert st["last_round"]["outcome"] == "promoted"
        assert set(NAMES) <= set(st["personal_words"])
        p = subprocess.run([str(BIN / "autlearnctl"), "--root", str(d.root), "predict", "--text", "I met"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        assert any(name in p.stdout for name in NAMES)
        assert ctl(d.root, "predict", "--text", "I met")["context"] == ["i", "met"]
    finally:
        assert d.stop() == 0


def test_a_budget_the_full_width_misses_runs_the_pruned_lstm(tmp_path, text_variant_bundle):
    """model.max_memory_mb between the two widths' figures (deterministic: model + tensor bytes) makes the board
    run h16: its features, cache entries, heads and context memory are 16 wide; the tokenizer is the bundle's."""
    from autlearn.learning.featcache import feature_key
    from autlearn.learning.keyboard import KeyboardLearner
    from autlearn.runtime.bundle import load
    from autlearn.runtime.measure import measure_variants

    by_name = {m.name: m for m in measure_variants(load(text_variant_bundle), 1, repeats=3)}
    assert by_name["h16"].memory_bytes < by_name["full"].memory_bytes
    budget_mb = (by_name["h16"].memory_bytes + by_name["full"].memory_bytes) / 2 / (1 << 20)
    svc = make_service(tmp_path / "root", text_variant_bundle, **{"training.epochs": 5,
                                                                  "model.max_memory_mb": budget_mb})
    assert svc.variant.name == "h16" and svc.variant.feature_size == 16
    (svc.paths.state.parent / "inbox" / "notes.txt").write_text(user_text(300, 3), encoding="utf-8")
    eng = engine_of(svc)
    eng.scan()
    r = eng.round("test", no_progress, never)
    assert r.outcome == "promoted" and set(NAMES) <= set(r.extras.personal_words)
    assert r.extras.with_memory["top3"] >= r.extras.pretrained["top3"] + 0.10
    kl = eng.learner
    assert kl.learnt_path.name == "keyboard-learnt-h16.npy" and kl.learnt_path.exists()
    model = kl.model(eng.current_version(), kl.active())
    assert model.memory.keys.shape[1] == 16 and len(model.memory.keys) > 0
    s = svc.predict({"text": "Lunch was fine. Then I met"})
    assert s["context"] == ["then", "i", "met"] and len(s["suggestions"]) == 3
    assert any(x["word"] in NAMES for x in s["suggestions"])
    # the same words, the same token ids as the full width; features (and their cache keys) per variant's base
    bundle = load(text_variant_bundle)
    full = KeyboardLearner(bundle, "other", bundle.variant("full"), kl.store, kl.extractor, kl.cache, tmp_path, 1, 0.1)
    sentences = [["i", "met", "zorbek", "at", "the", "market"]]
    slots = kl.store.classes(kl.bundle_id)
    assert np.array_equal(full.encode(sentences, slots)[0], kl.encode(sentences, slots)[0])
    x = kl.encode(sentences, slots)[0]
    f, _, _ = kl.features(x)
    assert f.shape == (len(x), kl.t, 16)

    def keys(name):
        return [feature_key(hashlib.sha256(row.tobytes()).hexdigest(), bundle.variant(name).base_sha256, kl.prep)
                for row in x]

    assert len(kl.cache.get_many(keys("h16"))) == len(x)  # cached under the pruned base's sha256 …
    assert len(kl.cache.get_many(keys("full"))) == 0  # … so the full width never reads a 16-wide feature
    svc.stop()
    eng.close()


def test_holdout_hits_are_counted_as_suggested_never_a_special_token():
    from autlearn.learning.knn import SPECIAL_COUNT, topk_hits

    probs = np.full((2, SPECIAL_COUNT + 4), 0.01, np.float32)
    probs[:, 1] = 0.9  # <unk> is the model's favourite, but it is never shown to the user
    probs[0, SPECIAL_COUNT + 2] = 0.5  # the best real word: the first suggestion
    probs[1, SPECIAL_COUNT + 0] = 0.5
    probs[1, SPECIAL_COUNT + 1] = 0.4
    probs[1, SPECIAL_COUNT + 3] = 0.3  # third suggestion
    y = np.array([SPECIAL_COUNT + 2, SPECIAL_COUNT + 3])
    assert topk_hits(probs, y) == (1, 2)
    assert probs[0, 1] == np.float32(0.9)  # the caller's array is left as it was
