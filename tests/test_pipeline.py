"""DDPMMnistPipeline: sampling, labels, trajectories, scheduler swaps, save/load in a fresh process."""

import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from tests.conftest import tiny_pipeline


def run(pipe, **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(**kwargs)


def test_default_call_gives_36_pil_images(pipe):
    out = run(pipe, num_inference_steps=5)
    assert len(out.images) == 36 and all(isinstance(im, PIL.Image.Image) for im in out.images)
    assert out.images[0].size == (28, 28) and out.images[0].mode == "L"
    assert out.class_labels == [i % 10 for i in range(36)]


def test_output_types_and_reproducibility(pipe):
    a = run(pipe, batch_size=4, num_inference_steps=5, output_type="np").images
    b = run(pipe, batch_size=4, num_inference_steps=5, output_type="np").images
    c = run(pipe, batch_size=4, num_inference_steps=5, output_type="np", generator=torch.Generator().manual_seed(1))
    assert a.shape == (4, 28, 28, 1) and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, c.images)
    pt = run(pipe, batch_size=4, num_inference_steps=5, output_type="pt").images
    assert pt.shape == (4, 1, 28, 28)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), a, atol=1e-6)


def test_default_call_is_the_fast_setting_and_the_full_chain_one_argument_away(pipe):
    calls = []  # images per UNet call: a guided step runs the digit and the null class in one doubled batch
    original = pipe.unet.forward
    pipe.unet.forward = lambda sample, *a, **k: calls.append(len(sample)) or original(sample, *a, **k)
    # a bare pipeline's default call: 10 steps (the sampler study's), guidance 2 where 0.5 T <= t (the quickstart's
    # guidance sweep over its runs on both CPU classes)
    assert pipe.config.default_num_inference_steps == 10
    assert pipe.config.default_guidance_scale == 2.0
    assert list(pipe.config.default_guidance_interval) == [0.5, 1.0]
    run(pipe, batch_size=2, output_type="np")
    guided = [t for t in pipe.scheduler.timesteps.tolist() if 0.5 * 50 <= t < 1.0 * 50]
    assert calls == [4 if t in guided else 2 for t in pipe.scheduler.timesteps.tolist()] and 0 < len(guided) < 10
    calls.clear()
    run(pipe, batch_size=2, guidance_scale=1.0, num_inference_steps="full", output_type="np")
    assert len(calls) == pipe.scheduler.config.num_train_timesteps
    calls.clear()
    run(pipe, batch_size=2, guidance_scale=1.0, num_inference_steps=7, output_type="np")
    assert len(calls) == 7


def test_class_labels_and_guidance(pipe):
    one = run(pipe, batch_size=3, class_labels=7, num_inference_steps=4, output_type="np")
    assert one.class_labels == [7, 7, 7]
    many = run(pipe, batch_size=3, class_labels=[1, 2, 3], num_inference_steps=4, output_type="np")
    assert many.class_labels == [1, 2, 3] and not np.array_equal(one.images, many.images)
    guided = run(pipe, batch_size=3, class_labels=7, guidance_scale=6.0, num_inference_steps=4, output_type="np")
    assert not np.array_equal(one.images, guided.images)


def test_guidance_interval_guides_only_the_timesteps_inside_it(pipe):
    calls = []  # (timestep, batch rows) of every UNet call
    original = pipe.unet.forward
    pipe.unet.forward = lambda sample, timestep, *a, **k: (
        calls.append((int(timestep[0]), sample.shape[0])) or original(sample, timestep, *a, **k)
    )
    kwargs = dict(batch_size=3, class_labels=7, guidance_scale=3.0, num_inference_steps=5, output_type="np")
    interval = run(pipe, guidance_interval=(0.5, 1.0), **kwargs).images
    num_train_timesteps = pipe.scheduler.config.num_train_timesteps
    assert len(calls) == 5
    # the null-label pass doubles the batch, and only at t >= 0.5 T
    assert [rows for _, rows in calls] == [6 if t >= 0.5 * num_train_timesteps else 3 for t, _ in calls]
    assert {rows for _, rows in calls} == {3, 6}
    pipe.unet.forward = original

    everywhere = run(pipe, guidance_interval=(0.0, 1.0), **kwargs).images  # the whole chain, guided
    assert not np.array_equal(run(pipe, **kwargs).images, everywhere)  # the default interval guides part of it
    unguided = run(pipe, **{**kwargs, "guidance_scale": 1.0}).images
    # an interval that holds none of the 5 timesteps (49, 37, 25, 12, 0 of 50) is the unguided sampler
    np.testing.assert_array_equal(run(pipe, guidance_interval=(0.02, 0.2), **kwargs).images, unguided)
    assert not np.array_equal(interval, everywhere) and not np.array_equal(interval, unguided)


