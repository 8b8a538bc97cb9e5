"""Training configuration: one pydantic model whose defaults are the default run, read from YAML files and flags.

The defaults below are the one source of truth: a bare `accelerate launch train_ddpm.py` trains with them, and
`train_ddpm.py --help` prints them. A YAML file (`--config`) overrides some of them, and flags override the file.
The flags are the names users of diffusers' example scripts know (--output_dir, --train_batch_size, ...).

pydantic checks each key's type and range (strictly: no 1.5 for an integer, no "yes" for a boolean) and the rules
between keys; ``ConfigError`` says which key is wrong and how. The rules of the components a config builds (the UNet,
the scheduler, the pipeline's sampling settings, the learning-rate schedule) are asked of those components by
``training.config_checks``, so this module imports neither torch nor them.
"""

import json
import math
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .constants import (
    DEFAULT_GUIDANCE_INTERVAL,
    DEFAULT_GUIDANCE_SCALE,
    FULL_CHAIN,
    MIXED_PRECISION_CHOICES,
    PREDICTION_TYPES,
    RECIPE_NUM_INFERENCE_STEPS,
)
from .redaction import redact_config
from .repo_ids import repo_id_problem

MAX_SEED = 2**32 - 1  # accelerate's set_seed also seeds numpy, which takes seeds below 2^32
DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)")
DURATION_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hour", "hours"), 3600.0),
}
WSD = "wsd"  # warmup-stable-decay, the one schedule name that is ours, not diffusers'
MIN_CALIBRATION_STEPS = 5  # warm-up steps a --time_budget run needs to measure its speed

Text = Annotated[str, Field(min_length=1, pattern=r"\S")]  # a non-empty string
Probability = Annotated[float, Field(ge=0, lt=1)]


class ConfigError(ValueError):
    """An invalid training configuration value."""


def setting(default, help: str, **constraints):
    """A config key: its default, its help line (also `--help`'s), and pydantic's constraints on its value."""
    return Field(default, description=help, **constraints)


