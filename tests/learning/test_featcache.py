import numpy as np

from autlearn.learning.featcache import FeatureCache, Stats, feature_key


def test_key_changes_with_base_preprocessing_and_augmentation():
    k = feature_key("s" * 64, "b" * 64, 1, "none")
    assert k != feature_key("s" * 64, "c" * 64, 1, "none")
    assert k != feature_key("s" * 64, "b" * 64, 2, "none")
    assert k != feature_key("s" * 64, "b" * 64, 1, "crop:1")
    assert k == feature_key("s" * 64, "b" * 64, 1, "none")


def test_round_trip_and_counts(tmp_path):
    c = FeatureCache(tmp_path / "f.sqlite")
    vecs = {f"k{i}": np.arange(8, dtype=np.float32) + i for i in range(5)}
    c.put_many(vecs)
    got = c.get_many(["k1", "k3", "nope"])
    assert set(got) == {"k1", "k3"}
    np.testing.assert_array_equal(got["k3"], vecs["k3"])
    assert c.stats.as_dict()["hits"] == 2 and c.stats.as_dict()["misses"] == 1
    # persistent: a new handle on the same file sees the entries
    c2 = FeatureCache(tmp_path / "f.sqlite", stats=Stats())
    assert c2.count() == 5


def test_corrupt_entry_is_dropped_not_trusted(tmp_path):
    c = FeatureCache(tmp_path / "f.sqlite")
    c.put_many({"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)})
    c.db.execute("UPDATE features SET data=? WHERE key='a'", (np.full(4, 7, np.float32).tobytes(),))
    got = c.get_many(["a", "b"])
    assert set(got) == {"b"}
    assert c.stats.corrupt == 1
    assert c.count() == 1  # the corrupt row is gone, so it will be recomputed


def test_lru_eviction_keeps_recently_used(tmp_path):
    c = FeatureCache(tmp_path / "f.sqlite", max_bytes=3 * 400)
    for i in range(3):
        c.put_many({f"k{i}": np.zeros(100, np.float32)})
    c.get_many(["k0"])  # k0 is now the most recently used
    c.put_many({"k3": np.zeros(100, np.float32)})
    assert set(c.get_many(["k0", "k1", "k2", "k3"])) == {"k0", "k2", "k3"}
    assert c.size_bytes() <= 3 * 400
