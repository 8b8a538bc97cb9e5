"""The demo: pick digits, a seed and a model, press Generate, and watch the digits come out of the noise (Gradio).

`ddpm-mnist demo` serves it on this machine; `space/app.py` serves the same page as a Hugging Face Space. It runs
offline: Gradio's analytics are off and its theme's fonts are the ones bundled with Gradio. Inputs are checked here,
and a bad one is answered with a message on the page (``gr.Error``), never a stack trace.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: no calls home

import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch

from .hardware import cpu_info, prepare_for_sampling
from .pipeline_loading import DDPMMnistPipeline
from .visualization import make_grid, save_trajectory_gif

MAX_IMAGES = 36  # one grid of 6 x 6, the pipeline's default batch
GIF_SECONDS = 2.5  # the whole trajectory animation, whatever the number of steps
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes up to this


class DemoInputError(ValueError):
    """An input the page cannot use, with what to enter instead."""


@dataclass(frozen=True)
class Request:
    model: str
    digits: list[int]
    count: int
    seed: int


def parse_request(models: list[str], model, digits, count, seed) -> Request:
    """The page's raw inputs (strings, floats, None) as a request, or a DemoInputError naming the fix."""
    if model not in models:
        raise DemoInputError(f"Unknown model {model!r}: choose one of {', '.join(models)}.")
    if not digits:
        raise DemoInputError("No digit chosen: tick at least one of the digits 0-9.")
    try:
        chosen = sorted({int(digit) for digit in digits})
    except (TypeError, ValueError):
        raise DemoInputError(f"The digits must be among 0-9, got {list(digits)!r}.") from None
    if chosen[0] < 0 or chosen[-1] > 9:
        raise DemoInputError(f"The digits must be among 0-9, got {chosen}.")
    if count is None or isinstance(count, bool) or not float(count).is_integer():
        raise DemoInputError(f"How many digits: enter a whole number from 1 to {MAX_IMAGES}, got {count!r}.")
    if not 1 <= int(count) <= MAX_IMAGES:
        raise DemoInputError(f"How many digits: from 1 to {MAX_IMAGES} (one grid), got {int(count):,}.")
    text = str(seed).strip() if seed is not None else ""
    if not text.isdigit() or int(text) > MAX_SEED:
        raise DemoInputError(f"Seed: enter a whole number from 0 to {MAX_SEED}, got {text or 'nothing'!r}.")
    return Request(model=model, digits=chosen, count=int(count), seed=int(text))


class Sampler:
    """The pipelines the page offers, loaded once at start-up, and one request's sampling."""

    def __init__(self, models: list[str], dtype: str = "auto", load=None):
        if not models:
            raise ValueError("The demo needs at least one model: a pipeline folder or a Hub id.")
        load = load or (lambda model: prepare_for_sampling(DDPMMnistPipeline.from_pretrained(model), dtype=dtype))
        self.pipelines = {model: load(model) for model in models}
        for pipe in self.pipelines.values():
            pipe.set_progress_bar_config(disable=True)
        self.folder = Path(tempfile.mkdtemp(prefix="ddpm-mnist-demo-"))  # the animations Gradio serves

    @property
    def models(self) -> list[str]:
        return list(self.pipelines)

    def __call__(self, model, digits, count, seed):
        """Sample the request; returns the captioned grid, the trajectory GIF's path and a line on the timing."""
        request = parse_request(self.models, model, digits, count, seed)
        pipe = self.pipelines[request.model]
        labels = [request.digits[i % len(request.digits)] for i in range(request.count)]
        calls = ImageCounter(pipe.unet)
        started = time.perf_counter()
        with calls:
            out = pipe(
                batch_size=request.count,
                class_labels=labels,
                generator=torch.Generator().manual_seed(request.seed),
                output_type="np",
                return_trajectory=True,
            )
        seconds = time.perf_counter() - started
        grid = make_grid(out.images, labels=out.class_labels)
        gif = self.folder / f"trajectory-{uuid.uuid4().hex}.gif"
        frames = len(out.trajectory_timesteps)
        save_trajectory_gif(out.trajectory, out.trajectory_timesteps, gif, duration_ms=int(GIF_SECONDS * 1000 / frames))
        return grid, str(gif), timing_line(request.count, seconds, calls.images / request.count, pipe)


class ImageCounter:
    """Counts the images that pass through a module while active (a guided step sends each image twice)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.images, self.handle = module, 0, None

    def _count(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.images += sample.shape[0]

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def timing_line(count: int, seconds: float, evaluations: float, pipe) -> str:
    dtype = str(pipe.unet.dtype).removeprefix("torch.")
    return (
        f"**{count} digit{'s' if count != 1 else ''} in {seconds:.2f} s** on this machine ({cpu_info().model}, "
        f"{torch.get_num_threads()} threads, UNet in {dtype}): {evaluations:g} network evaluations per digit."
    )


def build_demo(sampler: Sampler) -> gr.Blocks:
    """The page: digits, count, seed and model on the left; the grid, the animation and the timing on the right."""

    def generate(model, digits, count, seed):
        try:
            return sampler(model, digits, count, seed)
        except DemoInputError as error:
            raise gr.Error(str(error), title="Check the inputs", print_exception=False) from None

    with gr.Blocks(title="ddpm-mnist", analytics_enabled=False) as demo:
        gr.Markdown(
            "# ddpm-mnist\nA class-conditional DDPM for handwritten digits: choose the digits, press **Generate**, "
            "and watch them come out of the noise."
        )
        with gr.Row():
            with gr.Column(scale=1):
                digits = gr.CheckboxGroup(
                    [str(d) for d in range(10)], value=[str(d) for d in range(10)], label="Digits", elem_id="digits"
                )
                count = gr.Number(value=MAX_IMAGES, label=f"How many digits (1-{MAX_IMAGES})", elem_id="count")
                seed = gr.Textbox(value="0", label="Seed (a whole number)", elem_id="seed")
                model = gr.Dropdown(
                    sampler.models,
                    value=sampler.models[0],
                    label="Model",
                    interactive=len(sampler.models) > 1,
                    elem_id="model",
                )
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                grid = gr.Image(label="Digits", type="pil", format="png", elem_id="grid")
                trajectory = gr.Image(label="From noise to digits", type="filepath", elem_id="trajectory")
                timing = gr.Markdown(elem_id="timing")
        button.click(generate, [model, digits, count, seed], [grid, trajectory, timing], api_name="generate")
    return demo


def launch(models: list[str], host: str | None = None, port: int | None = None, dtype: str = "auto", **kwargs):
    """Load the models and serve the page (blocking unless ``prevent_thread_lock=True`` is passed); ``host`` and
    ``port`` left None are Gradio's (GRADIO_SERVER_NAME or 127.0.0.1, GRADIO_SERVER_PORT or 7860 and up)."""
    demo = build_demo(Sampler(models, dtype=dtype))
    return demo.launch(server_name=host, server_port=port, footer_links=["api"], **kwargs)
