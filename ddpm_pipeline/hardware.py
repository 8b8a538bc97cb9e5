"""Pick the numeric precision and memory layout from the hardware, so that no default is fast on one machine only.

PyTorch runs bfloat16 fast only where the device has it natively: a CPU with AVX512_BF16 or AMX, or a CUDA GPU that
supports it. Elsewhere (AVX2-only CPUs, i.e. most laptops and many cloud VMs) bf16 convolutions fall back to slow
reference kernels: one training step of the default UNet took 8.7-9.3 s in bf16 against 0.6-0.8 s in float32 on a
2-core AMD EPYC Zen 3 (benchmarks/RESULTS.md). So ``auto`` chooses:

=====================================================  =====================================
device                                                 precision
=====================================================  =====================================
CPU with native bf16 (AVX512_BF16 or AMX), unlimited   bf16
CPU without it, or limited by ATEN_CPU_CAPABILITY /    no (float32)
ONEDNN_MAX_CPU_ISA below AVX512_CORE_BF16
CUDA GPU with bf16 (``torch.cuda.is_bf16_supported``)  bf16
CUDA GPU without bf16                                  fp16 (Accelerate adds gradient scaling)
Apple ``mps`` and anything else                        no (float32), not measured otherwise
=====================================================  =====================================

Every decision comes with its reason (the CPU model and what PyTorch reports of it), for the training log, the
evaluation JSON and the benchmarks. The probes are small module-level functions, so tests can play any machine.
"""

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from .constants import DTYPE_CHOICES, MIXED_PRECISION_CHOICES

BF16_SLOWDOWN = "10-14x slower than float32"  # one training step of the default UNet, measured on a Zen 3 CPU

# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) that include the AVX512_BF16 instructions; "ALL" means no limit.
ONEDNN_ISAS_WITH_BF16 = {
    "ALL",
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX10_1_512",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512_AMX_FP16",
}


# ---------------------------------------------------------------------- probes (monkeypatched in tests)
def _cpu_model() -> str:
    """The model name, with family and model numbers where it is as vague as "AMD EPYC" (Zen 3 is 25/1, Zen 4 25/17)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def _aten_capability() -> str:
    """The vector ISA ATen's own kernels run (GroupNorm, SiLU, casts): lowered by ATEN_CPU_CAPABILITY."""
    return torch.backends.cpu.get_cpu_capability()


def _cpu_has_avx512_bf16() -> bool:
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def _cpu_has_amx() -> bool:
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def _onednn_max_isa() -> str | None:
    """The limit put on oneDNN's convolutions, if any (ONEDNN_MAX_CPU_ISA, or its old name DNNL_MAX_CPU_ISA)."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip() else None


def _cuda_bf16_supported() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older PyTorch without the keyword
        return bool(torch.cuda.is_bf16_supported())


# ---------------------------------------------------------------------- the CPU
@dataclass(frozen=True)
class CpuInfo:
    """What decides whether bfloat16 is fast on this CPU, as PyTorch sees it."""

    model: str
    capability: str  # torch.backends.cpu.get_cpu_capability()
    avx512_bf16: bool  # the instructions exist (cpuinfo, ignores the environment)
    amx: bool
    onednn_max_isa: str | None

    @property
    def native_bf16(self) -> bool:
        """bf16 runs natively: the hardware has it, and neither ATen nor oneDNN is limited below it."""
        unlimited = self.onednn_max_isa is None or self.onednn_max_isa in ONEDNN_ISAS_WITH_BF16
        return (self.avx512_bf16 or self.amx) and self.capability == "AVX512" and unlimited

    def describe(self) -> str:
        features = [name for name, present in (("AVX512_BF16", self.avx512_bf16), ("AMX", self.amx)) if present]
        text = f"{self.model}, PyTorch CPU capability {self.capability}"
        text += f", {' and '.join(features)}" if features else ", no AVX512_BF16 or AMX"
        if self.onednn_max_isa:
            text += f", ONEDNN_MAX_CPU_ISA={self.onednn_max_isa}"
        return text

    def why_not_native(self) -> str:
        if not (self.avx512_bf16 or self.amx):
            return "the CPU has no AVX512_BF16 or AMX instructions"
        if self.capability != "AVX512":
            return f"ATen runs {self.capability} kernels (ATEN_CPU_CAPABILITY)"
        return f"oneDNN is limited to {self.onednn_max_isa} (ONEDNN_MAX_CPU_ISA)"


def cpu_info() -> CpuInfo:
    return CpuInfo(
        model=_cpu_model(),
        capability=_aten_capability(),
        avx512_bf16=_cpu_has_avx512_bf16(),
        amx=_cpu_has_amx(),
        onednn_max_isa=_onednn_max_isa(),
    )


# ---------------------------------------------------------------------- the decision
@dataclass(frozen=True)
class PrecisionChoice:
    """A resolved precision: Accelerate's name for it, the matching dtype, why, and a warning if it will be slow."""

    mixed_precision: str  # "no", "bf16" or "fp16"
    reason: str
    warning: str | None = None

    @property
    def dtype(self) -> torch.dtype:
        return {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.mixed_precision]


