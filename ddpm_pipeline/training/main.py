"""`accelerate launch train_ddpm.py [--config FILE.yaml] [--flag value ...]`: parse, train, and answer every way a
run can end with a message and an exit code (2: bad input; 3: trained, but the push failed; 75 / 130: stopped on
request, resumable; 1: the main process failed)."""

import sys

from ..checkpointing import CheckpointError
from ..data import DatasetError
from ..hub import HubError
from ..preemption import OutputDirInUse
from ..training_config import ConfigError
from .config_checks import parse_args
from .loop import train
from .processes import MainProcessFailed
from .recovery import TrainingDivergedError, TrainingStopped


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        train(parse_args(argv), argv)
    except (ConfigError, DatasetError, CheckpointError, TrainingDivergedError, OutputDirInUse) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except HubError as error:
        print(f"error: training finished, but the push failed: {error}", file=sys.stderr)
        return 3
    except TrainingStopped as error:
        print(f"stopped: {error}", file=sys.stderr)
        return error.exit_code
    except MainProcessFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
