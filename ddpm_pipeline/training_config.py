"""Training configuration: one dataclass, YAML files in configs/, command-line overrides, and validation.

The command-line flags are the names users of diffusers' example scripts know (--output_dir, --train_batch_size, ...).
A config is validated before any work starts; every error names the key and the fix.
"""

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .hardware import MIXED_PRECISION_CHOICES


class ConfigError(ValueError):
    """An invalid training configuration value."""


@dataclass
class TrainingConfig:
    # ---- run
    output_dir: str = field(
        default="outputs/ddpm-mnist", metadata={"help": "where the pipeline, pictures, logs and checkpoints go"}
    )
    seed: int = field(default=0, metadata={"help": "seed for weights, data order, noise and timesteps"})
    # ---- data
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset (e.g. ylecun/mnist); unset = the embedded 5k MNIST subset"}
    )
    train_data_dir: str | None = field(default=None, metadata={"help": "a local folder of images (imagefolder layout)"})
    dataset_split: str = field(default="train", metadata={"help": "split to train on"})
    image_column: str = field(default="image", metadata={"help": "name of the image column"})
    label_column: str = field(default="label", metadata={"help": "name of the label column"})
    digits: list[int] | None = field(default=None, metadata={"help": "digits to keep, e.g. [1] or [0, 1]; unset = all"})
    resolution: int = field(default=28, metadata={"help": "image size the data is resized to"})
    # ---- model
    class_conditional: bool = field(
        default=True, metadata={"help": "condition on the digit (with classifier-free guidance)"}
    )
    learned_variance: bool = field(
        default=True, metadata={"help": "learn the reverse variance (learned_range) with the hybrid loss"}
    )
    block_out_channels: list[int] = field(
        default_factory=lambda: [32, 64, 64], metadata={"help": "UNet widths per level"}
    )
    layers_per_block: int | list[int] = field(
        default_factory=lambda: [0, 1, 1],
        metadata={"help": "UNet encoder blocks: one number for every level, or one per level (0 allowed)"},
    )
    decoder_layers_per_block: int | None = field(
        default=1, metadata={"help": "UNet decoder blocks per level (None = layers_per_block + 1)"}
    )
    attention_levels: list[bool] = field(
        default_factory=lambda: [False, False, False],
        metadata={"help": "self-attention per level (the middle block always has it)"},
    )
    attention_head_dim: int = field(default=32, metadata={"help": "channels per attention head"})
    norm_num_groups: int = field(default=8, metadata={"help": "GroupNorm groups"})
    dropout: float = field(default=0.0, metadata={"help": "dropout in the residual blocks"})
    # ---- diffusion
    num_train_timesteps: int = field(
        default=4000, metadata={"help": "length T of the diffusion chain (>= 2; 10^4 is fine)"}
    )
    prediction_type: str = field(default="epsilon", metadata={"help": "epsilon or v_prediction"})
    vlb_weight: float = field(default=0.001, metadata={"help": "lambda of L_hybrid = L_simple + lambda * L_vlb"})
    cond_drop_prob: float = field(
        default=0.1, metadata={"help": "probability of replacing the label by the null class"}
    )
    # ---- optimisation
    train_batch_size: int = field(default=128, metadata={"help": "images per process per micro-batch"})
    num_epochs: int = field(default=30, metadata={"help": "passes over the data (ignored if max_train_steps is set)"})
    max_train_steps: int | None = field(default=None, metadata={"help": "optimizer steps; overrides num_epochs"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    learning_rate: float = field(default=2e-3, metadata={"help": "peak learning rate (AdamW)"})
    lr_scheduler: str = field(
        default="cosine",
        metadata={"help": "diffusers.optimization schedule name (cosine, linear, constant_with_warmup, ...)"},
    )
    lr_warmup_steps: int = field(default=100, metadata={"help": "linear warmup steps"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.99, metadata={"help": "AdamW beta2"})
    adam_weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 where the device runs it natively, fp16 on a CUDA GPU without bf16, else float32; "
            "ddpm_pipeline/hardware.py), no, bf16 or fp16"
        },
    )
    channels_last: bool = field(default=False, metadata={"help": "channels-last memory format for the UNet"})
    keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "on a CPU under Linux (glibc), keep freed memory in the process instead of returning it to the "
            "kernel: no page faults on each step's fresh activations (ddpm_pipeline/cpu_allocator.py)"
        },
    )
    num_cpu_threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads per process; unset = the cores shared among the processes "
            "(accelerate launch would otherwise set 1)"
        },
    )
    # ---- EMA
    use_ema: bool = field(default=True, metadata={"help": "keep an exponential moving average of the weights"})
    ema_max_decay: float = field(default=0.9995, metadata={"help": "EMA decay ceiling"})
    ema_inv_gamma: float = field(default=1.0, metadata={"help": "EMA warmup inverse gamma"})
    ema_power: float = field(default=0.75, metadata={"help": "EMA warmup power"})
    # ---- logging, pictures, checkpoints
    logger: str = field(default="tensorboard", metadata={"help": "tensorboard or none"})
    save_images_epochs: int = field(
        default=10, metadata={"help": "write a 6x6 grid of EMA samples every N epochs (0 = off)"}
    )
    checkpointing_steps: int = field(
        default=500, metadata={"help": "save the training state every N optimizer steps (0 = off)"}
    )
    checkpoints_total_limit: int | None = field(default=2, metadata={"help": "keep at most this many checkpoints"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint path"})
    # ---- sampling for the pictures
    guidance_scale: float = field(default=2.0, metadata={"help": "classifier-free guidance weight for the pictures"})
    num_inference_steps: int = field(
        default=50, metadata={"help": "respaced steps for sample pictures (None-like 0 = full chain)"}
    )
    # ---- evaluation and Hub
    evaluate: bool = field(
        default=False, metadata={"help": "run `ddpm-mnist evaluate` figures at the end and put them in the model card"}
    )
    eval_num_samples: int = field(default=1000, metadata={"help": "samples for --evaluate"})
    push_to_hub: bool = field(default=False, metadata={"help": "push the final pipeline, card and pictures to the Hub"})
    hub_model_id: str | None = field(default=None, metadata={"help": "namespace/name of the Hub repository"})
    hub_token: str | None = field(
        default=None, metadata={"help": "Hub token (else HF_TOKEN or the `hf auth login` store); never logged"}
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "create the Hub repository as private"})
    push_every_save: bool = field(default=False, metadata={"help": "also push at every saved sample-grid epoch"})

    # ------------------------------------------------------------------ loading and validation
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingConfig":
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"Unknown config key(s): {', '.join(unknown)}. Valid keys are listed by `train_ddpm.py --help`."
            )
        hints = typing.get_type_hints(cls)
        checked = {name: _coerce(name, value, hints[name]) for name, value in values.items()}
        config = cls(**checked)
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> "TrainingConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist; see configs/ for examples.")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {error}") from error
        if not isinstance(values, dict):
            raise ConfigError(f"Config file {str(path)!r} must hold a mapping of keys to values.")
        return cls.from_dict({**values, **(overrides or {})})

    def to_dict(self, redact_secrets: bool = True) -> dict:
        values = dataclasses.asdict(self)
        if redact_secrets:
            values["hub_token"] = None  # a token never reaches a saved config
        return values

    def validate(self):
        def fail(key, message):
            raise ConfigError(f"Invalid config value for {key!r} ({getattr(self, key)!r}): {message}")

        positive_ints = [
            "train_batch_size",
            "num_epochs",
            "gradient_accumulation_steps",
            "resolution",
            "attention_head_dim",
            "norm_num_groups",
            "eval_num_samples",
        ]
        for key in positive_ints:
            if getattr(self, key) < 1:
                fail(key, "must be >= 1.")
        for key in ["lr_warmup_steps", "save_images_epochs", "checkpointing_steps", "num_inference_steps"]:
            if getattr(self, key) < 0:
                fail(key, "must be >= 0.")
        if self.num_cpu_threads is not None and self.num_cpu_threads < 1:
            fail("num_cpu_threads", "must be >= 1, or unset to use every core.")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            fail("max_train_steps", "must be >= 1 (or unset to use num_epochs).")
        if self.num_train_timesteps < 2:
            fail("num_train_timesteps", "the chain needs at least 2 steps (T of 1,000 to 10,000 is typical).")
        if self.num_inference_steps > self.num_train_timesteps:
            fail("num_inference_steps", f"cannot exceed num_train_timesteps={self.num_train_timesteps}.")
        if not self.learning_rate > 0:
            fail("learning_rate", "must be positive, e.g. 1e-3.")
        for key in ["vlb_weight", "adam_weight_decay", "max_grad_norm", "adam_epsilon"]:
            if getattr(self, key) < 0:
                fail(key, "must be >= 0.")
        for key in ["adam_beta1", "adam_beta2", "cond_drop_prob", "dropout"]:
            if not 0 <= getattr(self, key) < 1:
                fail(key, "must lie in [0, 1).")
        if not 0 < self.ema_max_decay < 1:
            fail("ema_max_decay", "must lie in (0, 1), e.g. 0.9999.")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            fail("mixed_precision", f"choose {', '.join(MIXED_PRECISION_CHOICES)} (auto picks from the hardware).")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            fail("prediction_type", "choose epsilon or v_prediction.")
        if self.logger not in ("tensorboard", "none"):
            fail("logger", "choose tensorboard or none.")
        if self.digits is not None:
            if len(self.digits) == 0 or any(not 0 <= d <= 9 for d in self.digits):
                fail("digits", "give a non-empty list of digits between 0 and 9, or leave it unset for all.")
            if len(set(self.digits)) != len(self.digits):
                fail("digits", "lists a digit twice.")
        levels = len(self.block_out_channels)
        if isinstance(self.layers_per_block, int):
            if self.layers_per_block < 1:
                fail("layers_per_block", "must be >= 1 (or a list with one number >= 0 per level).")
            encoder_blocks = [self.layers_per_block] * levels
        else:
            encoder_blocks = self.layers_per_block
            if len(encoder_blocks) != levels or min(encoder_blocks) < 0:
                fail("layers_per_block", f"a list needs one number >= 0 per level of block_out_channels ({levels}).")
        if (
            self.decoder_layers_per_block is not None
            and not 1 <= self.decoder_layers_per_block <= min(encoder_blocks) + 1
        ):
            fail(
                "decoder_layers_per_block",
                f"must lie in [1, {min(encoder_blocks) + 1}]: each decoder block eats one skip connection, and the "
                "level with the fewest encoder blocks has that many (or leave it unset).",
            )
        if len(self.attention_levels) != len(self.block_out_channels):
            fail(
                "attention_levels", f"needs one entry per level of block_out_channels ({len(self.block_out_channels)})."
            )
        if any(w < 1 or w % self.norm_num_groups for w in self.block_out_channels):
            fail(
                "block_out_channels",
                f"every width must be a positive multiple of norm_num_groups={self.norm_num_groups}.",
            )
        if self.resolution % 2 ** (len(self.block_out_channels) - 1):
            fail(
                "resolution",
                f"must be divisible by {2 ** (len(self.block_out_channels) - 1)} for this many UNet levels.",
            )
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            fail("checkpoints_total_limit", "must be >= 1, or unset to keep every checkpoint.")
        if self.dataset_name and self.train_data_dir:
            fail("train_data_dir", "give either dataset_name or train_data_dir, not both.")
        if self.push_to_hub and not self.hub_model_id:
            fail("hub_model_id", "--push_to_hub needs --hub_model_id namespace/name.")


