"""Inference dtype: chosen per device by what it multiplies natively; sampling runs copies of the
priors and critics in that dtype (weights cast once, oneDNN linears on the CPU), keeps the decoding
arithmetic in float32, and never changes the float32 weights that are trained and saved."""
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from stratagen import api
from stratagen.config.schema import validate
from stratagen.engine.devices import precision
from stratagen.engine.evaluation.bench import count_flops
from stratagen.engine.pipeline import Pipeline
from stratagen.io.run import Run
from stratagen.plugins import orders
from stratagen.plugins.maskgit.prior import MaskedTokenTransformer
from stratagen.registry import LevelSpec
from stratagen.sampling import decode
from tinyconfigs import tiny_config, write_config

CPU = torch.device("cpu")
ONEDNN = pytest.mark.skipif(not precision.onednn_linear_supported(CPU, torch.float32), reason="no oneDNN")
BF16 = pytest.mark.skipif(not precision.onednn_linear_supported(CPU, torch.bfloat16), reason="no oneDNN bf16")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                                        (False, False, torch.float32)])
def test_auto_picks_bf16_only_where_the_cpu_multiplies_it(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert precision.inference_dtype("auto", CPU) == expected
    assert precision.inference_dtype("float32", CPU) == torch.float32
    assert precision.inference_dtype("bfloat16", CPU) == torch.bfloat16


def tiny_pipeline(tmp_path, setting: str) -> Pipeline:
    config = tiny_config(tmp_path / "run")
    config["run"]["inference_dtype"] = setting
    return Pipeline(api.build(validate(config, "test")), Run(str(tmp_path / "run")), CPU).ready()


def tiny_prior(seed: int = 0) -> tuple[MaskedTokenTransformer, torch.Tensor, torch.Tensor]:
    """A seeded untrained prior (2 x 64, 8x8 tokens of 64) and a half-masked batch of 16: tokens, labels."""
    torch.manual_seed(seed)
    prior = MaskedTokenTransformer(target=LevelSpec("t", 8, 8, 64), num_classes=4, depth=2, width=64, heads=4,
                                   mlp_dim=256, dropout=0.0).eval()
    g = torch.Generator().manual_seed(seed)
    tokens = torch.where(torch.rand(16, 64, generator=g) < 0.5, prior.mask_token_id,
                         torch.randint(0, 64, (16, 64), generator=g))
    return prior, tokens, torch.randint(0, 4, (16,), generator=g)


@pytest.mark.parametrize("setting, network_dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_sampling_runs_the_prior_copy_in_the_chosen_dtype_and_returns_float32_images(tmp_path, setting,
                                                                                     network_dtype):
    pipe = tiny_pipeline(tmp_path, setting)
    prior = pipe.model.priors["main"].prior
    twin = pipe.networks.model(pipe.model).priors["main"].prior
    assert twin is not prior and {p.dtype for p in twin.parameters()} == {network_dtype}
    seen: list[torch.dtype] = []
    twin.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    prior.head.register_forward_hook(lambda module, args, out: seen.append("original"))
    out = pipe.sample([0, 1, 2], seed=0)
    assert set(seen) == {network_dtype}  # the copy ran, in its dtype; the trained module did not
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()
    tokens = out.tokens["vq.tokens"]
    assert (tokens >= 0).all() and (tokens < prior.target.codebook_size).all()
    assert torch.equal(pipe.sample([0, 1, 2], seed=0).tokens["vq.tokens"], tokens)  # seeded: reproducible


def test_bf16_decoding_arithmetic_is_float32_on_float32_logits(tmp_path, monkeypatch):
    pipe = tiny_pipeline(tmp_path, "bfloat16")
    seen: dict[str, set[torch.dtype]] = {"logits": set(), "probs": set(), "gumbel": set(), "scores": set()}
    sampling_probs, annealed_gumbel, remask = decode.sampling_probs, decode.annealed_gumbel, decode.remask

    def spy_probs(logits, *args):
        probs = sampling_probs(logits, *args)
        seen["logits"].add(logits.dtype)
        seen["probs"].add(probs.dtype)
        return probs

    def spy_gumbel(state):
        noise = annealed_gumbel(state)
        seen["gumbel"].add(noise.dtype)
        return noise

    def spy_remask(sampled, scores, *args):
        seen["scores"].add(scores.dtype)
        return remask(sampled, scores, *args)

    monkeypatch.setattr(decode, "sampling_probs", spy_probs)
    monkeypatch.setattr(orders, "annealed_gumbel", spy_gumbel)  # the confidence order's noise
    monkeypatch.setattr(decode, "remask", spy_remask)
    prior = pipe.networks.model(pipe.model).priors["main"].prior
    with torch.no_grad():
        assert prior.head(torch.zeros(1, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16  # the network is bf16
    pipe.sample([0, 1, 2, 3], seed=0)
    assert seen == {k: {torch.float32} for k in seen}


@BF16
def test_bf16_copy_agrees_with_float32_on_most_argmax_decisions():
    """At least 98% of argmax decisions unchanged on a seeded tiny prior (measured: 99.4-99.8% for seeds
    0-2; the untrained prior's logits are nearly flat, its argmax as fragile as it gets), and the bf16
    logits within 0.02 of the float32 ones (their spread: std 0.16)."""
    prior, tokens, labels = tiny_prior()
    twin = precision.inference_copies([prior], torch.bfloat16, CPU)[0]
    with torch.no_grad():
        reference, logits = prior(tokens, labels), twin(tokens, labels).float()
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.98
    assert (logits - reference).abs().max() <= 0.02


@ONEDNN
def test_float32_fast_path_matches_the_reference_within_rounding():
    """The fp32 copy (oneDNN linears) is fp32 arithmetic in another summation order: logits within 1e-5
    of the trained module's (measured: 2e-7 here, 2e-6 at 8 x 512), every argmax the same."""
    prior, tokens, labels = tiny_prior()
    twin = precision.inference_copies([prior], torch.float32, CPU)[0]
    assert any(isinstance(m, precision.OneDNNLinear) for m in twin.modules())
    assert not any(type(m) is nn.Linear for m in twin.modules())
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(prior.parameters(), twin.parameters()))  # shared
    with torch.no_grad():
        reference, logits = prior(tokens, labels), twin(tokens, labels)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))


