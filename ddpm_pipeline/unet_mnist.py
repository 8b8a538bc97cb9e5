"""A lean UNet for 28x28 digits: 28 -> 14 -> 7 and back, self-attention only at the coarse levels.

Designed for a laptop CPU, where the 28x28 level costs the most and memory-bound layers cost more than their FLOPs:
by default no encoder block at 28x28 (the input convolution is that level's skip connection), attention only in the
middle block, and no 1x1 shortcut convolutions (widths change in the stride-2 and transposed convolutions); 0.168
GFLOP per image (benchmarks/RESULTS.md). It predicts the noise and, when ``learned_variance`` is set, the
interpolation value v of the learned-range variance (2 x in_channels outputs).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class MnistUNetOutput(BaseOutput):
    """Output of [`MnistUNet`]: ``sample`` holds the noise prediction (and the variance values, if learned)."""

    sample: torch.Tensor


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (integer or real) timesteps; no table, so any chain length T works."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def _require(condition: torch.Tensor, message: str):
    """ValueError(``message``) unless the boolean tensor ``condition`` holds, checked where it lies without reading it
    back (a read would make a GPU step wait): the CPU fails at once, CUDA with a device-side assert."""
    try:
        torch._assert_async(condition, message)
    except RuntimeError:
        raise ValueError(message) from None


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time (and class) embedding between the convolutions: added, or (scale_shift)
    as the second GroupNorm's scale and shift.

    The convolutions' output is added to ``residual``: the input itself in the down and middle blocks, and in the up
    path the sum of the two halves of the concatenated input (the upsampled features and the skip connection, which
    have the same width). So no block needs a 1x1 shortcut convolution (memory-bound, slow on CPUs).
    """

    def __init__(
        self, in_channels: int, out_channels: int, embedding_dim: int, groups: int, dropout: float, scale_shift: bool
    ):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embedding_proj = nn.Linear(embedding_dim, out_channels * (2 if scale_shift else 1))
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        projected = self.embedding_proj(embedding)[:, :, None, None]
        if self.scale_shift:
            scale, shift = projected.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + projected)
        h = self.conv2(self.dropout(F.silu(h)))
        return (x if residual is None else residual) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels of a small feature map (7x7 or 14x14)."""

    def __init__(self, channels: int, head_dim: int, groups: int):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention_head_dim={head_dim} must divide the block width {channels}.")
        self.heads = channels // head_dim
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNetConfigError(ValueError):
    """A MnistUNet argument that cannot build a UNet; ``argument`` names it."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _blocks_per_level(layers_per_block, levels: int) -> tuple[int, ...]:
    """Encoder blocks per level from one number (>= 1, every level) or one number >= 0 per level."""
    if _is_int(layers_per_block):
        if layers_per_block < 1:
            raise UNetConfigError(
                "layers_per_block",
                f"layers_per_block must be >= 1 (or a list with one number >= 0 per level), got {layers_per_block}.",
            )
        return (layers_per_block,) * levels
    blocks = tuple(layers_per_block) if isinstance(layers_per_block, (list, tuple)) else ()
    if len(blocks) != levels or any(not _is_int(n) or n < 0 for n in blocks):
        raise UNetConfigError(
            "layers_per_block",
            f"layers_per_block must be one number >= 1, or one number >= 0 per level ({levels} levels), got "
            f"{layers_per_block!r}.",
        )
    return blocks


def _check_attention(widths: tuple[int, ...], attention_levels, attention_head_dim):
    if len(attention_levels) != len(widths) or any(not isinstance(a, bool) for a in attention_levels):
        raise UNetConfigError(
            "attention_levels",
            f"attention_levels has {len(attention_levels)} entries but block_out_channels has {len(widths)}: give "
            "one true/false per level.",
        )
    attended = {widths[-1]} | {w for w, a in zip(widths, attention_levels) if a}  # the middle block always has it
    if not _is_int(attention_head_dim) or attention_head_dim < 1 or any(w % attention_head_dim for w in attended):
        raise UNetConfigError(
            "attention_head_dim",
            f"attention_head_dim={attention_head_dim!r} must divide the width of every level with attention "
            f"{sorted(attended)} (and the middle block's).",
        )


