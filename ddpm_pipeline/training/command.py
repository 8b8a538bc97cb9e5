"""The command line that started a run, for its model card and for the command that continues or repairs it."""

import os
import shlex


def recorded_command(argv: list[str] | None, replace: dict[str, str] | None = None, drop=()) -> str | None:
    """The command line of a run (``argv``: its flags), with any --hub_token value left out, the flags in ``drop``
    removed and those in ``replace`` set to new values (appended where absent)."""
    if argv is None:
        return None
    replace = replace or {}
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name == "--hub_token" or name in replace or name in drop:
            skip = "=" not in arg
            continue
        kept.append(arg)
    for flag, value in replace.items():
        kept += [flag, value]
    return " ".join([launcher(), *map(shlex.quote, kept)])


def launcher() -> str:
    """How this run was started: `accelerate launch` sets ACCELERATE_DYNAMO_BACKEND for the processes it starts."""
    return "accelerate launch train_ddpm.py" if "ACCELERATE_DYNAMO_BACKEND" in os.environ else "python train_ddpm.py"
