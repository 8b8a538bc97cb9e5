"""ddpm_pipeline.training_config: one source of defaults, YAML files, flags, and validation that names the key."""

import re

import pytest
import yaml

from ddpm_pipeline.config_sources import build_argument_parser, config_from_yaml, defaults_yaml, read_yaml_config
from ddpm_pipeline.training.config_checks import load_config
from ddpm_pipeline.training.config_checks import parse_args as parse_training_config
from ddpm_pipeline.training.main import main as train_main
from ddpm_pipeline.training_config import ConfigError, TrainingConfig
from tests.conftest import ROOT, TINY_CONFIG, tiny_args


@pytest.mark.parametrize(
    "override,key",
    [
        ({"train_batch_size": 0}, "train_batch_size"),
        ({"learning_rate": -1e-4}, "learning_rate"),
        ({"digits": [1, 11]}, "digits"),
        ({"num_train_timesteps": 1}, "num_train_timesteps"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"train_batch_size": "big"}, "train_batch_size"),
        ({"learning_rat": 1e-3}, "learning_rat"),
        ({"digits": []}, "digits"),
        ({"push_to_hub": True}, "hub_model_id"),
        ({"ema_max_decay": 1.5}, "ema_max_decay"),
        ({"keep_freed_memory": "yes"}, "keep_freed_memory"),
        ({"layers_per_block": 0}, "layers_per_block"),
        ({"layers_per_block": [0, 1]}, "layers_per_block"),
        ({"layers_per_block": [0, -1, 1]}, "layers_per_block"),
        ({"layers_per_block": "deep"}, "layers_per_block"),
        ({"layers_per_block": [0, 1, 1], "decoder_layers_per_block": 2}, "decoder_layers_per_block"),
    ],
)
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config({**read_yaml_config(TINY_CONFIG), **override})


def test_bad_config_stops_before_work(tmp_path, capsys):
    assert train_main(tiny_args(tmp_path / "out", "--train_batch_size", "0")) == 2
    assert "train_batch_size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("learning_rate: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_from_yaml(bad_yaml)
    with pytest.raises(ConfigError, match="does not exist"):
        config_from_yaml(tmp_path / "missing.yaml")


def test_shipped_configs_are_valid():
    from ddpm_pipeline.distillation.config import DistillationConfig

    for path in (ROOT / "configs").glob("*.yaml"):
        if path.name.startswith("distill"):  # a distillation run's config (distill_ddpm.py)
            DistillationConfig.from_dict(read_yaml_config(path))
        else:
            config_from_yaml(path)
    ones = config_from_yaml(ROOT / "configs" / "mnist-ones.yaml")
    assert ones.digits == [1] and not ones.class_conditional
    default = TrainingConfig()
    assert default.class_conditional and default.learned_variance and default.dataset_name is None


def test_the_large_config_is_the_measured_runs_recipe():
    """configs/mnist-large.yaml trains what the H200 run in benchmarks/RESULTS.md trained (its train_config.yaml); it
    may differ only where the weights do not depend on it: where they go, checkpoints, pictures, evaluation, logs."""
    measured = yaml.safe_load((ROOT / "benchmarks" / "results" / "large_3700_h200_train_config.yaml").read_text())
    recipe = config_from_yaml(ROOT / "configs" / "mnist-large.yaml").to_dict()
    free = {"output_dir", "checkpointing_steps", "save_images_epochs", "evaluate", "logger"}
    assert {key: value for key, value in recipe.items() if key not in free} == {
        key: value for key, value in measured.items() if key not in free
    }


def test_mnist_yaml_is_the_defaults_written_out():
    """configs/mnist.yaml lists every key at the value a bare run uses; if a default changes, update the file."""
    written = read_yaml_config(ROOT / "configs" / "mnist.yaml")
    assert list(written) == TrainingConfig.field_names()
    assert TrainingConfig.from_dict(written) == TrainingConfig()
    assert (ROOT / "configs" / "mnist.yaml").read_text() == defaults_yaml()  # python -m ddpm_pipeline.training_config


def help_defaults() -> dict:
    """Each flag's '(default: ...)' as --help prints it."""
    found = {}
    for action in build_argument_parser()._actions:
        shown = re.search(r"\(default: (.*)\)$", action.help or "")
        if action.dest in TrainingConfig.field_names():
            found[action.dest] = shown.group(1)
    assert set(found) == set(TrainingConfig.field_names()), set(TrainingConfig.field_names()) ^ set(found)
    return found


