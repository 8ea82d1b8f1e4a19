import pytest

from autlearn import config
from autlearn.errors import AutlearnError


def test_defaults_cover_every_setting():
    cfg = config.Config()
    assert set(cfg.values) == {s.name for s in config.SETTINGS}
    assert cfg["training.min_new_samples"] == 20


def test_values_are_read_and_validated():
    cfg = config.parse('[training]\nepochs = 5\n[data]\nwatch = ["/a", "/b"]\n', "t.toml")
    assert cfg["training.epochs"] == 5
    assert cfg["data.watch"] == ["/a", "/b"]


@pytest.mark.parametrize("text, needle", [
    ("[training]\nepochs = -1\n", "training.epochs = -1"),
    ("[training]\nepochs = 'many'\n", "expected an integer"),
    ("[training]\nepoch = 3\n", "unknown key 'training.epoch'"),
    ("[model]\ndelegate = 'tpu'\n", "model.delegate"),
    ("[data]\nwatch = '/a'\n", "expected a list of strings"),
    ("training = 3\n", "must be a [section] table"),
    ("[training\n", "not valid TOML"),
])
def test_bad_values_name_file_key_and_expectation(text, needle):
    with pytest.raises(AutlearnError) as e:
        config.parse(text, "/etc/autlearn/x.toml")
    assert e.value.code == "bad_config"
    assert "/etc/autlearn/x.toml" in e.value.message
    assert needle in e.value.message


def test_external_delegate_needs_a_path():
    assert config.parse("[model]\ndelegate = 'external:/lib/x.so'\n", "t")["model.delegate"] == "external:/lib/x.so"
    with pytest.raises(AutlearnError):
        config.parse("[model]\ndelegate = 'external:'\n", "t")


def test_shipped_sample_config_is_valid():
    from pathlib import Path
    cfg = config.load(Path(__file__).resolve().parents[1] / "configs" / "autlearnd.toml")
    assert cfg.source.endswith("autlearnd.toml")


def test_sample_config_shows_every_setting_with_its_default():
    import tomllib
    from pathlib import Path
    data = tomllib.loads((Path(__file__).resolve().parents[1] / "configs" / "autlearnd.toml").read_text())
    shown = {f"{sec}.{k}" for sec, table in data.items() for k in table}
    assert shown == {s.name for s in config.SETTINGS}
    for s in config.SETTINGS:
        if s.name not in ("data.watch", "model.bundle"):  # packaged paths differ from the empty defaults
            sec, key = s.name.split(".")
            assert data[sec][key] == s.default, s.name
