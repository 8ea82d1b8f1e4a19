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


def _int8_output(rng, n, dim, quant):
    """What an int8 base with output quantisation `quant` returns after the extractor dequantises it."""
    from autlearn.learning.featcache import dequantize

    return {f"q{i}": dequantize(rng.integers(-128, 128, dim).astype(np.int8), quant) for i in range(n)}


def test_int8_entries_take_a_byte_per_value_and_read_back_bit_identical(tmp_path):
    quant = (0.0473, -17)
    vecs = _int8_output(np.random.default_rng(0), 6, 300, quant)
    c = FeatureCache(tmp_path / "f.sqlite")
    c.put_many(vecs, quant)
    c.put_many({"float": np.linspace(-1, 1, 300).astype(np.float32)})  # a float base's row beside them
    assert c.size_bytes() == 6 * 300 + 4 * 300
    got = c.get_many(list(vecs) + ["float"])
    for k, v in vecs.items():
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], v)
    np.testing.assert_array_equal(got["float"], np.linspace(-1, 1, 300).astype(np.float32))
    assert {r[0] for r in c.db.execute("SELECT dtype FROM features")} == {"i8", "f32"}


def test_an_int8_entry_with_a_damaged_scale_or_zero_point_is_dropped(tmp_path):
    quant = (0.02, 3)
    c = FeatureCache(tmp_path / "f.sqlite")
    c.put_many(_int8_output(np.random.default_rng(1), 3, 50, quant), quant)
    c.db.execute("UPDATE features SET scale=0.04 WHERE key='q0'")
    c.db.execute("UPDATE features SET zero=4 WHERE key='q1'")
    assert set(c.get_many(["q0", "q1", "q2"])) == {"q2"}
    assert c.stats.corrupt == 2 and c.count() == 1


def test_the_extractor_caches_an_int8_base_as_int8_and_refuses_a_contradicting_declaration(tiny_bundle):
    import dataclasses

    import pytest

    from autlearn.errors import AutlearnError
    from autlearn.learning.features import FeatureExtractor
    from autlearn.runtime import bundle as bundle_mod

    variant = bundle_mod.load(tiny_bundle).variant()
    quant = FeatureExtractor(variant, 1).cache_quant
    assert quant is not None and quant[0] > 0  # the tiny bundle's base outputs int8
    declared = dataclasses.replace(variant, info={**variant.info, "cache_quantization":
                                                  {"scale": quant[0], "zero_point": quant[1]}})
    assert FeatureExtractor(declared, 1).cache_quant == quant
    wrong = dataclasses.replace(variant, info={**variant.info, "cache_quantization":
                                               {"scale": 2 * quant[0], "zero_point": quant[1]}})
    with pytest.raises(AutlearnError, match="cache_quantization"):
        FeatureExtractor(wrong, 1)