@ONEDNN
def test_onednn_linear_matches_nn_linear_and_refuses_gradients():
    torch.manual_seed(0)
    linear = nn.Linear(48, 24)
    x = torch.randn(3, 5, 48).transpose(0, 1)  # any layout
    fast = precision.OneDNNLinear(linear)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), linear(x), rtol=0, atol=1e-5)
        assert fast(x.bfloat16()).dtype == torch.float32  # the weight's dtype, as autocast would
    with pytest.raises(RuntimeError, match="inference only"):
        fast(x)


def test_inference_copies_follow_the_trained_weights_and_never_change_them(tmp_path):
    pipe = tiny_pipeline(tmp_path, "bfloat16")
    prior = pipe.model.priors["main"].prior
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    first = pipe.networks.model(pipe.model)
    pipe.sample([0, 1], seed=0)
    assert pipe.networks.model(pipe.model) is first  # cast once, not per call
    assert all(p.dtype == torch.float32 and p.requires_grad for p in prior.parameters())
    assert all(torch.equal(v, before[k]) for k, v in prior.state_dict().items())
    with torch.no_grad():
        prior.head_bias.add_(1.0)  # as an optimizer step does: in place
    second = pipe.networks.model(pipe.model)
    assert second is not first
    assert torch.equal(second.priors["main"].prior.head_bias, (before["head_bias"] + 1).bfloat16())


def test_training_with_bf16_inference_saves_and_keeps_float32_weights(tmp_path):
    """Training samples its images through the bf16 copies (at the end of the prior's training);
    the modules it trains and the checkpoints it writes stay float32."""
    config = tiny_config(tmp_path / "run")
    config["run"]["inference_dtype"] = "bfloat16"
    config["tokenizers"]["vq"]["train"]["steps"] = 2
    config["priors"]["main"]["train"]["steps"] = 2
    pipe = api.train(api.load(str(write_config(tmp_path / "c.yaml", config))))
    assert pipe.dtype == torch.bfloat16
    for module in pipe.built.modules():
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    saved = load_file(tmp_path / "run" / "priors" / "main" / "model.safetensors")
    assert {v.dtype for v in saved.values()} == {torch.float32}
    trained = pipe.model.priors["main"].prior.state_dict()
    assert all(torch.equal(saved[k], trained[k]) for k in saved)


@ONEDNN
def test_flop_counts_are_the_same_for_the_copy_and_the_trained_module():
    prior, tokens, labels = tiny_prior()
    twin = precision.inference_copies([prior], torch.float32, CPU)[0]
    with torch.no_grad():
        assert count_flops(lambda: twin(tokens, labels)) == count_flops(lambda: prior(tokens, labels)) > 0