class StrictConfig(BaseModel):
    """A config of exact types (YAML's and the flags' values), frozen, whose errors name the key and the fix."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_written_as_text(cls, value, info):
        """YAML reads 1e-4 (no dot) as a string: a float key takes it as the number it spells."""
        if isinstance(value, str) and _accepts_float(cls.model_fields[info.field_name].annotation):
            try:
                return float(value)
            except ValueError:
                return value
        return value

    @classmethod
    def from_dict(cls, values: dict, source: str = "config"):
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ConfigError(explain(error, values, source)) from None


class TrainingConfig(StrictConfig):
    # ---- run
    output_dir: Text = setting("outputs/ddpm-mnist", "where the pipeline, pictures, logs and checkpoints go")
    seed: int = setting(0, "seed for weights, data order, noise and timesteps", ge=0, le=MAX_SEED)
    # ---- data
    dataset_name: Text | None = setting(None, "Hub dataset (e.g. ylecun/mnist); unset = the embedded 5k MNIST subset")
    train_data_dir: Text | None = setting(None, "a local folder of images (imagefolder layout)")
    dataset_split: Text = setting("train", "split to train on")
    image_column: Text = setting("image", "name of the image column")
    label_column: Text = setting("label", "name of the label column")
    skip_unreadable_images: bool = setting(
        False, "train_data_dir: leave out (and count) image files that cannot be read, instead of stopping"
    )
    digits: list[int] | None = setting(None, "digits to keep, e.g. [1] or [0, 1]; unset = all")
    resolution: int = setting(28, "image size the data is resized to", ge=4, le=256)
    # ---- model
    class_conditional: bool = setting(True, "condition on the digit (with classifier-free guidance)")
    learned_variance: bool = setting(True, "learn the reverse variance (learned_range) with the hybrid loss")
    block_out_channels: list[Annotated[int, Field(ge=1, le=1024)]] = setting([32, 64, 64], "UNet widths per level")
    layers_per_block: Annotated[int, Field(le=16)] | list[Annotated[int, Field(le=16)]] = setting(
        [0, 1, 1], "UNet encoder blocks: one number for every level, or one per level (0 allowed)"
    )
    decoder_layers_per_block: int | None = setting(1, "UNet decoder blocks per level (None = layers_per_block + 1)")
    attention_levels: list[bool] = setting(
        [False, False, False], "self-attention per level (the middle block always has it)"
    )
    attention_head_dim: int = setting(32, "channels per attention head", ge=1)
    norm_num_groups: int = setting(8, "GroupNorm groups", ge=1)
    dropout: float = setting(0.0, "dropout in the residual blocks", ge=0, lt=1)
    resnet_time_scale_shift: Literal["default", "scale_shift"] = setting(
        "scale_shift", "how the time and class embedding enters a block: added, or as GroupNorm scale and shift (AdaGN)"
    )
    # ---- diffusion
    num_train_timesteps: int = setting(4000, "length T of the diffusion chain (2 to 100,000; 10^4 is fine)")
    prediction_type: Literal[PREDICTION_TYPES] = setting("epsilon", "what the UNet predicts")
    vlb_weight: float = setting(0.001, "lambda of L_hybrid = L_simple + lambda * L_vlb", ge=0)
    cond_drop_prob: float = setting(0.1, "probability of replacing the label by the null class", ge=0, lt=1)
    snr_gamma: float | None = setting(
        None, "min-SNR-gamma weighting of L_simple (Hang et al. 2023; e.g. 5); unset = unweighted", gt=0
    )
    timestep_sampling: Literal["uniform", "lognormal"] = setting(
        "uniform",
        "how training draws t: uniform, or lognormal (EDM's ln sigma ~ N(-1.2, 1.2^2), half of the draws; the "
        "other half uniform)",
    )
    # ---- optimisation
    train_batch_size: int = setting(32, "images per process per micro-batch", ge=1, le=65536)
    num_epochs: int = setting(11, "passes over the data (ignored if max_train_steps is set)", ge=1)
    max_train_steps: int | None = setting(None, "optimizer steps; overrides num_epochs", ge=1)
    time_budget: Text | None = setting(
        None,
        "train for this long (90s, 30m, 1.5h): the speed measured in the warm-up, and again while the learning rate "
        "is constant, sets max_train_steps; overrides max_train_steps and num_epochs",
    )
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step", ge=1, le=4096)
    learning_rate: float = setting(2e-3, "peak learning rate (AdamW)", gt=0)
    lr_scheduler: Text = setting(
        "wsd",
        "wsd: warmup-stable-decay (Hagele et al. 2024), a constant rate with a linear cooldown at the end (it beat "
        "cosine at equal steps, benchmarks/RESULTS.md); or a diffusers.optimization name (cosine, linear, ...)",
    )
    lr_warmup_steps: int = setting(100, "linear warmup steps", ge=0)
    lr_cooldown_fraction: float = setting(0.6, "wsd: the share of the run that cools down", gt=0, le=1)
    lr_cooldown_steps: int | None = setting(None, "wsd: cooldown steps (instead of the fraction)", ge=1)
    cooldown_from: Text | None = setting(
        None,
        "a checkpoint of a wsd run's constant phase: branch a cooldown of lr_cooldown_steps from it (into another "
        "output_dir)",
    )
    adam_beta1: float = setting(0.9, "AdamW beta1", ge=0, lt=1)
    adam_beta2: float = setting(0.99, "AdamW beta2", ge=0, lt=1)
    adam_weight_decay: float = setting(0.0, "AdamW weight decay", ge=0)
    adam_epsilon: float = setting(1e-8, "AdamW epsilon", gt=0)
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0 = off)", ge=0)
    mixed_precision: Literal[MIXED_PRECISION_CHOICES] = setting(
        "auto",
        "auto (bf16 where the device runs it natively, fp16 on a CUDA GPU without bf16, else float32; "
        "ddpm_pipeline/hardware.py), no, bf16 or fp16",
    )
    channels_last: bool = setting(False, "channels-last memory format for the UNet")
    keep_freed_memory: bool = setting(
        True,
        "on a CPU under Linux (glibc), keep freed memory in the process instead of returning it to the kernel: no "
        "page faults on each step's fresh activations (ddpm_pipeline/cpu_allocator.py)",
    )
    deterministic_kernels: bool = setting(
        True,
        "on a CUDA GPU, ask for deterministic kernels so that a resumed run repeats the bits of one that never "
        "stopped (false: CUDA's fastest kernels, whose sums change order between runs; ddpm_pipeline/hardware.py)",
    )
    num_cpu_threads: int | None = setting(
        None,
        "CPU threads per process; unset = the cores shared among the processes (accelerate launch would otherwise "
        "set 1)",
        ge=1,
        le=1024,
    )
    # ---- EMA
    use_ema: bool = setting(True, "keep an exponential moving average of the weights")
    ema_max_decay: float = setting(0.9995, "EMA decay ceiling", gt=0, lt=1)
    ema_inv_gamma: float = setting(
        18.0, "EMA warmup inverse gamma: decay 1 - (1 + step / inv_gamma)^-power, capped", gt=0
    )
    ema_power: float = setting(
        1.0, "EMA warmup power (1 with inv_gamma 18: an average over the last ~1/18 of the steps)", gt=0
    )
    weight_snapshot_steps: int = setting(
        0,
        "save the raw training weights every N steps (0 = off), for post-hoc EMA (python -m ddpm_pipeline.posthoc_ema)",
        ge=0,
    )
    # ---- logging, pictures, checkpoints
    logger: Literal["tensorboard", "none"] = setting("tensorboard", "tensorboard or none")
    save_images_epochs: int = setting(5, "write a 6x6 grid of EMA samples every N epochs (0 = off)", ge=0)
    checkpointing_steps: int = setting(200, "save the training state every N optimizer steps (0 = off)", ge=0)
    checkpoints_total_limit: int | None = setting(2, "keep at most this many checkpoints", ge=1)
    resume_from_checkpoint: Text | None = setting(None, "'latest' or a checkpoint path")
    # ---- sampling: the saved pipeline's default call, which also makes the pictures
    guidance_scale: float = setting(DEFAULT_GUIDANCE_SCALE, "classifier-free guidance weight (1 = none)", ge=0)
    guidance_interval: list[float] = setting(list(DEFAULT_GUIDANCE_INTERVAL), "guide only where low T <= t < high T")
    num_inference_steps: int | str = setting(
        RECIPE_NUM_INFERENCE_STEPS, f"respaced sampling steps, or {FULL_CHAIN!r} for the whole chain"
    )
    sampling_order: Literal[1, 2] = setting(
        1, "1: the DDPM step; 2: with a second-order x_0 in its mean (DPM-Solver++(2M), SDE form)"
    )
    # ---- evaluation and Hub
    evaluate: bool = setting(False, "run `ddpm-mnist evaluate` at the end and put the figures in the model card")
    eval_num_samples: int = setting(1000, "samples for --evaluate", ge=2, le=100_000)
    push_to_hub: bool = setting(False, "push the final pipeline, card and pictures to the Hub")
    hub_model_id: Text | None = setting(None, "namespace/name of the Hub repository")
    hub_token: str | None = setting(None, "Hub token (else HF_TOKEN or the `hf auth login` store); never logged")
    hub_private_repo: bool = setting(False, "create the Hub repository as private")
    push_every_save: bool = setting(False, "also push at every saved sample-grid epoch")

    # ------------------------------------------------------------------ one key's rules beyond its type and range
    @field_validator("digits")
    @classmethod
    def _digits(cls, digits):
        if digits is not None and (not digits or any(not 0 <= d <= 9 for d in digits)):
            raise ValueError(_invalid("digits", digits, "give a non-empty list of digits between 0 and 9, or leave it "
                                      "unset for all."))  # fmt: skip
        if digits is not None and len(set(digits)) != len(digits):
            raise ValueError(_invalid("digits", digits, "lists a digit twice."))
        return digits

    @field_validator("time_budget")
    @classmethod
    def _time_budget(cls, budget):
        if budget is not None and parse_duration(budget) is None:
            raise ValueError(_invalid("time_budget", budget, "give a positive duration such as --time_budget 90s, "
                                      "30m or 1.5h."))  # fmt: skip
        return budget

    @field_validator("hub_model_id")
    @classmethod
    def _hub_model_id(cls, repo_id):
        """huggingface_hub's own rules for a repository id, and a namespace: a push needs to know whose it is."""
        problem = repo_id_problem(repo_id) if repo_id is not None else None
        if problem:
            raise ValueError(_invalid("hub_model_id", repo_id, f"give namespace/name (e.g. your-username/ddpm-mnist); "
                                      f"{problem}."))  # fmt: skip
        return repo_id

    # ------------------------------------------------------------------ rules between keys
    @model_validator(mode="after")
    def _combinations(self):
        if (self.cooldown_from or self.lr_cooldown_steps) and self.lr_scheduler != WSD:
            key = "cooldown_from" if self.cooldown_from else "lr_cooldown_steps"
            self._fail(key, "a cooldown belongs to the wsd schedule: add --lr_scheduler wsd.")
        if self.cooldown_from:
            if not self.lr_cooldown_steps:
                self._fail("cooldown_from", "say how long the cooldown is: --lr_cooldown_steps N.")
            if self.cooldown_from == "latest":
                self._fail("cooldown_from", "name the checkpoint of the run to branch from (e.g. "
                           "outputs/long/checkpoint-6000); to continue a stopped branch, add --resume_from_checkpoint "
                           "latest to the branch's own command.")  # fmt: skip
            if self.time_budget:
                self._fail("cooldown_from", "a cooldown branch has its own length: leave out --time_budget.")
            if Path(self.cooldown_from).resolve().parent == Path(self.output_dir).resolve():
                self._fail("cooldown_from", "write the branch to another --output_dir, so that the run it branches "
                           "from keeps its checkpoints.")  # fmt: skip
        if self.time_budget is not None and self.lr_warmup_steps < MIN_CALIBRATION_STEPS:
            self._fail(
                "time_budget",
                f"a budgeted run measures its speed during the learning-rate warm-up, which must last at least "
                f"{MIN_CALIBRATION_STEPS} steps (lr_warmup_steps is {self.lr_warmup_steps}); raise --lr_warmup_steps.",
            )
        if self.dataset_name and self.train_data_dir:
            self._fail("train_data_dir", "give either dataset_name or train_data_dir, not both.")
        if self.push_to_hub and not self.hub_model_id:
            self._fail("hub_model_id", "--push_to_hub needs --hub_model_id namespace/name.")
        if self.push_every_save and not self.push_to_hub:
            self._fail("push_every_save", "only means something with --push_to_hub.")
        return self

    def _fail(self, key: str, message: str):
        raise ValueError(_invalid(key, getattr(self, key), message))

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def field_names(cls) -> list[str]:
        return list(cls.model_fields)

    def with_values(self, **values) -> "TrainingConfig":
        """A validated copy with some keys changed (the config itself never changes)."""
        return type(self).from_dict({**self.to_dict(redact_secrets=False), **values})

    def to_dict(self, redact_secrets: bool = True) -> dict:
        values = self.model_dump()
        return redact_config(values) if redact_secrets else values  # a token never reaches a saved config

    # ------------------------------------------------------------------ what the components are built from
    def unet_kwargs(self) -> dict:
        layers = self.layers_per_block
        return {
            "learned_variance": self.learned_variance,
            "block_out_channels": tuple(self.block_out_channels),
            "layers_per_block": layers if isinstance(layers, int) else tuple(layers),
            "decoder_layers_per_block": self.decoder_layers_per_block,
            "attention_levels": tuple(self.attention_levels),
            "attention_head_dim": self.attention_head_dim,
            "norm_num_groups": self.norm_num_groups,
            "dropout": self.dropout,
            "resnet_time_scale_shift": self.resnet_time_scale_shift,
        }

    def model_signature(self) -> dict:
        """The keys that shape the weights (a checkpoint of another signature cannot be resumed), JSON-normalised."""
        signature = {
            **{k: v for k, v in self.unet_kwargs().items() if k != "dropout"},
            "resolution": self.resolution,
            "class_conditional": self.class_conditional,
            "num_train_timesteps": self.num_train_timesteps,
            "prediction_type": self.prediction_type,
        }
        return json.loads(json.dumps(signature))

    def sampling_defaults(self) -> dict:
        """The saved pipeline's default call (``DDPMMnistPipeline(default_...)``)."""
        return {
            "default_num_inference_steps": self.num_inference_steps,
            "default_guidance_scale": self.guidance_scale,
            "default_guidance_interval": tuple(self.guidance_interval),
        }

    def time_budget_seconds(self) -> float | None:
        return None if self.time_budget is None else parse_duration(self.time_budget)

    def check_output_dir(self):
        """The output folder can be written: it is a folder (or can be made one) and this user may write there."""
        path = Path(self.output_dir)
        if path.exists() and not path.is_dir():
            raise ConfigError(_invalid("output_dir", self.output_dir, "is a file, not a folder; give a folder for the "
                                       "run's outputs."))  # fmt: skip
        existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(_invalid("output_dir", self.output_dir, f"cannot be created: {str(existing)!r} is not "
                                       "a folder this user may write in."))  # fmt: skip
        try:  # permissions are not the whole story (e.g. /proc refuses new folders even to root): make it
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(_invalid("output_dir", self.output_dir, f"cannot be created ({error.strerror or error}); "
                                       "give a folder on a normal disk.")) from None  # fmt: skip


