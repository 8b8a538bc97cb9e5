"""ddpm_pipeline.checkpointing: atomic saves and which checkpoint a resume takes."""

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from ddpm_pipeline.checkpointing import (
    CheckpointError,
    list_checkpoints,
    resolve_checkpoint,
    save_checkpoint_atomically,
)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path):
    accelerator = Accelerator()
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    save_checkpoint_atomically(accelerator, tmp_path, 10, {})

    def crash(path, **kwargs):
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt("killed while saving")

    accelerator.save_state = crash
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomically(accelerator, tmp_path, 20, {})
    assert (tmp_path / "checkpoint-20.tmp").exists()
    assert resolve_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-10"
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-20.tmp"))
    del model


def test_old_checkpoints_are_pruned_after_the_new_one_is_in_place(tmp_path):
    accelerator = Accelerator()
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    for step in (1, 2, 3):
        save_checkpoint_atomically(accelerator, tmp_path, step, {}, total_limit=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    assert resolve_checkpoint(tmp_path / "empty", "latest") is None
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-9"))
    del model
