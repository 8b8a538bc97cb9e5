"""MnistUNet: shapes, conditioning, serialization and gradients."""

import pytest
import torch

from ddpm_pipeline import MnistUNet
from ddpm_pipeline.unet_mnist import AttentionBlock
from tests.conftest import TINY_UNET


@pytest.mark.parametrize("num_class_embeds", [None, 10])
@pytest.mark.parametrize("learned_variance", [True, False])
def test_output_shapes(num_class_embeds, learned_variance):
    unet = MnistUNet(num_class_embeds=num_class_embeds, learned_variance=learned_variance, **TINY_UNET)
    x = torch.randn(3, 1, 28, 28)
    labels = torch.tensor([0, 9, 10]) if num_class_embeds else None
    out = unet(x, torch.tensor([0, 5, 999]), class_labels=labels).sample
    assert out.shape == (3, 2 if learned_variance else 1, 28, 28)
    assert unet(x, 7, return_dict=False)[0].shape == out.shape  # a scalar timestep is broadcast


def test_default_model_is_small_and_native_28():
    unet = MnistUNet()
    assert unet.config.sample_size == 28 and unet.config.in_channels == 1
    assert sum(p.numel() for p in unet.parameters()) < 3_000_000
    assert unet(torch.randn(2, 1, 28, 28), torch.tensor([1, 2])).sample.shape == (2, 2, 28, 28)


def test_any_chain_length_timestep():
    unet = MnistUNet(**TINY_UNET)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    x = torch.randn(2, 1, 28, 28)
    a = unet(x, torch.tensor([20000, 20000])).sample
    b = unet(x, torch.tensor([10, 10])).sample
    assert torch.isfinite(a).all() and not torch.allclose(a, b)


def test_class_conditioning_changes_the_output():
    torch.manual_seed(0)
    unet = MnistUNet(num_class_embeds=10, **TINY_UNET)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([100, 100])
    a = unet(x, t, torch.tensor([1, 1])).sample
    b = unet(x, t, torch.tensor([7, 7])).sample
    null = unet(x, t, torch.tensor([10, 10])).sample
    assert not torch.allclose(a, b)
    torch.testing.assert_close(unet(x, t).sample, null)  # no labels = the null class


def test_save_load_round_trip_safetensors(tmp_path):
    unet = MnistUNet(num_class_embeds=10, **TINY_UNET)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    unet.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = MnistUNet.from_pretrained(tmp_path)
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 40]), torch.tensor([2, 5])
    assert torch.equal(unet(x, t, y).sample, loaded(x, t, y).sample)


def test_gradients_reach_every_parameter():
    unet = MnistUNet(num_class_embeds=10, **TINY_UNET)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    out = unet(torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 10])).sample
    out.pow(2).mean().backward()
    missing = [name for name, p in unet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_bf16_autocast_channels_last_agrees_with_fp32():
    torch.manual_seed(0)
    unet = MnistUNet(num_class_embeds=10, **TINY_UNET)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 3])
    reference = unet(x, t, y).sample
    fast = unet.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x.contiguous(memory_format=torch.channels_last), t, y).sample
    assert (out.float() - reference).abs().max() < 0.05 * reference.abs().max() + 1e-3


def test_bad_inputs():
    unet = MnistUNet(**TINY_UNET)
    with pytest.raises(ValueError, match="divisible by 4"):
        unet(torch.randn(1, 1, 30, 30), 1)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        unet(torch.randn(1, 3, 28, 28), 1)
    with pytest.raises(ValueError, match="unconditional"):
        unet(torch.randn(1, 1, 28, 28), 1, class_labels=torch.tensor([1]))
    conditional = MnistUNet(num_class_embeds=10, **TINY_UNET)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        conditional(torch.randn(1, 1, 28, 28), 1, class_labels=torch.tensor([11]))
    with pytest.raises(ValueError, match="sample_size=30"):
        MnistUNet(sample_size=30)
    with pytest.raises(ValueError, match="norm_num_groups"):
        MnistUNet(block_out_channels=(30, 60, 60), norm_num_groups=8)
    with pytest.raises(ValueError, match="attention_levels"):
        MnistUNet(block_out_channels=(16, 32), attention_levels=(False, False, True), norm_num_groups=4)


def test_layers_per_level():
    """One number per level; 0 leaves a level only its input as a skip connection (the default spends no encoder
    block at 28x28)."""
    assert tuple(MnistUNet().config.layers_per_block) == (0, 1, 1)
    lean = MnistUNet(block_out_channels=(16, 32, 32), layers_per_block=(0, 1, 1), norm_num_groups=4)
    full = MnistUNet(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=4)
    assert len(lean.down_blocks) == 2 and len(full.down_blocks) == 3
    assert len(lean.up_blocks) == len(full.up_blocks) == 3
    # the 28x28 decoder block eats conv_in's 16 channels next to the upsampled features, narrowed to 16
    assert lean.up_blocks[-1].conv1.in_channels == 16 + 16
    x = torch.randn(2, 1, 28, 28)
    assert lean(x, torch.tensor([3, 7])).sample.shape == (2, 2, 28, 28)
    deep = MnistUNet(
        block_out_channels=(16, 32, 32), layers_per_block=(2, 1, 1), decoder_layers_per_block=None, norm_num_groups=4
    )
    assert [len(deep.down_blocks), len(deep.up_blocks)] == [4, 3 + 2 + 2]
    assert deep(x, 5).sample.shape == (2, 2, 28, 28)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(layers_per_block=(0, 1)), "one number >= 0 per level"),
        (dict(layers_per_block=(0, -1, 1)), "one number >= 0 per level"),
        (dict(layers_per_block=0), ">= 1"),
        (
            dict(layers_per_block=(0, 1, 1), decoder_layers_per_block=2),
            r"decoder_layers_per_block must lie in \[1, 1\]",
        ),
    ],
)
def test_bad_layer_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MnistUNet(block_out_channels=(16, 32, 32), norm_num_groups=4, **kwargs)


