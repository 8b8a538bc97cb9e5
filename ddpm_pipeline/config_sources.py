"""Where a training config comes from: the defaults, a YAML file (`--config`), then flags; and the defaults written out.

A flag's text is read as YAML would read the value (`--digits 0,1` and `--digits [0,1]` both work); a YAML file that
names a key twice, or is not a mapping, is refused naming the file; everything is then validated by TrainingConfig.
"""

import argparse
import types
import typing
from pathlib import Path
from typing import Annotated, Literal

import yaml

from .training_config import ConfigError, TrainingConfig


def _leaf(annotation):
    """The annotation without Optional: Literal[...] | None -> Literal[...]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kept = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kept[0] if len(kept) == 1 else annotation
    return annotation


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


def config_from_yaml(path: str | Path, overrides: dict | None = None) -> TrainingConfig:
    """A YAML config file's values over the defaults (and ``overrides`` over the file), validated."""
    return TrainingConfig.from_dict({**read_yaml_config(path), **(overrides or {})})


# ---------------------------------------------------------------------- the command line
class _ArgumentParser(argparse.ArgumentParser):
    """argparse, raising ConfigError instead of exiting, so that a bad flag is answered like a bad config value."""

    def error(self, message):
        raise ConfigError(f"{message}. `{self.prog} --help` lists every flag.")


def build_argument_parser(
    config_class=TrainingConfig,
    prog: str = "train_ddpm.py",
    description: str = "Train a DDPM on MNIST.",
    example: str = "configs/tiny.yaml",
) -> argparse.ArgumentParser:
    """A flag for every key of ``config_class``, showing the value a bare run uses. A flag's text is read as YAML
    would read the value (`--digits 0,1` and `--digits [0,1]` both work); no prefix abbreviations (--learning_rat is
    an error)."""
    parser = _ArgumentParser(
        prog=prog,
        description=f"{description} Values come from the defaults below, then --config (YAML), then flags.",
        allow_abbrev=False,
    )
    parser.add_argument("--config", default=None, help=f"YAML file overriding some defaults (e.g. {example})")
    for name, field in config_class.model_fields.items():
        annotation = field.annotation
        parser.add_argument(
            f"--{name}",
            default=argparse.SUPPRESS,
            type=_flag_reader(name, annotation),
            help=f"{field.description} (default: {_show(field.default)})",
            **({"nargs": "?", "const": True} if annotation is bool else {}),
        )
    return parser


def _show(value) -> str:
    """A default as a flag would spell it (None, true/false, 0,1,1)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_show(v) for v in value)
    return str(value)


def _flag_reader(name: str, annotation):
    """Read a flag's text into the value YAML would have given; validation then names the key of a bad one."""
    optional = type(None) in typing.get_args(annotation)
    base = _leaf(annotation)
    takes_list = typing.get_origin(base) is list or any(typing.get_origin(a) is list for a in typing.get_args(base))
    only_list = typing.get_origin(base) is list
    # text as it is (YAML would read --mixed_precision no as false): strings, and choices among strings
    text_only = (
        base is str
        or (typing.get_origin(base) is Annotated and typing.get_args(base)[0] is str)
        or (typing.get_origin(base) is Literal and all(isinstance(choice, str) for choice in typing.get_args(base)))
    )

    def read(text: str):
        if optional and text.strip().lower() in ("none", "null", "~"):
            return None
        if text_only:
            return text
        if takes_list and (only_list or "," in text) and not text.strip().startswith("["):
            text = f"[{text}]"
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text

    read.__name__ = name
    return read


def parse_training_config(argv: list[str] | None = None) -> TrainingConfig:
    """Defaults, then the --config file if given, then the flags; validated, with the output folder checked."""
    return parse_config(build_argument_parser(), TrainingConfig, argv)


def parse_config(parser: argparse.ArgumentParser, config_class, argv: list[str] | None = None):
    """A config of ``config_class`` from ``parser``'s flags over its --config file over the defaults; validated, with
    the output folder checked."""
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config")
    file_values = read_yaml_config(config_path) if config_path else {}
    config = config_class.from_dict({**file_values, **args})
    config.check_output_dir()
    return config


DEFAULTS_HEADER = """\
# The default run, written out: every key at the value a bare `accelerate launch train_ddpm.py` uses.
# The values live in ddpm_pipeline/training_config.py (TrainingConfig), the one source of truth; `train_ddpm.py
# --help` prints the same, and `python -m ddpm_pipeline.config_sources > configs/mnist.yaml` rewrites this file
# (tests/test_training_config.py checks that it matches). Copy it to start a config of your own, and keep only the
# keys you change (see mnist-ones.yaml).
"""


def defaults_yaml() -> str:
    return DEFAULTS_HEADER + yaml.safe_dump(
        TrainingConfig().to_dict(), sort_keys=False, default_flow_style=None, width=120
    )


if __name__ == "__main__":
    print(defaults_yaml(), end="")
