"""The model card (README.md) of a distilled student: what it was distilled from and how, what it runs, its evaluation.

A pure function of its data (the run's info, its evaluation, the saved scheduler's chains); ``RunFolder.write_card``
writes it for a folder whose run_info.json names a teacher.
"""

import yaml

from .model_card import _evaluation_section

STUDENT_TEMPLATE = """---
{metadata}---

# {title}

A {default_steps}-step student of [{teacher}]({teacher_link}), a class-conditional DDPM for 28x28 MNIST digits: it
draws a digit in {default_steps} network evaluations where its teacher's default call takes more, with the teacher's
classifier-free guidance distilled into its weights (no guidance doubling). Method: {method}. It runs
{step_counts} steps (the timesteps it was distilled at; any other count is refused), and no extra guidance.

## Samples

![6x6 grid of samples at the default call](samples.png)

## Usage

With the `ddpm-mnist` package (not on PyPI: in a checkout of its repository, `pip install torch==2.13.0 -e .`):

```python
import torch
from ddpm_pipeline import DDPMMnistPipeline, preferred_dtype

pipe = DDPMMnistPipeline.from_pretrained("{repo_id}", dtype=preferred_dtype())
images = pipe(generator=torch.Generator().manual_seed(0)).images   # 36 digits, 0-9 in turn, {default_steps} steps
sevens = pipe(class_labels=[7] * 36, num_inference_steps=1).images  # one network evaluation per digit
```

## Distillation

{distillation_line}

| | |
|---|---|
| teacher paths | {paths_line} |
| student chains | {chains} |
| training | {steps:,} steps |
{evaluation}"""


def render_student_card(run_info: dict, evaluation: dict | None = None, repo_id: str | None = None) -> str:
    """The card's text from the student's run_info.json (written by the distillation) and evaluation.json."""
    repo_id = repo_id or "namespace/ddpm-mnist-fast"
    teacher = run_info["teacher"]
    paths, chains = run_info["teacher_paths"], run_info["student_chains"]
    default_steps = run_info.get("default_steps", max(int(count) for count in chains))
    low, high = paths["guidance_interval"]
    metadata = {
        "library_name": "diffusers",
        "license": "apache-2.0",
        "tags": ["pytorch", "diffusers", "ddpm", "mnist", "image-generation", "distillation", "class-conditional"],
        "datasets": ["ylecun/mnist"],
        "pipeline_tag": "unconditional-image-generation",
    }
    if "/" in teacher and not teacher.startswith((".", "/")) and not teacher.startswith("pretrained/"):
        metadata["base_model"] = teacher
    return STUDENT_TEMPLATE.format(
        metadata=yaml.safe_dump(metadata, sort_keys=False),
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        default_steps=default_steps,
        teacher=teacher,
        teacher_link=teacher if teacher.startswith(("pretrained/", ".", "/")) else f"https://huggingface.co/{teacher}",
        method=run_info["method"],
        step_counts=", ".join(sorted(chains, key=int)),
        distillation_line=_distillation_line(run_info),
        paths_line=f"{paths['num_paths']:,} guided DDIM paths of {len(paths['chain'])} steps (guidance "
        f"{paths['guidance_scale']:g} on [{low:g} T, {high:g} T), teacher in {paths['teacher_dtype']})",
        chains="; ".join(
            f"{count} step{'s' if count != '1' else ''}: t = {chain}"
            for count, chain in sorted(chains.items(), key=lambda item: int(item[0]))
        ),  # fmt: skip
        steps=run_info["global_step"],
        evaluation=_evaluation_section(evaluation),
    )


def _distillation_line(run_info: dict) -> str:
    minutes = run_info.get("distill_seconds", 0) / 60
    where = f" on {run_info.get('cpu', 'a CPU')} (PyTorch CPU capability {run_info.get('cpu_capability', '?')}, "
    threads = run_info.get("threads", "?")
    where += f"{threads} thread{'' if threads == 1 else 's'})"
    if run_info.get("gpu"):
        where = f" on {run_info['gpu']}"
    command = f" with `{run_info['command']}`" if run_info.get("command") else ""
    return f"Distilled in {minutes:.1f} minutes{where}{command}, teacher paths included."