def _device_type(device) -> str:
    """``device``'s type; for None, the best this machine has: CUDA, else Apple's mps, else the CPU."""
    if device is None:
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(device).type


def choose_precision(requested: str = "auto", device=None, cpu: CpuInfo | None = None) -> PrecisionChoice:
    """Resolve ``requested`` (auto, no, bf16 or fp16) for ``device`` (default: CUDA if available, else the CPU)."""
    if requested not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"Unknown precision {requested!r}: choose one of {', '.join(MIXED_PRECISION_CHOICES)}.")
    device_type = _device_type(device)
    if device_type == "cpu":
        return _choose_on_cpu(requested, cpu or cpu_info())
    if device_type == "cuda":
        return _choose_on_cuda(requested)
    if requested == "auto":
        return PrecisionChoice("no", f"mixed precision has not been measured on {device_type}")
    return PrecisionChoice(requested, f"{requested} as asked, on {device_type}")


def _choose_on_cpu(requested: str, cpu: CpuInfo) -> PrecisionChoice:
    if requested == "auto":
        if cpu.native_bf16:
            return PrecisionChoice("bf16", f"native bfloat16 on this CPU ({cpu.describe()})")
        return PrecisionChoice(
            "no",
            f"no native bfloat16 here ({cpu.why_not_native()}; {cpu.describe()}), where bf16 runs {BF16_SLOWDOWN}",
        )
    if requested == "bf16" and not cpu.native_bf16:
        return PrecisionChoice(
            "bf16",
            f"bfloat16 as asked ({cpu.describe()})",
            warning=(
                f"mixed_precision bf16 on a CPU without native bfloat16 ({cpu.why_not_native()}): expect it to run "
                f"{BF16_SLOWDOWN}. Use mixed_precision auto (float32 here) or no."
            ),
        )
    if requested == "fp16":
        return PrecisionChoice(
            "fp16",
            f"float16 as asked ({cpu.describe()})",
            warning=(
                "mixed_precision fp16 on a CPU: float16 convolutions are not faster than float32 on CPUs without "
                "AMX-FP16, and can be much slower. Use mixed_precision auto or no."
            ),
        )
    names = {"no": "float32", "bf16": "bfloat16"}
    return PrecisionChoice(requested, f"{names[requested]} as asked ({cpu.describe()})")


def _choose_on_cuda(requested: str) -> PrecisionChoice:
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CUDA GPU"
    has_bf16 = _cuda_bf16_supported()
    if requested == "auto":
        if has_bf16:
            return PrecisionChoice("bf16", f"native bfloat16 on {name}")
        return PrecisionChoice("fp16", f"{name} has no native bfloat16; float16 with gradient scaling")
    if requested == "bf16" and not has_bf16:
        return PrecisionChoice(
            "bf16",
            f"bfloat16 as asked, on {name}",
            warning=f"{name} has no native bfloat16; use mixed_precision auto (float16 with gradient scaling).",
        )
    return PrecisionChoice(requested, f"{requested} as asked, on {name}")


