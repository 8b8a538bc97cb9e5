"""ddpm_pipeline.hardware: the precision and dtype decision table, played on fake machines by patching the probes."""

import logging
import os
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers.models import modeling_utils

from ddpm_pipeline import hardware
from ddpm_pipeline.config_sources import config_from_yaml
from ddpm_pipeline.training import processes
from ddpm_pipeline.training_config import TrainingConfig
from tests.conftest import TINY_CONFIG as TINY


def fake_machine(monkeypatch, *, avx512_bf16=False, amx=False, capability="AVX2", onednn_isa=None, cuda_bf16=None):
    """Make the probes describe a machine: a CPU, and optionally a CUDA GPU with or without bf16."""
    monkeypatch.setattr(hardware, "_cpu_model", lambda: "Test CPU")
    monkeypatch.setattr(hardware, "_cpu_has_avx512_bf16", lambda: avx512_bf16)
    monkeypatch.setattr(hardware, "_cpu_has_amx", lambda: amx)
    monkeypatch.setattr(hardware, "_aten_capability", lambda: capability)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    if onednn_isa:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_isa)
    if cuda_bf16 is not None:
        monkeypatch.setattr(hardware, "_cuda_bf16_supported", lambda: cuda_bf16)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")


AVX2_ONLY = dict(avx512_bf16=False, amx=False, capability="AVX2")  # Zen 3, most laptops
ZEN4 = dict(avx512_bf16=True, amx=False, capability="AVX512")
SAPPHIRE_RAPIDS = dict(avx512_bf16=True, amx=True, capability="AVX512")
AMX_ONLY = dict(avx512_bf16=False, amx=True, capability="AVX512")
AVX512_WITHOUT_BF16 = dict(avx512_bf16=False, amx=False, capability="AVX512")  # Skylake-X, Zen 3 has no AVX-512


@pytest.mark.parametrize(
    "machine, expected",
    [
        (AVX2_ONLY, "no"),
        (AVX512_WITHOUT_BF16, "no"),
        (ZEN4, "bf16"),
        (SAPPHIRE_RAPIDS, "bf16"),
        (AMX_ONLY, "bf16"),
        # limits set by the environment: ATEN_CPU_CAPABILITY lowers the capability, ONEDNN_MAX_CPU_ISA oneDNN's ISA
        (dict(ZEN4, capability="AVX2"), "no"),
        (dict(ZEN4, capability="DEFAULT"), "no"),
        (dict(ZEN4, onednn_isa="AVX2"), "no"),
        (dict(ZEN4, onednn_isa="AVX512_CORE"), "no"),
        (dict(ZEN4, onednn_isa="avx512_core_bf16"), "bf16"),
        (dict(SAPPHIRE_RAPIDS, onednn_isa="AVX512_CORE_AMX"), "bf16"),
        (dict(ZEN4, onednn_isa="ALL"), "bf16"),
        (dict(ZEN4, onednn_isa="NOT_AN_ISA"), "no"),  # an unknown limit: do not bet on bf16
    ],
)
def test_auto_on_cpus(monkeypatch, machine, expected):
    fake_machine(monkeypatch, **machine)
    choice = hardware.choose_precision("auto", "cpu")
    assert choice.mixed_precision == expected
    assert choice.warning is None
    assert "Test CPU" in choice.reason and machine["capability"] in choice.reason
    assert hardware.preferred_dtype("cpu") == {"no": torch.float32, "bf16": torch.bfloat16}[expected]


def test_auto_never_picks_bf16_without_native_bf16(monkeypatch):
    """Every CPU without the instructions, or with them switched off, trains and samples in float32."""
    for avx512_bf16, amx, capability, isa in [
        (False, False, "AVX2", None),
        (False, False, "AVX512", None),
        (False, False, "DEFAULT", None),
        (True, True, "AVX2", None),
        (True, False, "AVX512", "AVX2"),
    ]:
        fake_machine(monkeypatch, avx512_bf16=avx512_bf16, amx=amx, capability=capability, onednn_isa=isa)
        assert not hardware.cpu_info().native_bf16
        assert hardware.choose_precision("auto", "cpu").mixed_precision == "no"
        assert hardware.preferred_dtype("cpu") == torch.float32
        assert "10-14x slower" in hardware.choose_precision("auto", "cpu").reason


