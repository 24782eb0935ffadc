"""The 256 -> 512 token-level upsampler (StraIT §4.2, Table 4), at 16 -> 32 px."""
import numpy as np
import torch

from stratagen import api
from stratagen.io import checkpoint
from stratagen.io.tokens import TokenCache
from stratagen.registry import IncompatibleComponentsError


def test_upsampler_generates_twice_the_token_grids_from_the_low_resolution_tokens(tiny):
    config = api.load(str(tiny("upsample")))
    api.train(config)
    run = config.run.dir
    assert not (checkpoint.exists(f"{run}/tokenizers/vq512/model.safetensors"))  # shared, not retrained
    cache, low = (TokenCache(f"{run}/tokens/{tid}/train").open().gather(np.arange(2), np.zeros(2, dtype=np.int64))[0]
                  for tid in ("vq512", "vq"))
    assert cache["top"].shape[1:] == (8, 8) and cache["bottom"].shape[1:] == (16, 16)
    assert low["top"].shape[1:] == (4, 4) and low["bottom"].shape[1:] == (8, 8)

    pipe = api.Pipeline.from_run(run)
    out = pipe.sample([0, 1, 2], seed=0)
    assert out.images.shape == (3, 3, 32, 32)
    assert out.tokens["vq512.top"].shape == (3, 8, 8) and out.tokens["vq512.bottom"].shape == (3, 16, 16)
    assert out.steps == 8
    assert torch.equal(out.images, pipe.sample([0, 1, 2], seed=0).images)

    up = pipe.model.priors["up_top"].prior
    for p in up.parameters():  # away from the near-uniform initial logits
        p.data.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    tokens = torch.full((3, 64), up.mask_token_id)
    labels = torch.tensor([0, 1, 2])
    low_top, low_bottom = out.tokens["vq.top"], out.tokens["vq.bottom"]
    changed = low_bottom.clone()
    changed[:, 0, 0] = (changed[:, 0, 0] + 1) % 32
    a = up(tokens, labels, up.encode_conditions([low_top, low_bottom], labels))
    b = up(tokens, labels, up.encode_conditions([low_top, changed], labels))
    assert (a - b).abs().max() > 1e-3


def test_upsample_sampler_needs_a_higher_resolution_tokenizer(tiny):
    config = api.load(str(tiny("upsample")), ["tokenizers.vq512.resolution=16"])
    try:
        api.train(config)
        raise AssertionError("must refuse")
    except IncompatibleComponentsError as exc:
        assert "higher resolution" in str(exc)
