"""Training configuration: one dataclass whose defaults are the default run, YAML files, flags, and validation.

The defaults below are the one source of truth: a bare `accelerate launch train_ddpm.py` trains with them, and
`train_ddpm.py --help` prints them. A YAML file (`--config`) overrides some of them, and flags override the file.
The command-line flags are the names users of diffusers' example scripts know (--output_dir, --train_batch_size, ...).

A config is validated before any work starts, and every error names the key and the fix. Each key's own type and
range sit beside it (``setting(..., minimum=...)``); the rules of the UNet, the scheduler, the pipeline's sampling
settings, the Hub id and the learning-rate schedule are asked of those components, which hold them.
"""

import argparse
import dataclasses
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from diffusers.optimization import SchedulerType, get_scheduler

from .hardware import MIXED_PRECISION_CHOICES
from .hub import HubError, validate_repo_id
from .pipeline_ddpm_mnist import (
    DEFAULT_GUIDANCE_INTERVAL,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_INFERENCE_STEPS,
    FULL_CHAIN,
    SamplingArgumentError,
    check_sampling_arguments,
)
from .scheduling_ddpm_cosine import PREDICTION_TYPES, CosineDDPMScheduler, SchedulerConfigError
from .unet_mnist import MnistUNet, UNetConfigError

MAX_SEED = 2**32 - 1  # accelerate's set_seed also seeds numpy, which takes seeds below 2^32
DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)")
DURATION_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hour", "hours"), 3600.0),
}
WSD = "wsd"  # warmup-stable-decay, the one schedule name that is ours, not diffusers'
MIN_CALIBRATION_STEPS = 5  # warm-up steps a --time_budget run needs to measure its speed


class ConfigError(ValueError):
    """An invalid training configuration value."""


@dataclass(frozen=True)
class Bounds:
    """A number's allowed range; NaN and infinities are always refused."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # exclusive lower bound
    below: float | None = None  # exclusive upper bound

    def check(self, value) -> str | None:
        """None if ``value`` fits, else what it must be."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number{self._describe(', ')}"
        if (
            (self.minimum is not None and value < self.minimum)
            or (self.maximum is not None and value > self.maximum)
            or (self.above is not None and value <= self.above)
            or (self.below is not None and value >= self.below)
        ):
            return f"must be {self._describe('')}".strip()
        return None

    def _describe(self, lead: str) -> str:
        low = f"[{self.minimum}" if self.minimum is not None else f"({self.above}" if self.above is not None else None
        high = f"{self.maximum}]" if self.maximum is not None else f"{self.below})" if self.below is not None else None
        if low and high:
            return f"{lead}in {low}, {high}"
        if low:
            return f"{lead}{'>=' if self.minimum is not None else '>'} {low[1:]}"
        if high:
            return f"{lead}{'<=' if self.maximum is not None else '<'} {high[:-1]}"
        return ""


