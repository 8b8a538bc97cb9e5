"""Atomic training checkpoints: write to a temporary folder, then rename; a killed save leaves the last one intact."""

import json
import os
import re
import shutil
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"


class CheckpointError(ValueError):
    """A missing or unusable checkpoint, with the fix in the message."""


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with their state file), oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def save_checkpoint_atomically(accelerator, output_dir: str | Path, step: int, extra_state: dict, total_limit=None):
    """``accelerator.save_state`` into ``checkpoint-<step>.tmp``, then rename to ``checkpoint-<step>``.

    Only the main process renames and prunes. Older checkpoints beyond ``total_limit`` are removed after the new one
    is in place, never before.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    if accelerator.is_main_process:
        (temporary / STATE_FILE).write_text(json.dumps({"global_step": step, **extra_state}, indent=2))
        for path in temporary.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_checkpoint(output_dir: str | Path, resume_from: str) -> Path | None:
    """'latest' -> the newest complete checkpoint (None if there is none yet); a path -> that checkpoint, checked."""
    if resume_from == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from)
    if not path.is_dir():
        raise CheckpointError(
            f"Checkpoint {resume_from!r} does not exist. Use --resume_from_checkpoint latest, or one of: "
            f"{[p.name for p in list_checkpoints(output_dir)] or 'none saved yet'}."
        )
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"{resume_from!r} is not a complete checkpoint (no {STATE_FILE}); it may have been cut off while saving. "
            "Resume from an earlier checkpoint or use 'latest'."
        )
    return path


def read_training_state(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{checkpoint} has an unreadable {STATE_FILE}: {error}") from error