def test_help_shows_what_a_bare_run_uses():
    """One source of defaults: parse each default as --help shows it, as a flag would be; it gives the bare run's."""
    bare = parse_training_config([])
    for key, shown in help_defaults().items():
        flagged = parse_training_config([f"--{key}", shown] if shown else [])
        assert getattr(flagged, key) == getattr(bare, key), key
    assert bare == TrainingConfig()
    assert help_defaults()["num_epochs"] == str(bare.num_epochs)


def test_flags_override_yaml_and_help_lists_everything():
    config = parse_training_config(
        ["--config", TINY_CONFIG, "--learning_rate", "1e-4", "--digits", "3,5", "--push_to_hub"]
        + ["--hub_model_id", "me/x", "--max_train_steps", "none", "--num_epochs", "2"]
    )
    assert config.learning_rate == 1e-4 and config.digits == [3, 5] and config.push_to_hub
    assert config.max_train_steps is None and config.num_epochs == 2 and config.num_train_timesteps == 50
    text = build_argument_parser().format_help()
    for name in TrainingConfig.field_names():
        assert f"--{name}" in text
    flat = " ".join(text.split())
    assert "L_hybrid = L_simple + lambda * L_vlb (default: 0.001)" in flat


def test_flags_are_never_abbreviated():
    with pytest.raises(ConfigError, match="learning_rat"):
        parse_training_config(["--config", TINY_CONFIG, "--learning_rat", "1e-3"])


def test_yaml_with_a_key_twice_or_not_utf8(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("learning_rate: 1.0e-3\nseed: 1\nlearning_rate: 2.0e-3\n")
    with pytest.raises(ConfigError, match="learning_rate.*twice"):
        read_yaml_config(twice)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("output_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        read_yaml_config(latin1)


def test_token_never_saved():
    config = config_from_yaml(TINY_CONFIG, overrides={"hub_token": "hf_secretsecret123"})
    assert config.to_dict()["hub_token"] is None


def test_full_chain_is_spelled_full():
    assert parse_training_config(["--num_inference_steps", "full"]).num_inference_steps == "full"
    with pytest.raises(ConfigError, match="num_inference_steps"):
        parse_training_config(["--num_inference_steps", "all"])
    assert TrainingConfig().sampling_defaults()["default_num_inference_steps"] == TrainingConfig().num_inference_steps
    with pytest.raises(ConfigError, match="num_inference_steps"):
        load_config({"num_inference_steps": 0})


def test_layers_per_block_flag_takes_one_number_or_one_per_level():
    assert parse_training_config(["--config", TINY_CONFIG, "--layers_per_block", "0,1,1"]).layers_per_block == [0, 1, 1]
    assert parse_training_config(["--layers_per_block", "[1, 2, 1]"]).layers_per_block == [1, 2, 1]
    assert parse_training_config(["--layers_per_block", "2"]).layers_per_block == 2


@pytest.mark.parametrize(
    "override, key, words",
    [
        ({"attention_head_dim": 48}, "attention_head_dim", "divide"),
        ({"norm_num_groups": 5}, "norm_num_groups", "divide"),
        ({"resolution": 30}, "resolution", "halved"),
        ({"attention_levels": [True]}, "attention_levels", "one true/false per level"),
        ({"num_train_timesteps": 10**9}, "num_train_timesteps", "GB"),
        ({"prediction_type": "x0"}, "prediction_type", "epsilon"),
        ({"num_inference_steps": 5000}, "num_inference_steps", "between 1"),
        ({"guidance_interval": [0.8, 0.2]}, "guidance_interval", "low < high"),
        ({"lr_scheduler": "warp_speed"}, "lr_scheduler", "cosine"),
        ({"hub_model_id": "not a repo"}, "hub_model_id", "namespace/name"),
    ],
)
def test_component_rules_are_named_by_config_key(override, key, words):
    """The UNet, scheduler, pipeline, LR schedule and Hub rules are asked of those components, and named by key."""
    with pytest.raises(ConfigError, match=f"'{key}'") as caught:
        load_config(override)
    assert words in str(caught.value)


def test_every_key_has_help_and_a_default_that_validates():
    for name, field in TrainingConfig.model_fields.items():
        assert field.description, name
    assert load_config(TrainingConfig().to_dict()) == TrainingConfig()
    assert yaml.safe_load(yaml.safe_dump(TrainingConfig().to_dict())) == TrainingConfig().to_dict()


def test_choice_flags_are_read_as_text_not_yaml():
    """YAML reads no, yes, on and off as booleans; a flag that chooses among words keeps the word."""
    assert parse_training_config(["--mixed_precision", "no"]).mixed_precision == "no"
    assert parse_training_config(["--logger", "none"]).logger == "none"
    assert parse_training_config(["--sampling_order", "2"]).sampling_order == 2
