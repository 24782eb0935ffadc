"""VQGAN2-R options that are not the paper's (issue 23): zero-initialised fusion, bottom dropout and a
top-only reconstruction term, each off by default and refused with concat fusion."""
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from stratagen.plugins.strait import VQGAN2Config, build_vqgan2
from stratagen.plugins.vqgan import VQGANLossConfig


def tiny_r(**options):
    torch.manual_seed(0)
    return build_vqgan2(fusion="residual", resolution=32, channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                        codebook_size=32, bottom_codebook_size=None, embedding_dim=8, commitment_cost=0.25,
                        restart_dead_codes=False, latent_blocks=1,
                        loss=VQGANLossConfig(gan_weight=0.0, perceptual_weights=None), **options)


IMAGES = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_zero_init_fusion_decodes_the_top_level_alone_at_first():
    tokenizer = tiny_r(zero_init_fusion=True).eval()
    with torch.no_grad():
        grids = tokenizer.encode(IMAGES)
        assert torch.equal(tokenizer.decode(grids), tokenizer.decode({"top": grids["top"]}))
        plain = tiny_r().eval()
        assert not torch.equal(plain.decode(grids), plain.decode({"top": grids["top"]}))


def test_bottom_dropout_drops_whole_residuals_in_training_only():
    tokenizer = tiny_r(bottom_dropout=0.5)
    torch.manual_seed(1)
    out = tokenizer.autoencode(IMAGES)
    with torch.no_grad():
        grids = out.tokens
        full = tokenizer.decode(grids)
        alone = tokenizer.decode({"top": grids["top"]})
    dropped = [torch.allclose(out.reconstruction[i], alone[i], atol=1e-4) for i in range(len(IMAGES))]
    kept = [torch.allclose(out.reconstruction[i], full[i], atol=1e-4) for i in range(len(IMAGES))]
    assert all(d != k for d, k in zip(dropped, kept))  # each image: all of its residual or none
    assert 0 < sum(dropped) < len(IMAGES)  # seed 1 drops some, not all
    tokenizer.eval()
    with torch.no_grad():
        assert torch.allclose(tokenizer.autoencode(IMAGES).reconstruction, full, atol=1e-4)


def test_top_only_weight_adds_a_top_alone_reconstruction_term():
    weighted, plain = tiny_r(top_only_weight=0.5), tiny_r()
    weighted.train(), plain.train()
    losses, logs = weighted.losses(IMAGES, step=0)
    plain_losses, plain_logs = plain.losses(IMAGES, step=0)
    with torch.no_grad():
        top = weighted.encode(IMAGES)["top"]
        expected = 0.5 * F.mse_loss(weighted.decode({"top": top}), IMAGES)
    assert logs["top_only_reconstruction"] == pytest.approx(expected.item(), rel=1e-5)
    assert "top_only_reconstruction" not in plain_logs
    assert losses["generator"].item() == pytest.approx(plain_losses["generator"].item() + expected.item(), rel=1e-5)


@pytest.mark.parametrize("option", [{"zero_init_fusion": True}, {"bottom_dropout": 0.3}, {"top_only_weight": 1.0}])
def test_options_are_refused_with_concat_fusion(option):
    VQGAN2Config(name="vqgan2-r", **option)
    with pytest.raises(ValidationError, match="only vqgan2-r"):
        VQGAN2Config(name="vqgan2-c", **option)