def _coerce(name: str, value, hint):
    """Check a value against a field's type hint, accepting ints for floats; raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    union = origin in (typing.Union, getattr(__import__("types"), "UnionType", ()))
    if union and type(None) in args:
        if value is None:
            return None
        alternatives = [a for a in args if a is not type(None)]
        hint = alternatives[0] if len(alternatives) == 1 else typing.Union[tuple(alternatives)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        union = origin is typing.Union
    if union:  # e.g. int | list[int]: the first alternative that fits
        errors = []
        for alternative in args:
            try:
                return _coerce(name, value, alternative)
            except ConfigError as error:
                errors.append(error)
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
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    return value


def build_argument_parser() -> argparse.ArgumentParser:
    """Flags for every config key; a flag given on the command line overrides the YAML file."""
    parser = argparse.ArgumentParser(
        description="Train a DDPM on MNIST. Values come from --config (YAML), then from the flags below.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", default="configs/mnist.yaml", help="YAML file with the run's settings")
    hints = typing.get_type_hints(TrainingConfig)
    for f in dataclasses.fields(TrainingConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        parser.add_argument(
            f"--{f.name}",
            default=argparse.SUPPRESS,
            type=_parser_type(f.name, hints[f.name]),
            help=help_text,
            **({"nargs": "?", "const": True} if hints[f.name] is bool else {}),
        )
    return parser


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
    args = vars(build_argument_parser().parse_args(argv))
    config_path = args.pop("config")
    return TrainingConfig.from_yaml(config_path, overrides=args)
