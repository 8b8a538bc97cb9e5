#!/usr/bin/env python
"""Train a DDPM on MNIST: `accelerate launch train_ddpm.py [--config configs/mnist.yaml] [--flag value ...]`.

The loop in the diffusers examples' style, with what their users ask for: one-channel data, a seed that fixes
everything, exact resume (the data order, noise and timesteps are functions of the seed and the step, so a resumed
run replays the same batches), atomic checkpoints kept out of the pushed model, and EMA weights that never overwrite
the training weights.
"""

import contextlib
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ddpm_pipeline import CosineDDPMScheduler, DDPMMnistPipeline, MnistUNet
from ddpm_pipeline.checkpointing import (
    CheckpointError,
    read_training_state,
    resolve_checkpoint,
    save_checkpoint_atomically,
)
from ddpm_pipeline.cpu_allocator import keep_freed_memory
from ddpm_pipeline.data import (
    DatasetError,
    load_mnist_dataset,
    scale_to_model_range,
    select_digits,
    to_training_tensors,
)
from ddpm_pipeline.hardware import PrecisionChoice, choose_precision, machine_summary
from ddpm_pipeline.hub import HubError, push_output_dir
from ddpm_pipeline.losses import diffusion_loss
from ddpm_pipeline.outputs import save_final_outputs, save_sample_grid
from ddpm_pipeline.training_config import ConfigError, TrainingConfig, parse_training_config

logger = get_logger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def build_models(config: TrainingConfig, num_classes: int | None):
    unet = MnistUNet(
        sample_size=config.resolution,
        in_channels=1,
        learned_variance=config.learned_variance,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        decoder_layers_per_block=config.decoder_layers_per_block,
        attention_levels=tuple(config.attention_levels),
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
        num_class_embeds=num_classes,
        dropout=config.dropout,
    )
    scheduler = CosineDDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        variance_type="learned_range" if config.learned_variance else "fixed_small",
        prediction_type=config.prediction_type,
        timestep_spacing="linspace",  # respaced chains keep T-1 and 0, as in Improved DDPM
    )
    return unet, scheduler


def build_optimizer(config: TrainingConfig, parameters, device: torch.device) -> torch.optim.AdamW:
    """AdamW; the fused kernel (one pass over all parameters instead of a loop per tensor) on CPU and CUDA."""
    return torch.optim.AdamW(
        parameters,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        fused=device.type in ("cpu", "cuda"),
    )


def load_training_data(config: TrainingConfig):
    dataset = load_mnist_dataset(config.dataset_name, config.train_data_dir, config.dataset_split)
    dataset = select_digits(dataset, config.digits, config.label_column)
    images, labels = to_training_tensors(dataset, config.image_column, config.label_column, config.resolution)
    if config.class_conditional and labels is None:
        raise DatasetError(
            f"class_conditional training needs labels, but there is no {config.label_column!r} column. "
            "Set label_column, or class_conditional: false."
        )
    return images, labels


