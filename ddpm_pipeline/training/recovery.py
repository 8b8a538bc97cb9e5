"""How a run that cannot go on says so: stopped on request, or diverged, each with the command that continues it."""

from ..checkpointing import find_resumable_checkpoint
from .command import recorded_command
from .state import Run

UNKNOWN_LENGTH = 10**9  # a --time_budget run's length before its speed is measured: no checkpoint is beyond it


class TrainingStopped(RuntimeError):
    """The run was asked to stop (Ctrl-C, a hang-up, preemption, a cluster's time limit) and saved its state."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class TrainingDivergedError(RuntimeError):
    """The run diverged (a NaN loss, an exploding gradient or update); the message says how to go on."""


def stop_message(run: Run, signal_name: str | None) -> str:
    command = recorded_command(run.argv, replace={"--resume_from_checkpoint": "latest"})
    step = run.state.global_step
    return (
        f"{signal_name or 'a stop signal'} received: step {step} is saved in {run.output_dir}/checkpoint-{step}. Run "
        f"again with --resume_from_checkpoint latest to continue exactly:\n    {command}"
    )


def divergence_message(run: Run, what: str) -> str:
    """What happened, the newest checkpoint that verifies and holds finite weights, and a command that resumes from it
    with a learning rate and clipping that a diverged run can train on."""
    config = run.config
    length = run.state.total_steps or UNKNOWN_LENGTH
    checkpoint = find_resumable_checkpoint(run.output_dir, length, config.model_signature())
    learning_rate = min(config.learning_rate / 10, 1e-3)
    flags = {"--learning_rate": f"{learning_rate:g}", "--max_grad_norm": "1.0"}
    if config.max_grad_norm and config.max_grad_norm <= 1.0:
        flags["--max_grad_norm"] = f"{config.max_grad_norm:g}"
    if checkpoint is not None:
        flags["--resume_from_checkpoint"] = str(checkpoint)
    command = recorded_command(run.argv, replace=flags)
    where = (
        f"The newest checkpoint that verifies and holds finite weights is {checkpoint}; nothing from the diverging "
        "step was applied to it or saved."
        if checkpoint is not None
        else f"No checkpoint in {run.output_dir} verifies with finite weights, so the run has to start again."
    )
    return f"Training diverged: {what}. {where} Continue with a lower learning rate and clipping:\n    {command}"
