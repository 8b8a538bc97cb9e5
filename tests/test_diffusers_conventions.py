"""DDPMMnistPipeline.from_pretrained behaves as diffusers' own loader does, with diffusers' DDIMPipeline as the control
in each test: per-component dtypes, variants, the INFO lines, and our two additions (parts named in errors, a pushed
repository's remote-code names mapped to the installed package)."""

import logging
import sys

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils import logging as diffusers_logging

from ddpm_pipeline import CosineDDPMScheduler, DDPMMnistPipeline, MnistUNet
from tests.conftest import tiny_pipeline


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Our tiny pipeline and diffusers' DDIMPipeline (the control), each saved twice: plainly and as variant bf16."""
    root = tmp_path_factory.mktemp("conventions")
    ours = tiny_pipeline()
    ours.save_pretrained(root / "ours")
    ours.save_pretrained(root / "ours-variant", variant="bf16")
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    control = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=50))
    control.save_pretrained(root / "control")
    control.save_pretrained(root / "control-variant", variant="bf16")
    return root


@pytest.mark.parametrize("pipeline_class, name", [(DDPMMnistPipeline, "ours"), (DDIMPipeline, "control")])
def test_per_component_torch_dtype(saved, pipeline_class, name):
    per_component = {"unet": torch.bfloat16, "default": torch.float32}
    assert pipeline_class.from_pretrained(saved / name, torch_dtype=per_component).unet.dtype == torch.bfloat16
    assert pipeline_class.from_pretrained(saved / name, torch_dtype=torch.bfloat16).unet.dtype == torch.bfloat16
    assert pipeline_class.from_pretrained(saved / name, dtype=torch.bfloat16).unet.dtype == torch.bfloat16  # 0.42 name
    assert pipeline_class.from_pretrained(saved / name).unet.dtype == torch.float32


@pytest.mark.parametrize("pipeline_class, name", [(DDPMMnistPipeline, "ours"), (DDIMPipeline, "control")])
def test_variants_load_and_a_missing_variant_is_refused(saved, pipeline_class, name):
    loaded = pipeline_class.from_pretrained(saved / f"{name}-variant", variant="bf16")
    reference = pipeline_class.from_pretrained(saved / name)
    for key, value in reference.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value)
    with pytest.raises(ValueError, match="variant"):
        pipeline_class.from_pretrained(saved / name, variant="fp16")


@pytest.fixture
def diffusers_info_lines():
    """The lines diffusers' own logger writes at INFO (it does not propagate to the root logger)."""
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    root = logging.getLogger("diffusers")
    old_level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_info()
    root.addHandler(handler)
    yield lines
    root.removeHandler(handler)
    diffusers_logging.set_verbosity(old_level)


@pytest.mark.parametrize(
    "pipeline_class, name, unet_class, scheduler_class",
    [
        (DDPMMnistPipeline, "ours", "MnistUNet", "CosineDDPMScheduler"),
        (DDIMPipeline, "control", "UNet2DModel", "DDIMScheduler"),
    ],
)
def test_loading_logs_one_info_line_per_component(
    saved, diffusers_info_lines, pipeline_class, name, unet_class, scheduler_class
):
    pipeline_class.from_pretrained(saved / name)
    loaded = [line for line in diffusers_info_lines if line.startswith("Loaded ")]
    assert sorted(loaded) == sorted(
        [
            f"Loaded unet as {unet_class} from `unet` subfolder of {saved / name}.",
            f"Loaded scheduler as {scheduler_class} from `scheduler` subfolder of {saved / name}.",
        ]
    )


def test_components_and_saved_defaults_passed_in_win(saved):
    scheduler = CosineDDPMScheduler(num_train_timesteps=50, variance_type="fixed_small", timestep_spacing="linspace")
    pipe = DDPMMnistPipeline.from_pretrained(saved / "ours", scheduler=scheduler, default_guidance_scale=1.5)
    assert pipe.scheduler is scheduler and pipe.config.default_guidance_scale == 1.5
    assert pipe.config.default_num_inference_steps == 10  # from the saved model_index.json
    assert pipe.name_or_path == str(saved / "ours")


def test_a_pushed_layout_loads_the_installed_classes_without_running_its_code(saved, tmp_path):
    """The Hub layout names remote-code copies (["unet_mnist", "MnistUNet"]); diffusers would import those files.
    We map them to the package, and prove it by planting copies that fail if they are ever imported."""
    from ddpm_pipeline.hub import stage_repository

    staged = stage_repository(saved / "ours", tmp_path / "staged")
    for copy in ("pipeline_ddpm_mnist.py", "unet/unet_mnist.py", "scheduler/scheduling_ddpm_cosine.py"):
        (staged / copy).write_text("raise RuntimeError('remote code ran')\n")
    before = set(sys.modules)
    pipe = DDPMMnistPipeline.from_pretrained(staged, torch_dtype={"unet": torch.bfloat16, "default": torch.float32})
    assert type(pipe.unet) is MnistUNet and type(pipe.scheduler) is CosineDDPMScheduler
    assert pipe.unet.dtype == torch.bfloat16
    assert not [module for module in set(sys.modules) - before if "diffusers_modules" in module]
    # diffusers' own loader, asked without trust_remote_code, refuses this layout (it would run the copies)
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(staged)


@pytest.mark.parametrize(
    "damage, part",
    [
        (lambda folder: (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "unet"),
        (lambda folder: (folder / "scheduler" / "scheduler_config.json").write_text("{"), "scheduler"),
    ],
)
def test_errors_name_the_part_diffusers_failed_on(saved, tmp_path, damage, part):
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(saved / "ours", folder)
    damage(folder)
    with pytest.raises(OSError) as caught:
        DDPMMnistPipeline.from_pretrained(folder)
    assert f"The {part} in {folder / part}" in str(caught.value), str(caught.value)
