"""`accelerate launch distill_ddpm.py [--config FILE.yaml] [--flag value ...]`: parse, distil, and answer every way a
run can end with a message and an exit code (2: bad input or a diverged run)."""

import shlex
import sys

from ..checkpointing import CheckpointError
from ..config_sources import build_argument_parser, parse_config
from ..training.processes import MainProcessFailed
from ..training.recovery import TrainingDivergedError
from ..training_config import ConfigError
from .config import DistillationConfig
from .loop import distill
from .teacher import TeacherPathsError


def parse_args(argv: list[str] | None = None) -> DistillationConfig:
    parser = build_argument_parser(
        DistillationConfig,
        prog="distill_ddpm.py",
        description="Distil a guided ddpm-mnist teacher into a few-step student.",
        example="configs/distill-fast.yaml",
    )
    return parse_config(parser, DistillationConfig, argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        distill(parse_args(argv), command=shlex.join(["accelerate", "launch", "distill_ddpm.py", *argv]))
    except (ConfigError, CheckpointError, TrainingDivergedError, TeacherPathsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except MainProcessFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
