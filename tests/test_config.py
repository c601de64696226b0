"""Settings: field comments become flag help, flags map onto groups, saved settings read back strictly."""

import argparse
import re
from dataclasses import dataclass, field

import pytest

from nanoo1.config import (add_config_flags, apply_flags, check_settings, conflicts, field_help, flat_settings, from_dict,
                           parse_bool, to_dict)


@dataclass
class Search:
    depth: int = 3  # how deep
    temperature: float = 0.7  # sampling temperature,
    #                           continued here
    # the next section (a heading, not part of the help above)
    width: int = 2

    def __post_init__(self):
        check_settings(self, positive=("depth",), fraction=("temperature",))


@dataclass
class Train:
    flag_prefix = "train_"
    lr: float = 1e-3  # learning rate
    fast: bool = False  # a switch


@dataclass
class Config:
    search: Search = field(default_factory=Search)
    train: Train = field(default_factory=Train)


def test_field_comments_with_their_continuations():
    assert field_help(Search) == {"depth": "how deep", "temperature": "sampling temperature, continued here"}
    from nanoo1.evolve import EvolveConfig

    helps = field_help(EvolveConfig)  # its section headings ("# policy k+1") are no field's help
    assert helps["guided_from"].endswith("never are") and helps["sft_lr"].endswith("cosine decay)")


def test_flags_take_only_what_was_given_and_land_in_their_group():
    p = argparse.ArgumentParser()
    add_config_flags(p, Config)
    given = vars(p.parse_args(["--depth", "5", "--train-fast", "yes"]))
    assert given == {"depth": 5, "train_fast": True}  # nothing at its default: a preset keeps its own values
    config = apply_flags(Config(), given)
    assert (config.search.depth, config.search.temperature, config.train.fast, config.train.lr) == (5, 0.7, True, 1e-3)
    assert flat_settings(config)["train_lr"] == 1e-3
    assert conflicts(config, {"depth": 5, "train_lr": 0.5}) == ["--train-lr: 0.001 in the run, 0.5 given"]
    with pytest.raises(ValueError, match="unknown settings \\['dept'\\]"):
        apply_flags(config, {"dept": 4})
    with pytest.raises(ValueError, match="Search: --depth must be > 0, got 0"):
        apply_flags(config, {"depth": 0})
    with pytest.raises(SystemExit):
        p.parse_args(["--train-fast", "ture"])


def test_help_groups_flags_by_settings_and_says_each_default_it_has():
    from nanoo1.evolve import EvolveConfig
    from nanoo1.recipe import LoRASettings, SelfPlayConfig

    p = argparse.ArgumentParser()
    add_config_flags(p, EvolveConfig)
    add_config_flags(p, LoRASettings)  # a flat settings class with a flag prefix: its own group
    titles = [g.title for g in p._action_groups[2:]]
    assert titles == ["settings", "lora settings"]
    p = argparse.ArgumentParser()
    add_config_flags(p, SelfPlayConfig)
    out = next(a for a in p._actions if a.dest == "out")  # its default "" is filled in by the preset: not shown
    assert "(default: runs/tiny" in out.help and "(default: )" not in out.help
    assert next(a for a in p._actions if a.dest == "seed").help.endswith("(default: 0)")