@pytest.mark.parametrize(
    "interval",
    [(0.6, 0.4), (0.5, 0.5), (-0.1, 1.0), (0.0, 1.5), (0.5,), (0.1, 0.5, 1.0), "ab", 3, (float("nan"), 1.0)],
)
def test_bad_guidance_interval(pipe, interval):
    with pytest.raises(ValueError, match="guidance_interval must be two fractions"):
        run(pipe, batch_size=1, num_inference_steps=2, guidance_interval=interval)


def test_bad_labels(pipe):
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        run(pipe, batch_size=2, class_labels=[1, 10], num_inference_steps=2)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        run(pipe, batch_size=2, class_labels=-1, num_inference_steps=2)
    with pytest.raises(ValueError, match="one label per image"):
        run(pipe, batch_size=3, class_labels=[1, 2], num_inference_steps=2)
    unconditional = tiny_pipeline(num_class_embeds=None)
    with pytest.raises(ValueError, match="unconditional"):
        run(unconditional, batch_size=2, class_labels=3, num_inference_steps=2)
    out = run(unconditional, batch_size=2, num_inference_steps=2, output_type="np")
    assert out.class_labels is None and out.images.shape == (2, 28, 28, 1)


@pytest.mark.parametrize("steps", [0, 51, -1])
def test_bad_num_inference_steps(pipe, steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        run(pipe, batch_size=1, num_inference_steps=steps)


def test_bad_output_type(pipe):
    with pytest.raises(ValueError, match="output_type"):
        run(pipe, batch_size=1, num_inference_steps=2, output_type="jpeg")


@pytest.mark.parametrize("output_type", ["np", "pt", "pil"])
def test_trajectory(pipe, output_type):
    out = run(pipe, batch_size=2, num_inference_steps=5, output_type=output_type, return_trajectory=True)
    steps = out.trajectory_timesteps
    assert len(out.trajectory) == 6 and len(steps) == 6
    assert steps[0] == 50 and steps[-1] == 0 and all(a > b for a, b in zip(steps, steps[1:]))
    if output_type == "np":
        assert out.trajectory.shape == (6, 2, 28, 28, 1)
        np.testing.assert_array_equal(out.trajectory[-1], out.images)
    elif output_type == "pt":
        assert out.trajectory.shape == (6, 2, 1, 28, 28)
    else:
        assert len(out.trajectory[0]) == 2 and isinstance(out.trajectory[0][0], PIL.Image.Image)


def test_full_trajectory_has_every_step():
    pipe = tiny_pipeline(num_train_timesteps=20)
    out = run(pipe, batch_size=1, output_type="np", return_trajectory=True, num_inference_steps="full")  # whole chain
    assert out.trajectory_timesteps == list(range(20, -1, -1))
    default = run(pipe, batch_size=1, output_type="np", return_trajectory=True)  # the default call: 10 steps
    assert (
        len(default.trajectory) == 11
        and default.trajectory_timesteps[0] == 20
        and default.trajectory_timesteps[-1] == 0
    )
    noise = run(pipe, batch_size=1, output_type="np", return_trajectory=True, num_inference_steps=3)
    # the first frame is the pure-noise draw x_T (shown in [0, 1], so clipped noise has a wide spread)
    assert noise.trajectory[0].std() > 0.2


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler])
def test_diffusers_schedulers_swap_in(pipe, scheduler_class):
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    out = run(pipe, batch_size=3, num_inference_steps=6, output_type="np", return_trajectory=True)
    assert out.images.shape == (3, 28, 28, 1) and np.isfinite(out.images).all()
    assert len(out.trajectory) == 7


def test_fixed_variance_scheduler_with_learned_unet(pipe):
    from ddpm_pipeline import CosineDDPMScheduler

    pipe.scheduler = CosineDDPMScheduler.from_config(pipe.scheduler.config, variance_type="fixed_small")
    out = run(pipe, batch_size=2, num_inference_steps=4, output_type="np")
    assert np.isfinite(out.images).all()


def test_learned_scheduler_with_noise_only_unet_is_a_clear_error():
    pipe = tiny_pipeline(learned_variance=False)
    from ddpm_pipeline import CosineDDPMScheduler

    pipe.scheduler = CosineDDPMScheduler.from_config(pipe.scheduler.config, variance_type="learned_range")
    with pytest.raises(ValueError, match="learned_variance=True"):
        run(pipe, batch_size=1, num_inference_steps=2)


