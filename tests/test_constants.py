"""The light constants the config and the CLI read are the components' own: the standalone files (shipped to the Hub as
remote code) carry their own copies, and these must stay equal to them."""

from ddpm_pipeline import constants, hardware, pipeline_ddpm_mnist, scheduling_ddpm_cosine


def test_constants_match_the_components():
    assert constants.FULL_CHAIN == pipeline_ddpm_mnist.FULL_CHAIN
    assert constants.DEFAULT_NUM_INFERENCE_STEPS == pipeline_ddpm_mnist.DEFAULT_NUM_INFERENCE_STEPS
    assert constants.DEFAULT_GUIDANCE_SCALE == pipeline_ddpm_mnist.DEFAULT_GUIDANCE_SCALE
    assert constants.DEFAULT_GUIDANCE_INTERVAL == pipeline_ddpm_mnist.DEFAULT_GUIDANCE_INTERVAL
    assert constants.PREDICTION_TYPES == scheduling_ddpm_cosine.PREDICTION_TYPES
    assert hardware.MIXED_PRECISION_CHOICES is constants.MIXED_PRECISION_CHOICES