class BatchPlan:
    """Which images, noise, timesteps and label drops micro-batch ``m`` uses, as a pure function of (seed, m).

    Every process draws the randomness of the whole global batch and takes its own slice, so ranks never share noise
    and a run on N processes sees exactly the batches of a single-process run with N times the batch size.
    """

    def __init__(self, config: TrainingConfig, num_images: int, num_processes: int, process_index: int):
        self.seed = config.seed
        self.local_batch = config.train_batch_size
        self.global_batch = config.train_batch_size * num_processes
        self.process_index = process_index
        self.num_images = num_images
        self.micro_batches_per_epoch = num_images // self.global_batch
        if self.micro_batches_per_epoch == 0:
            raise ConfigError(
                f"Invalid config value for 'train_batch_size': a global batch of {self.global_batch} images is larger "
                f"than the {num_images} training images; lower train_batch_size."
            )
        self._epoch, self._order = None, None

    def _generator(self, *keys: int) -> torch.Generator:
        mixed = self.seed
        for key in keys:  # a fixed integer mix, the same in every process and Python version
            mixed = (mixed * 0x9E3779B1 + key + 1) % (2**61 - 1)
        return torch.Generator().manual_seed(mixed)

    def epoch_of(self, micro_batch: int) -> int:
        return micro_batch // self.micro_batches_per_epoch

    def indices(self, micro_batch: int) -> torch.Tensor:
        epoch, position = divmod(micro_batch, self.micro_batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, torch.randperm(self.num_images, generator=self._generator(0, epoch))
        start = position * self.global_batch + self.process_index * self.local_batch
        return self._order[start : start + self.local_batch]

    def randomness(self, micro_batch: int, image_shape, num_train_timesteps: int, cond_drop_prob: float):
        generator = self._generator(1, micro_batch)
        noise = torch.randn((self.global_batch, *image_shape), generator=generator)
        timesteps = torch.randint(0, num_train_timesteps, (self.global_batch,), generator=generator)
        drop = torch.rand(self.global_batch, generator=generator) < cond_drop_prob
        mine = slice(self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch)
        return noise[mine], timesteps[mine], drop[mine]


def ema_pipeline(unwrapped_unet, ema, scheduler_config) -> DDPMMnistPipeline:
    """A separate pipeline holding the EMA weights: sampling never touches the training weights."""
    unet = MnistUNet.from_config(unwrapped_unet.config)
    unet.load_state_dict(unwrapped_unet.state_dict())
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet.eval()
    pipe = DDPMMnistPipeline(unet=unet, scheduler=CosineDDPMScheduler.from_config(scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def setup_accelerator(config: TrainingConfig) -> tuple[Accelerator, PrecisionChoice]:
    """The Accelerator, with ``mixed_precision: auto`` resolved for the device it will train on (and logged why)."""
    precision = choose_precision(config.mixed_precision, PartialState().device)
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=precision.mixed_precision,
        log_with=None if config.logger == "none" else config.logger,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logger.info(
        "Mixed precision %s -> %s (%s): %s.",
        config.mixed_precision,
        precision.mixed_precision,
        str(precision.dtype).removeprefix("torch."),
        precision.reason,
    )
    if precision.warning:
        logger.warning(precision.warning)
    return accelerator, precision


def train(config: TrainingConfig) -> Path:
    """Run training; returns the output folder, which then holds a loadable pipeline and its pictures."""
    output_dir = Path(config.output_dir)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    accelerator, precision = setup_accelerator(config)
    if accelerator.device.type == "cpu":
        # `accelerate launch` exports OMP_NUM_THREADS=1 unless told otherwise, which halves a 2-core laptop.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = config.num_cpu_threads or max(1, cores // accelerator.state.num_processes)
        torch.set_num_threads(threads)
        logger.info("Using %d CPU thread(s) per process.", threads)
        if config.keep_freed_memory and keep_freed_memory():
            logger.info("Keeping freed memory in the process (glibc mallopt): no page faults on each step's buffers.")
    set_seed(config.seed)  # the weights' initialisation; all later randomness comes from BatchPlan

    images, labels = load_training_data(config)
    num_classes = 10 if config.class_conditional else None
    unet, scheduler = build_models(config, num_classes)
    if config.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    plan = BatchPlan(config, len(images), accelerator.num_processes, accelerator.process_index)
    accumulation = config.gradient_accumulation_steps
    steps_per_epoch = max(1, plan.micro_batches_per_epoch // accumulation)
    max_train_steps = config.max_train_steps or config.num_epochs * steps_per_epoch

    optimizer = build_optimizer(config, unet.parameters(), accelerator.device)
    # Stepped by hand once per optimizer step (not prepared: Accelerate would step it once per process).
    lr_scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=max_train_steps
    )
    unet, optimizer = accelerator.prepare(unet, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    ema = None
    if config.use_ema:
        ema = EMAModel(
            accelerator.unwrap_model(unet).parameters(),
            decay=config.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=config.ema_inv_gamma,
            power=config.ema_power,
            model_cls=MnistUNet,
            model_config=accelerator.unwrap_model(unet).config,
            foreach=True,  # one update over all tensors, not a Python loop
        )
        accelerator.register_for_checkpointing(ema)

    global_step = 0
    if config.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint)
        if checkpoint is None:
            logger.info("No checkpoint in %s yet; starting from scratch.", output_dir)
        else:
            try:
                accelerator.load_state(str(checkpoint))
            except Exception as error:
                raise CheckpointError(
                    f"Checkpoint {checkpoint} could not be loaded ({type(error).__name__}: {error}). It may be corrupt "
                    "or from a different model config; resume from another checkpoint or start afresh."
                ) from error
            global_step = read_training_state(checkpoint)["global_step"]
            logger.info("Resumed from %s at step %d.", checkpoint, global_step)

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        accelerator.init_trackers("ddpm-mnist", config={k: str(v) for k, v in config.to_dict().items()})
    logger.info(
        "Training on %d images for %d steps (%d per epoch), global batch %d x %d accumulation, %d process(es).",
        len(images),
        max_train_steps,
        steps_per_epoch,
        plan.global_batch,
        accumulation,
        accelerator.num_processes,
    )

    image_shape = tuple(images.shape[1:])
    progress = tqdm(
        total=max_train_steps, initial=global_step, desc="train", disable=not accelerator.is_local_main_process
    )
    started, images_seen = time.perf_counter(), 0
    last_saved_epoch = plan.epoch_of(global_step * accumulation) if global_step else -1
    while global_step < max_train_steps:
        unet.train()
        totals = {"loss": 0.0, "simple": 0.0, "vlb": 0.0}
        for micro in range(accumulation):
            micro_batch = global_step * accumulation + micro
            index = plan.indices(micro_batch)
            x0 = scale_to_model_range(images[index]).to(accelerator.device)
            noise, timesteps, drop = plan.randomness(
                micro_batch, image_shape, config.num_train_timesteps, config.cond_drop_prob
            )
            noise, timesteps = noise.to(accelerator.device), timesteps.to(accelerator.device)
            class_labels = None
            if num_classes is not None:
                class_labels = torch.where(drop, torch.full_like(labels[index], num_classes), labels[index])
                class_labels = class_labels.to(accelerator.device)
            noisy = scheduler.add_noise(x0, noise, timesteps)
            if config.channels_last:
                noisy = noisy.contiguous(memory_format=torch.channels_last)
            sync = contextlib.nullcontext() if micro == accumulation - 1 else accelerator.no_sync(unet)
            with sync:
                with accelerator.autocast():
                    model_output = unet(noisy, timesteps, class_labels).sample
                losses = diffusion_loss(model_output, scheduler, x0, noise, noisy, timesteps, config.vlb_weight)
                accelerator.backward(losses.loss / accumulation)
            for key, value in (("loss", losses.loss), ("simple", losses.simple), ("vlb", losses.vlb)):
                totals[key] += value.detach().float().item() / accumulation
            images_seen += len(index) * accelerator.num_processes

        finite = torch.tensor(float(math.isfinite(totals["loss"])), device=accelerator.device)
        if accelerator.reduce(finite, reduction="sum").item() < accelerator.num_processes:
            optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(
                f"The loss became {totals['loss']} at step {global_step + 1}; nothing from that step was applied and "
                f"the last good checkpoint in {output_dir} is untouched. Lower --learning_rate or --max_grad_norm, "
                "or use --mixed_precision no, then resume with --resume_from_checkpoint latest."
            )
        grad_norm = None
        if config.max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(accelerator.unwrap_model(unet).parameters())
        global_step += 1

        elapsed = time.perf_counter() - started
        logs = {
            "loss": totals["loss"],
            "loss_simple": totals["simple"],
            "loss_vlb": totals["vlb"],
            "lr": lr_scheduler.get_last_lr()[0],
            "images_per_second": images_seen / max(elapsed, 1e-9),
        }
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        if ema is not None:
            logs["ema_decay"] = ema.cur_decay_value or 0.0
        progress.update(1)
        progress.set_postfix(loss=f"{totals['loss']:.4f}", img_s=f"{logs['images_per_second']:.0f}")
        accelerator.log(logs, step=global_step)

        if (
            config.checkpointing_steps
            and global_step % config.checkpointing_steps == 0
            and global_step < max_train_steps
        ):
            path = save_checkpoint_atomically(
                accelerator,
                output_dir,
                global_step,
                {"max_train_steps": max_train_steps},
                total_limit=config.checkpoints_total_limit,
            )
            logger.info("Saved %s", path)

        epoch = plan.epoch_of(global_step * accumulation - 1)
        epoch_finished = plan.epoch_of(global_step * accumulation) != epoch
        if (
            config.save_images_epochs
            and epoch_finished
            and (epoch + 1) % config.save_images_epochs == 0
            and epoch != last_saved_epoch
            and global_step < max_train_steps
        ):
            last_saved_epoch = epoch
            if accelerator.is_main_process:
                pipe = ema_pipeline(accelerator.unwrap_model(unet), ema, scheduler.config)
                grid = save_sample_grid(pipe, output_dir / "samples" / f"epoch_{epoch + 1:04d}.png", config)
                _log_image(accelerator, "samples", grid, global_step)
                if config.push_to_hub and config.push_every_save:
                    save_final_outputs(pipe, output_dir, config, {"global_step": global_step})
                    push_output_dir(
                        output_dir,
                        config.hub_model_id,
                        token=config.hub_token,
                        private=config.hub_private_repo,
                        commit_message=f"Epoch {epoch + 1}",
                    )
            accelerator.wait_for_everyone()
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipe = ema_pipeline(accelerator.unwrap_model(unet), ema, scheduler.config)
        wall_time = time.perf_counter() - started
        run_info = {
            "global_step": global_step,
            "train_seconds": wall_time,
            "command": recorded_command(),
            "mixed_precision": precision.mixed_precision,
            "machine": machine_summary(accelerator.device),
        }
        evaluation = None
        if config.evaluate:
            evaluation = evaluate_for_card(pipe, config)
            accelerator.log(
                {f"eval/{k}": v for k, v in evaluation.items() if isinstance(v, (int, float))}, step=global_step
            )
        grid = save_final_outputs(pipe, output_dir, config, run_info, evaluation)
        _log_image(accelerator, "samples", grid, global_step)
        logger.info("Saved the EMA pipeline and pictures to %s (%.0f s of training).", output_dir, wall_time)
        if config.push_to_hub:
            url = push_output_dir(
                output_dir, config.hub_model_id, token=config.hub_token, private=config.hub_private_repo
            )
            logger.info("Pushed to %s", url)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


def recorded_command() -> str | None:
    """The command line for the model card, with any --hub_token value left out."""
    if not sys.argv or not sys.argv[0].endswith("train_ddpm.py"):
        return None
    kept, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--hub_token":
            skip = True
            continue
        if not arg.startswith("--hub_token="):
            kept.append(arg)
    return " ".join(["accelerate launch train_ddpm.py", *kept])


def evaluate_for_card(pipe, config: TrainingConfig) -> dict:
    """The evaluation figures for the model card (`ddpm-mnist evaluate` on the final EMA pipeline)."""
    import json

    from ddpm_pipeline.evaluation import evaluate_pipeline

    result = evaluate_pipeline(
        pipe,
        num_samples=config.eval_num_samples,
        num_inference_steps=config.num_inference_steps or None,
        guidance_scale=config.guidance_scale,
        seed=config.seed,
    )
    (Path(config.output_dir) / "evaluation.json").write_text(json.dumps(result, indent=2))
    return result


def _log_image(accelerator, name, image, step):
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(name, np.asarray(image)[None], step, dataformats="CHW")


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_training_config(argv)
        train(config)
    except (ConfigError, DatasetError, CheckpointError, TrainingDivergedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except HubError as error:
        print(f"error: training finished, but the push failed: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
