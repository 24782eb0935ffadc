"""VQGAN tokenizer: levels, round trip of decode(lookup), loss groups, weights handling."""
import logging

import pytest
import torch

from stratagen.plugins.vqgan import VQGANLossConfig, build_vqgan
from stratagen.registry import MissingWeightsError


def tiny_vqgan(factor=4, gan_weight=0.0, gan_start=0, perceptual_weights=None):
    torch.manual_seed(0)
    mult = {2: (1, 2), 4: (1, 2, 2), 8: (1, 1, 2, 2)}[factor]
    return build_vqgan(resolution=16, factor=factor, channels=8, channel_mult=mult, num_res_blocks=1,
                       codebook_size=32, embedding_dim=8, commitment_cost=0.25, restart_dead_codes=False,
                       loss=VQGANLossConfig(gan_weight=gan_weight, gan_start=gan_start,
                                            perceptual_weights=perceptual_weights, disc_max_channels=8))


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_levels_follow_the_factor(factor):
    tokenizer = tiny_vqgan(factor)
    (spec,) = tokenizer.level_specs(16)
    assert (spec.name, spec.height, spec.width, spec.codebook_size) == ("tokens", 16 // factor, 16 // factor, 32)
    grids = tokenizer.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert grids["tokens"].shape == (2, 16 // factor, 16 // factor)
    assert tokenizer.decode(grids).shape == (2, 3, 16, 16)


def test_decode_of_encoded_tokens_equals_autoencode_reconstruction():
    tokenizer = tiny_vqgan().eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = tokenizer.autoencode(images)
        assert torch.equal(out.tokens["tokens"], tokenizer.encode(images)["tokens"])
        assert torch.allclose(tokenizer.decode(out.tokens), out.reconstruction, atol=1e-4)  # z + (q - z) vs q: float rounding


def test_generator_loss_trains_only_generator_and_discriminator_starts_late():
    tokenizer = tiny_vqgan(gan_weight=0.1, gan_start=5)
    groups = tokenizer.parameter_groups()
    assert set(groups) == {"generator", "discriminator"}
    assert not {id(p) for p in groups["generator"]} & {id(p) for p in groups["discriminator"]}
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    early, logs = tokenizer.losses(images, step=0)
    assert not early["discriminator"].requires_grad and "generator_adversarial" not in logs
    late, logs = tokenizer.losses(images, step=5)
    assert late["discriminator"].requires_grad and "r1" in logs and "generator_adversarial" in logs
    assert logs["perplexity/tokens"] >= 1 and 0 < logs["usage/tokens"] <= 1


def test_reconstruction_loss_falls():
    from stratagen.data import SyntheticShapes

    tokenizer = tiny_vqgan()
    images = torch.stack([SyntheticShapes(4, 16, 8)[i][0] for i in range(8)])
    optimizer = torch.optim.Adam(tokenizer.parameter_groups()["generator"], lr=3e-3)
    first = None
    for _ in range(30):
        losses, logs = tokenizer.losses(images, step=0)
        optimizer.zero_grad()
        losses["generator"].backward()
        optimizer.step()
        first = first or logs["reconstruction"]
    assert logs["reconstruction"] < 0.6 * first


def test_perceptual_off_without_weights_says_so_once(caplog):
    from stratagen.plugins.vqgan import losses

    losses._say_perceptual_off.cache_clear()
    with caplog.at_level(logging.WARNING):
        tiny_vqgan(), tiny_vqgan()
    assert caplog.text.count("perceptual loss is off") == 1


def test_missing_perceptual_weights_fail_fast_when_training(tmp_path):
    tokenizer = tiny_vqgan(perceptual_weights=str(tmp_path / "vgg16.safetensors"))
    with pytest.raises(MissingWeightsError, match="vgg16.safetensors"):
        tokenizer.train()


def test_frozen_vgg_is_not_part_of_the_tokenizer_weights(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    features = torchvision.models.vgg16().features  # torchvision layout: features.<i>.weight
    path = tmp_path / "vgg16.safetensors"
    save_file({f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}, str(path))
    tokenizer = tiny_vqgan(perceptual_weights=str(path)).train()
    losses, logs = tokenizer.losses(torch.rand(2, 3, 16, 16) * 2 - 1, step=0)
    assert logs["perceptual"] > 0
    assert not any("vgg" in k for k in tokenizer.state_dict())


def test_discriminator_loss_adds_r1_times_its_cost_as_official_maskgit():
    # Official MaskGIT (libml/losses.py): penalty_cost * mean ||grad D||^2, no 1/2 factor.
    tokenizer = tiny_vqgan(gan_weight=0.1)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    loss, logs = tokenizer.loss_fn.discriminator_loss(images, images.flip(0), step=0)
    assert logs["r1"] > 0
    assert loss.item() == pytest.approx(logs["discriminator"] + 10.0 * logs["r1"], rel=1e-5)


@pytest.mark.parametrize("options", [{"l2_normalized_codes": True}, {"code_dim": 4, "l2_normalized_codes": True},
                                     {"entropy_loss_weight": 0.1}])
def test_codebook_options_reach_both_paths(options):
    torch.manual_seed(0)
    tokenizer = build_vqgan(resolution=16, factor=4, channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                            codebook_size=32, embedding_dim=8, commitment_cost=0.25, restart_dead_codes=False,
                            loss=VQGANLossConfig(gan_weight=0.0), **options).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = tokenizer.autoencode(images)
        assert torch.allclose(tokenizer.decode(out.tokens), out.reconstruction, atol=1e-4)
    if "code_dim" in options:
        assert tokenizer.quantizer.codebook.weight.shape == (32, 4)


@pytest.mark.parametrize("name", ["vqgan", "vqgan2-r"])
def test_dead_code_steps_is_a_config_field_that_reaches_every_quantizer(name, tmp_path):
    from stratagen import api
    from tinyconfigs import tiny_config, write_config

    config = tiny_config(tmp_path / "run", "maskgit" if name == "vqgan" else "strait")
    config["tokenizers"]["vq"]["model"].update(restart_dead_codes=True, dead_code_steps=7)
    tokenizer = api.build(api.load(str(write_config(tmp_path / "c.yaml", config)))).model.tokenizers["vq"]
    quantizers = [m for m in tokenizer.modules() if type(m).__name__ == "VectorQuantizer"]
    assert quantizers and all(q.restart_dead_codes and q.dead_code_steps == 7 for q in quantizers)
