"""Typed config: YAML + dotted overrides, and errors that name the key and the file."""

from __future__ import annotations

import pytest

from synrank.config import ConfigError, SynrankConfig, TrainConfig, apply_overrides, load, parse_override, to_yaml


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_give_expected_values(tmp_path):
    path = write(tmp_path, "run_dir: runs/x\ntrain:\n  loss: infonce\n  lr: 3.0e-5\n  encoder:\n    pooling: cls\n")
    cfg = load(SynrankConfig, path, ["train.loss=lsepair", "train.lr=2e-5", "train.loss_params.temperature=0.02",
                                 "generate.n_levels=3", "evaluate.collections=[a, b]"])
    assert cfg.run_dir == "runs/x"
    assert cfg.train.loss == "lsepair"
    assert cfg.train.lr == pytest.approx(2e-5)
    assert cfg.train.loss_params == {"temperature": 0.02}
    assert cfg.train.encoder.pooling == "cls"  # from the file, untouched by overrides
    assert cfg.generate.n_levels == 3
    assert cfg.evaluate.collections == ["a", "b"]
    # defaults stay defaults
    assert cfg.train.batch_size == TrainConfig().batch_size


def test_yaml_round_trip(tmp_path):
    cfg = load(SynrankConfig, None, ["train.loss=kl", "groups.n_levels=2"])
    again = load(SynrankConfig, write(tmp_path, to_yaml(cfg)))
    assert again == cfg


def test_override_value_types():
    assert parse_override("a.b=2e-5") == (["a", "b"], 2e-5)
    assert parse_override("a=3") == (["a"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=hello") == (["a"], "hello")


def test_unknown_key_in_file_names_key_file_and_choices(tmp_path):
    path = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load(SynrankConfig, path)
    msg = str(err.value)
    assert str(path) in msg and "'train.lrr'" in msg and "did you mean 'lr'" in msg and "loss_params" in msg


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*did you mean 'train'"):
        load(SynrankConfig, write(tmp_path, "trian: {}\n"))


def test_unknown_nested_key_from_override():
    with pytest.raises(ConfigError, match=r"overrides: unknown key 'train.encoder.poolng'"):
        load(SynrankConfig, None, ["train.encoder.poolng=cls"])


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: many\n")
    with pytest.raises(ConfigError) as err:
        load(SynrankConfig, path)
    assert str(path) in str(err.value) and "'train.batch_size'" in str(err.value) and "'many'" in str(err.value)


def test_invalid_choice_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        load(SynrankConfig, None, ["train.encoder.pooling=max"])
    assert "'train.encoder.pooling'" in str(err.value) and "'mean'" in str(err.value) and "'cls'" in str(err.value)


def test_out_of_range_value():
    with pytest.raises(ConfigError, match=r"'generate.n_levels'.*less than or equal to 5"):
        load(SynrankConfig, None, ["generate.n_levels=7"])


def test_levels_cannot_be_refined():
    with pytest.raises(ConfigError, match=r"groups.n_levels.*finer than from_levels"):
        load(SynrankConfig, None, ["groups.from_levels=3", "groups.n_levels=4"])


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match=r"'run_dir' is a value, not a section"):
        apply_overrides({"run_dir": "x"}, ["run_dir.sub=1"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match=r"config file not found"):
        load(SynrankConfig, tmp_path / "nope.yaml")


def test_bad_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"run.yaml: not valid YAML"):
        load(SynrankConfig, write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match=r"expected a mapping"):
        load(SynrankConfig, write(tmp_path, "- a\n- b\n"))


def test_positive_threshold_defaults_to_the_scale():
    from synrank.config import TrainConfig

    assert TrainConfig().positive_threshold is None  # resolved from the groups' scale at training
    assert TrainConfig(positive_threshold=1.0).positive_threshold == 1.0  # an explicit value overrides


@pytest.mark.parametrize("n_levels", [2, 3, 4])
def test_mixed_relabel_defaults_keep_negatives_below_positives(n_levels):
    from synrank.data.levels import positive_threshold

    cfg = load(SynrankConfig, None, ["groups.source=mixed", f"groups.n_levels={n_levels}"]).groups
    assert cfg.negative_level < positive_threshold(n_levels) <= n_levels - 1


@pytest.mark.parametrize("overrides", [
    ["groups.n_levels=2", "groups.negative_level=1"],          # negatives and positives get the same grade
    ["groups.n_levels=4", "groups.negative_level=2"],          # a negative at "partly answers"
    ["groups.n_levels=4", "groups.real_positive_level=1"],     # a real positive at "on topic"
    ["groups.n_levels=3", "groups.negative_level=1", "groups.real_positive_level=1"],
])
def test_mixed_relabel_levels_that_break_the_order_are_an_error_naming_the_keys(overrides):
    with pytest.raises(ConfigError, match=r"groups.real_positive_level.*groups.negative_level.*groups.n_levels"):
        load(SynrankConfig, None, ["groups.source=mixed", *overrides])
    # the same levels are fine without relabelling, and for other sources
    load(SynrankConfig, None, ["groups.source=mixed", "groups.relabel=false", *overrides])
    load(SynrankConfig, None, ["groups.source=synthetic", *overrides])