def setting(default, help: str, bounds: Bounds | None = None, choices: tuple | None = None):
    """A config key: its default, its help line, and the range or choices its value must fit."""
    metadata = {"help": help, "bounds": bounds, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(
            default_factory=lambda: list(default) if isinstance(default, list) else dict(default), metadata=metadata
        )
    return field(default=default, metadata=metadata)


POSITIVE = Bounds(minimum=1)
NON_NEGATIVE = Bounds(minimum=0)
PROBABILITY = Bounds(minimum=0, below=1)


@dataclass
class TrainingConfig:
    # ---- run
    output_dir: str = setting("outputs/ddpm-mnist", "where the pipeline, pictures, logs and checkpoints go")
    seed: int = setting(0, "seed for weights, data order, noise and timesteps", Bounds(minimum=0, maximum=MAX_SEED))
    # ---- data
    dataset_name: str | None = setting(None, "Hub dataset (e.g. ylecun/mnist); unset = the embedded 5k MNIST subset")
    train_data_dir: str | None = setting(None, "a local folder of images (imagefolder layout)")
    dataset_split: str = setting("train", "split to train on")
    image_column: str = setting("image", "name of the image column")
    label_column: str = setting("label", "name of the label column")
    digits: list[int] | None = setting(None, "digits to keep, e.g. [1] or [0, 1]; unset = all")
    resolution: int = setting(28, "image size the data is resized to", Bounds(minimum=4, maximum=256))
    # ---- model
    class_conditional: bool = setting(True, "condition on the digit (with classifier-free guidance)")
    learned_variance: bool = setting(True, "learn the reverse variance (learned_range) with the hybrid loss")
    block_out_channels: list[int] = setting([32, 64, 64], "UNet widths per level", Bounds(minimum=1, maximum=1024))
    layers_per_block: int | list[int] = setting(
        [0, 1, 1], "UNet encoder blocks: one number for every level, or one per level (0 allowed)", Bounds(maximum=16)
    )
    decoder_layers_per_block: int | None = setting(1, "UNet decoder blocks per level (None = layers_per_block + 1)")
    attention_levels: list[bool] = setting(
        [False, False, False], "self-attention per level (the middle block always has it)"
    )
    attention_head_dim: int = setting(32, "channels per attention head", POSITIVE)
    norm_num_groups: int = setting(8, "GroupNorm groups", POSITIVE)
    dropout: float = setting(0.0, "dropout in the residual blocks", PROBABILITY)
    # ---- diffusion
    num_train_timesteps: int = setting(4000, "length T of the diffusion chain (2 to 100,000; 10^4 is fine)")
    prediction_type: str = setting("epsilon", "what the UNet predicts", choices=PREDICTION_TYPES)
    vlb_weight: float = setting(0.001, "lambda of L_hybrid = L_simple + lambda * L_vlb", NON_NEGATIVE)
    cond_drop_prob: float = setting(0.1, "probability of replacing the label by the null class", PROBABILITY)
    snr_gamma: float | None = setting(
        None, "min-SNR-gamma weighting of L_simple (Hang et al. 2023; e.g. 5); unset = unweighted", Bounds(above=0)
    )
    timestep_sampling: str = setting(
        "uniform",
        "how training draws t: uniform, or lognormal (EDM's ln sigma ~ N(-1.2, 1.2^2), half of the draws; the "
        "other half uniform)",
        choices=("uniform", "lognormal"),
    )
    # ---- optimisation
    train_batch_size: int = setting(32, "images per process per micro-batch", Bounds(minimum=1, maximum=65536))
    num_epochs: int = setting(11, "passes over the data (ignored if max_train_steps is set)", POSITIVE)
    max_train_steps: int | None = setting(None, "optimizer steps; overrides num_epochs", POSITIVE)
    time_budget: str | None = setting(
        None,
        "train for this long (90s, 30m, 1.5h): the speed measured in the warm-up fixes max_train_steps; overrides "
        "max_train_steps and num_epochs",
    )
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step", Bounds(minimum=1, maximum=4096))
    learning_rate: float = setting(2e-3, "peak learning rate (AdamW)", Bounds(above=0))
    lr_scheduler: str = setting(
        "wsd",
        "wsd: warmup-stable-decay (Hagele et al. 2024), a constant rate with a linear cooldown at the end (it beat "
        "cosine at equal steps, benchmarks/RESULTS.md); or a diffusers.optimization name (cosine, linear, ...)",
    )
    lr_warmup_steps: int = setting(100, "linear warmup steps", NON_NEGATIVE)
    lr_cooldown_fraction: float = setting(0.2, "wsd: the share of the run that cools down", Bounds(above=0, maximum=1))
    lr_cooldown_steps: int | None = setting(None, "wsd: cooldown steps (instead of the fraction)", POSITIVE)
    cooldown_from: str | None = setting(
        None,
        "a checkpoint of a wsd run's constant phase: branch a cooldown of lr_cooldown_steps from it (into another "
        "output_dir)",
    )
    adam_beta1: float = setting(0.9, "AdamW beta1", PROBABILITY)
    adam_beta2: float = setting(0.99, "AdamW beta2", PROBABILITY)
    adam_weight_decay: float = setting(0.0, "AdamW weight decay", NON_NEGATIVE)
    adam_epsilon: float = setting(1e-8, "AdamW epsilon", Bounds(above=0))
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0 = off)", NON_NEGATIVE)
    mixed_precision: str = setting(
        "auto",
        "auto (bf16 where the device runs it natively, fp16 on a CUDA GPU without bf16, else float32; "
        "ddpm_pipeline/hardware.py), no, bf16 or fp16",
        choices=MIXED_PRECISION_CHOICES,
    )
    channels_last: bool = setting(False, "channels-last memory format for the UNet")
    keep_freed_memory: bool = setting(
        True,
        "on a CPU under Linux (glibc), keep freed memory in the process instead of returning it to the kernel: no "
        "page faults on each step's fresh activations (ddpm_pipeline/cpu_allocator.py)",
    )
    num_cpu_threads: int | None = setting(
        None,
        "CPU threads per process; unset = the cores shared among the processes (accelerate launch would otherwise "
        "set 1)",
        Bounds(minimum=1, maximum=1024),
    )
    # ---- EMA
    use_ema: bool = setting(True, "keep an exponential moving average of the weights")
    ema_max_decay: float = setting(0.9995, "EMA decay ceiling", Bounds(above=0, below=1))
    ema_inv_gamma: float = setting(
        18.0, "EMA warmup inverse gamma: decay 1 - (1 + step / inv_gamma)^-power, capped", Bounds(above=0)
    )
    ema_power: float = setting(
        1.0, "EMA warmup power (1 with inv_gamma 18: an average over the last ~1/18 of the steps)", Bounds(above=0)
    )
    weight_snapshot_steps: int = setting(
        0,
        "save the raw training weights every N steps (0 = off), for post-hoc EMA (python -m ddpm_pipeline.posthoc_ema)",
        NON_NEGATIVE,
    )
    # ---- logging, pictures, checkpoints
    logger: str = setting("tensorboard", "tensorboard or none", choices=("tensorboard", "none"))
    save_images_epochs: int = setting(5, "write a 6x6 grid of EMA samples every N epochs (0 = off)", NON_NEGATIVE)
    checkpointing_steps: int = setting(200, "save the training state every N optimizer steps (0 = off)", NON_NEGATIVE)
    checkpoints_total_limit: int | None = setting(2, "keep at most this many checkpoints", POSITIVE)
    resume_from_checkpoint: str | None = setting(None, "'latest' or a checkpoint path")
    # ---- sampling: the saved pipeline's default call, which also makes the pictures
    guidance_scale: float = setting(DEFAULT_GUIDANCE_SCALE, "classifier-free guidance weight (1 = none)", NON_NEGATIVE)
    guidance_interval: list[float] = setting(list(DEFAULT_GUIDANCE_INTERVAL), "guide only where low T <= t < high T")
    num_inference_steps: int | str = setting(
        DEFAULT_NUM_INFERENCE_STEPS, f"respaced sampling steps, or {FULL_CHAIN!r} for the whole chain"
    )
    sampling_order: int = setting(
        1, "1: the DDPM step; 2: with a second-order x_0 in its mean (DPM-Solver++(2M), SDE form)", choices=(1, 2)
    )
    # ---- evaluation and Hub
    evaluate: bool = setting(False, "run `ddpm-mnist evaluate` at the end and put the figures in the model card")
    eval_num_samples: int = setting(1000, "samples for --evaluate", Bounds(minimum=2, maximum=100_000))
    push_to_hub: bool = setting(False, "push the final pipeline, card and pictures to the Hub")
    hub_model_id: str | None = setting(None, "namespace/name of the Hub repository")
    hub_token: str | None = setting(None, "Hub token (else HF_TOKEN or the `hf auth login` store); never logged")
    hub_private_repo: bool = setting(False, "create the Hub repository as private")
    push_every_save: bool = setting(False, "also push at every saved sample-grid epoch")

    # ------------------------------------------------------------------ loading
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainingConfig":
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"Unknown {source} key(s): {', '.join(unknown)}. Valid keys are listed by `train_ddpm.py --help`."
            )
        hints = typing.get_type_hints(cls)
        checked = {name: _coerce(name, value, hints[name]) for name, value in values.items()}
        config = cls(**checked)
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> "TrainingConfig":
        return cls.from_dict({**read_yaml_config(path), **(overrides or {})})

    def to_dict(self, redact_secrets: bool = True) -> dict:
        values = dataclasses.asdict(self)
        if redact_secrets:
            values["hub_token"] = None  # a token never reaches a saved config
        return values

    # ------------------------------------------------------------------ what the components are built from
    def unet_kwargs(self) -> dict:
        return {
            "learned_variance": self.learned_variance,
            "block_out_channels": tuple(self.block_out_channels),
            "layers_per_block": self.layers_per_block
            if isinstance(self.layers_per_block, int)
            else tuple(self.layers_per_block),
            "decoder_layers_per_block": self.decoder_layers_per_block,
            "attention_levels": tuple(self.attention_levels),
            "attention_head_dim": self.attention_head_dim,
            "norm_num_groups": self.norm_num_groups,
            "dropout": self.dropout,
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

    # ------------------------------------------------------------------ validation
    def validate(self):
        """Every key's range, then the rules of the components the config builds; raises ConfigError naming the key."""
        for f in dataclasses.fields(self):
            _check_setting(f.name, getattr(self, f.name), f.metadata)
        self._check_components()
        self._check_combinations()

    def _fail(self, key: str, message: str):
        raise ConfigError(f"Invalid config value for {key!r} ({getattr(self, key)!r}): {message}")

    def _check_components(self):
        """Ask each component whether it can be built from these values, and name the key it complains about."""
        try:
            CosineDDPMScheduler.check_config(self.num_train_timesteps, prediction_type=self.prediction_type)
        except SchedulerConfigError as error:
            self._fail(error.argument, str(error))
        try:
            MnistUNet.check_config(
                sample_size=self.resolution,
                in_channels=1,
                num_class_embeds=10 if self.class_conditional else None,
                **{k: v for k, v in self.unet_kwargs().items() if k != "learned_variance"},
            )
        except UNetConfigError as error:
            self._fail(UNET_ARGUMENT_KEYS.get(error.argument, error.argument), str(error))
        try:
            check_sampling_arguments(
                self.num_inference_steps, self.guidance_scale, self.guidance_interval, self.num_train_timesteps
            )
        except SamplingArgumentError as error:
            self._fail(error.argument, str(error))
        self._check_lr_scheduler()
        if self.hub_model_id is not None:
            try:
                validate_repo_id(self.hub_model_id)
            except HubError as error:
                self._fail("hub_model_id", str(error))

    def _check_lr_scheduler(self):
        """diffusers' get_scheduler decides which names (and which arguments) it takes: ask it, on a dummy. ``wsd``
        is ours (training_setup.warmup_stable_decay)."""
        if self.lr_scheduler == WSD:
            return
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        try:
            get_scheduler(self.lr_scheduler, optimizer, num_warmup_steps=self.lr_warmup_steps, num_training_steps=10)
        except Exception as error:  # a dry run on a dummy: whatever it raises, this name does not work here
            names = ", ".join(sorted([*_lr_scheduler_names(), WSD]))
            self._fail("lr_scheduler", f"diffusers' get_scheduler refuses it ({error}). Names it takes: {names}.")

    def time_budget_seconds(self) -> float | None:
        """--time_budget in seconds (None when unset); ConfigError naming the flag for anything but a duration."""
        if self.time_budget is None:
            return None
        match = DURATION.fullmatch(str(self.time_budget).strip().lower())
        seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)] if match else math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            self._fail("time_budget", "give a positive duration such as --time_budget 90s, 30m or 1.5h.")
        return seconds

    def _check_cooldown(self):
        if (self.cooldown_from or self.lr_cooldown_steps) and self.lr_scheduler != WSD:
            key = "cooldown_from" if self.cooldown_from else "lr_cooldown_steps"
            self._fail(key, "a cooldown belongs to the wsd schedule: add --lr_scheduler wsd.")
        if not self.cooldown_from:
            return
        if not self.lr_cooldown_steps:
            self._fail("cooldown_from", "say how long the cooldown is: --lr_cooldown_steps N.")
        if self.resume_from_checkpoint or self.time_budget:
            self._fail("cooldown_from", "a cooldown branch resumes its checkpoint itself and has its own length: "
                       "leave out --resume_from_checkpoint and --time_budget.")  # fmt: skip
        if Path(self.cooldown_from).resolve().parent == Path(self.output_dir).resolve():
            self._fail("cooldown_from", "write the branch to another --output_dir, so that the run it branches from "
                       "keeps its checkpoints.")  # fmt: skip

    def _check_combinations(self):
        self._check_cooldown()
        self.time_budget_seconds()
        if self.time_budget is not None and self.lr_warmup_steps < MIN_CALIBRATION_STEPS:
            self._fail(
                "time_budget",
                f"a budgeted run measures its speed during the learning-rate warm-up, which must last at least "
                f"{MIN_CALIBRATION_STEPS} steps (lr_warmup_steps is {self.lr_warmup_steps}); raise --lr_warmup_steps.",
            )
        if self.digits is not None:
            if len(self.digits) == 0 or any(not 0 <= d <= 9 for d in self.digits):
                self._fail("digits", "give a non-empty list of digits between 0 and 9, or leave it unset for all.")
            if len(set(self.digits)) != len(self.digits):
                self._fail("digits", "lists a digit twice.")
        if self.dataset_name and self.train_data_dir:
            self._fail("train_data_dir", "give either dataset_name or train_data_dir, not both.")
        if self.push_to_hub and not self.hub_model_id:
            self._fail("hub_model_id", "--push_to_hub needs --hub_model_id namespace/name.")
        if self.push_every_save and not self.push_to_hub:
            self._fail("push_every_save", "only means something with --push_to_hub.")

    def check_output_dir(self):
        """The output folder can be written: it is a folder (or can be made one) and this user may write there."""
        path = Path(self.output_dir)
        if path.exists() and not path.is_dir():
            self._fail("output_dir", "is a file, not a folder; give a folder for the run's outputs.")
        existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            self._fail("output_dir", f"cannot be created: {str(existing)!r} is not a folder this user may write in.")
        try:  # permissions are not the whole story (e.g. /proc refuses new folders even to root): make it
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self._fail("output_dir", f"cannot be created ({error.strerror or error}); give a folder on a normal disk.")


