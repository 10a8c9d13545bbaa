"""Run configuration: every mistake is a ConfigError naming the key and the valid choices,
overrides reach into lists, the resolved config is complete, and the CLI fails fast."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from proteus.cli import main
from proteus.config import (ConfigError, RunConfig, apply_overrides, config_fingerprint,
                            load_config, validate)
from proteus.data.readers import SyntheticOptions
from proteus.data.scenario import ScenarioOptions
from proteus.backbones.hf import TinyViTOptions
from proteus.registry import Options, added_later


def flat(text: str) -> str:
    """Collapse whitespace (rich wraps long lines at the console width)."""
    return " ".join(text.split())


def config_error(raw: dict, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        validate(apply_overrides(raw, overrides or []))
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# misspellings and bad values


def test_misspelt_top_level_key_names_it_and_lists_valid_keys(tiny_config):
    tiny_config["seeed"] = 3
    msg = config_error(tiny_config)
    assert "'seeed'" in msg
    for valid in ("seed", "data", "scenario", "backbone", "learner", "eval", "output_dir"):
        assert valid in msg


def test_misspelt_learner_option_names_dotted_key(tiny_config):
    msg = config_error(tiny_config, ["learner.epoch=3"])
    assert "'learner.epoch'" in msg
    assert "valid keys" in msg and "name" in msg


def test_misspelt_backbone_option_lists_that_backbones_options(tiny_config):
    tiny_config["backbone"]["image_sise"] = 32
    msg = config_error(tiny_config)
    assert "'backbone.image_sise'" in msg
    for valid in TinyViTOptions.model_fields:
        assert valid in msg
    assert "name" in msg


def test_misspelt_data_and_scenario_and_eval_options(tiny_config):
    msg = config_error(tiny_config, ["data.0.num_clases=4"])
    assert "'data.0.num_clases'" in msg and "num_classes" in msg and "samples_per_class" in msg
    msg = config_error(tiny_config, ["scenario.num_taks=3"])
    assert "'scenario.num_taks'" in msg
    assert all(k in msg for k in ScenarioOptions.model_fields)
    msg = config_error(tiny_config, ["eval.batchsize=3"])
    assert "'eval.batchsize'" in msg and "batch_size" in msg


@pytest.mark.parametrize("section, bad, valid", [
    ("learner", "simplcil", "simplecil"),
    ("backbone", "tiny_vit", "tiny-vit"),
])
def test_unknown_component_name_lists_registered_names(tiny_config, section, bad, valid):
    msg = config_error(tiny_config, [f"{section}.name={bad}"])
    assert f"{section}.name" in msg and repr(bad) in msg and valid in msg
    if section == "backbone":
        assert "efficientnet-lite0" in msg and "minilm" in msg


def test_unknown_dataset_name_lists_readers(tiny_config):
    msg = config_error(tiny_config, ["data.0.name=synthtic"])
    assert "data.0.name" in msg and "'synthtic'" in msg
    assert "synthetic" in msg.replace("'synthtic'", "") and "fashion-mnist" in msg


@pytest.mark.parametrize("override, key, shown", [
    ("scenario.num_tasks=abc", "scenario.num_tasks", "'abc'"),
    ("seed=1.5", "seed", "1.5"),
    ("data.0.num_classes=many", "data.0.num_classes", "'many'"),
    ("backbone.image_size=-3", "backbone.image_size", "-3"),
    ("eval.batch_size=0", "eval.batch_size", "0"),
])
def test_bad_value_type_names_key_and_value(tiny_config, override, key, shown):
    msg = config_error(tiny_config, [override])
    assert f"'{key}'" in msg and "bad value" in msg and shown in msg


def test_component_without_name_is_config_error(tiny_config):
    tiny_config["learner"] = {"epochs": 3}
    msg = config_error(tiny_config)
    assert "'learner'" in msg and "'name'" in msg


def test_missing_section_is_config_error(tiny_config):
    del tiny_config["scenario"]
    assert "'scenario'" in config_error(tiny_config)


# ---------------------------------------------------------------------------------------------
# --set overrides


@pytest.mark.parametrize("override, fragments", [
    ("data.3.num_classes=4", ["'data.3'", "below 1"]),  # list index out of range
    ("data.first.num_classes=4", ["'data.first'", "list index"]),  # not an index
    ("seed.value=4", ["'seed'", "not a section"]),  # descends into a scalar
    ("nosuch.x=4", ["'nosuch'", "valid keys", "learner"]),  # unknown section
    ("learner", ["'learner'", "key.path=value"]),  # no '='
    ("=3", ["empty key"]),
])
def test_bad_override_path_is_config_error(tiny_config, override, fragments):
    msg = config_error(tiny_config, [override])
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_overrides_reach_into_lists_and_parse_yaml_values(tiny_config):
    before = yaml.safe_dump(tiny_config)
    raw = apply_overrides(tiny_config, ["data.0.num_classes=4", "scenario.num_tasks=2",
                                        "scenario.class_order=[3, 2, 1, 0]", "progress=true",
                                        "backbone.hidden_size=16"])
    assert yaml.safe_dump(tiny_config) == before  # the input is not mutated
    config = validate(raw)
    assert config.data[0].options["num_classes"] == 4
    assert config.scenario["num_tasks"] == 2
    assert config.scenario["class_order"] == [3, 2, 1, 0]
    assert config.progress is True
    assert config.backbone.options["hidden_size"] == 16


def test_later_override_wins_and_new_section_key_is_validated(tiny_config):
    raw = apply_overrides(tiny_config, ["seed=1", "seed=2", "eval.batch_size=8"])
    config = validate(raw)
    assert config.seed == 2 and config.eval.batch_size == 8


# ---------------------------------------------------------------------------------------------
# resolved config


def test_resolved_config_has_every_default_filled(tiny_config):
    del tiny_config["eval"]
    tiny_config["data"] = [{"name": "synthetic"}]
    tiny_config["backbone"] = {"name": "tiny-vit"}
    resolved = validate(tiny_config).resolved()
    assert set(resolved) == set(RunConfig.model_fields)
    assert resolved["eval"] == {"batch_size": 256}
    assert resolved["save_model"] is True
    assert set(resolved["scenario"]) == set(ScenarioOptions.model_fields)
    assert resolved["scenario"]["test_fraction"] == 0.2
    data = resolved["data"][0]
    assert data.pop("name") == "synthetic"
    assert data == SyntheticOptions().model_dump(mode="json")
    backbone = resolved["backbone"]
    assert backbone.pop("name") == "tiny-vit"
    assert backbone == TinyViTOptions().model_dump(mode="json")
    assert resolved["learner"] == {"name": "simplecil"}


def test_resolved_config_validates_back_to_itself(tiny_config):
    """config.yaml in a run directory is the resolved config; it must load as a config again."""
    resolved = validate(tiny_config).resolved()
    again = validate(yaml.safe_load(yaml.safe_dump(resolved))).resolved()
    assert again == resolved


def test_fingerprint_ignores_where_a_run_went_and_nothing_it_measured(tiny_config, tmp_path):
    """A run's stored fingerprint matches its preset's exactly when differs_from finds nothing."""
    config = validate(tiny_config)
    recorded = config.recorded()
    moved = validate({**tiny_config, "name": "elsewhere", "progress": False,
                      "output_dir": str(tmp_path / "other")})
    assert moved.differs_from(recorded) == [] and moved.fingerprint() == config.fingerprint()
    assert config_fingerprint(recorded) == config.fingerprint()
    for change in (["seed=7"], ["learner.name=ranpac"], ["scenario.num_tasks=2"]):
        other = validate(apply_overrides(tiny_config, change))
        assert other.differs_from(recorded) and other.fingerprint() != config.fingerprint()


def test_an_option_added_later_leaves_the_fingerprint_at_its_neutral_default(tiny_config):
    """A run recorded before proteus had adapted_lda_weight is the same run as one at 0 now (its
    rows stay fresh); the option at any other value is another run."""
    config = validate(apply_overrides(tiny_config, ["learner={name: proteus}"]))
    before = config.recorded()
    assert before["learner"].pop("adapted_lda_weight") == 0.0
    assert config_fingerprint(before) == config.fingerprint() and config.differs_from(before) == []
    weighted = validate(apply_overrides(tiny_config, ["learner={name: proteus}",
                                                      "learner.adapted_lda_weight=0.3"]))
    assert weighted.fingerprint() != config.fingerprint()
    assert weighted.differs_from(before) == ["learner"]
    # an option not declared added-later stays in the fingerprint even at its default
    alpha = config.recorded()
    del alpha["learner"]["alpha"]
    assert config_fingerprint(alpha) != config.fingerprint()


def test_neutral_defaults_lists_only_options_declared_added_later():
    class Opts(Options):
        old: int = 3
        new: float = added_later(0.0, ge=0)

    assert Opts.neutral_defaults() == {"new": 0.0}
    assert Opts().new == 0.0
    with pytest.raises(ValidationError):
        Opts(new=-1.0)  # the Field's constraints still apply


def test_load_config_names_run_after_preset_and_applies_overrides(tiny_config, tmp_path):
    del tiny_config["name"]
    path = tmp_path / "my-preset.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    config = load_config(path, ["seed=7"])
    assert config.name == "my-preset-simplecil-s7"
    assert load_config(path, ["name=given"]).name == "given"


def test_load_config_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_misspelt_key_exits_2_fast_and_names_key(tiny_config, tmp_path, capsys):
    tiny_config["learner"]["epoch"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    start = time.perf_counter()
    code = main(["run", str(path)])
    elapsed = time.perf_counter() - start
    assert code == 2
    assert elapsed < 5.0, f"config error took {elapsed:.1f}s"
    err = flat(capsys.readouterr().err)
    assert "error" in err and "learner.epoch" in err
    assert not Path(tiny_config["output_dir"]).exists()  # nothing was started


def test_cli_bad_set_override_exits_2(tiny_config_file, tiny_config, capsys):
    start = time.perf_counter()
    code = main(["run", str(tiny_config_file), "--set", "scenario.num_taks=3"])
    assert code == 2 and time.perf_counter() - start < 5.0
    assert "scenario.num_taks" in flat(capsys.readouterr().err)
    assert main(["run", str(tiny_config_file), "--set", "scenario.num_tasks=abc"]) == 2
    assert "scenario.num_tasks" in flat(capsys.readouterr().err)
    assert not Path(tiny_config["output_dir"]).exists()


def test_cli_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in "".join(capsys.readouterr().err.split())


def test_cli_error_message_keeps_bracketed_text(tmp_path, capsys):
    missing = tmp_path / "[exp]" / "preset.yaml"
    assert main(["run", str(missing)]) == 2
    assert "[exp]" in "".join(capsys.readouterr().err.split())


# -- presets inheriting from a base preset -------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "offline").rglob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_offline_preset_validates(path):
    config = load_config(path)
    assert config.data and config.scenario["num_tasks"] in (2, 3, 5, 9, 10)  # 2, 3, 5: candidates
    order = config.scenario.get("class_order")
    assert order is None or len(set(order)) == len(order)  # an explicit order names each class once


def test_base_preset_merges_and_a_renamed_component_replaces(tmp_path, tiny_config):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_config))
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nseed: 7\nscenario: {num_tasks: 2}\n"
                     "learner: {name: ranpac, proj_dim: 64}\n")
    base = load_config(tmp_path / "base.yaml")
    config = load_config(child)
    assert config.seed == 7
    # merged key by key: num_tasks changed, the base's other scenario keys kept
    assert config.scenario["num_tasks"] == 2
    assert {k: v for k, v in config.scenario.items() if k != "num_tasks"} == \
        {k: v for k, v in base.scenario.items() if k != "num_tasks"}
    # a different learner name replaces the section (the base's options would not fit)
    assert config.learner.name == "ranpac" and config.learner.options["proj_dim"] == 64
    assert config.backbone == base.backbone


def test_base_chain_loop_and_missing_base_are_config_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(tmp_path / "c.yaml")
