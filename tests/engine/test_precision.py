"""Inference dtype: chosen per device by what it multiplies natively; sampling autocasts the networks
and keeps the decoding arithmetic in float32."""
import pytest
import torch

from stratagen import api
from stratagen.config.schema import validate
from stratagen.engine import precision
from stratagen.engine.pipeline import Pipeline
from stratagen.io.run import Run
from tinyconfigs import tiny_config


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                                        (False, False, torch.float32)])
def test_auto_picks_bf16_only_where_the_cpu_multiplies_it(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert precision.inference_dtype("auto", cpu) == expected
    assert precision.inference_dtype("float32", cpu) == torch.float32
    assert precision.inference_dtype("bfloat16", cpu) == torch.bfloat16


@pytest.mark.parametrize("setting, network_dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_sampling_runs_the_prior_in_the_chosen_dtype_and_returns_float32_images(tmp_path, setting, network_dtype):
    config = tiny_config(tmp_path / "run")
    config["run"]["inference_dtype"] = setting
    built = api.build(validate(config, "test"))
    pipe = Pipeline(built, Run(str(tmp_path / "run")), torch.device("cpu")).ready()
    seen: list[torch.dtype] = []
    prior = pipe.model.priors["main"].prior
    prior.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    out = pipe.sample([0, 1, 2], seed=0)
    assert set(seen) == {network_dtype}
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()
    tokens = out.tokens["vq.tokens"]
    assert (tokens >= 0).all() and (tokens < prior.target.codebook_size).all()