@pytest.mark.parametrize("cuda_bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda(monkeypatch, cuda_bf16, expected):
    fake_machine(monkeypatch, **AVX2_ONLY, cuda_bf16=cuda_bf16)
    choice = hardware.choose_precision("auto", "cuda")
    assert choice.mixed_precision == expected and "Test GPU" in choice.reason
    assert hardware.preferred_dtype("cuda") == {"bf16": torch.bfloat16, "fp16": torch.float16}[expected]
    assert hardware.preferred_dtype() == choice.dtype  # no device given: CUDA when it is available


def test_auto_on_mps_and_other_devices_is_float32(monkeypatch):
    fake_machine(monkeypatch, **ZEN4)
    for device in ("mps", "xpu", "meta"):
        choice = hardware.choose_precision("auto", device)
        assert choice.mixed_precision == "no" and device in choice.reason
    assert hardware.preferred_dtype("mps") == torch.float32


def test_auto_samples_on_mps_on_a_mac(monkeypatch):
    from tests.conftest import tiny_pipeline

    fake_machine(monkeypatch, **ZEN4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert hardware.choose_precision("auto").reason.endswith("on mps")  # no device given: the Mac's GPU
    pipe, moved_to = tiny_pipeline(), []
    monkeypatch.setattr(pipe, "to", lambda device: moved_to.append(torch.device(device)) or pipe)
    assert hardware.prepare_for_sampling(pipe) is pipe
    assert moved_to == [torch.device("mps")] and pipe.unet.dtype == torch.float32  # mps: float32, not measured


@pytest.mark.parametrize("machine", [AVX2_ONLY, ZEN4])
@pytest.mark.parametrize("requested", ["no", "bf16", "fp16"])
def test_explicit_choices_mean_what_they_say(monkeypatch, machine, requested):
    fake_machine(monkeypatch, **machine)
    choice = hardware.choose_precision(requested, "cpu")
    assert choice.mixed_precision == requested
    slow_bf16 = requested == "bf16" and machine is AVX2_ONLY
    if slow_bf16:
        assert "10-14x slower" in choice.warning and "auto" in choice.warning
    elif requested == "fp16":
        assert "auto" in choice.warning
    else:
        assert choice.warning is None


def test_explicit_bf16_on_a_gpu_without_it_warns(monkeypatch):
    fake_machine(monkeypatch, **AVX2_ONLY, cuda_bf16=False)
    assert "auto" in hardware.choose_precision("bf16", "cuda").warning
    assert hardware.choose_precision("fp16", "cuda").warning is None


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="auto, no, bf16, fp16"):
        hardware.choose_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="auto, float32, bfloat16, float16"):
        hardware.resolve_dtype("half")
    with pytest.raises(Exception, match="mixed_precision"):
        config_from_yaml(TINY, overrides={"mixed_precision": "fp8"})


def test_sampling_dtype_and_layout(monkeypatch):
    from tests.conftest import tiny_pipeline

    fake_machine(monkeypatch, **AVX2_ONLY)
    pipe = hardware.prepare_for_sampling(tiny_pipeline(), "cpu")
    assert pipe.unet.dtype == torch.float32
    assert pipe.unet.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
    fake_machine(monkeypatch, **ZEN4)
    warnings = []
    monkeypatch.setattr(modeling_utils.logger, "warning", lambda message, *args: warnings.append(message))
    pipe = hardware.prepare_for_sampling(tiny_pipeline(), "cpu")
    assert pipe.unet.dtype == torch.bfloat16 and pipe.unet.conv_out.weight.is_contiguous()
    # no false alarm about float32-kept modules (diffusers 0.42's own cast raises it for a model that keeps none)
    assert pipe.unet._keep_in_fp32_modules is None and warnings == []
    assert hardware.prepare_for_sampling(tiny_pipeline(), "cpu", "float32").unet.dtype == torch.float32
    # the layout changes nothing but rounding: channels-last float32 samples equal the default layout's to well under
    # one grey level (1/255), through a chain whose guided steps multiply each UNet difference by the scale
    default = tiny_pipeline()
    fake_machine(monkeypatch, **AVX2_ONLY)
    fast = hardware.prepare_for_sampling(tiny_pipeline(), "cpu")
    a = default(batch_size=4, num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0))
    b = fast(batch_size=4, num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.images, b.images, atol=1e-3, rtol=0)


