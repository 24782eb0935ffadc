"""The 256 -> 512 token-level upsampler (StraIT §4.2, Table 4), at 16 -> 32 px."""
import numpy as np
import pytest
import torch

from stratagen import api
from stratagen.io import checkpoint
from stratagen.io.tokens import TokenCache
from stratagen.registry import IncompatibleComponentsError


@pytest.mark.parametrize("variant, prior, steps", [("upsample", "up", 6), ("upsample-two-stage", "up_top", 8)])
def test_upsampler_generates_twice_the_token_grids_from_the_low_resolution_tokens(tiny, variant, prior, steps):
    """The paper's form (§4.2, Table 4): one prior generates both 32 px levels as one stream in one
    stage; the two-stage variant: one prior per level."""
    config = api.load(str(tiny(variant)))
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
    assert out.steps == steps and set(out.tokens) == {"vq.top", "vq.bottom", "vq512.top", "vq512.bottom"}
    assert torch.equal(out.images, pipe.sample([0, 1, 2], seed=0).images)

    up = pipe.model.priors[prior].prior
    assert up.target.length == (64 + 256 if prior == "up" else 64)
    for p in up.parameters():  # away from the near-uniform initial logits
        p.data.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    tokens = torch.full((3, up.target.length), up.mask_token_id)
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


def test_joint_streams_join_and_split_levels():
    from stratagen.registry import LevelSpec, resolve_level, split_grid, stream_grid, stream_parts

    specs = (LevelSpec("top", 2, 2, 8), LevelSpec("bottom", 4, 4, 8))
    assert resolve_level(specs, "top+bottom") == LevelSpec("top+bottom", 1, 20, 8)
    assert stream_parts("vq512.top+bottom") == ["vq512.top", "vq512.bottom"] and stream_parts("vq.top") == ["vq.top"]
    levels = {"top": torch.arange(8).view(2, 2, 2), "bottom": torch.arange(32).view(2, 4, 4) + 100}
    joint = stream_grid(levels, "top+bottom")
    assert joint.shape == (2, 1, 20) and joint[1, 0, :4].tolist() == [4, 5, 6, 7] and joint[0, 0, 4] == 100
    top, bottom = split_grid(joint, specs)
    assert torch.equal(top, levels["top"]) and torch.equal(bottom, levels["bottom"])
    for level, message in (("top+middle", "no level 'middle'"), ("top+top", "no level 'top\\+top'")):
        with pytest.raises(ValueError, match=message):
            resolve_level(specs, level)
    with pytest.raises(ValueError, match="different codebook sizes"):
        resolve_level((specs[0], LevelSpec("bottom", 4, 4, 16)), "top+bottom")


def test_the_joint_form_names_the_prior_it_needs(tiny):
    config = api.load(str(tiny("upsample-two-stage")), ["sampler.form=joint"])
    with pytest.raises(IncompatibleComponentsError, match="form 'joint' needs one prior with target vq512.top\\+bottom"):
        api.build(config)
