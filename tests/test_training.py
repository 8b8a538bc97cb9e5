"""train_ddpm.py on the tiny config: config validation, the loss, a full run, exact resume, failures, two processes."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

import train_ddpm
from ddpm_pipeline import CosineDDPMScheduler, DDPMMnistPipeline, MnistUNet
from ddpm_pipeline.checkpointing import (
    CheckpointError,
    list_checkpoints,
    resolve_checkpoint,
    save_checkpoint_atomically,
)
from ddpm_pipeline.losses import diffusion_loss
from ddpm_pipeline.training_config import ConfigError, TrainingConfig, build_argument_parser, parse_training_config

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")


def tiny_args(output_dir, *extra):
    return ["--config", TINY, "--output_dir", str(output_dir), "--digits", "0,1", *extra]


def unet_weights(output_dir):
    return load_file(str(Path(output_dir) / "unet" / "diffusion_pytorch_model.safetensors"))


# ------------------------------------------------------------------ configuration
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
        TrainingConfig.from_yaml(TINY, overrides=override)


def test_bad_config_stops_before_work(tmp_path, capsys):
    assert train_ddpm.main(tiny_args(tmp_path / "out", "--train_batch_size", "0")) == 2
    assert "train_batch_size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("learning_rate: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainingConfig.from_yaml(bad_yaml)
    with pytest.raises(ConfigError, match="does not exist"):
        TrainingConfig.from_yaml(tmp_path / "missing.yaml")


def test_shipped_configs_are_valid():
    for path in (ROOT / "configs").glob("*.yaml"):
        TrainingConfig.from_yaml(path)
    ones = TrainingConfig.from_yaml(ROOT / "configs" / "mnist-ones.yaml")
    assert ones.digits == [1] and not ones.class_conditional
    default = TrainingConfig.from_yaml(ROOT / "configs" / "mnist.yaml")
    assert default.class_conditional and default.learned_variance and default.dataset_name is None


def test_flags_override_yaml_and_help_lists_everything():
    config = parse_training_config(
        [
            "--config",
            TINY,
            "--learning_rate",
            "1e-4",
            "--digits",
            "3,5",
            "--push_to_hub",
            "--hub_model_id",
            "me/x",
            "--max_train_steps",
            "none",
            "--num_epochs",
            "2",
        ]
    )
    assert config.learning_rate == 1e-4 and config.digits == [3, 5] and config.push_to_hub
    assert config.max_train_steps is None and config.num_epochs == 2 and config.num_train_timesteps == 50
    text = build_argument_parser().format_help()
    for name in TrainingConfig.field_names():
        assert f"--{name}" in text
    for flag in [
        "--output_dir",
        "--train_batch_size",
        "--learning_rate",
        "--num_epochs",
        "--max_train_steps",
        "--mixed_precision",
        "--gradient_accumulation_steps",
        "--checkpointing_steps",
        "--resume_from_checkpoint",
        "--seed",
        "--dataset_name",
        "--train_data_dir",
        "--push_to_hub",
        "--hub_model_id",
    ]:
        assert flag in text
    flat = " ".join(text.split())
    assert "L_hybrid = L_simple + lambda * L_vlb (default: 0.001)" in flat


def test_token_never_saved():
    config = TrainingConfig.from_yaml(TINY, overrides={"hub_token": "hf_secretsecret123"})
    assert config.to_dict()["hub_token"] is None


# ------------------------------------------------------------------ the loss
def test_hybrid_loss_parts_and_decrease_on_a_fixed_batch():
    torch.manual_seed(0)
    scheduler = CosineDDPMScheduler(num_train_timesteps=100)
    unet = MnistUNet(block_out_channels=(16, 32, 32), attention_head_dim=16, norm_num_groups=4)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    x0 = torch.rand(16, 1, 28, 28) * 2 - 1
    noise, t = torch.randn_like(x0), torch.randint(0, 100, (16,))
    noisy = scheduler.add_noise(x0, noise, t)
    history = []
    for _ in range(30):
        losses = diffusion_loss(unet(noisy, t).sample, scheduler, x0, noise, noisy, t, vlb_weight=0.001)
        assert torch.allclose(losses.loss, losses.simple + 0.001 * losses.vlb)
        optimizer.zero_grad()
        losses.loss.backward()
        optimizer.step()
        history.append(losses.loss.item())
    assert history[-1] < 0.5 * history[0]


def test_vlb_term_trains_only_the_variance():
    scheduler = CosineDDPMScheduler(num_train_timesteps=100)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    noise, t = torch.randn_like(x0), torch.tensor([1, 10, 50, 99])
    noisy = scheduler.add_noise(x0, noise, t)
    output = torch.randn(4, 2, 8, 8, requires_grad=True)
    losses = diffusion_loss(output, scheduler, x0, noise, noisy, t, vlb_weight=1.0)
    losses.vlb.backward()
    assert output.grad[:, :1].abs().sum() == 0 and output.grad[:, 1:].abs().sum() > 0


# ------------------------------------------------------------------ full runs
def test_one_epoch_end_to_end(tmp_path):
    out = tmp_path / "run"
    args = tiny_args(
        out,
        "--max_train_steps",
        "none",
        "--num_epochs",
        "1",
        "--train_batch_size",
        "64",
        "--logger",
        "tensorboard",
        "--save_images_epochs",
        "1",
    )
    assert train_ddpm.main(args) == 0
    for name in ["model_index.json", "samples.png", "trajectory.png", "train_config.yaml", "README.md"]:
        assert (out / name).is_file(), name
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    grid = PIL.Image.open(out / "samples.png")
    assert grid.width > 6 * 28 and grid.height > 6 * 28
    info = json.loads((out / "run_info.json").read_text())
    assert info["global_step"] == 900 // 64  # digits 0 and 1 of the train split: 450 each
    pipe = DDPMMnistPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, class_labels=[0, 1], num_inference_steps=3, output_type="np").images
    assert images.shape == (2, 28, 28, 1)


def test_resume_continues_exactly(tmp_path):
    k = 3
    straight = tmp_path / "straight"
    common = [
        "--max_train_steps",
        str(2 * k),
        "--checkpointing_steps",
        str(k),
        "--gradient_accumulation_steps",
        "2",
        "--cond_drop_prob",
        "0.5",
    ]
    assert train_ddpm.main(tiny_args(straight, *common)) == 0
    checkpoints = list_checkpoints(straight)
    assert [p.name for p in checkpoints] == [f"checkpoint-{k}"]

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoints[0], resumed / checkpoints[0].name)
    assert train_ddpm.main(tiny_args(resumed, *common, "--resume_from_checkpoint", "latest")) == 0
    assert json.loads((resumed / "run_info.json").read_text())["global_step"] == 2 * k
    a, b = unet_weights(straight), unet_weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    # and not trivially: training moved the weights away from the checkpoint's
    at_k = load_file(str(next(checkpoints[0].glob("model*.safetensors"))))
    assert any(not torch.allclose(at_k[n], a[n.removeprefix("module.")]) for n in at_k if n in a)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    save_checkpoint_atomically(accelerator, tmp_path, 10, {})

    def crash(path, **kwargs):
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt("killed while saving")

    accelerator.save_state = crash
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomically(accelerator, tmp_path, 20, {})
    assert (tmp_path / "checkpoint-20.tmp").exists()
    assert resolve_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-10"
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-20.tmp"))
    del model


def test_missing_or_corrupt_checkpoint(tmp_path, capsys):
    assert train_ddpm.main(tiny_args(tmp_path / "a", "--resume_from_checkpoint", str(tmp_path / "nope"))) == 2
    assert "does not exist" in capsys.readouterr().err
    out = tmp_path / "b"
    assert train_ddpm.main(tiny_args(out, "--max_train_steps", "4", "--checkpointing_steps", "2")) == 0
    checkpoint = list_checkpoints(out)[-1]
    for weights in checkpoint.glob("model*.safetensors"):
        weights.write_bytes(b"\x00" * 64)
    assert train_ddpm.main(tiny_args(out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")) == 2
    assert "could not be loaded" in capsys.readouterr().err


def test_nan_loss_stops_with_the_step(tmp_path, monkeypatch, capsys):
    out = tmp_path / "nan"
    calls = {"n": 0}
    real_loss = train_ddpm.diffusion_loss

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        losses = real_loss(*args, **kwargs)
        if calls["n"] == 5:
            losses.loss = losses.loss * float("nan")
        return losses

    monkeypatch.setattr(train_ddpm, "diffusion_loss", sometimes_nan)
    assert train_ddpm.main(tiny_args(out, "--max_train_steps", "8", "--checkpointing_steps", "2")) == 2
    message = capsys.readouterr().err
    assert "at step 5" in message and "nan" in message.lower()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.parametrize("flag,calls", [([], 1), (["--keep_freed_memory", "false"], 0)])
def test_cpu_training_keeps_freed_memory_unless_told_not_to(tmp_path, monkeypatch, flag, calls):
    seen = []
    monkeypatch.setattr(train_ddpm, "keep_freed_memory", lambda: seen.append(True) or True)
    assert train_ddpm.main(tiny_args(tmp_path / "run", "--max_train_steps", "1", *flag)) == 0
    assert len(seen) == calls


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    """2 ranks x batch 8 with gloo == 1 rank x batch 16: same batches, noise and timesteps, so the same weights."""
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    common = ["--max_train_steps", "4", "--cond_drop_prob", "0.3"]
    two = tmp_path / "two"
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_machines",
        "1",
    ]
    result = subprocess.run(
        launch + [str(ROOT / "train_ddpm.py"), *tiny_args(two, "--train_batch_size", "8", *common)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr + result.stdout
    one = tmp_path / "one"
    assert train_ddpm.main(tiny_args(one, "--train_batch_size", "16", *common)) == 0
    a, b = unet_weights(two), unet_weights(one)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3, msg=name)


def test_ranks_draw_different_noise():
    config = TrainingConfig.from_yaml(TINY)
    plans = [train_ddpm.BatchPlan(config, 1000, 2, rank) for rank in (0, 1)]
    noise = [plan.randomness(7, (1, 28, 28), 50, 0.1)[0] for plan in plans]
    indices = [plan.indices(7) for plan in plans]
    assert not torch.equal(noise[0], noise[1])
    assert not set(indices[0].tolist()) & set(indices[1].tolist())
    single = train_ddpm.BatchPlan(TrainingConfig.from_yaml(TINY, {"train_batch_size": 32}), 1000, 1, 0)
    torch.testing.assert_close(single.randomness(7, (1, 28, 28), 50, 0.1)[0], torch.cat(noise))


def test_layers_per_block_flag_takes_one_number_or_one_per_level():
    from ddpm_pipeline.training_config import parse_training_config

    assert parse_training_config(["--config", TINY, "--layers_per_block", "0,1,1"]).layers_per_block == [0, 1, 1]
    assert parse_training_config(["--config", TINY, "--layers_per_block", "[1, 2, 1]"]).layers_per_block == [1, 2, 1]
    assert parse_training_config(["--config", TINY, "--layers_per_block", "2"]).layers_per_block == 2
    assert TrainingConfig.from_yaml(ROOT / "configs" / "mnist.yaml").layers_per_block == [0, 1, 1]
