"""tools/eval_camera.py's bookkeeping on tiny synthetic photos (no bundle, no TensorFlow): every user has classes
new to the public bundle, no test shot is in any training set, the split check catches a leak, and a missing
scikit-image wheel is a clear error naming `make eval-deps`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import eval_camera as ec

SPEC = {"kind": "image", "height": 24, "width": 24, "channels": 3, "color_mode": "RGB", "scale": 1 / 127.5,
        "offset": -1.0, "fit_box": 0, "preprocessing_version": 3}


def _photos(n):
    rng = np.random.default_rng(0)
    return [(f"p{i}", Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))) for i in range(n)]


def test_every_user_has_known_and_new_classes():
    users = ec.plan_users(6, len(ec.CLASS_NAMES), known=2, new=3, seed=0)
    assert len({u["name"] for u in users}) == 6
    for u in users:
        new = [c for c in u["classes"] if c not in ec.PUBLIC_CLASSES]
        assert len(new) == 6 and len(u["classes"]) == 8 == len(set(u["classes"]))
        assert {c ^ 1 for c in new} == set(new)  # both halves of each new photo
        assert set(u["views"]) == set(u["classes"])
        for v in u["views"].values():
            x0, y0, w, h = v["window"]
            assert 0 <= x0 and x0 + w <= 1 and 0 <= y0 and y0 + h <= 1
    assert len({tuple(u["classes"]) for u in users}) > 1  # users differ
    assert ec.plan_users(6, len(ec.CLASS_NAMES), 2, 3, seed=0) == users  # deterministic


def test_split_has_no_test_shot_in_training_and_catches_a_leak(tmp_path):
    photos = _photos(len(ec.PHOTOS))
    users = ec.plan_users(3, len(ec.CLASS_NAMES), known=1, new=1, seed=1)
    args = SimpleNamespace(public_per_class=2, train_per_class=3, test_per_class=2)
    public, sets = ec.make_sets(tmp_path, photos, users, args)
    assert {c for _, c in public} == set(ec.PUBLIC_CLASSES)
    data = ec.pooled(public, sets, SPEC, users)
    assert data.x.shape == (len(data.files), 24, 24, 3)
    ec.check_split(data, users)
    for u in data.users:
        assert len(u["train"]) == 3 * 3 and len(u["test"]) == 2 * 3  # 1 known class, 2 halves of a new photo
        assert sorted(data.labels[u["test"]].tolist()) == sorted(c for c in u["classes"] for _ in range(2))
    # the test shots are other pictures than the training shots (disjoint seeds), not copies
    u0 = data.users[0]
    tr = {data.files[i].read_bytes() for i in u0["train"]}
    assert not tr & {data.files[i].read_bytes() for i in u0["test"]}
    leaky = SimpleNamespace(**{**vars(data), "users": [{**u0, "train": np.append(u0["train"], u0["test"][0])},
                                                      *data.users[1:]]})
    with pytest.raises(AssertionError, match="test shot"):
        ec.check_split(leaky, users)
    one = ec.few_shots(data, 1)  # the fewer-shots group: the first shot of each class, the same test shots
    for u, full in zip(one.users, data.users):
        assert sorted(one.labels[u["train"]].tolist()) == u["classes"]
        assert set(u["train"].tolist()) <= set(full["train"].tolist()) and np.array_equal(u["test"], full["test"])
    ec.check_split(one, users)


def test_a_user_without_new_classes_is_refused(tmp_path):
    photos = _photos(len(ec.PHOTOS))
    users = ec.plan_users(1, len(ec.CLASS_NAMES), known=2, new=0, seed=0)
    args = SimpleNamespace(public_per_class=1, train_per_class=1, test_per_class=1)
    public, sets = ec.make_sets(tmp_path, photos, users, args)
    with pytest.raises(AssertionError, match="no class new"):
        ec.check_split(ec.pooled(public, sets, SPEC, users), users)


def test_missing_wheel_names_make_eval_deps(tmp_path):
    with pytest.raises(SystemExit, match="make eval-deps"):
        ec.source_photos(tmp_path)
