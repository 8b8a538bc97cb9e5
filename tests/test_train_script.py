"""train_ddpm.py end to end on the tiny config: a full run, exact resume, failures, and two processes."""

import json
import os
import shutil
import socket
from pathlib import Path

import PIL.Image
import pytest
import torch
import yaml
from safetensors.torch import load_file

from ddpm_pipeline import DDPMMnistPipeline
from ddpm_pipeline.checkpointing import list_checkpoints
from ddpm_pipeline.pipeline_ddpm_mnist import DEFAULT_GUIDANCE_SCALE
from ddpm_pipeline.training import command, loop, processes
from ddpm_pipeline.training import step as training_step
from ddpm_pipeline.training.main import main as train_main
from tests.conftest import TINY_CONFIG, tiny_args


def unet_weights(output_dir):
    return load_file(str(Path(output_dir) / "unet" / "diffusion_pytorch_model.safetensors"))


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
    assert train_main(args) == 0
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


def test_evaluate_scores_the_saved_default_call_and_fills_the_card(tmp_path):
    out = tmp_path / "run"
    flags = ["--max_train_steps", "2", "--evaluate", "--eval_num_samples", "20", "--guidance_interval", "0.2,0.9"]
    assert train_main(tiny_args(out, *flags)) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    saved = json.loads((out / "model_index.json").read_text())
    assert evaluation["num_inference_steps"] == saved["default_num_inference_steps"] == 5  # configs/tiny.yaml
    assert evaluation["guidance_interval"] == saved["default_guidance_interval"] == [0.2, 0.9]
    assert evaluation["guidance_scale"] == saved["default_guidance_scale"] == DEFAULT_GUIDANCE_SCALE  # tiny.yaml: none
    assert 0.0 <= evaluation["clear_rate"] <= 1.0 and evaluation["fid"] > 0
    assert f"| clear_rate | {evaluation['clear_rate']:.4g} |" in (out / "README.md").read_text()


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
    assert train_main(tiny_args(straight, *common)) == 0
    checkpoints = list_checkpoints(straight)
    assert [p.name for p in checkpoints] == [f"checkpoint-{k}"]

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoints[0], resumed / checkpoints[0].name)
    assert train_main(tiny_args(resumed, *common, "--resume_from_checkpoint", "latest")) == 0
    info = json.loads((resumed / "run_info.json").read_text())
    assert info["global_step"] == 2 * k and info["resumed_from_step"] == k and not info["earlier_seconds_unknown"]
    # the training time adds up across the resume: the checkpoint's seconds, then this process's
    earlier = json.loads((checkpoints[0] / "training_state.json").read_text())["train_seconds"]
    assert 0 < earlier < info["train_seconds"]
    assert f"(resumed at step {k})" in (resumed / "README.md").read_text()
    a, b = unet_weights(straight), unet_weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    # and not trivially: training moved the weights away from the checkpoint's
    at_k = load_file(str(next(checkpoints[0].glob("model*.safetensors"))))
    assert any(not torch.allclose(at_k[n], a[n.removeprefix("module.")]) for n in at_k if n in a)