# ---------------------------------------------------------------------- sampling
def preferred_dtype(device=None) -> torch.dtype:
    """The fastest dtype this device runs natively for the UNet: bfloat16, float16 (CUDA without bf16) or float32.

    ``DDPMMnistPipeline.from_pretrained(path, dtype=preferred_dtype())`` never picks a dtype the device emulates.
    """
    return choose_precision("auto", device).dtype


def resolve_dtype(name: str | torch.dtype, device=None) -> torch.dtype:
    """A dtype from a name (auto, float32, bfloat16, float16), auto meaning ``preferred_dtype(device)``."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPE_CHOICES:
        raise ValueError(f"Unknown dtype {name!r}: choose one of {', '.join(DTYPE_CHOICES)}.")
    return preferred_dtype(device) if name == "auto" else getattr(torch, name)


def preferred_memory_format(device=None, dtype: torch.dtype = torch.float32) -> torch.memory_format:
    """channels_last for a float32 UNet on a CPU, where oneDNN's NHWC convolutions ran the sampler 1.3-1.4x faster
    (benchmarks/RESULTS.md); the default layout elsewhere (in bf16 on a CPU, channels_last GroupNorm was slower)."""
    if _device_type(device) == "cpu" and dtype == torch.float32:
        return torch.channels_last
    return torch.contiguous_format


def use_deterministic_kernels(device) -> bool:
    """On a CUDA device, ask for deterministic kernels (cuDNN's, cuBLAS's fixed workspace, and PyTorch's own, with a
    warning where an op has none), so that a run resumed from a checkpoint can be bit for bit the run that never
    stopped, as it is on a CPU: the fastest CUDA backward kernels add with atomics in an order that changes from run
    to run (without these settings, resumed runs on an H200 did not match uninterrupted ones bit for bit). Call it
    before the first matrix product (cuBLAS reads its workspace setting then). Elsewhere it changes nothing. Returns
    whether it did."""
    if torch.device(device).type != "cuda":
        return False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    return True


def prepare_for_sampling(pipe, device=None, dtype: str | torch.dtype = "auto"):
    """Move ``pipe`` to ``device`` with its UNet in ``dtype`` (auto: the preferred one) and the preferred layout.

    The scheduler's arithmetic stays in float32 whatever the UNet's dtype. Returns the pipeline.
    """
    device = torch.device(device) if device is not None else torch.device(_device_type(None))
    dtype = resolve_dtype(dtype, device)
    pipe.to(device)
    if pipe.unet.dtype != dtype:
        # ModelMixin.to warns on every cast ("modules ... should be kept in float32: []"), even a no-op and even
        # with no such module (diffusers 0.42 reads `_keep_in_fp32_modules or []`, never None); MnistUNet keeps
        # none, so the plain module cast is the same cast without the false alarm
        torch.nn.Module.to(pipe.unet, dtype=dtype)
    pipe.unet.to(memory_format=preferred_memory_format(device, dtype))
    return pipe


def machine_summary(device=None) -> dict:
    """Flat facts for JSON and model cards: the CPU, PyTorch's capability, native bf16, the device and torch."""
    cpu = cpu_info()
    summary = {
        "cpu": cpu.model,
        "cpu_capability": cpu.capability,
        "native_bf16": cpu.native_bf16,
        "avx512_bf16": cpu.avx512_bf16,
        "amx": cpu.amx,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": _device_type(device),
    }
    if cpu.onednn_max_isa:
        summary["onednn_max_isa"] = cpu.onednn_max_isa
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        summary["aten_cpu_capability_env"] = os.environ["ATEN_CPU_CAPABILITY"]
    if summary["device"] == "cuda" and torch.cuda.is_available():
        summary["gpu"] = torch.cuda.get_device_name(0)
        summary["gpu_bf16"] = _cuda_bf16_supported()
    return summary
