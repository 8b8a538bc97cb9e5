"""The command line that started a run, for its model card and for the command that continues or repairs it."""

import os
import shlex

from ..redaction import drop_flags, redact_argv


def recorded_command(argv: list[str] | None, replace: dict[str, str] | None = None, drop=()) -> str | None:
    """The command line of a run (``argv``: its flags), with any --hub_token value left out, the flags in ``drop``
    removed and those in ``replace`` set to new values (appended where absent)."""
    if argv is None:
        return None
    replace = replace or {}
    kept = drop_flags(redact_argv(argv), [*replace, *drop])
    for flag, value in replace.items():
        kept += [flag, value]
    return " ".join([launcher(), *map(shlex.quote, kept)])


def launcher() -> str:
    """How this run was started: `accelerate launch` sets ACCELERATE_DYNAMO_BACKEND for the processes it starts."""
    return "accelerate launch train_ddpm.py" if "ACCELERATE_DYNAMO_BACKEND" in os.environ else "python train_ddpm.py"