UNET_ARGUMENT_KEYS = {"sample_size": "resolution", "num_class_embeds": "class_conditional"}


def _lr_scheduler_names() -> list[str]:
    return [member.value for member in SchedulerType]


def _check_setting(name: str, value, metadata):
    """A key's own range or choices (its type was checked when it was read)."""
    if value is None:
        return
    bounds, choices = metadata.get("bounds"), metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"Invalid config value for {name!r} ({value!r}): choose one of {', '.join(map(str, choices))}."
        )
    if bounds is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            problem = bounds.check(item)
            if problem:
                raise ConfigError(f"Invalid config value for {name!r} ({value!r}): {problem}.")


def _coerce(name: str, value, hint):
    """Check a value against a field's type hint, accepting ints for floats; raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    union = origin in (typing.Union, types.UnionType)
    if union and type(None) in args:
        if value is None:
            return None
        alternatives = [a for a in args if a is not type(None)]
        hint = alternatives[0] if len(alternatives) == 1 else typing.Union[tuple(alternatives)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        union = origin is typing.Union
    if union:  # e.g. int | list[int]: the first alternative that fits
        for alternative in args:
            try:
                return _coerce(name, value, alternative)
            except ConfigError:
                pass
        expected = " or ".join(str(a).replace("typing.", "") if typing.get_origin(a) else a.__name__ for a in args)
        raise ConfigError(f"Config key {name!r} expects {expected}, got {value!r} ({type(value).__name__}).")

    def wrong(expected):
        return ConfigError(f"Config key {name!r} expects {expected}, got {value!r} ({type(value).__name__}).")

    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise wrong(f"a list of {args[0].__name__}")
        return [_coerce(name, item, args[0]) for item in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise wrong("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value.strip():
            raise wrong("a non-empty string")
        return value
    return value


# ---------------------------------------------------------------------- YAML files
class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (plain YAML keeps the last one silently)."""


