"""The keyboard predictor's public methods that tools/eval_text.py drives: suggestions at every position of whole
sentences (`top_words`, the same as `predict --text` suggests) and the online accounting for a head that never
learns (`stream_hits`, the same chunks and counts as the board's online round). A real tiny text bundle."""

from __future__ import annotations

import random

from autlearn.learning.kbpredict import KeyboardPredictor
from autlearn.learning.knn import SPECIAL_COUNT
from engine_helpers import engine_of, make_service, never, no_progress

NAMES = ["zorbek", "quilla", "mardok"]


def notes(n: int, seed: int) -> str:
    rng = random.Random(seed)
    places, when = ["market", "river", "garden", "church"], ["today", "again", "early", "late"]
    lines = [f"Then I met {rng.choice(NAMES)} at the {rng.choice(places)} {rng.choice(when)}." for _ in range(n)]
    return "\n".join(lines) + "\n"


def test_top_words_at_every_position_agree_with_predict_text(tmp_path, text_bundle):
    svc = make_service(tmp_path / "root", text_bundle, **{"training.epochs": 3, "training.promote_tolerance": 1.0})
    (svc.paths.state.parent / "inbox" / "notes.txt").write_text(notes(200, 0), encoding="utf-8")
    eng = engine_of(svc)
    eng.scan()
    r = eng.round("test", no_progress, never)
    assert r.outcome == "promoted"
    p = KeyboardPredictor(eng.learner)
    sentences = [["then", "i", "met"], ["at", "the", "market", "today"]]
    top = p.top_words(sentences, r.version, 3)
    assert len(top) == sum(len(s) + 1 for s in sentences)  # after <bos>, after each word (the last: the end)
    specials = set(eng.learner.vocab[:SPECIAL_COUNT])
    assert all(len(t) == 3 and not specials & set(t) for t in top)
    typed = p.suggest("Then I met", r.version, 3)
    assert typed["context"] == sentences[0]
    assert top[3][0] == typed["suggestions"][0]["word"]  # the position after "met" is what predict --text answers
    assert set(NAMES) & set(top[3])  # the user's own words are suggested there
    before = p.top_words(sentences, 1, 3)  # the cloud head: no personal word yet
    assert not set(NAMES) & set(before[3])
    svc.stop()
    eng.close()


def test_stream_hits_chunks_the_stream_as_the_online_round_does(tmp_path, text_bundle):
    svc = make_service(tmp_path / "root", text_bundle, **{"training.mode": "online"})
    (svc.paths.state.parent / "inbox" / "a.txt").write_text(notes(120, 1), encoding="utf-8")
    eng = engine_of(svc)
    eng.scan()
    start = eng.current_version()
    r = eng.round("test", no_progress, never)
    assert r.mode == "online" and r.prequential
    chunks = KeyboardPredictor(eng.learner).stream_hits(start)
    assert [n for _, n in chunks] == [n for _, n in r.prequential]  # the same positions, the same chunks
    # the round predicted its first chunk with that head too, before learning (from float16 features: within 2)
    assert abs(chunks[0][0] - r.prequential[0][0]) <= 2
    assert all(0 <= h <= n for h, n in chunks)
    svc.stop()
    eng.close()
