"""The guidance-formula study's formulas reduce to the pipeline's own guidance where their algebra says they must."""

import pytest
import torch

from benchmarks.study_guidance_formulas import FormulaPipeline
from ddpm_pipeline.evaluation import with_scheduler
from tests.conftest import tiny_pipeline


def digits(pipe, guidance_scale):
    generator = [torch.Generator().manual_seed(seed) for seed in range(4)]
    return pipe(
        batch_size=4,
        class_labels=[0, 3, 7, 9],
        guidance_scale=guidance_scale,
        guidance_interval=(0.0, 1.0),
        num_inference_steps=5,
        generator=generator,
        output_type="pt",
    ).images


@pytest.fixture(autouse=True)
def back_to_cfg():
    yield
    FormulaPipeline.use("cfg")


def study_pipeline(formula, **parameters):
    """A copy as the evaluator makes one (evaluation.with_scheduler): the formula must survive it."""
    tiny = tiny_pipeline()
    pipe = FormulaPipeline(unet=tiny.unet, scheduler=tiny.scheduler)
    FormulaPipeline.use(formula, parameters, weak_unet=tiny.unet)
    return with_scheduler(pipe, None)


@pytest.mark.parametrize(
    "formula, parameters",
    [
        ("apg", {"eta": 1.0}),  # nothing dropped: cfg done on x_0, which is linear in eps
        ("cfg_rescale", {"phi": 0.0}),  # no rescaling
        ("weak_null", {}),  # the "weak" model is the model itself
    ],
)
def test_a_formula_at_its_neutral_setting_is_classifier_free_guidance(formula, parameters):
    control = digits(tiny_pipeline(), 3.0)
    study = digits(study_pipeline(formula, **parameters), 3.0)
    torch.testing.assert_close(study, control, atol=1e-4, rtol=0)
    assert not torch.allclose(control, digits(tiny_pipeline(), 1.0), atol=1e-3)  # guidance changed the digits


def test_autoguidance_by_the_model_itself_is_no_guidance():
    study = digits(study_pipeline("autoguidance"), 3.0)
    torch.testing.assert_close(study, digits(tiny_pipeline(), 1.0), atol=1e-4, rtol=0)


def test_apg_without_its_parallel_part_changes_the_digits():
    control = digits(tiny_pipeline(), 3.0)
    assert not torch.allclose(digits(study_pipeline("apg", eta=0.0), 3.0), control, atol=1e-3)


def test_a_formula_that_needs_a_weaker_model_refuses_to_run_without_one():
    with pytest.raises(ValueError, match="--weak_model"):
        FormulaPipeline.use("autoguidance")
    with pytest.raises(ValueError, match="unknown formula"):
        FormulaPipeline.use("cfgg")