def _construct_unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} appears twice (line {key_node.start_mark.line + 1})", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def read_yaml_config(path: str | Path) -> dict:
    """The mapping a YAML config file holds; ConfigError naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist; see configs/ for examples.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"Config file {str(path)!r} is not UTF-8 text ({error}); save it as UTF-8.") from None
    except OSError as error:
        raise ConfigError(f"Config file {str(path)!r} cannot be read: {error}") from None
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {str(path)!r} must hold a mapping of keys to values.")
    return values


# ---------------------------------------------------------------------- the command line
class _ArgumentParser(argparse.ArgumentParser):
    """argparse, raising ConfigError instead of exiting, so that a bad flag is answered like a bad config value."""

    def error(self, message):
        raise ConfigError(f"{message}. `train_ddpm.py --help` lists every flag.")


def build_argument_parser() -> argparse.ArgumentParser:
    """Flags for every config key; each shows the value a bare run uses (the dataclass default), and overrides both
    the default and the --config file. No prefix abbreviations: --learning_rat is an error, not --learning_rate."""
    parser = _ArgumentParser(
        description="Train a DDPM on MNIST. Values come from the defaults below, then --config (YAML), then flags.",
        allow_abbrev=False,
    )
    parser.add_argument("--config", default=None, help="YAML file overriding some defaults (e.g. configs/tiny.yaml)")
    hints = typing.get_type_hints(TrainingConfig)
    defaults = TrainingConfig()
    for f in dataclasses.fields(TrainingConfig):
        parser.add_argument(
            f"--{f.name}",
            default=argparse.SUPPRESS,
            type=_parser_type(f.name, hints[f.name]),
            help=f"{f.metadata.get('help', '')} (default: {_show(getattr(defaults, f.name))})",
            **({"nargs": "?", "const": True} if hints[f.name] is bool else {}),
        )
    return parser


def _show(value) -> str:
    """A default as a flag would spell it (None, true/false, 0,1,1)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_show(v) for v in value)
    return str(value)


