"""The LDM/taming encoder-decoder: structure, attention and resampling against written-out references."""
import torch
import torch.nn.functional as F

from stratagen.nn import LDMDecoder, LDMEncoder, SpatialSelfAttention, VectorQuantizer
from stratagen.nn.ldm import PaddedDownsample

SIZES = dict(channels=8, channel_mult=[1, 2, 2], num_res_blocks=1, z_channels=6, embedding_dim=4,
             attention_levels=[2], quant_kernel=3)


def test_encoder_and_decoder_shapes_blocks_and_attention_levels():
    encoder, decoder = LDMEncoder(**SIZES), LDMDecoder(**SIZES)
    images = torch.randn(2, 3, 16, 16)
    latents = encoder(images)
    assert latents.shape == (2, 4, 4, 4) and decoder(latents).shape == (2, 3, 16, 16)
    # num_res_blocks blocks per encoder level, num_res_blocks + 1 per decoder level; attention after
    # each block of level 2 only (decoder: up[0] is level 2)
    assert [len(level.blocks) for level in encoder.down] == [1, 1, 1]
    assert [len(level.blocks) for level in decoder.up] == [2, 2, 2]
    assert [len(level.attn) for level in encoder.down] == [0, 0, 1]
    assert [len(level.attn) for level in decoder.up] == [2, 0, 0]
    assert encoder.quant_conv.kernel_size == (3, 3) and decoder.post_quant_conv.in_channels == 4
    assert [level.blocks[0].shortcut.__class__.__name__ for level in decoder.up] == ["Identity", "Identity", "Conv2d"]


def test_spatial_attention_is_single_head_softmax_over_positions():
    torch.manual_seed(0)
    block = SpatialSelfAttention(8)
    x = torch.randn(2, 8, 3, 5)
    h = block.norm(x).flatten(2).transpose(1, 2)  # [B, 15, 8]
    q = h @ block.attn.q.weight.T + block.attn.q.bias
    k, v = (h @ block.attn.kv.weight.T + block.attn.kv.bias).chunk(2, dim=-1)
    out = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=-1) @ v
    out = out @ block.attn.proj.weight.T + block.attn.proj.bias
    torch.testing.assert_close(block(x), x + out.transpose(1, 2).reshape(2, 8, 3, 5))


def test_downsampling_pads_bottom_right_only():
    torch.manual_seed(0)
    down = PaddedDownsample(2)
    x = torch.randn(1, 2, 6, 6)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
    torch.testing.assert_close(down(x), expected)
    # the first output sees rows and columns 0..2, none of the padding
    assert down(x).shape == (1, 2, 3, 3)
    torch.testing.assert_close(down(x)[..., 0, 0], F.conv2d(x[..., :3, :3], down.conv.weight, down.conv.bias)[..., 0, 0])


def test_codebook_lookup_takes_weights_over_the_codes():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(6, 4, l2_normalize=True)
    indices = torch.randint(0, 6, (2, 3, 3))
    one_hot = F.one_hot(indices, 6).float()
    torch.testing.assert_close(quantizer.lookup(one_hot), quantizer.lookup(indices))
    halves = 0.5 * (F.one_hot(indices, 6) + F.one_hot((indices + 1) % 6, 6)).float()
    torch.testing.assert_close(quantizer.lookup(halves),
                               0.5 * (quantizer.lookup(indices) + quantizer.lookup((indices + 1) % 6)))