def test_save_and_load_in_a_fresh_process(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMMnistPipeline"
    assert index["unet"][1] == "MnistUNet" and index["scheduler"][1] == "CosineDDPMScheduler"
    assert index["unet"][0].startswith("ddpm_pipeline")
    assert list((tmp_path / "unet").glob("*.safetensors")) and not list(tmp_path.rglob("*.bin"))
    expected = run(pipe, batch_size=4, num_inference_steps=6, output_type="np").images
    script = (
        "import sys, numpy, torch\n"
        "from ddpm_pipeline import DDPMMnistPipeline\n"
        "pipe = DDPMMnistPipeline.from_pretrained(sys.argv[1])\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "out = pipe(batch_size=4, num_inference_steps=6, output_type='np',\n"
        "           generator=torch.Generator().manual_seed(0))\n"
        "numpy.save(sys.argv[2], out.images)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path), str(tmp_path / "out.npy")], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_bfloat16_unet_with_float32_scheduler(pipe):
    reference = run(pipe, batch_size=3, num_inference_steps=5, output_type="pt").images
    pipe.unet.to(torch.bfloat16)
    out = run(pipe, batch_size=3, num_inference_steps=5, output_type="pt").images
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - reference).abs().mean() < 0.05  # same noise draws, only the network's rounding differs


def count_unet_calls(pipe):
    calls = []
    original = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: calls.append(len(a[0])) or original(*a, **k)
    return calls


def test_saved_sampling_defaults_drive_the_default_call(tmp_path):
    """A pipeline carries its own default call (steps, guidance, interval) in model_index.json; arguments win."""
    from ddpm_pipeline import DDPMMnistPipeline

    pipe = tiny_pipeline()
    saved = DDPMMnistPipeline(
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        default_num_inference_steps=4,
        default_guidance_scale=3.0,
        default_guidance_interval=(0.5, 1.0),
    )
    saved.save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "model_index.json").read_text())["default_num_inference_steps"] == 4
    loaded = DDPMMnistPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    calls = count_unet_calls(loaded)
    loaded(batch_size=2, output_type="np")  # 4 steps (49, 33, 16, 0): only t >= 25 guided, in a doubled batch
    assert calls == [4, 4, 2, 2]
    calls.clear()
    loaded(batch_size=2, num_inference_steps="full", guidance_scale=1.0, output_type="np")  # the full chain
    assert len(calls) == 50
    calls.clear()
    loaded(batch_size=2, num_inference_steps=3, guidance_interval=(0.0, 1.0), output_type="np")
    assert calls == [4, 4, 4]
    explicit = run(loaded, batch_size=2, num_inference_steps=4, guidance_scale=3.0, guidance_interval=(0.5, 1.0))
    default = run(loaded, batch_size=2)
    assert np.array_equal(np.asarray(explicit.images[0]), np.asarray(default.images[0]))
    # None is "the saved default" for every sampling argument: a caller passing its own None through gets it
    passed_none = run(loaded, batch_size=2, num_inference_steps=None, guidance_scale=None, guidance_interval=None)
    assert np.array_equal(np.asarray(passed_none.images[0]), np.asarray(default.images[0]))
    calls.clear()
    loaded(batch_size=2, num_inference_steps=None, output_type="np")
    assert calls == [4, 4, 2, 2]
    # a pipeline saved by an older version with steps None (then: the full chain) still loads and means that
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    (tmp_path / "p" / "model_index.json").write_text(json.dumps({**index, "default_num_inference_steps": None}))
    legacy = DDPMMnistPipeline.from_pretrained(tmp_path / "p")
    assert legacy.resolve_sampling()[0] == "full"
    with pytest.raises(ValueError, match="default_guidance_scale"):
        DDPMMnistPipeline(unet=pipe.unet, scheduler=pipe.scheduler, default_guidance_scale=float("nan"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"guidance_scale": float("inf")}, "guidance_scale"),
        ({"guidance_scale": "2"}, "guidance_scale"),
        ({"generator": 0}, "generator"),
        ({"generator": [torch.Generator()]}, "one per image"),
        ({"batch_size": True}, "batch_size"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
    ],
)
def test_bad_arguments_are_named(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(**{"batch_size": 2, "num_inference_steps": 2, **kwargs})


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": "all"}, "num_inference_steps"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_interval": (0.8, 0.4)}, "guidance_interval"),
    ],
)
def test_sampling_errors_carry_the_argument_name(pipe, kwargs, argument):
    from ddpm_pipeline.pipeline_ddpm_mnist import SamplingArgumentError

    with pytest.raises(SamplingArgumentError) as caught:
        pipe(**{"batch_size": 2, "num_inference_steps": 2, **kwargs})
    assert caught.value.argument == argument and argument in str(caught.value)