def test_entry_points_show_the_defaults_of_their_own_flags_once(capsys):
    """`entry_parser`'s formatter adds a flag's default to its help unless the help says it or there is none."""
    from nanoo1 import eval as eval_cli
    from nanoo1 import evolve

    for main in (eval_cli.main, evolve.main):
        with pytest.raises(SystemExit):
            main(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text and "(default: False)" not in text and "(default: (default" not in text
        if main is eval_cli.main:
            assert "first N problems (default: 200)" in text and "(default: greedy,best_of_n,beam,mcts)" in text
            assert re.search(r"--seed SEED .*?\(default: 0\)", text)  # a default of 0 is one (0 == False)
        else:
            assert "SFT steps of that warm start (default: 500)" in text and "(default: 16) (default: 16)" not in text


@pytest.mark.parametrize("text,value", [("true", True), ("YES", True), ("1", True), ("false", False), ("No", False), ("0", False)])
def test_parse_bool(text, value):
    assert parse_bool(text) is value


def test_saved_settings_read_back_strictly():
    config = apply_flags(Config(), {"depth": 4})
    assert from_dict(Config, to_dict(config), "s.json") == config
    d = to_dict(config)
    with pytest.raises(ValueError, match="s.json \\[search\\]: setting 'depth' is '4', expected a int"):
        from_dict(Config, {**d, "search": {**d["search"], "depth": "4"}}, "s.json")
    with pytest.raises(ValueError, match="s.json: unknown settings \\['extra'\\]"):
        from_dict(Config, {**d, "extra": 1}, "s.json")
    with pytest.raises(ValueError, match="s.json: missing setting 'train'"):
        from_dict(Config, {"search": d["search"]}, "s.json")
    with pytest.raises(ValueError, match="expected a JSON object"):
        from_dict(Config, [], "s.json")


# -- edge cases: bounds, defaults and what each step leaves behind ---------------------------------------------
@dataclass
class Sections:
    a: int = 1  # the first
    # a heading
    #     indented under the heading: not a's help
    b: int = 2
    #     nor b's, which has no comment


def test_a_heading_or_an_uncommented_field_ends_the_help_above():
    assert field_help(Sections) == {"a": "the first"}


def test_skipped_fields_get_no_flag():
    """skip names flags (with their prefix) left out of the parser: --depth and --train-lr are not accepted."""
    p = argparse.ArgumentParser()
    add_config_flags(p, Config, skip=("depth", "train_lr"))
    assert vars(p.parse_args(["--width", "3"])) == {"width": 3}
    for given in (["--depth", "5"], ["--train-lr", "0.1"]):
        with pytest.raises(SystemExit):
            p.parse_args(given)


def test_conflicts_ignore_flags_that_are_no_setting():
    """A given flag that the saved settings do not have (--threads) is no conflict; a differing one is."""
    assert conflicts(Config(), {"threads": 4, "depth": 3}) == []
    assert conflicts(Config(), {"threads": 4, "depth": 5}) == ["--depth: 3 in the run, 5 given"]


def test_saved_numbers_read_back_as_their_fields_type():
    """JSON may hold 1 for a float setting: read as 1.0 (a float). A bool is no int: depth true is refused."""
    d = to_dict(Config())
    config = from_dict(Config, {**d, "train": {**d["train"], "lr": 1}}, "s.json")
    assert config.train.lr == 1.0 and type(config.train.lr) is float
    with pytest.raises(ValueError, match="s.json \\[search\\]: setting 'depth' is True, expected a int"):
        from_dict(Config, {**d, "search": {**d["search"], "depth": True}}, "s.json")


def test_a_fraction_may_be_0_or_1():
    """[0, 1] is closed: temperature 0 and 1 pass, 1.01 and -0.01 do not."""
    assert [Search(temperature=t).temperature for t in (0.0, 1.0)] == [0.0, 1.0]
    for t in (1.01, -0.01):
        with pytest.raises(ValueError, match=rf"Search: --temperature must lie in \[0, 1\], got {t}"):
            Search(temperature=t)


def test_a_run_seed_is_refused_before_the_run_where_a_generator_could_not_take_it():
    """A run's seed lies in [0, 2**32): GRPO seeds a torch generator with seed * 1000 + its round, which overflows
    64 bits from a seed of about 1.8e16 (a nanosecond timestamp), after the evaluation before training."""
    import torch

    from nanoo1.evolve import EvolveConfig
    from nanoo1.recipe import RunSettings, iteration_seed

    assert RunSettings(seed=2 ** 32 - 1).seed == 2 ** 32 - 1
    torch.Generator().manual_seed(iteration_seed(2 ** 32 - 1, 10 ** 6))  # the largest seed's generators take it
    for settings in (RunSettings, EvolveConfig):
        for seed in (2 ** 32, 1733500000000000000, -1):
            with pytest.raises(ValueError, match=rf"--seed must lie in \[0, 2\*\*32\), got {seed}"):
                settings(seed=seed)


def test_error_text_of_a_key_error_has_no_quotes():
    """str(KeyError('x.json: missing key')) is "'x.json: missing key'"; error_text gives the message itself."""
    from nanoo1.config import error_text

    assert error_text(KeyError("x.json: missing key")) == "x.json: missing key"
    assert error_text(ValueError("bad value")) == "bad value" and error_text(KeyError()) == ""


def test_a_setting_of_the_wrong_type_is_refused_by_name():
    """`apply_flags` takes values typed by argparse, or read from JSON (bench's --gpu-settings): one of another type
    than its field's default is refused by flag name, as `from_dict` refuses it (an int may stand for a float)."""
    with pytest.raises(ValueError, match="--depth: '5' is a str, expected a int"):
        apply_flags(Config(), {"depth": "5"})
    with pytest.raises(ValueError, match="--train-fast: 1 is a int, expected a bool"):
        apply_flags(Config(), {"train_fast": 1})
    lr = apply_flags(Config(), {"train_lr": 1}).train.lr
    assert lr == 1.0 and type(lr) is float


@pytest.mark.parametrize("module", ["bench", "eval", "evolve", "selfplay", "warmstart", "generate", "tasks", "adapters"])
def test_every_entry_point_names_itself_as_it_is_run(module, capsys):
    """`python -m nanoo1.X --help` says `usage: python -m nanoo1.X`, not argparse's `X.py`, which is no command."""
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(f"nanoo1.{module}").main(["--help"])
    assert capsys.readouterr().out.startswith(f"usage: python -m nanoo1.{module} ")
