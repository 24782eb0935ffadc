"""StraIT plugins: VQGAN2-R/C, the CMTM bottom prior, stratified and cascade sampling."""
import pytest
import torch

from stratagen import api
from stratagen.engine import build
from stratagen.plugins.maskgit import MaskedTokenTransformer
from stratagen.plugins.vqgan import VQGANLossConfig
from stratagen.plugins.strait import build_vqgan2
from stratagen.registry import IncompatibleComponentsError, LevelSpec, get_registry


def tiny_vqgan2(fusion: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_vqgan2(fusion=fusion, resolution=256, channels=4, channel_mult=(1, 1, 1, 1, 2), num_res_blocks=1,
                        codebook_size=64, bottom_codebook_size=None, embedding_dim=4, commitment_cost=0.25,
                        restart_dead_codes=False, latent_blocks=1, loss=VQGANLossConfig(gan_weight=0.0)).eval()


FUSIONS = ["residual", "concat", "concat-stem"]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_vqgan2_levels_at_256px(fusion):
    tokenizer = tiny_vqgan2(fusion)
    top, bottom = tokenizer.level_specs(256)
    assert (top.name, top.height, top.width) == ("top", 16, 16)
    assert (bottom.name, bottom.height, bottom.width) == ("bottom", 32, 32)
    images = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        grids = tokenizer.encode(images)
        assert grids["top"].shape == (1, 16, 16) and grids["bottom"].shape == (1, 32, 32)
        assert tokenizer.decode(grids).shape == (1, 3, 256, 256)
        out = tokenizer.autoencode(images)
    assert set(out.level_stats) == {"top", "bottom"}


@pytest.mark.parametrize("fusion", FUSIONS)
def test_both_levels_reach_the_output(fusion):
    tokenizer = tiny_vqgan2(fusion)
    z_top = torch.randn(1, 4, 16, 16, requires_grad=True)
    z_bottom = torch.randn(1, 4, 32, 32, requires_grad=True)
    tokenizer._decode_latents(z_top, z_bottom).square().sum().backward()
    assert z_top.grad.abs().sum() > 0 and z_bottom.grad.abs().sum() > 0
    grids = {"top": torch.randint(0, 64, (1, 16, 16)), "bottom": torch.randint(0, 64, (1, 32, 32))}
    with torch.no_grad():
        base = tokenizer.decode(grids)
        for level in grids:
            changed = dict(grids, **{level: (grids[level] + 1) % 64})
            assert not torch.allclose(tokenizer.decode(changed), base), level


def test_paper_concat_joins_the_upscaled_top_and_the_bottom_at_the_decoder_input():
    """VQGAN2-C (§3.1, App. B; VQ-VAE-2): the decoder's input is [transposed-conv(top) (f/2), bottom],
    and no path from the top level reaches the image around that concatenation: with the top half
    of the decoder's input detached, the image has no gradient with respect to the top latents."""
    tokenizer = tiny_vqgan2("concat")
    assert isinstance(tokenizer.top_upsample, torch.nn.ConvTranspose2d) and tokenizer.top_upsample.stride == (2, 2)
    assert not hasattr(tokenizer, "fusion") and len(tokenizer.decoder.upsamples) == 3  # f/2 = 8: from f8 on
    seen = []

    def cut_top(module, args):
        (x,) = args
        seen.append(x.shape)
        return (torch.cat([x[:, :4].detach(), x[:, 4:]], dim=1),)

    z_top = torch.randn(1, 4, 16, 16, requires_grad=True)
    z_bottom = torch.randn(1, 4, 32, 32, requires_grad=True)
    handle = tokenizer.decoder.register_forward_pre_hook(cut_top)
    tokenizer._decode_latents(z_top, z_bottom).square().sum().backward()
    handle.remove()
    assert seen == [(1, 8, 32, 32)]
    assert (z_top.grad is None or not z_top.grad.any()) and z_bottom.grad.abs().sum() > 0


def test_r_and_concat_stem_differ_only_in_fusion():
    r, c = tiny_vqgan2("residual"), tiny_vqgan2("concat-stem")
    r_params = {k: v.shape for k, v in r.state_dict().items()}
    c_params = {k: v.shape for k, v in c.state_dict().items()}
    differing = {k for k in r_params.keys() | c_params.keys() if r_params.get(k) != c_params.get(k)}
    assert differing and all(k.startswith("fusion.") for k in differing)
    shared = {k for k in r_params if not k.startswith("fusion.")}
    assert all(torch.equal(r.state_dict()[k], c.state_dict()[k]) for k in shared), "same seed, same shared weights"


@pytest.mark.parametrize("concat", ["concat", "concat-stem"])
def test_residual_decodes_top_alone_concat_refuses(concat):
    r, c = tiny_vqgan2("residual"), tiny_vqgan2(concat)
    assert r.can_decode({"top"}) and not c.can_decode({"top"})
    top = torch.randint(0, 64, (1, 16, 16))
    with torch.no_grad():
        assert r.decode({"top": top}).shape == (1, 3, 256, 256)
    with pytest.raises(ValueError):
        c.decode({"top": top})


def test_fusion_config_defaults_and_refusals():
    config = get_registry().get("tokenizer", "vqgan2-c").config
    assert config(name="vqgan2-c").fusion == "concat"
    assert config(name="vqgan2-r").fusion == "residual"
    assert config(name="vqgan2-c", fusion="concat-stem").fusion == "concat-stem"
    with pytest.raises(ValueError, match="vqgan2-r takes fusion 'residual', not 'concat'"):
        config(name="vqgan2-r", fusion="concat")


def test_separate_codebooks():
    tokenizer = build_vqgan2(fusion="residual", resolution=32, channels=4, channel_mult=(1, 1, 2),
                             num_res_blocks=1, codebook_size=64, bottom_codebook_size=16, embedding_dim=4,
                             commitment_cost=0.25, restart_dead_codes=False, latent_blocks=1,
                             loss=VQGANLossConfig(gan_weight=0.0))
    top, bottom = tokenizer.level_specs(32)
    assert (top.codebook_size, bottom.codebook_size) == (64, 16)
    assert tokenizer.top_quantizer is not tokenizer.bottom_quantizer
    assert int(tokenizer.encode(torch.rand(2, 3, 32, 32))["bottom"].max()) < 16


def bottom_prior():
    torch.manual_seed(0)
    prior = MaskedTokenTransformer(target=LevelSpec("bottom", 4, 4, 32), conditions=(LevelSpec("top", 2, 2, 32),),
                                   num_classes=3, depth=2, width=32, heads=2, mlp_dim=64, dropout=0.0)
    for p in prior.parameters():
        p.data.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    return prior.eval()


def test_bottom_logits_depend_on_top_tokens():
    prior = bottom_prior()
    tokens = torch.full((2, 16), prior.mask_token_id)
    labels = torch.tensor([0, 1])
    top_a = torch.randint(0, 32, (2, 2, 2), generator=torch.Generator().manual_seed(0))
    top_b = top_a.clone()
    top_b[:, 0, 0] = (top_b[:, 0, 0] + 1) % 32
    logits_a = prior(tokens, labels, prior.encode_conditions([top_a], labels))
    logits_b = prior(tokens, labels, prior.encode_conditions([top_b], labels))
    assert (logits_a - logits_b).abs().max() > 1e-3


def test_cross_attention_cache_equals_recomputing():
    prior = bottom_prior()
    tokens = torch.randint(0, 33, (2, 16))
    labels = torch.tensor([2, 0])
    top = torch.randint(0, 32, (2, 2, 2))
    cached = prior(tokens, labels, prior.encode_conditions([top], labels))
    recomputed = prior(tokens, labels, prior.encode_conditions([top], labels, cache_kv=False))
    assert torch.allclose(cached, recomputed, atol=1e-6)


def test_paper_prior_parameter_counts_within_1_percent_of_499m_and_292m():
    config = api.load("configs/strait_r.yaml")
    with torch.device("meta"):  # shapes only: nothing allocated
        model = build.build(config).model
    counts = {pid: sum(p.numel() for p in slot.prior.parameters()) for pid, slot in model.priors.items()}
    assert abs(counts["top"] - 499e6) / 499e6 < 0.01
    assert abs(counts["bottom"] - 292e6) / 292e6 < 0.01  # §4.1; self- and cross-attention layers, each with an FFN


def trained(tiny, variant):
    config = api.load(str(tiny(variant)))
    api.train(config)
    return api.Pipeline.from_run(config.run.dir)


def test_stratified_spends_exactly_t_top_and_t_bottom_steps_and_leaves_nothing_masked(tiny, monkeypatch):
    pipe = trained(tiny, "strait")
    import stratagen.sampling.staged as sampler_module

    calls = []
    real = sampler_module.iterative_decode

    def spy(prior, canvas, labels, conditions, *args):
        result = real(prior, canvas, labels, conditions, *args)
        calls.append((prior.target.name, len(result.masked_after_step), len(conditions)))
        return result

    monkeypatch.setattr(sampler_module, "iterative_decode", spy)
    out = pipe.sample([0, 1, 2], seed=0)
    assert calls == [("top", 3, 0), ("bottom", 2, 1)]
    assert out.steps == 5
    assert set(out.tokens) == {"vq.top", "vq.bottom"}
    assert all((t >= 0).all() and (t < 32).all() for t in out.tokens.values())
    assert out.images.shape == (3, 3, 16, 16)
    again = pipe.sample([0, 1, 2], seed=0)
    assert torch.equal(out.images, again.images)


def test_cascade_decodes_through_the_f8_tokenizer_and_f16_alone(tiny, monkeypatch):
    pipe = trained(tiny, "cascade")
    decoded = []
    for tid, tokenizer in pipe.model.tokenizers.items():
        original = tokenizer.decode
        monkeypatch.setattr(tokenizer, "decode", lambda t, tid=tid, original=original: decoded.append(tid) or original(t))
    out = pipe.sample([0, 1], seed=1)
    assert decoded == ["f8"] and out.images.shape == (2, 3, 16, 16)
    assert out.tokens["f8.tokens"].shape == (2, 8, 8) and out.tokens["f16.tokens"].shape == (2, 4, 4)
    f16_only = get_registry().build("sampler", api.load(str(pipe.run.path("config.yaml")),
                                                        ["sampler.name=maskgit", "sampler.stream=f16.tokens"]).sampler)
    decoded.clear()
    assert pipe.sample([0, 1], seed=1, sampler=f16_only).images.shape == (2, 3, 16, 16)
    assert decoded == ["f16"]


def test_incompatible_sampler_is_refused_before_work(tiny, tmp_path):
    config = api.load(str(tiny("maskgit")), ["sampler.name=stratified"])
    with pytest.raises(IncompatibleComponentsError, match="two-level tokenizer"):
        api.train(config)
    assert not (tmp_path / "run-maskgit" / "tokenizers").exists()


def test_condition_augmentation_replaces_about_the_ratio_with_top_prior_predictions():
    from stratagen.engine.training.train import augment_conditions

    torch.manual_seed(0)
    top = MaskedTokenTransformer(target=LevelSpec("top", 4, 4, 8), num_classes=3, depth=1, width=16, heads=2,
                                 mlp_dim=32, dropout=0.0)
    for p in top.parameters():
        p.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    grid = torch.randint(0, 8, (64, 4, 4), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 3, (64,))
    (augmented,) = augment_conditions([grid], [top], labels, 0.3, torch.Generator().manual_seed(2))
    changed = (augmented != grid).float().mean().item()
    assert 0.05 < changed <= 0.3 + 0.05  # masked share, minus positions the prior predicts unchanged
    (none,) = augment_conditions([grid], [top], labels, 0.0, torch.Generator().manual_seed(2))
    assert torch.equal(none, grid)


def test_a_stream_with_two_priors_uses_the_one_that_fits_what_is_decoded(tmp_path):
    from tinyconfigs import tiny_config, write_config

    config = tiny_config(tmp_path / "run", "cascade")
    config["priors"]["f8"] = {"target": "f8.tokens", "model": dict(config["priors"]["top"]["model"]),
                              "train": dict(config["priors"]["top"]["train"])}
    loaded = api.load(str(write_config(tmp_path / "c.yaml", config)))
    model = build.build(loaded).model
    assert model.prior_for("f8.tokens") is model.priors["f8"]
    assert model.prior_for("f8.tokens", {"f16.tokens"}) is model.priors["bottom"]
    del model.priors["f8"]
    with pytest.raises(IncompatibleComponentsError, match="'f8.tokens' from scratch"):
        model.prior_for("f8.tokens")
    single = api.load(str(write_config(tmp_path / "c.yaml", config)), ["sampler.name=maskgit",
                                                                      "sampler.stream=f8.tokens"])
    build.build(single)  # the unconditioned f8 prior decodes alone


def test_guidance_on_a_prior_trained_without_class_dropout_warns(tiny, caplog):
    from stratagen.engine import build as build_module

    path = str(tiny("strait"))
    for dropout, warned in ((0.0, True), (0.1, False)):
        build_module._say_untrained_guidance.cache_clear()
        caplog.clear()
        api.build(api.load(path, ["sampler.top.guidance_scale=0.5", f"priors.top.model.class_dropout={dropout}"]))
        assert ("vq.top: guidance_scale > 0 but its prior trained with class_dropout 0" in caplog.text) == warned