def test_missing_or_corrupt_checkpoint(tmp_path, capsys):
    assert train_main(tiny_args(tmp_path / "a", "--resume_from_checkpoint", str(tmp_path / "nope"))) == 2
    assert "does not exist" in capsys.readouterr().err
    out = tmp_path / "b"
    assert train_main(tiny_args(out, "--max_train_steps", "4", "--checkpointing_steps", "2")) == 0
    checkpoint = list_checkpoints(out)[-1]
    for weights in checkpoint.glob("model*.safetensors"):
        weights.write_bytes(b"\x00" * 64)
    assert train_main(tiny_args(out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")) == 2
    message = capsys.readouterr().err
    assert "model.safetensors does not match its SHA-256" in message and "None of the 1 checkpoint" in message


def test_nan_loss_stops_with_the_step(tmp_path, monkeypatch, capsys):
    out = tmp_path / "nan"
    calls = {"n": 0}
    real_loss = training_step.training_losses

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        losses = real_loss(*args, **kwargs)
        if calls["n"] == 5:
            losses.loss = losses.loss * float("nan")
        return losses

    monkeypatch.setattr(training_step, "training_losses", sometimes_nan)
    assert train_main(tiny_args(out, "--max_train_steps", "8", "--checkpointing_steps", "2")) == 2
    message = capsys.readouterr().err
    assert "at step 5" in message and "nan" in message.lower()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU's behaviour: where CUDA is, training runs there")
@pytest.mark.parametrize("flag,calls", [([], 1), (["--keep_freed_memory", "false"], 0)])
def test_cpu_training_keeps_freed_memory_unless_told_not_to(tmp_path, monkeypatch, flag, calls):
    seen = []
    monkeypatch.setattr(processes, "keep_freed_memory", lambda: seen.append(True) or True)
    assert train_main(tiny_args(tmp_path / "run", "--max_train_steps", "1", *flag)) == 0
    assert len(seen) == calls


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_advice_names_the_launcher_the_run_was_started_with(monkeypatch):
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    assert command.recorded_command(["--seed", "1"]) == "python train_ddpm.py --seed 1"
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")  # what accelerate launch sets in the processes it starts
    assert (
        command.recorded_command(["--hub_token", "hf_x", "--seed", "1"]) == "accelerate launch train_ddpm.py --seed 1"
    )


def flip_one_byte(path: Path, offset_from_end: int = 100):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_falls_back_to_the_previous_checkpoint(tmp_path, caplog):
    """A damaged newest checkpoint is detected by its manifest; `latest` resumes from the one before, saying so, and
    ends with the weights of an uninterrupted run."""
    common = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--checkpoints_total_limit", "3"]
    straight = tmp_path / "straight"
    assert train_main(tiny_args(straight, *common)) == 0
    damaged = tmp_path / "damaged"
    shutil.copytree(straight / "checkpoint-2", damaged / "checkpoint-2")
    shutil.copytree(straight / "checkpoint-4", damaged / "checkpoint-4")
    flip_one_byte(damaged / "checkpoint-4" / "model.safetensors")
    with caplog.at_level("WARNING"):
        assert train_main(tiny_args(damaged, *common, "--resume_from_checkpoint", "latest")) == 0
    assert "checkpoint-4/model.safetensors does not match its SHA-256" in caplog.text
    assert "Resuming from checkpoint-2" in caplog.text
    a, b = unet_weights(straight), unet_weights(damaged)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)


def test_forced_divergence_stops_before_saving_and_its_advice_trains_on(tmp_path, capsys):
    """--learning_rate 1e30 --max_grad_norm 0: the first update with a learning rate explodes the weights. The run
    stops before anything bad is saved, names a checkpoint that verifies with finite weights, and the command it
    suggests trains to the end."""
    out = tmp_path / "diverge"
    flags = ["--max_train_steps", "6", "--checkpointing_steps", "1", "--learning_rate", "1e30", "--max_grad_norm", "0"]
    flags += ["--lr_scheduler", "cosine"]  # diffusers' warm-up starts at exactly 0 (wsd's at a millionth of the peak)
    assert train_main(tiny_args(out, *flags)) == 2  # step 1 has lr 0 (warmup), step 2 explodes
    message = capsys.readouterr().err
    assert "Training diverged" in message and "step 2" in message
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1"]
    assert str(out / "checkpoint-1") in message
    for weights in (out / "checkpoint-1").glob("model*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(weights)).values())
    # the advice is the command this run was started with (here without accelerate launch)
    command = next(line for line in message.splitlines() if "train_ddpm.py" in line).split()
    assert command[:2] == ["python", "train_ddpm.py"] and "accelerate launch" not in message
    assert "--resume_from_checkpoint" in command and "--learning_rate" in command
    assert train_main(command[2:]) == 0
    assert json.loads((out / "run_info.json").read_text())["global_step"] == 6
    assert all(torch.isfinite(t).all() for t in unet_weights(out).values())


def test_time_to_quality_benchmark_trains_exactly_the_default_runs_steps(tmp_path):
    """bench_time_to_quality's 'ours' is train_ddpm.py's own run (data order, objective, AdamW, LR schedule, EMA):
    its first steps give the weights, EMA included, that train_ddpm.py saves for the same flags."""
    from benchmarks.bench_time_to_quality import Ours

    flags = ["--config", TINY_CONFIG, "--digits", "0,1", "--max_train_steps", "4"]  # the bench adds --output_dir
    assert train_main([*flags, "--output_dir", str(tmp_path / "script")]) == 0
    contender = Ours(flags, str(tmp_path / "bench"))
    while contender.train_step():
        pass
    assert contender.steps == 4
    benched = contender.run.parts.ema_pipeline(contender.run.config).unet.state_dict()
    saved = unet_weights(tmp_path / "script")
    assert benched.keys() == saved.keys()
    for name, value in saved.items():
        assert torch.equal(benched[name].cpu(), value), name


def test_a_resume_with_another_learning_rate_follows_the_config_schedule(tmp_path):
    """The checkpoint's schedule is replaced by this config's, at the resumed step: the learning rate after resuming
    equals diffusers' get_scheduler for the new peak, stepped to the same step (and so does the next step's)."""
    from diffusers.optimization import get_scheduler

    from ddpm_pipeline.training.config_checks import parse_args

    out = tmp_path / "run"
    cosine = ["--lr_scheduler", "cosine", "--max_train_steps", "6"]
    assert train_main(tiny_args(out, *cosine, "--checkpointing_steps", "3")) == 0
    args = tiny_args(out, *cosine, "--learning_rate", "4e-4", "--resume_from_checkpoint", "latest")
    run = loop.build_run(parse_args(args))
    loop.resume(run)
    assert run.state.global_step == 3
    reference_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=4e-4)
    reference = get_scheduler("cosine", reference_optimizer, num_warmup_steps=2, num_training_steps=6)
    for _ in range(3):
        reference_optimizer.step()
        reference.step()
    assert run.config.lr_scheduler == "cosine"
    assert run.parts.optimizer.param_groups[0]["lr"] == pytest.approx(reference.get_last_lr()[0], rel=1e-12)
    training_step.optimizer_step(run)
    reference_optimizer.step()
    reference.step()
    assert run.state.lr_scheduler.get_last_lr()[0] == pytest.approx(reference.get_last_lr()[0], rel=1e-12)
    assert run.state.lr_scheduler.base_lrs == [4e-4]


def _loss_times(factor: float, steps: set[int], monkeypatch):
    """Make the losses of the given optimizer steps ``factor`` times larger (a bad batch), by patching the objective."""
    real_loss, calls = training_step.training_losses, {"n": 0}

    def scaled(*args, **kwargs):
        calls["n"] += 1
        losses = real_loss(*args, **kwargs)
        if calls["n"] in steps:
            losses.loss = losses.loss * factor
        return losses

    monkeypatch.setattr(training_step, "training_losses", scaled)


def test_one_outlier_batch_does_not_stop_a_long_run(tmp_path, monkeypatch, caplog):
    """One batch at 100x the loss (and gradient) on step 14, after the guard's warm-up: the run trains on to the end,
    and the checkpoint due on that step is written on the next one."""
    _loss_times(100.0, {14}, monkeypatch)
    out = tmp_path / "outlier"
    with caplog.at_level("WARNING"):
        assert train_main(tiny_args(out, "--max_train_steps", "18", "--checkpointing_steps", "7")) == 0
    assert json.loads((out / "run_info.json").read_text())["global_step"] == 18
    assert "Step 14: loss" in caplog.text and "Holding back the checkpoint of step 14" in caplog.text
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-7", "checkpoint-15"]


def test_a_persistent_blow_up_stops_before_saving_and_resumes(tmp_path, monkeypatch, capsys):
    """From step 13 on every batch is 100x: the run stops at step 15 (three in a row), the checkpoint due at step 14
    was held back, and the newest checkpoint (step 7) resumes."""
    _loss_times(100.0, set(range(13, 40)), monkeypatch)
    out = tmp_path / "blowup"
    assert train_main(tiny_args(out, "--max_train_steps", "18", "--checkpointing_steps", "7")) == 2
    message = capsys.readouterr().err
    assert "persisted for 3 steps in a row" in message and "step 15" in message
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-7"] and str(out / "checkpoint-7") in message
    monkeypatch.undo()
    resumed = tiny_args(out, "--max_train_steps", "18", "--resume_from_checkpoint", str(out / "checkpoint-7"))
    assert train_main(resumed) == 0


class PacedClock:
    """The budget's clock for a test: it moves only when the model trains, ``pace(now)`` seconds per micro-batch, so
    a run's length does not depend on how busy the machine running the tests is."""

    def __init__(self, pace):
        self.pace, self.now = pace, 0.0

    def __call__(self) -> float:
        return self.now

    def install(self, monkeypatch):
        from ddpm_pipeline.training import time_budget

        real_loss = training_step.training_losses

        def paced(*args, **kwargs):
            self.now += self.pace(self.now)
            return real_loss(*args, **kwargs)

        monkeypatch.setattr(time_budget, "now", self)
        monkeypatch.setattr(training_step, "training_losses", paced)
        return self


@pytest.mark.parametrize(
    "pace", [lambda t: 0.02 if t < 1.0 else 0.04, lambda t: 0.04 if t < 1.0 else 0.02], ids=["slows", "speeds_up"]
)
def test_a_budget_is_kept_when_the_machine_changes_pace_halfway(tmp_path, monkeypatch, caplog, pace):
    """--time_budget 2s on a clock that halves (or doubles) its pace after 1 s: the run re-plans its length while the
    learning rate is constant and ends within 10 % of its budget (a length fixed once would end 50 % over, or 25 %
    short); the re-plans are logged, and the saved config holds the length it trained."""
    clock = PacedClock(pace).install(monkeypatch)
    out = tmp_path / "budget"
    # a cooldown of the last 20 %: the pace changes while the rate is still constant (with the default 60 % it would
    # change after the length is final)
    flags = ["--time_budget", "2s", "--lr_warmup_steps", "20", "--checkpointing_steps", "0", "--max_train_steps", "3",
             "--lr_cooldown_fraction", "0.2"]  # fmt: skip
    with caplog.at_level("INFO"):
        assert train_main(tiny_args(out, *flags)) == 0
    assert 0.9 * 2 <= clock.now <= 1.1 * 2, clock.now
    assert "re-planned from" in caplog.text
    info = json.loads((out / "run_info.json").read_text())
    saved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert saved["time_budget"] == "2s" and saved["max_train_steps"] == info["global_step"] > 20


def test_a_preempted_budgeted_run_resumed_by_its_printed_command_is_the_same_run(tmp_path, monkeypatch, capsys):
    """SIGTERM during step 11 of a 0.6 s budget (a steady clock): the command the run prints continues it to the
    weights and length of a run that was never stopped; the checkpoint carries the budget's spent seconds and plan."""
    import shlex
    import signal

    flags = ["--time_budget", "0.6s", "--lr_warmup_steps", "6", "--checkpointing_steps", "0"]
    PacedClock(lambda t: 0.02).install(monkeypatch)
    straight = tmp_path / "straight"
    assert train_main(tiny_args(straight, *flags)) == 0
    steps = json.loads((straight / "run_info.json").read_text())["global_step"]
    monkeypatch.undo()
    clock = PacedClock(lambda t: 0.02).install(monkeypatch)
    real = training_step.training_losses

    def stopped_in_step_11(*args, **kwargs):
        if round(clock.now / 0.02) == 10:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(training_step, "training_losses", stopped_in_step_11)
    stopped = tmp_path / "stopped"
    assert train_main(tiny_args(stopped, *flags)) == 75
    message = capsys.readouterr().err
    command = shlex.split(next(line for line in message.splitlines() if "train_ddpm.py" in line))
    state = json.loads((list_checkpoints(stopped)[0] / "training_state.json").read_text())
    assert state["global_step"] == 11 and state["budget_seconds_spent"] == pytest.approx(0.22)
    assert state["max_train_steps"] == steps
    monkeypatch.undo()
    PacedClock(lambda t: 0.02).install(monkeypatch)  # the resumed process's own clock, from zero
    assert train_main(command[command.index("train_ddpm.py") + 1 :]) == 0
    assert json.loads((stopped / "run_info.json").read_text())["global_step"] == steps
    a, b = unet_weights(straight), unet_weights(stopped)
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("warmup", ["400", "5"])
def test_a_budget_too_short_for_the_warm_up_is_refused_by_name(tmp_path, monkeypatch, capsys, warmup):
    """0.1 s at 0.03 s a step: the warm-up (400 steps, or 5 that take 0.15 s) does not fit."""
    PacedClock(lambda t: 0.03).install(monkeypatch)
    args = tiny_args(tmp_path / "short", "--time_budget", "0.1s", "--lr_warmup_steps", warmup)
    assert train_main(args) == 2
    message = capsys.readouterr().err
    assert "'time_budget'" in message and "warm-up" in message and "--lr_warmup_steps" in message


def test_wsd_rates_and_a_cooldown_branch_are_exact(tmp_path):
    """wsd: the warm-up of diffusers' schedules, a constant rate, a linear cooldown to 0 (rates checked step by step);
    a cooldown branched from a checkpoint of the constant phase trains the same weights as a run that was that long
    from the start."""
    from ddpm_pipeline.training.components import build_lr_scheduler
    from ddpm_pipeline.training_config import TrainingConfig

    config = TrainingConfig.from_dict({"lr_scheduler": "wsd", "lr_warmup_steps": 4, "lr_cooldown_steps": 5})
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler, rates = build_lr_scheduler(config, optimizer, 20), []
    for _ in range(21):
        rates.append(optimizer.param_groups[0]["lr"] / config.learning_rate)
        optimizer.step()
        scheduler.step()
    expected = [k / 4 for k in range(4)] + [1.0] * 11 + [1 - k / 5 for k in range(6)]
    assert rates == pytest.approx(expected, abs=1e-6)

    common = ["--lr_scheduler", "wsd", "--lr_warmup_steps", "2", "--lr_cooldown_steps", "4"]
    main_run, branch, straight = tmp_path / "main", tmp_path / "branch", tmp_path / "straight"
    long_run = ["--max_train_steps", "20", "--checkpointing_steps", "6", "--checkpoints_total_limit", "3"]
    assert train_main(tiny_args(main_run, *common, *long_run)) == 0
    assert train_main(tiny_args(branch, *common, "--cooldown_from", str(main_run / "checkpoint-6"))) == 0
    assert train_main(tiny_args(straight, *common, "--max_train_steps", "10")) == 0
    assert json.loads((branch / "run_info.json").read_text())["global_step"] == 10
    a, b = unet_weights(branch), unet_weights(straight)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert list_checkpoints(main_run), "the run it branched from keeps its checkpoints"


def test_a_resumed_ema_follows_the_models_device(tmp_path, reload_ema_elsewhere):
    """Accelerate reloads custom states onto the CPU (on a GPU the EMA would then mix devices); here the reloaded EMA
    lands on the meta device, and the resume must bring it back to the model's device."""
    out = tmp_path / "run"
    assert train_main(tiny_args(out, "--max_train_steps", "4", "--checkpointing_steps", "2")) == 0
    moves = reload_ema_elsewhere()
    from ddpm_pipeline.training.config_checks import parse_args

    args = tiny_args(out, "--max_train_steps", "4", "--resume_from_checkpoint", str(out / "checkpoint-2"))
    run = loop.build_run(parse_args(args))
    loop.resume(run)
    model_device = next(run.parts.unet.parameters()).device
    assert moves == [model_device] and {p.device for p in run.parts.ema.shadow_params} == {model_device}
    training_step.optimizer_step(run)  # the EMA update mixes no devices


@pytest.mark.parametrize("total", [1, 4, 5, 6])
def test_wsd_survives_runs_no_longer_than_their_warm_up(total):
    """A --time_budget can fix a length equal to the warm-up: the schedule still builds and steps to the end."""
    from ddpm_pipeline.training.components import build_lr_scheduler
    from ddpm_pipeline.training_config import TrainingConfig

    config = TrainingConfig.from_dict({"lr_scheduler": "wsd", "lr_warmup_steps": 5})
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    build_lr_scheduler(config, optimizer, total, at_step=total)
    assert 0.0 <= optimizer.param_groups[0]["lr"] <= config.learning_rate


def test_a_preempted_cooldown_branch_resumes_by_its_printed_command_or_by_latest_alone(tmp_path, monkeypatch, capsys):
    """SIGTERM during a cooldown branch: the command it prints (its own flags and --resume_from_checkpoint latest)
    trains the weights of a branch that was never stopped; so does `--resume_from_checkpoint latest` without the
    branch's flags (its checkpoint holds them); a flag that contradicts the checkpoint is refused, naming both."""
    import shlex
    import signal

    common = ["--lr_scheduler", "wsd", "--lr_warmup_steps", "2"]
    main_run = tmp_path / "main"
    long_run = ["--max_train_steps", "12", "--checkpointing_steps", "4", "--checkpoints_total_limit", "3"]
    assert train_main(tiny_args(main_run, *common, *long_run)) == 0
    branch_flags = [*common, "--cooldown_from", str(main_run / "checkpoint-4"), "--lr_cooldown_steps", "6"]
    straight = tmp_path / "straight"
    assert train_main(tiny_args(straight, *branch_flags)) == 0
    assert json.loads((straight / "run_info.json").read_text())["global_step"] == 10

    real, calls = training_step.training_losses, {"n": 0}

    def stopped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the branch's third step: step 7
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    for name, resume in [("printed", None), ("latest_alone", ["--resume_from_checkpoint", "latest"])]:
        calls["n"] = 0
        monkeypatch.setattr(training_step, "training_losses", stopped)
        branch = tmp_path / name
        assert train_main(tiny_args(branch, *branch_flags)) == 75
        message = capsys.readouterr().err
        monkeypatch.undo()
        if resume is None:
            words = shlex.split(next(line for line in message.splitlines() if "train_ddpm.py" in line))
            resume_args = words[words.index("train_ddpm.py") + 1 :]
        else:
            resume_args = tiny_args(branch, *resume)
            contradiction = tiny_args(branch, *resume, "--lr_cooldown_steps", "9")
            assert train_main(contradiction) == 2
            said = capsys.readouterr().err
            assert "lr_cooldown_steps 6" in said and "--lr_cooldown_steps 9" in said
        assert train_main(resume_args) == 0, capsys.readouterr().err
        assert json.loads((branch / "run_info.json").read_text())["global_step"] == 10
        a, b = unet_weights(straight), unet_weights(branch)
        assert all(torch.equal(a[key], b[key]) for key in a), name


def test_cooldown_from_latest_is_refused_with_what_to_give(tmp_path, capsys):
    flags = ["--lr_scheduler", "wsd", "--lr_cooldown_steps", "4", "--cooldown_from", "latest"]
    assert train_main(tiny_args(tmp_path / "run", *flags)) == 2
    message = capsys.readouterr().err
    assert (
        "'cooldown_from'" in message and "checkpoint-6000" in message and "--resume_from_checkpoint latest" in message
    )
