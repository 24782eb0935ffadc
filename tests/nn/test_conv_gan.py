import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stratagen.nn import (
    Blur,
    BlurDownsample,
    BlurUpsample,
    ResBlock,
    ResStage,
    StyleGANDiscriminator,
    discriminator_loss,
    generator_adversarial_loss,
    group_norm,
    r1_penalty,
)


def test_group_norm_groups():
    assert group_norm(128).num_groups == 32
    assert group_norm(48).num_groups == 16
    assert group_norm(3).num_groups == 1


def test_blur_kernel_is_fixed_buffer():
    blur = Blur()
    assert list(blur.parameters()) == []
    assert "kernel" not in blur.state_dict()
    assert blur.kernel.sum().item() == pytest.approx(1.0)


def test_blur_preserves_constants_away_from_border():
    x = torch.full((1, 2, 8, 8), 3.0)
    assert torch.allclose(Blur()(x)[..., 1:-2, 1:-2], x[..., 1:-2, 1:-2])


def test_blur_upsample_is_bilinear_away_from_border():
    x = torch.randn(2, 3, 6, 6)
    up = Blur(upsample=True)(x)
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert up.shape == (2, 3, 12, 12)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])


def test_blur_downsample_samples_cell_centres():
    down = BlurDownsample(1, 1, kernel_size=1)
    nn.init.ones_(down.conv.weight)
    nn.init.zeros_(down.conv.bias)
    ramp = torch.arange(16.0).expand(1, 1, 16, 16)
    # Output i covers input pixels 2i and 2i+1, so it reads the ramp at 2i + 0.5.
    expected = torch.arange(8.0) * 2 + 0.5
    torch.testing.assert_close(down(ramp)[0, 0, 4, 1:-1], expected[1:-1])


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_resampling_shapes(kernel_size):
    x = torch.randn(2, 4, 8, 6)
    assert BlurDownsample(4, 6, kernel_size)(x).shape == (2, 6, 4, 3)
    assert BlurUpsample(4, 6)(x).shape == (2, 6, 16, 12)


def zero_last_conv(block: ResBlock) -> None:
    nn.init.zeros_(block.residual[-1].weight)
    nn.init.zeros_(block.residual[-1].bias)


def test_resblock_shortcuts():
    torch.manual_seed(0)
    same = ResBlock(16, 16)
    zero_last_conv(same)
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(same(x), x)

    wider = ResBlock(16, 40)
    zero_last_conv(wider)
    assert wider.residual[3].num_groups == 8
    torch.testing.assert_close(wider(x), wider.shortcut(x))
    assert wider(x).shape == (2, 40, 4, 4)


def test_res_stage():
    stage = ResStage(8, 16, num_blocks=3)
    assert len(stage) == 3
    channels = [(block.residual[2].in_channels, block.residual[2].out_channels) for block in stage]
    assert channels == [(8, 16), (16, 16), (16, 16)]
    assert stage(torch.randn(1, 8, 4, 4)).shape == (1, 16, 4, 4)


@pytest.mark.parametrize("resolution", [8, 32])
def test_discriminator_logits(resolution):
    torch.manual_seed(0)
    disc = StyleGANDiscriminator(resolution, max_channels=16)
    assert len(disc.blocks) == int(math.log2(resolution)) - 2
    x = torch.randn(3, 3, resolution, resolution, requires_grad=True)
    logits = disc(x)
    assert logits.shape == (3,)
    assert logits.unique().numel() == 3
    logits[0].backward()
    assert x.grad[0].abs().sum() > 0
    assert torch.equal(x.grad[1:], torch.zeros_like(x.grad[1:]))


def test_discriminator_follows_the_stylegan_filter_table():
    with torch.device("meta"):
        disc = StyleGANDiscriminator(256)
        wide = StyleGANDiscriminator(256, channel_multiplier=2)
    widths = [disc.stem.out_channels] + [b.skip.conv.out_channels for b in disc.blocks]
    assert widths == [64, 128, 256, 512, 512, 512, 512]  # at 256, 128, 64, 32, 16, 8, 4 px
    assert [wide.stem.out_channels] + [b.skip.conv.out_channels for b in wide.blocks][:2] == [128, 256, 512]
    # Table 11 ("#channel multi. of d [1]") at 256 px: about 24M parameters.
    assert sum(p.numel() for p in disc.parameters()) == 24_009_409
    small = StyleGANDiscriminator(32, in_channels=1, max_channels=48)
    assert [small.stem.out_channels] + [b.skip.conv.out_channels for b in small.blocks] == [48, 48, 48, 48]
    assert small(torch.randn(2, 1, 32, 32)).shape == (2,)


def test_discriminator_rejects_bad_resolution():
    with pytest.raises(ValueError, match="power of two"):
        StyleGANDiscriminator(24)
    with pytest.raises(ValueError, match="power of two"):
        StyleGANDiscriminator(4)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_adversarial_losses():
    zero = torch.zeros(4)
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert generator_adversarial_loss(zero).item() == pytest.approx(math.log(2))
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    expected_d = (softplus(-2.0) + softplus(1.0)) / 2 + (softplus(0.5) + softplus(-3.0)) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(expected_d)
    assert generator_adversarial_loss(fake).item() == pytest.approx((softplus(-0.5) + softplus(3.0)) / 2)


class LinearCritic(nn.Module):
    """logits = <w, x> per image, so d logits / d x = w."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).sum((1, 2, 3))


def test_r1_penalty_of_linear_critic():
    torch.manual_seed(0)
    critic = LinearCritic()
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    penalty = r1_penalty(x, critic(x))
    expected = critic.w.detach().pow(2).sum()
    torch.testing.assert_close(penalty, expected)
    penalty.backward()  # differentiable: d ||w||^2 / dw = 2w
    torch.testing.assert_close(critic.w.grad, 2 * critic.w.detach())
