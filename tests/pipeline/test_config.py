"""The one configuration file: defaults that work, and clear errors for every mistake."""
from __future__ import annotations

import pytest

from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.errors import ConfigError


def test_no_file_means_the_defaults():
    config = AccreteConfig.load(None)
    assert config == AccreteConfig()
    assert config.model.init == "fold_in" and config.model.bias_policy == "frozen"


def test_a_file_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "accrete.toml"
    path.write_text('[model]\ndim = 8\ninit = "mean"\n\n[eval]\nks = [5, 20]\n\n[drift]\nrating_edges = [0.5, 1.5, 2.5]\n')
    config = AccreteConfig.load(path)
    assert (config.model.dim, config.model.init, config.eval.ks) == (8, "mean", (5, 20))
    assert config.drift.rating_edges == (0.5, 1.5, 2.5)
    assert config.train == AccreteConfig().train


@pytest.mark.parametrize("text, message", [
    ("[modle]\ndim = 8\n", r"unknown section \[modle\]"),
    ("[model]\ndims = 8\n", r"unknown key\(s\) \['dims'\] in \[model\]"),
    ("[model]\ninit = 'random'\n", r"\[model\] init must be one of"),
    ("[drift]\npatience = 0\n", r"\[drift\] patience must be >= 1"),
    ("[model\n", "not valid TOML"),
])
def test_a_mistake_is_an_error_naming_the_file_and_the_setting(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        AccreteConfig.load(path)
    assert str(path) in str(error.value)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        AccreteConfig.load(tmp_path / "absent.toml")


def test_replace_validates_and_round_trips_through_a_dict():
    config = AccreteConfig().replace(model={"dim": 4}, train={"epochs": 1})
    assert AccreteConfig.from_dict({k: v for k, v in config.to_dict().items()}) == config
    with pytest.raises(ConfigError):
        AccreteConfig().replace(train={"batch_size": 0})


@pytest.mark.parametrize("text, message", [
    ('[model]\ndim = "32"\n', r"\[model\] dim must be an integer, not '32'"),
    ("[model]\ndim = 32.5\n", r"\[model\] dim must be an integer, not 32.5"),
    ("[model]\ndim = true\n", r"\[model\] dim must be an integer, not True"),
    ('[model]\nials_alpha = "10"\n', r"\[model\] ials_alpha must be a number, not '10'"),
    ("[model]\nrecency_prior_learned = 1\n", r"\[model\] recency_prior_learned must be true or false, not 1"),
    ("[model]\ninit = 3\n", r"\[model\] init must be a string, not 3"),
    ('[eval]\nks = [10, "50"]\n', r"\[eval\] ks must be a list of integers"),
    ("[drift]\nrating_edges = 3\n", r"\[drift\] rating_edges must be a list of numbers, not 3"),
    ("model = 3\n", r"\[model\] must be a table of settings"),
])
def test_a_value_of_the_wrong_type_is_an_error_naming_the_setting(tmp_path, text, message):
    path = tmp_path / "typed.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        AccreteConfig.load(path)
    assert str(path) in str(error.value)


def test_an_integer_is_a_fine_float_and_lists_become_tuples(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("[model]\nials_alpha = 4\nrecency_weight_candidates = [0, 1.5]\n")
    config = AccreteConfig.load(path)
    assert config.model.ials_alpha == 4 and config.model.recency_weight_candidates == (0, 1.5)
