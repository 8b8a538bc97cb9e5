"""Distillation on a tiny teacher (seconds): the teacher's paths against diffusers' DDIM, the student's sampler against
diffusers' LCMScheduler, a whole run, its exact resume after a time budget, and the student's refusals."""

import hashlib
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler

from ddpm_pipeline import DDPMMnistPipeline
from ddpm_pipeline.distillation import loop
from ddpm_pipeline.distillation.main import main
from ddpm_pipeline.distillation.teacher import ddim_chain, guided_ode_paths
from ddpm_pipeline.pipeline_ddpm_mnist import SamplingArgumentError
from ddpm_pipeline.scheduling_distilled import DistilledLCMScheduler, DistilledStepsError
from tests.conftest import tiny_pipeline

TINY = ["--num_paths", "40", "--teacher_steps", "4", "--teacher_batch_size", "16", "--train_batch_size", "8",
        "--max_train_steps", "6", "--checkpointing_steps", "0", "--evaluate_samples", "0", "--mixed_precision", "no",
        "--learning_rate", "1e-3", "--lr_warmup_steps", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "pipe"
    pipe = tiny_pipeline()
    pipe.register_to_config(default_guidance_scale=2.0, default_guidance_interval=[0.2, 0.8])
    pipe.save_pretrained(path)
    return path


def distil(teacher, out, *flags) -> int:
    return main(["--teacher", str(teacher), "--output_dir", str(out), *TINY, *flags])


def weights_digest(folder) -> str:
    return hashlib.sha256((folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()


class ClippedDDIM(DDIMScheduler):
    """diffusers' DDIM whose direction is the noise the clipped x_0 implies (its use_clipped_model_output)."""

    def step(self, *args, **kwargs):
        return super().step(*args, use_clipped_model_output=True, **kwargs)


@pytest.mark.parametrize("guidance", [None, (3.0, [0.4, 1.0])], ids=["teachers-saved", "named"])
def test_the_teachers_paths_are_diffusers_ddim_with_its_guidance(teacher, guidance):
    pipe = DDPMMnistPipeline.from_pretrained(teacher)
    pipe.set_progress_bar_config(disable=True)
    chain = ddim_chain(50, 10)
    noise = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(6)
    kept, end = guided_ode_paths(pipe, noise, labels, chain, [49, 24], guidance)
    ddim = ClippedDDIM.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    scale, interval = guidance or (2.0, [0.2, 0.8])
    oracle = DDPMMnistPipeline(unet=pipe.unet, scheduler=ddim, default_guidance_scale=scale,
                               default_guidance_interval=interval)  # fmt: skip
    oracle.set_progress_bar_config(disable=True)
    points = []
    out = oracle(batch_size=6, class_labels=labels, num_inference_steps=10, output_type="pt",
                 generator=torch.Generator().manual_seed(0),
                 callback_on_step_end=lambda p, i, t, k: points.append(k["latents"].clone()) or {})  # fmt: skip
    assert ddim.timesteps.tolist() == chain
    torch.testing.assert_close(kept[49], noise)
    torch.testing.assert_close(kept[24], points[chain.index(24) - 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(end, out.images * 2 - 1, atol=1e-5, rtol=0)


def test_the_students_sampler_is_lcm_on_its_own_chains():
    chains = {"1": [49], "2": [49, 24], "4": [49, 37, 24, 12]}
    ours = DistilledLCMScheduler(num_train_timesteps=50, distilled_timesteps=chains)
    theirs = LCMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                          clip_sample=True)  # fmt: skip
    ours.set_timesteps(4)
    theirs.set_timesteps(timesteps=chains["4"])
    assert ours.timesteps.tolist() == theirs.timesteps.tolist() == chains["4"]
    sample = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for t in chains["4"]:
        v = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(t))
        a = ours.step(v, t, sample, generator=torch.Generator().manual_seed(t)).prev_sample
        b = theirs.step(v, t, sample, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        sample = a
    with pytest.raises(DistilledStepsError, match="runs 1, 2, 4 steps .* not 3"):
        ours.set_timesteps(3)


@pytest.mark.parametrize(
    "chains,message",
    [(None, "is empty"), ({"2": [49]}, "must be 2 descending"), ({"2": [24, 49]}, "descending"),
     ({"1": [50]}, r"in \[0, 50\)")],
)  # fmt: skip
def test_bad_distilled_chains_are_refused(chains, message):
    with pytest.raises(ValueError, match=message):
        DistilledLCMScheduler(num_train_timesteps=50, distilled_timesteps=chains)


def test_a_tiny_distillation_gives_a_student_that_samples_in_its_steps_only(teacher, tmp_path):
    out = tmp_path / "student"
    assert distil(teacher, out) == 0
    student = DDPMMnistPipeline.from_pretrained(out)
    student.set_progress_bar_config(disable=True)
    assert student.scheduler.config.distilled_timesteps == {"1": [49], "2": [49, 24], "4": [49, 37, 24, 12]}
    images = []
    hook = student.unet.register_forward_pre_hook(lambda module, args: images.append(len(args[0])))
    result = student(batch_size=5, class_labels=[3] * 5, generator=torch.Generator().manual_seed(0),
                     output_type="np", return_trajectory=True)  # fmt: skip
    hook.remove()
    assert sum(images) == 4 * 5  # its default call: 4 UNet evaluations per image, no guidance doubling
    assert result.images.shape == (5, 28, 28, 1) and result.trajectory_timesteps == [50, 38, 25, 13, 0]
    one_by_one = student(
        batch_size=2,
        num_inference_steps=1,
        generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
        output_type="np",
    ).images
    alone = student(batch_size=1, num_inference_steps=1, class_labels=[0],
                    generator=[torch.Generator().manual_seed(1)], output_type="np").images  # fmt: skip
    np.testing.assert_array_equal(one_by_one[:1], alone)
    with pytest.raises(DistilledStepsError, match="not 3"):
        student(batch_size=1, num_inference_steps=3)
    with pytest.raises(SamplingArgumentError, match="distilled student"):
        student(batch_size=1, guidance_scale=2.0)
    info = (out / "run_info.json").read_text()
    assert "consistency distillation" in info and str(teacher) in info


def test_the_paths_guidance_can_differ_from_the_teachers_and_is_recorded(teacher, tmp_path):
    saved, named = tmp_path / "saved", tmp_path / "named"
    assert distil(teacher, saved) == 0
    assert distil(teacher, named, "--teacher_guidance_scale", "3", "--teacher_guidance_interval", "0.4,1") == 0
    record = json.loads((named / "teacher_paths" / "paths.json").read_text())
    assert (record["guidance_scale"], record["guidance_interval"]) == (3.0, [0.4, 1.0])
    assert json.loads((saved / "teacher_paths" / "paths.json").read_text())["guidance_scale"] == 2.0
    assert weights_digest(saved) != weights_digest(named)
    assert '"guidance_scale": 3.0' in (named / "run_info.json").read_text()


def test_a_run_stopped_by_its_time_budget_resumes_to_the_same_student(teacher, tmp_path, monkeypatch):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert distil(teacher, straight) == 0
    ticks = iter(range(1000))
    monkeypatch.setattr(loop, "now", lambda: float(next(ticks)))  # one second per look at the clock
    assert distil(teacher, stopped, "--time_budget", "3s") == 0  # stops after step 3 with a checkpoint
    assert (stopped / "checkpoint-3").is_dir() and '"global_step": 3' in (stopped / "run_info.json").read_text()
    monkeypatch.undo()
    assert distil(teacher, stopped, "--resume_from_checkpoint", "latest") == 0
    assert weights_digest(stopped) == weights_digest(straight)


def test_a_resumed_students_ema_follows_the_students_device(teacher, tmp_path, reload_ema_elsewhere):
    """Accelerate reloads custom states onto the CPU (on a GPU the EMA would then mix devices with the student); here
    the reloaded EMA lands on the meta device, and the resumed run must bring it back."""
    out = tmp_path / "run"
    assert distil(teacher, out, "--max_train_steps", "2", "--checkpointing_steps", "2") == 0
    moves = reload_ema_elsewhere()
    assert distil(teacher, out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest") == 0
    students_device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")  # accelerate's pick
    assert moves == [students_device]


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--student_steps", "3"], "does not divide teacher_steps"),
        (["--default_steps", "2", "--student_steps", "1,4"], "default_steps (2) must be one of"),
        (["--time_budget", "soon"], "not a duration"),
        (["--teacher_guidance_interval", "0.8,0.4"], "teacher_guidance_interval must be two fractions"),
        (["--learning_rate", "0"], "learning_rate"),
        (["--nonsense", "1"], "unrecognized arguments"),
    ],
)
def test_bad_distillation_settings_are_refused_naming_them(teacher, tmp_path, capsys, flags, words):
    assert distil(teacher, tmp_path / "out", *flags) == 2
    assert words in capsys.readouterr().err
