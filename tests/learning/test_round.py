"""The one round template (autlearn.learning.round) through both real learners: the same promoted, rejected,
stopped and skipped paths give the same events, records and result fields for the image and the keyboard
scenario. Real tiny bundles, interpreters, SQLite and files."""

from __future__ import annotations

import random

import pytest

from engine_helpers import engine_of, make_service, never

KINDS = ("image", "keyboard")
TEMPLATE_EVENTS = {"round_started", "features", "version_promoted", "version_rejected", "round_finished"}


def notes(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "\n".join(f"I met {rng.choice(['zorbek', 'quilla', 'mardok'])} at the {rng.choice(['market', 'river'])} "
                     f"{rng.choice(['today', 'again', 'early'])}." for _ in range(n)) + "\n"


@pytest.fixture
def board(tmp_path, tiny_bundle, text_bundle, user_digits, write_user):
    """board(kind, with_data=True, **overrides) → (service, engine) with the user's data scanned."""
    made = []

    def make(kind: str, with_data: bool = True, **overrides):
        if kind == "image":
            svc = make_service(tmp_path / kind, tiny_bundle, **{"training.epochs": 2, "training.min_steps": 0,
                                                                 "training.augment_copies": 0, **overrides})
            if with_data:
                images, labels = user_digits
                write_user(svc.paths.state.parent / "inbox", images[:120], labels[:120])
        else:
            svc = make_service(tmp_path / kind, text_bundle, **{"training.epochs": 1, "training.text_max_steps": 20,
                                                                "training.augment_copies": 0, **overrides})
            if with_data:
                (svc.paths.state.parent / "inbox" / "notes.txt").write_text(notes(150, 0), encoding="utf-8")
        eng = engine_of(svc)
        eng.scan()
        made.append((svc, eng))
        return svc, eng

    yield make
    for svc, eng in made:
        svc.stop()
        eng.close()


class Recorder:
    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def __call__(self, name: str, data: dict) -> None:
        self.events.append((name, data))

    def template(self) -> list[str]:
        return [name for name, _ in self.events if name in TEMPLATE_EVENTS]

    def last(self, name: str) -> dict:
        return [d for n, d in self.events if n == name][-1]


def check_record(eng, r) -> None:
    """The round's history row and its round_finished event say what the result says."""
    row = next(x for x in eng.store.rounds() if x["id"] == r.round_id)
    for k in ("outcome", "detail", "n_train", "n_holdout", "features_computed", "features_cached",
              "accuracy_before", "accuracy_after"):
        assert row[k] == getattr(r, k), k


def run_direct(eng, progress, checkpoint, tolerance: float):
    """The learner's round with a tolerance the configuration could not hold (the template is what is tested)."""
    lr = eng.bundle.learning_rate
    return eng.learner.run(eng.current_version(), "test", eng.config["training.epochs"], lr, tolerance, 0,
                           progress, checkpoint)


def test_promoted_round_same_events_records_and_fields(board):
    results = {}
    for kind in KINDS:
        svc, eng = board(kind, **{"training.promote_tolerance": 1.0})
        start, heads = eng.current_version(), len(eng.store.heads())
        rec = Recorder()
        r = eng.round("test", rec, never)
        assert r.outcome == "promoted" and r.detail.endswith(f"promoted (v{r.version})"), (kind, r.detail)
        assert r.version != start and eng.current_version() == r.version
        assert rec.template() == ["round_started", "features", "version_promoted", "round_finished"], kind
        assert rec.last("version_promoted") == {"version": r.version, "accuracy": r.accuracy_after,
                                                "previous_accuracy": r.accuracy_before}
        assert rec.last("round_finished") == r.event()
        new = eng.store.heads()
        assert len(new) == heads + 1 and new[-1]["status"] == "promoted" and new[-1]["round_id"] == r.round_id
        assert (new[-1]["n_train"], new[-1]["n_holdout"]) == (r.n_train, r.n_holdout) and r.n_holdout > 0
        assert eng.store.counts()["new"] == 0  # what the round learnt from is marked learnt
        check_record(eng, r)
        results[kind] = r
    img, kb = results["image"], results["keyboard"]
    assert list(img.as_dict()) == list(kb.as_dict())  # one reply shape for every scenario
    assert img.keyboard is None and kb.keyboard == kb.extras.as_dict() == kb.event()["keyboard"]
    assert "keyboard" not in img.event() and kb.extras.with_memory["top1"] == kb.accuracy_after
    assert img.extras.n_augmented == 0 and kb.as_dict()["n_augmented"] == 0


def test_rejected_round_same_events_records_and_fields(board):
    for kind in KINDS:
        svc, eng = board(kind)
        start = eng.current_version()
        rec = Recorder()
        r = run_direct(eng, rec, never, tolerance=-2.0)  # no holdout score can be 2 above the current one's
        assert r.outcome == "rejected", kind
        assert r.detail.endswith(f"candidate v{r.version} rejected, kept the current head (v{start})"), r.detail
        assert rec.template() == ["round_started", "features", "version_rejected", "round_finished"], kind
        assert rec.last("version_rejected")["version"] == r.version
        assert rec.last("round_finished") == r.event()
        assert eng.store.heads()[-1]["status"] == "rejected" and eng.current_version() == start
        assert eng.store.counts()["new"] == 0  # a rejected candidate learnt from them too
        check_record(eng, r)


@pytest.mark.parametrize("when", ["before_training", "after_training"])
def test_stopped_round_same_events_and_no_candidate(board, when):
    for kind in KINDS:
        svc, eng = board(kind)
        heads, calls = len(eng.store.heads()), []

        def stop(calls=calls):  # the first check (after the features) passes when stopping after training
            calls.append(1)
            return when == "before_training" or len(calls) > 1

        rec = Recorder()
        r = run_direct(eng, rec, stop, tolerance=0.0)
        assert r.outcome == "stopped" and r.version is None, kind
        if when == "before_training":
            assert r.detail == "the daemon is stopping" and r.accuracy_before is None
        else:
            assert r.detail == "the daemon is stopping; the candidate was discarded"
            assert r.accuracy_before is not None and r.accuracy_after is None
        assert rec.template() == ["round_started", "features", "round_finished"], kind
        assert rec.last("round_finished") == r.event()
        assert len(eng.store.heads()) == heads and eng.store.counts()["new"] > 0  # nothing learnt
        check_record(eng, r)


def test_skipped_round_without_data(board):
    details = {}
    for kind in KINDS:
        svc, eng = board(kind, with_data=False)
        rec = Recorder()
        r = eng.round("test", rec, never)
        assert r.outcome == "skipped" and r.version is None and r.accuracy_before is None, kind
        assert rec.template() == ["round_started", "features", "round_finished"]
        check_record(eng, r)
        details[kind] = r.detail
    assert details == {"image": "no training samples yet",
                       "keyboard": "not enough text yet (need sentences for training and for the holdout)"}