def test_machine_summary_names_the_cpu(monkeypatch):
    fake_machine(monkeypatch, **ZEN4, onednn_isa="AVX2")
    summary = hardware.machine_summary("cpu")
    assert summary["cpu"] == "Test CPU" and summary["cpu_capability"] == "AVX512"
    assert summary["avx512_bf16"] and not summary["native_bf16"] and summary["onednn_max_isa"] == "AVX2"


@pytest.fixture
def fresh_accelerate_state():
    """Each test here may pick another precision; Accelerate keeps one per process unless reset."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("machine, expected", [(AVX2_ONLY, "no"), (ZEN4, "bf16")])
def test_training_resolves_auto_and_logs_why(monkeypatch, caplog, fresh_accelerate_state, machine, expected):
    fake_machine(monkeypatch, **machine)
    config = config_from_yaml(TINY, overrides={"mixed_precision": "auto", "logger": "none"})
    with caplog.at_level(logging.INFO):
        accelerator, precision = processes.setup_accelerator(config)
    assert accelerator.mixed_precision == expected == precision.mixed_precision
    assert f"Mixed precision auto -> {expected}" in caplog.text and "capability" in caplog.text


def test_training_warns_about_bf16_without_native_support(monkeypatch, caplog, fresh_accelerate_state):
    fake_machine(monkeypatch, **AVX2_ONLY)
    config = config_from_yaml(TINY, overrides={"mixed_precision": "bf16", "logger": "none"})
    with caplog.at_level(logging.INFO):
        accelerator, _ = processes.setup_accelerator(config)
    assert accelerator.mixed_precision == "bf16"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("10-14x slower" in w and "auto" in w for w in warnings)


def test_default_configs_are_auto():
    for name in ("mnist.yaml", "mnist-ones.yaml"):
        assert config_from_yaml(Path(TINY).parent / name).mixed_precision == "auto"
    assert TrainingConfig().mixed_precision == "auto"


def test_deterministic_kernels_are_asked_for_on_cuda_only(monkeypatch):
    """A GPU run resumed from a checkpoint must give the bits of the run that never stopped: cuDNN, cuBLAS and PyTorch
    are asked for deterministic kernels there (before any matrix product); a CPU is left as it is."""
    asked = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, warn_only: asked.append((mode, warn_only)))
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # so that the test's end restores its absence
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    assert hardware.use_deterministic_kernels("cpu") is False
    assert asked == [] and not torch.backends.cudnn.deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert hardware.use_deterministic_kernels(torch.device("cuda", 0)) is True
    assert asked == [(True, True)]  # warn, not fail, where an op has no deterministic kernel
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


@pytest.mark.parametrize("flag,asked", [(True, ["cuda"]), (False, [])])
def test_deterministic_kernels_follow_the_config_on_a_gpu(monkeypatch, flag, asked):
    """`--deterministic_kernels false` trades the bit-exact resume on a GPU for CUDA's fastest kernels."""
    from types import SimpleNamespace

    seen = []
    monkeypatch.setattr(processes, "use_deterministic_kernels", lambda device: seen.append(device.type) or True)
    processes.setup_device(SimpleNamespace(device=torch.device("cuda")), TrainingConfig(deterministic_kernels=flag))
    assert seen == asked