def test_no_shortcut_convolutions_blocks_add_to_their_input_halves():
    """Widths change only in the stride-2 and transposed convolutions; a block adds its convolutions to its input (a
    decoder block: to the sum of the upsampled features and the skip), so with conv2 zeroed it passes that through."""
    unet = MnistUNet(num_class_embeds=10)
    attention = {m for block in unet.modules() if isinstance(block, AttentionBlock) for m in block.modules()}
    kernels = [m.kernel_size for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m not in attention]
    assert (1, 1) not in kernels
    assert [m.out_channels for m in unet.downsamplers] == [64, 64]
    assert [m.out_channels for m in unet.upsamplers] == [64, 32]
    for block in [*unet.down_blocks, unet.mid_block1, unet.mid_block2, *unet.up_blocks]:
        torch.nn.init.zeros_(block.conv2.weight)
        torch.nn.init.zeros_(block.conv2.bias)
    middle = unet.mid_block1
    h = torch.randn(2, 64, 7, 7)
    torch.testing.assert_close(middle(h, torch.randn(2, middle.embedding_proj.in_features)), h)
    # end to end: with every block an identity, the 28x28 decoder block's output is upsampled + conv_in's features
    seen = {}
    unet.norm_out.register_forward_pre_hook(lambda module, args: seen.update(h=args[0]))
    unet.upsamplers[-1].register_forward_hook(lambda module, args, out: seen.update(upsampled=out))
    unet.conv_in.register_forward_hook(lambda module, args, out: seen.update(skip=out))
    unet(torch.randn(2, 1, 28, 28), torch.tensor([3, 900]), torch.tensor([1, 2]))
    torch.testing.assert_close(seen["h"], seen["upsampled"] + seen["skip"])


@pytest.mark.parametrize("time_embedding_norm", ["default", "scale_shift"])
def test_residual_block_matches_diffusers_resnet_block(time_embedding_norm):
    """A block is diffusers' ResnetBlock2D without its shortcut: the embedding added before the second GroupNorm, or
    (``resnet_time_scale_shift="scale_shift"``, as in diffusers' UNet2DModel) as that GroupNorm's scale and shift."""
    from diffusers.models.resnet import ResnetBlock2D

    torch.manual_seed(0)
    unet = MnistUNet(num_class_embeds=10, resnet_time_scale_shift=time_embedding_norm, **TINY_UNET)
    ours = unet.mid_block1
    width, embedding_dim = ours.conv1.out_channels, ours.embedding_proj.in_features
    theirs = ResnetBlock2D(
        in_channels=width,
        out_channels=width,
        temb_channels=embedding_dim,
        groups=TINY_UNET["norm_num_groups"],
        eps=1e-5,
        time_embedding_norm=time_embedding_norm,
    )
    names = {"norm1": "norm1", "conv1": "conv1", "embedding_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2"}
    for mine, diffusers_name in names.items():
        getattr(theirs, diffusers_name).load_state_dict(getattr(ours, mine).state_dict())
    for module in (ours.norm2, theirs.norm2):  # non-trivial affine parameters, the same in both
        torch.manual_seed(1)
        torch.nn.init.normal_(module.weight, 1.0, 0.3)
        torch.nn.init.normal_(module.bias, 0.0, 0.3)
    x, embedding = torch.randn(2, width, 7, 7), torch.randn(2, embedding_dim)
    # the UNet applies SiLU to the embedding once for all blocks; diffusers' block applies it itself
    torch.testing.assert_close(ours(x, torch.nn.functional.silu(embedding)), theirs(x, embedding))


def test_scale_shift_doubles_the_embedding_projection_and_conditions_on_the_class():
    torch.manual_seed(0)
    plain = MnistUNet(num_class_embeds=10, **TINY_UNET)
    unet = MnistUNet(num_class_embeds=10, resnet_time_scale_shift="scale_shift", **TINY_UNET)
    assert unet.mid_block1.embedding_proj.out_features == 2 * plain.mid_block1.embedding_proj.out_features
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([100, 100])
    assert not torch.allclose(unet(x, t, torch.tensor([1, 1])).sample, unet(x, t, torch.tensor([7, 7])).sample)
    saved_before_the_key = {k: v for k, v in plain.config.items() if k != "resnet_time_scale_shift"}
    assert MnistUNet.from_config(saved_before_the_key).config.resnet_time_scale_shift == "default"
    with pytest.raises(ValueError, match="resnet_time_scale_shift must be 'default' or 'scale_shift'"):
        MnistUNet(resnet_time_scale_shift="film", **TINY_UNET)