# ---------------------------------------------------------------------- diffusers' step-end callbacks
def test_callback_on_step_end_sees_every_step_and_can_change_the_sample(pipe):
    seen = []

    def watch(pipeline, i, t, callback_kwargs):
        seen.append((i, int(t), sorted(callback_kwargs), callback_kwargs["latents"].shape))
        return {}

    inputs = ["latents", "model_output"]
    run(
        pipe, batch_size=2, num_inference_steps=4, callback_on_step_end=watch, callback_on_step_end_tensor_inputs=inputs
    )
    assert [step for step, *_ in seen] == [0, 1, 2, 3]
    assert [t for _, t, *_ in seen] == pipe.scheduler.timesteps.tolist()
    assert all(names == ["latents", "model_output"] and shape == (2, 1, 28, 28) for *_, names, shape in seen)

    def blank_at_the_end(pipeline, i, t, callback_kwargs):
        return {"latents": torch.full_like(callback_kwargs["latents"], -1.0)} if i == 3 else {}

    blanked = run(pipe, batch_size=2, num_inference_steps=4, output_type="pt", callback_on_step_end=blank_at_the_end)
    assert torch.equal(blanked.images, torch.zeros_like(blanked.images))  # -1 is black after [-1, 1] -> [0, 1]


def test_the_trajectory_is_what_a_step_end_callback_sees(pipe):
    frames = []

    def keep(pipeline, i, t, callback_kwargs):
        frames.append(callback_kwargs["latents"].clone())
        return {}

    out = run(pipe, batch_size=2, num_inference_steps=5, output_type="pt", return_trajectory=True,
              callback_on_step_end=keep)  # fmt: skip
    assert len(out.trajectory) == len(frames) + 1  # the noise, then one frame per step
    for frame, latents in zip(out.trajectory[1:], frames, strict=True):
        assert torch.equal(frame, (latents / 2 + 0.5).clamp(0, 1))


def test_diffusers_pipeline_callback_objects_work(pipe):
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    class CountSteps(PipelineCallback):
        tensor_inputs = ["latents"]

        def __init__(self):
            super().__init__(cutoff_step_ratio=None, cutoff_step_index=1000)  # diffusers asks for one of them
            self.calls = 0

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            self.calls += 1
            return callback_kwargs

    first, second = CountSteps(), CountSteps()
    run(pipe, batch_size=1, num_inference_steps=3, callback_on_step_end=MultiPipelineCallbacks([first, second]))
    assert first.calls == second.calls == 3


@pytest.mark.parametrize("callback, inputs", [("not callable", None), (lambda *a: {}, ["noise_pred"])])
def test_a_bad_callback_is_refused_by_name(pipe, callback, inputs):
    with pytest.raises(ValueError, match="callback_on_step_end"):
        run(pipe, batch_size=1, num_inference_steps=2, callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=inputs)  # fmt: skip


# ---------------------------------------------------------------------- one generator per image
@pytest.mark.numerics
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_an_image_with_its_own_generator_does_not_change_with_the_batch_around_it(pipe, guidance_scale):
    """diffusers users ask for this: with one generator per image, image k is the same alone, among 4 or among 11
    (whose UNet batches straddle the fixed slices), however its neighbours were seeded."""

    def images(seeds, labels):
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        out = run(pipe, batch_size=len(seeds), class_labels=labels, num_inference_steps=4, output_type="pt",
                  guidance_scale=guidance_scale, generator=generators)  # fmt: skip
        return out.images

    alone = images([7], [3])[0]
    among_four = images([1, 2, 7, 4], [0, 1, 3, 5])[2]
    among_eleven = images([*range(20, 29), 7, 30], [*range(9), 3, 9])[9]
    assert torch.equal(alone, among_four) and torch.equal(alone, among_eleven)
    assert not torch.equal(alone, images([8], [3])[0])  # and the seed still matters


def test_step_end_callbacks_can_change_the_guidance_and_interrupt_as_in_diffusers(pipe):
    """diffusers' conventions for callbacks: pipe._guidance_scale is the guidance each step reads (dynamic CFG), and
    pipe._interrupt stops the remaining steps."""

    def stronger(pipeline, i, t, callback_kwargs):
        pipeline._guidance_scale += 1.0
        return {}

    run(pipe, batch_size=1, num_inference_steps=4, guidance_scale=2.0, callback_on_step_end=stronger)
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps

    steps = []

    def stop_after_two(pipeline, i, t, callback_kwargs):
        steps.append(i)
        pipeline._interrupt = i == 1
        return {}

    run(pipe, batch_size=1, num_inference_steps=6, callback_on_step_end=stop_after_two)
    assert steps == [0, 1] and pipe.interrupt
