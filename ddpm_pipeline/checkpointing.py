"""Training checkpoints that prove they are whole: written atomically, with a manifest checked on resume.

A checkpoint is written to ``checkpoint-<step>.tmp`` and renamed, so a run killed while saving keeps its previous one.
Its ``training_state.json`` records the step, the model config that made it and a SHA-256 of every other file; a
resume verifies all of it and refuses a checkpoint that does not match, naming the file. ``latest`` then falls back to
the newest checkpoint that verifies, and says so.
"""

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"

logger = logging.getLogger(__name__)


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


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): file_digest(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != STATE_FILE
    }


def save_checkpoint_atomically(accelerator, output_dir: str | Path, step: int, extra_state: dict, total_limit=None):
    """``accelerator.save_state`` into ``checkpoint-<step>.tmp``, the state file with its manifest, then a rename to
    ``checkpoint-<step>``.

    Only the main process writes the state, renames and prunes. Older checkpoints beyond ``total_limit`` are removed
    after the new one is in place, never before.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()  # every rank's files (its random states) are written before the manifest
        if accelerator.is_main_process:
            _seal(temporary, {"global_step": step, **extra_state})
    except OSError as error:  # e.g. ENOSPC: the half-written folder goes, `latest` keeps the last whole checkpoint
        shutil.rmtree(temporary, ignore_errors=True)
        whole = list_checkpoints(output_dir)
        raise CheckpointError(
            f"Saving checkpoint-{step} failed ({error.strerror or error}): the disk may be full. Nothing half-written "
            f"was kept; the newest whole checkpoint is {whole[-1] if whole else 'none (none was saved yet)'}, which "
            "--resume_from_checkpoint latest resumes once there is room."
        ) from error
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _seal(folder: Path, state: dict):
    """The state file with the manifest of every other file, everything flushed to disk before the rename."""
    (folder / STATE_FILE).write_text(json.dumps({**state, "files": _manifest(folder)}, indent=2))
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def read_training_state(checkpoint: Path) -> dict:
    """The state file, checked for its types: a JSON object with an integer global_step >= 0."""
    path = Path(checkpoint) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}: {error}).") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(state).__name__}.")
    step = state.get("global_step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: global_step must be an integer >= 0, got {step!r}.")
    for key, kind in (("files", dict), ("model_config", dict), ("max_train_steps", int)):
        if key in state and (not isinstance(state[key], kind) or isinstance(state[key], bool)):
            raise CheckpointError(f"{path}: {key} must be a JSON {kind.__name__}, got {state[key]!r}.")
    return state


# Model keys a checkpoint's signature gained after checkpoints were first written, with the value that every checkpoint
# written before then had: such a checkpoint still resumes under the config that made it.
SIGNATURE_KEYS_ADDED_LATER = {"resnet_time_scale_shift": "default"}


def verify_checkpoint(checkpoint: Path, max_train_steps: int, model_config: dict | None = None) -> dict:
    """Check everything a checkpoint claims before it is loaded; returns its state or raises CheckpointError naming
    the file (or key) that does not match."""
    checkpoint = Path(checkpoint)
    state = read_training_state(checkpoint)
    step, state_path = state["global_step"], checkpoint / STATE_FILE
    match = CHECKPOINT_PATTERN.match(checkpoint.name)
    if match and int(match.group(1)) != step:
        raise CheckpointError(f"{state_path}: global_step {step} does not match the folder name {checkpoint.name}.")
    if step > max_train_steps:
        raise CheckpointError(
            f"{state_path}: global_step {step} is beyond this run's max_train_steps {max_train_steps}; resume with "
            f"--max_train_steps {step} or more."
        )
    if model_config is not None and "model_config" in state:
        recorded = {**SIGNATURE_KEYS_ADDED_LATER, **state["model_config"]}
        changed = sorted(k for k in set(model_config) | set(recorded) if model_config.get(k) != recorded.get(k))
        if changed:
            raise CheckpointError(
                f"{state_path} was written by a run with another model config ({', '.join(changed)} differ); resume "
                "with the config that made it, or start afresh in another output_dir."
            )
    _verify_files(checkpoint, state)
    return state


def _verify_files(checkpoint: Path, state: dict):
    files = state.get("files")
    if files is None:
        logger.warning("%s has no file manifest (written by an older version): its files are not verified.", checkpoint)
        return
    for name, expected in files.items():
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the checkpoint.")
        if file_digest(path) != expected:
            raise CheckpointError(f"{path} does not match its SHA-256 in {STATE_FILE}: the file is damaged.")


def weights_are_finite(checkpoint: Path) -> bool:
    """Whether every tensor of the checkpoint's model weights is finite."""
    for path in Path(checkpoint).glob("model*.safetensors"):
        if not all(torch.isfinite(t).all() for t in load_file(str(path)).values() if t.is_floating_point()):
            return False
    return True


def resolve_checkpoint(
    output_dir: str | Path, resume_from: str, max_train_steps: int | None = None, model_config: dict | None = None
) -> Path | None:
    """The checkpoint to resume from, verified: ``latest`` -> the newest that verifies, saying which were skipped and
    why (None if there is none yet); a path -> that checkpoint, or an error naming the problem and the alternatives."""
    limit = max_train_steps if max_train_steps is not None else float("inf")
    if resume_from == "latest":
        problems = []
        for checkpoint in reversed(list_checkpoints(output_dir)):
            try:
                verify_checkpoint(checkpoint, limit, model_config)
            except CheckpointError as error:
                problems.append(str(error))
                logger.warning("Skipping %s: %s Falling back to the previous checkpoint.", checkpoint.name, error)
                continue
            if problems:
                logger.warning("Resuming from %s, the newest checkpoint that verifies.", checkpoint.name)
            return checkpoint
        if problems:
            raise CheckpointError(
                f"None of the {len(problems)} checkpoint(s) in {output_dir} verifies: {' '.join(problems)} Start "
                "afresh in another output_dir (or remove them) to train from scratch."
            )
        return None
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
    try:
        verify_checkpoint(path, limit, model_config)
    except CheckpointError as error:
        raise CheckpointError(
            f"{error} Resume from another checkpoint, or use 'latest' to take the newest that verifies."
        ) from None
    return path


def find_resumable_checkpoint(output_dir: str | Path, max_train_steps: int, model_config: dict | None = None):
    """The newest checkpoint that verifies and whose model weights are all finite, or None."""
    for checkpoint in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(checkpoint, max_train_steps, model_config)
        except CheckpointError:
            continue
        if weights_are_finite(checkpoint):
            return checkpoint
    return None
