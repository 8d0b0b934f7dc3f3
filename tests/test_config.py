"""Strict params loading: what users hit when they edit params.yaml or pass --set."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from gvr.config import Params, load_params, parse_override
from gvr.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_params_yaml_defaults_equal_dataclass_defaults():
    """params.yaml documents the paper defaults; the dataclasses must say the same thing."""
    loaded = load_params(ROOT / "params.yaml").to_dict()
    defaults = Params().to_dict()
    loaded.pop("profiles"), defaults.pop("profiles")
    assert loaded == defaults


def test_paper_values():
    p = load_params(ROOT / "params.yaml")
    assert (p.curate.min_musiq, p.curate.min_laplacian_var, p.curate.sample_frames, p.curate.min_frames) == (40, 30, 10, 77)
    assert p.train.noise_aug == [0.3, 0.6] and p.train.lr == 5e-5 and p.train.global_batch == 32
    assert [s.iterations for s in p.train.stages.values()] == [20000, 10000, 5000]
    assert [s.frames for s in p.train.stages.values()] == [17, 17, 77]
    assert p.degrade.model_guided_alpha == [0.3, 0.4] and p.train.null_prompt_prob == 0.1


@pytest.mark.parametrize("profile", ["tiny", "small"])
def test_profiles_load(profile):
    p = load_params(ROOT / "params.yaml", profile=profile)
    assert p.profile == profile
    assert p.model.preset == f"gvr-{profile}"


def test_unknown_key_names_its_path(tmp_path):
    path = write(tmp_path, {"train": {"stages": {"stage1": {"iterations": 5, "itertions": 3}}}})
    with pytest.raises(ConfigError, match=r"train\.stages\.stage1\.itertions: unknown key"):
        load_params(path)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"^trian: unknown key"):
        load_params(write(tmp_path, {"trian": {}}))


@pytest.mark.parametrize("override,match", [
    ("curate.min_laplacian_var=-1", r"curate\.min_laplacian_var: -1(\.0)? is out of range"),
    ("curate.max_brightness=300", r"curate\.max_brightness: 300(\.0)? is out of range"),
    ("train.lr=0", r"train\.lr: 0(\.0)? is out of range"),
    ("train.lr=fast", r"train\.lr: expected a number"),
    ("codec.kind=mp3", r"codec\.kind: 'mp3' is not one of"),
    ("degrade.sets.stage1.methods=[blur]", r"degrade\.sets\.stage1\.methods: 'blur' is not one of"),
    ("train.global_batch=2.5", r"train\.global_batch: expected an integer"),
    ("evaluate.noise_aug=.nan", r"evaluate\.noise_aug: NaN"),
])
def test_bad_values_fail_with_path(override, match):
    with pytest.raises(ConfigError, match=match):
        load_params(ROOT / "params.yaml", overrides=[override])


def test_override_beats_profile_and_parses_yaml():
    p = load_params(ROOT / "params.yaml", profile="tiny", overrides=["train.lr=0.5", "degrade.hr_size=[32, 48]"])
    assert p.train.lr == 0.5 and p.degrade.hr_size == [32, 48]
    assert p.model.preset == "gvr-tiny"


def test_profile_selected_in_file_and_by_set(tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["profile"] = "tiny"
    assert load_params(write(tmp_path, data)).codec.kind == "tiny"
    assert load_params(ROOT / "params.yaml", overrides=["profile=tiny"]).codec.kind == "tiny"


def test_unknown_profile_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        load_params(ROOT / "params.yaml", profile="huge")
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_parse_override_rejects_garbage():
    with pytest.raises(ConfigError):
        parse_override("train.lr")
    with pytest.raises(ConfigError):
        parse_override("lr=3")
    assert parse_override("a.b=null") == ("a.b", None)


def test_params_are_plain_dataclasses():
    p = Params()
    assert dataclasses.is_dataclass(p) and isinstance(p.to_dict()["train"]["stages"]["stage1"], dict)