def _decoder_blocks_per_level(decoder_layers_per_block, encoder: tuple[int, ...], layers_per_block) -> tuple[int, ...]:
    """Decoder blocks per level: layers_per_block + 1 by default (every skip eaten), or one number for every level
    that no level's skips run short of."""
    if decoder_layers_per_block is None:
        return tuple(n + 1 for n in encoder)
    most = min(encoder) + 1
    if not _is_int(decoder_layers_per_block) or not 1 <= decoder_layers_per_block <= most:
        raise UNetConfigError(
            "decoder_layers_per_block",
            f"decoder_layers_per_block must lie in [1, {most}]: each decoder block eats one skip connection, and "
            f"the level with the fewest encoder blocks has {most} (layers_per_block={layers_per_block}); or leave "
            "it unset.",
        )
    return (decoder_layers_per_block,) * len(encoder)


class MnistUNet(ModelMixin, ConfigMixin):
    """Time- and optionally class-conditioned UNet for MNIST-sized images.

    Args:
        sample_size: image height and width (28 natively); must be divisible by 2^(levels - 1).
        in_channels: image channels (1 for grayscale).
        learned_variance: output 2 x in_channels channels (noise, then variance values) instead of in_channels.
        block_out_channels: width of each resolution level, finest first.
        layers_per_block: residual blocks per level on the way down: one number for every level, or one per level
            (0 at a level leaves it only its input as a skip connection, e.g. (0, 1, 1) spends no encoder block at
            full resolution).
        attention_levels: which levels get self-attention after their residual blocks.
        attention_head_dim: channels per attention head.
        norm_num_groups: GroupNorm groups; must divide every width.
        decoder_layers_per_block: residual blocks per level on the way up, each eating one skip connection from its
            level; None = layers_per_block + 1 at each level (diffusers' layout: every level input and block output
            is a skip). An integer, the same at every level, must not exceed any level's layers_per_block + 1.
        num_class_embeds: number of classes for class conditioning (10 for digits), or None. One extra "null" class,
            index ``num_class_embeds``, stands for "no label" (classifier-free guidance).
        dropout: dropout inside the residual blocks.
        resnet_time_scale_shift: how the time (and class) embedding enters a residual block, as in diffusers'
            UNet2DModel: "default" adds it to the features before the second GroupNorm; "scale_shift" uses it as that
            GroupNorm's scale and shift (AdaGN, Dhariwal & Nichol 2021), which lets a label reweight features rather
            than only move them.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int = 28,
        in_channels: int = 1,
        learned_variance: bool = True,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int | tuple[int, ...] = (0, 1, 1),
        decoder_layers_per_block: int | None = 1,
        attention_levels: tuple[bool, ...] = (False, False, False),
        attention_head_dim: int = 32,
        norm_num_groups: int = 8,
        num_class_embeds: int | None = None,
        dropout: float = 0.0,
        resnet_time_scale_shift: str = "default",
    ):
        super().__init__()
        block_out_channels = tuple(block_out_channels)
        attention_levels = tuple(attention_levels)
        self.layers_per_level, self.decoder_layers_per_level = self.check_config(
            sample_size=sample_size,
            in_channels=in_channels,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            decoder_layers_per_block=decoder_layers_per_block,
            attention_levels=attention_levels,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            num_class_embeds=num_class_embeds,
            dropout=dropout,
            resnet_time_scale_shift=resnet_time_scale_shift,
        )

        self.out_channels = in_channels * (2 if learned_variance else 1)
        base = block_out_channels[0]
        embedding_dim = 4 * base
        self.time_embedding = nn.Sequential(
            nn.Linear(base, embedding_dim), nn.SiLU(), nn.Linear(embedding_dim, embedding_dim)
        )
        self.class_embedding = (
            nn.Embedding(num_class_embeds + 1, embedding_dim) if num_class_embeds is not None else None
        )

        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)

        def block(cin, cout):
            return ResidualBlock(
                cin, cout, embedding_dim, norm_num_groups, dropout, resnet_time_scale_shift == "scale_shift"
            )

        def attention(width, level):
            if attention_levels[level]:
                return AttentionBlock(width, attention_head_dim, norm_num_groups)
            return nn.Identity()

        skip_channels, width = self._build_down_path(block_out_channels, block, attention)
        self.mid_block1 = block(width, width)
        self.mid_attention = AttentionBlock(width, attention_head_dim, norm_num_groups)
        self.mid_block2 = block(width, width)
        width = self._build_up_path(block_out_channels, block, attention, skip_channels, width)
        groups = norm_num_groups
        self.norm_out = nn.GroupNorm(groups, width)
        self.conv_out = nn.Conv2d(width, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _build_down_path(self, widths, block, attention) -> tuple[list[list[int]], int]:
        """Down blocks and stride-2 convolutions; returns each level's skip widths (its input and each block's
        output can be a skip connection) and the width that reaches the middle block."""
        self.down_blocks = nn.ModuleList()
        self.down_attentions = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skip_channels, width = [], widths[0]
        for level in range(len(widths)):
            skip_channels.append([width])
            for _ in range(self.layers_per_level[level]):
                self.down_blocks.append(block(width, width))
                self.down_attentions.append(attention(width, level))
                skip_channels[level].append(width)
            if level < len(widths) - 1:
                # The stride-2 convolution also widens to the next level, so every down block keeps its width.
                self.downsamplers.append(nn.Conv2d(width, widths[level + 1], 3, stride=2, padding=1))
                width = widths[level + 1]
        return skip_channels, width

    def _build_up_path(self, widths, block, attention, skip_channels, width) -> int:
        """decoder_layers_per_block blocks per level, each eating its level's latest unused skip, and 2x2
        transposed convolutions between levels; returns the output width."""
        self.up_blocks = nn.ModuleList()
        self.up_attentions = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(self.decoder_layers_per_level[level]):
                self.up_blocks.append(block(width + skip_channels[level].pop(), widths[level]))
                self.up_attentions.append(attention(widths[level], level))
                width = widths[level]
            if level > 0:
                # A 2x2 transposed convolution: learned upsampling at a ninth of the cost of nearest + 3x3; it also
                # narrows to the finer level's width, so that the up blocks there can add to its output.
                self.upsamplers.append(nn.ConvTranspose2d(width, widths[level - 1], 2, stride=2))
                width = widths[level - 1]
        return width

    @staticmethod
    def check_config(
        sample_size: int,
        in_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int | tuple[int, ...],
        decoder_layers_per_block: int | None,
        attention_levels: tuple[bool, ...],
        attention_head_dim: int,
        norm_num_groups: int,
        num_class_embeds: int | None = None,
        dropout: float = 0.0,
        resnet_time_scale_shift: str = "default",
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Every rule a UNet's arguments must follow, checked without building it (the training config uses it too).

        Returns the encoder and decoder blocks per level; raises ``UNetConfigError`` naming the first bad argument.
        """
        widths, levels = tuple(block_out_channels), len(block_out_channels)
        if levels == 0 or any(not _is_int(w) or w < 1 for w in widths):
            raise UNetConfigError(
                "block_out_channels", f"block_out_channels needs one positive width per level: {widths}."
            )
        for name, value in (("in_channels", in_channels), ("norm_num_groups", norm_num_groups)):
            if not _is_int(value) or value < 1:
                raise UNetConfigError(name, f"{name} must be a positive integer, got {value!r}.")
        if any(w % norm_num_groups for w in widths):
            raise UNetConfigError(
                "norm_num_groups", f"norm_num_groups={norm_num_groups} must divide every width {widths}."
            )
        factor = 2 ** (levels - 1)
        if not _is_int(sample_size) or sample_size < factor or sample_size % factor:
            raise UNetConfigError(
                "sample_size",
                f"sample_size={sample_size!r} cannot be halved {levels - 1} times; use a size divisible by {factor} "
                "or fewer levels.",
            )
        _check_attention(widths, attention_levels, attention_head_dim)
        encoder = _blocks_per_level(layers_per_block, levels)
        decoder = _decoder_blocks_per_level(decoder_layers_per_block, encoder, layers_per_block)
        if num_class_embeds is not None and (not _is_int(num_class_embeds) or num_class_embeds < 1):
            raise UNetConfigError(
                "num_class_embeds",
                f"num_class_embeds must be a positive number of classes or None, got {num_class_embeds!r}.",
            )
        if not 0.0 <= dropout < 1.0:
            raise UNetConfigError("dropout", f"dropout must lie in [0, 1), got {dropout!r}.")
        if resnet_time_scale_shift not in ("default", "scale_shift"):
            raise UNetConfigError(
                "resnet_time_scale_shift",
                f"resnet_time_scale_shift must be 'default' or 'scale_shift', got {resnet_time_scale_shift!r}.",
            )
        return encoder, decoder

    def _check_inputs(self, sample: torch.Tensor, class_labels: torch.Tensor | None):
        levels = len(self.config.block_out_channels)
        factor = 2 ** (levels - 1)
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"MnistUNet expects a batch of shape (B, {self.config.in_channels}, H, W), got {tuple(sample.shape)}."
            )
        height, width = sample.shape[-2:]
        if height % factor or width % factor:
            raise ValueError(
                f"MnistUNet with {levels} levels needs H and W divisible by {factor}; got {height}x{width}. "
                f"Resize images to {self.config.sample_size}x{self.config.sample_size}."
            )
        if class_labels is not None:
            if self.class_embedding is None:
                raise ValueError(
                    "class_labels were given to an unconditional MnistUNet (num_class_embeds=None); "
                    "drop them or train a class-conditional model."
                )
            n = self.config.num_class_embeds
            inside = ((class_labels >= 0) & (class_labels <= n)).all()  # checked without waiting for the device
            _require(inside, f"class_labels must lie in [0, {n - 1}] (or {n} for the null class).")

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> MnistUNetOutput | tuple:
        """Predict noise (and variance values) for ``sample`` at ``timestep``.

        ``class_labels`` of a conditional model may use index ``num_class_embeds`` (the null class); None means
        unconditional, i.e. all null.
        """
        self._check_inputs(sample, class_labels)
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        if timesteps.numel() == 1:
            timesteps = timesteps.expand(sample.shape[0])
        frequencies = timestep_embedding(timesteps, self.config.block_out_channels[0])
        embedding = self.time_embedding(frequencies.to(self.time_embedding[0].weight.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                class_labels = torch.full(
                    (sample.shape[0],), self.config.num_class_embeds, dtype=torch.long, device=sample.device
                )
            embedding = embedding + self.class_embedding(class_labels.to(sample.device).long())
        embedding = F.silu(embedding)

        levels = len(self.config.block_out_channels)
        h = self.conv_in(sample)
        skips = [[] for _ in range(levels)]
        blocks = iter(zip(self.down_blocks, self.down_attentions))
        for level in range(levels):
            skips[level].append(h)
            for _ in range(self.layers_per_level[level]):
                res, attn = next(blocks)
                h = attn(res(h, embedding))
                skips[level].append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)

        h = self.mid_block2(self.mid_attention(self.mid_block1(h, embedding)), embedding)

        blocks = iter(zip(self.up_blocks, self.up_attentions))
        for level in reversed(range(levels)):
            for _ in range(self.decoder_layers_per_level[level]):
                res, attn = next(blocks)
                skip = skips[level].pop()
                h = attn(res(torch.cat([h, skip], dim=1), embedding, residual=h + skip))
            if level > 0:
                h = self.upsamplers[levels - 1 - level](h)

        out = self.conv_out(F.silu(self.norm_out(h)))
        if not return_dict:
            return (out,)
        return MnistUNetOutput(sample=out)