def _parser_type(name, hint):
    """Parse a flag's text into the value YAML would have given (`--digits 0,1` and `--digits [0,1]` both work)."""
    optional = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint

    def parse(text: str):
        if optional and text.strip().lower() in ("none", "null", "~"):
            return None
        if base is str:
            return text
        if base in (int, float):
            try:
                return base(text)
            except ValueError:
                return text  # validation then names the key and the expected type
        only_list = typing.get_origin(base) is list
        may_be_list = any(typing.get_origin(a) is list for a in typing.get_args(base))  # e.g. int | list[int]
        if (only_list or (may_be_list and "," in text)) and not text.strip().startswith("["):
            text = f"[{text}]"
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text  # validation then names the key and the expected type

    parse.__name__ = name
    return parse


def parse_training_config(argv: list[str] | None = None) -> TrainingConfig:
    """Defaults, then the --config file if given, then the flags; validated, with the output folder checked."""
    args = vars(build_argument_parser().parse_args(argv))
    config_path = args.pop("config")
    file_values = read_yaml_config(config_path) if config_path else {}
    config = TrainingConfig.from_dict({**file_values, **args})
    config.check_output_dir()
    return config


DEFAULTS_HEADER = """\
# The default run, written out: every key at the value a bare `accelerate launch train_ddpm.py` uses.
# The values live in ddpm_pipeline/training_config.py (TrainingConfig), the one source of truth; `train_ddpm.py
# --help` prints the same, and `python -m ddpm_pipeline.training_config > configs/mnist.yaml` rewrites this file
# (tests/test_training_config.py checks that it matches). Copy it to start a config of your own, and keep only the
# keys you change (see mnist-ones.yaml).
"""


def defaults_yaml() -> str:
    return DEFAULTS_HEADER + yaml.safe_dump(
        TrainingConfig().to_dict(), sort_keys=False, default_flow_style=None, width=120
    )


if __name__ == "__main__":
    print(defaults_yaml(), end="")