def parse_duration(text: str) -> float | None:
    """Seconds in a duration such as 90s, 30m or 1.5h; None for anything else (or zero)."""
    match = DURATION.fullmatch(str(text).strip().lower())
    seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)] if match else math.nan
    return seconds if math.isfinite(seconds) and seconds > 0 else None


# ---------------------------------------------------------------------- pydantic's errors, in our words
def _invalid(key: str, value, problem: str) -> str:
    return f"Invalid config value for {key!r} ({value!r}): {problem}"


def _wrong_type(key: str, value, expected: str) -> str:
    return f"Config key {key!r} expects {expected}, got {value!r} ({type(value).__name__})."


TYPE_WORDS = {"int": "an integer", "bool": "true or false", "string": "a non-empty string", "float": "a number",
              "list": "a list"}  # fmt: skip
SIGNS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def explain(error: ValidationError, values: dict, source: str = "config") -> str:
    """The first problem pydantic found, as one sentence that names the key and what it must be."""
    problems = error.errors(include_url=False)
    unknown = sorted(str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden")
    if unknown:
        return f"Unknown {source} key(s): {', '.join(unknown)}. Valid keys are listed by `train_ddpm.py --help`."
    problem, kind = problems[0], problems[0]["type"]
    if kind == "value_error":  # our own validators: the message is whole
        return str(problem["ctx"]["error"])
    key = str(problem["loc"][0])
    value = values.get(key, problem["input"])
    if kind in SIGNS:
        return _invalid(key, value, f"must be {SIGNS[kind]} {next(iter(problem['ctx'].values()))}.")
    if kind == "finite_number":
        return _invalid(key, value, "must be a finite number.")
    if kind == "literal_error":
        return _invalid(key, value, f"choose {problem['ctx']['expected']}.")
    expected = next((words for prefix, words in TYPE_WORDS.items() if kind.startswith(prefix)), None)
    return _wrong_type(key, value, expected) if expected else _invalid(key, value, f"{problem['msg']}.")


def _accepts_float(annotation) -> bool:
    return annotation is float or float in typing.get_args(annotation)
