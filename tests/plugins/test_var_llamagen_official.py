"""Official VAR and LlamaGen checkpoints: the converters, the converted runs and their parity with the
official code.

The fixtures were made by running the official code (FoundationVision/VAR and /LlamaGen) on tiny models
with random weights (../shared/fixtures/var-llamagen-official/README.md); the converted runs must
reproduce its outputs: token ids, logits, decoded images and sampled tokens.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from stratagen import api
from stratagen.cli import main
from stratagen.io.checkpoint import load_torch_file
from stratagen.plugins.ldm import convert_llamagen_vq, convert_var_official
from stratagen.plugins.var import NextScaleTransformer
from stratagen.plugins.var.sampler import smooth_codes
from stratagen.plugins.var.tokenizer import phi_index
from stratagen.registry import LevelSpec, StageSettings, StratagenError
from tinyconfigs import tiny_config

# ../shared/fixtures beside the checkout (or a worktree of it)
FIXTURES = next((p / "shared/fixtures/var-llamagen-official" for p in Path(__file__).resolve().parents
                 if (p / "shared/fixtures/var-llamagen-official").is_dir()), Path("fixtures-not-found"))
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="official VAR/LlamaGen fixtures not present")
VAR, LLAMAGEN = FIXTURES / "var", FIXTURES / "llamagen"


@pytest.fixture(scope="module")
def var_run(tmp_path_factory) -> api.Pipeline:
    out = tmp_path_factory.mktemp("var") / "run"
    fixture = yaml.safe_load((VAR / "config.json").read_text())
    convert_var_official(vae=str(VAR / "vae.pth"), var=str(VAR / "var.pth"),
                         patch_nums=",".join(map(str, fixture["patch_nums"])), data_root="unused",
                         guidance_scale=fixture["cfg"], top_k=fixture["top_k"], top_p=fixture["top_p"], out=str(out))
    return api.Pipeline.from_run(str(out))


@pytest.fixture(scope="module")
def var_io() -> dict[str, np.ndarray]:
    return dict(np.load(VAR / "io.npz"))


def official_grids(io: dict[str, np.ndarray], prefix: str = "idx") -> list[torch.Tensor]:
    """The fixture's ``[B, p_k^2]`` ids per scale as grids ``[B, p_k, p_k]``."""
    ids = [torch.from_numpy(io[f"{prefix}_s{k}"]) for k in range(sum(key.startswith(f"{prefix}_s") for key in io))]
    return [t.view(t.shape[0], round(t.shape[1] ** 0.5), -1) for t in ids]


@needs_fixtures
def test_var_tokenizer_reproduces_the_official_ids_at_every_scale_and_the_decoded_images(var_run, var_io):
    tokenizer = var_run.model.tokenizers["vq"]
    official = official_grids(var_io)
    with torch.no_grad():
        grids = tokenizer.encode(torch.from_numpy(var_io["images"]))
        decoded = tokenizer.decode(dict(zip(tokenizer.level_names, official)))
    assert len(official) == len(tokenizer.level_names) == 6
    for name, ids in zip(tokenizer.level_names, official):
        assert torch.equal(grids[name], ids), name
    # the official idxBl_to_img clamps to [-1, 1]; stratagen clamps where it writes images
    torch.testing.assert_close(decoded.clamp(-1, 1), torch.from_numpy(var_io["decoded"]), atol=1e-4, rtol=0)


@needs_fixtures
def test_var_prior_reproduces_the_official_teacher_forced_logits(var_run, var_io):
    prior = var_run.model.priors["main"].prior
    assert prior.blocks[0].attn.log_scale is not None and prior.blocks[0].attn.kv.bias is None
    with torch.no_grad():
        logits = prior.logits(prior.teacher_inputs(official_grids(var_io)), torch.from_numpy(var_io["labels"]))
    torch.testing.assert_close(logits, torch.from_numpy(var_io["logits"]), atol=1e-4, rtol=0)


@needs_fixtures
def test_var_sampler_draws_the_official_tokens_with_the_var_ramp(var_run, var_io):
    """autoregressive_infer_cfg(g_seed=0, cfg=1.5, top_k=8, top_p=0.9): the same torch.Generator draws."""
    sampler = var_run.sampler()
    assert sampler.settings.guidance_schedule == "var" and not sampler.more_smooth
    labels = torch.from_numpy(var_io["sample_labels"])
    out = sampler.sample(var_run.model, labels, torch.Generator().manual_seed(0))
    for stream, official in zip(out.tokens, official_grids(var_io, "sample_idx")):
        assert torch.equal(out.tokens[stream], official), stream
    # the official image is fhat_to_img(...) mapped to [0, 1]
    torch.testing.assert_close((out.images.clamp(-1, 1) + 1) / 2, torch.from_numpy(var_io["sample_image"]),
                               atol=1e-4, rtol=0)
    # stratagen's linear ramp, (k + 1) / K, draws other tokens from the same seed
    sampler.settings = sampler.settings.model_copy(update={"guidance_schedule": "linear"})
    linear = sampler.sample(var_run.model, labels, torch.Generator().manual_seed(0))
    assert any(not torch.equal(linear.tokens[s], out.tokens[s]) for s in out.tokens)


@needs_fixtures
def test_more_smooth_blends_codes_and_is_off_by_default(var_run, var_io):
    logits = torch.tensor([[[2.0, 1.0, 0.5, -3.0]]])
    settings = StageSettings(steps=1, top_k=2)
    weights = smooth_codes(logits, 0.0, torch.Generator().manual_seed(0), settings)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 1))
    assert weights[0, 0, 2:].eq(0).all() and weights[0, 0, :2].gt(0).all()  # top-k filtered codes get none
    sampler = var_run.sampler()
    labels = torch.from_numpy(var_io["sample_labels"])
    plain = sampler.sample(var_run.model, labels, torch.Generator().manual_seed(0))
    sampler.more_smooth = True
    smooth = sampler.sample(var_run.model, labels, torch.Generator().manual_seed(0))
    first = next(iter(plain.tokens))
    assert torch.equal(smooth.tokens[first], plain.tokens[first])  # the first draw is the same
    assert smooth.images.isfinite().all() and not torch.allclose(smooth.images, plain.images)


def test_partially_shared_phi_follows_var_ticks():
    assert [phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]  # VAR's 10 scales
    assert [phi_index(k, 6, 4) for k in range(6)] == [0, 0, 1, 2, 3, 3]
    assert {phi_index(k, 10, 1) for k in range(10)} == {0}


def test_var_guidance_ramp():
    settings = StageSettings(steps=1, guidance_scale=1.5, guidance_schedule="var")
    assert [settings.guidance_at(k, 6) for k in range(6)] == [1.5 * k / 5 for k in range(6)]
    linear = settings.model_copy(update={"guidance_schedule": "linear"})
    assert [linear.guidance_at(k, 4) for k in range(4)] == [1.5 * (k + 1) / 4 for k in range(4)]


def test_official_var_d16_has_the_official_parameter_count():
    """VAR-d16: 310,283,520 parameters (no key biases, one attention scale per head)."""
    sides = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    specs = [LevelSpec(f"s{k + 1}", s, s, 4096) for k, s in enumerate(sides)]
    with torch.device("meta"):
        prior = NextScaleTransformer(target=specs[-1], conditions=specs[:-1], num_classes=1000, depth=16, width=1024,
                                     heads=16, mlp_ratio=4.0, feature_dim=32, position="absolute", dropout=0.0,
                                     class_dropout=0.1, label_smoothing=0.0, qk_norm=True, key_bias=False)
    assert sum(p.numel() for p in prior.parameters()) == 310_283_520


@needs_fixtures
def test_converted_llamagen_vq_reproduces_the_official_indices_and_decoded_images(tmp_path):
    run = convert_llamagen_vq(checkpoint=str(LLAMAGEN / "vq.pt"), resolution=32, data_root="unused", num_classes=10,
                              config=None, out=str(tmp_path / "run"))
    tokenizer = api.Pipeline.from_run(run.url).model.tokenizers["vq"]
    io = np.load(LLAMAGEN / "io.npz")
    indices = torch.from_numpy(io["indices"])
    with torch.no_grad():
        assert torch.equal(tokenizer.encode(torch.from_numpy(io["images"]))["tokens"], indices)
        decoded = tokenizer.decode({"tokens": indices})
    torch.testing.assert_close(decoded, torch.from_numpy(io["decoded"]), atol=1e-4, rtol=0)


class Payload:
    """Unpickling this object would run code that writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@needs_fixtures
@pytest.mark.parametrize("where", ["beside", "inside-namespace"])
def test_a_checkpoint_carrying_a_payload_is_refused_and_nothing_runs(tmp_path, capsys, where):
    marker = tmp_path / "marker"
    genuine = load_torch_file(str(LLAMAGEN / "vq.pt"), allowed=[argparse.Namespace])
    assert isinstance(genuine["args"], argparse.Namespace)  # the released layout loads
    args = argparse.Namespace(**vars(genuine["args"]), **({"evil": Payload(marker)} if where != "beside" else {}))
    evil = {"model": genuine["model"], "args": args, **({"evil": Payload(marker)} if where == "beside" else {})}
    torch.save(evil, tmp_path / "vq.pt")
    assert main(["convert", "llamagen-vq", "--checkpoint", str(tmp_path / "vq.pt"), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused, it holds exec," in err and "argparse.Namespace" in err
    assert not marker.exists() and not (tmp_path / "run").exists()
    # without the allowlist even the genuine file is refused: Namespace is allowed for LlamaGen only
    with pytest.raises(StratagenError, match="holds argparse.Namespace"):
        load_torch_file(str(LLAMAGEN / "vq.pt"))


@needs_fixtures
def test_convert_errors_are_one_line(tmp_path, capsys):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not torch")
    assert main(["convert", "var-official", "--vae", str(garbage), "--var", str(VAR / "var.pth"),
                 str(tmp_path / "run")]) == 2
    assert "garbage.pth: not a PyTorch checkpoint" in capsys.readouterr().err
    assert main(["convert", "var-official", "--vae", str(VAR / "var.pth"), "--var", str(VAR / "var.pth"),
                 str(tmp_path / "run")]) == 2
    assert "var.pth: not VAR's VQVAE" in capsys.readouterr().err
    assert main(["convert", "var-official", "--vae", str(VAR / "vae.pth"), "--var", str(VAR / "var.pth"),
                 "--patch-nums", "1,2,3,4,5,6,8,10,13,16", str(tmp_path / "run")]) == 2
    assert "--patch-nums 1,2,3,4,5,6,8,10,13,16 but " in capsys.readouterr().err  # the checkpoint's lvl_1L differs
    assert not (tmp_path / "run").exists()
    state = torch.load(VAR / "var.pth", weights_only=True)
    del state["lvl_1L"]
    torch.save(state, tmp_path / "no_levels.pth")
    assert main(["convert", "var-official", "--vae", str(VAR / "vae.pth"), "--var", str(tmp_path / "no_levels.pth"),
                 str(tmp_path / "run")]) == 2
    assert "has no level table (lvl_1L); give --patch-nums" in capsys.readouterr().err
    assert main(["convert", "var-official", "--vae", str(VAR / "vae.pth"), "--var", str(tmp_path / "no_levels.pth"),
                 "--patch-nums", "1,2,3,4,5,6,8,10,13,16", str(tmp_path / "run")]) == 2
    assert "--patch-nums 1,2,3,4,5,6,8,10,13,16 gives 680 tokens but" in capsys.readouterr().err


def test_var_scales_are_read_from_the_level_table():
    from stratagen.plugins.ldm.convert_var import scales_of_levels

    levels = torch.cat([torch.full((p * p,), k) for k, p in enumerate([1, 2, 3, 4, 6, 8])])[None]
    assert scales_of_levels(levels) == [1, 2, 3, 4, 6, 8]
    assert scales_of_levels(levels[:, :-1]) is None  # the last scale is not a square
    assert scales_of_levels(levels.flip(1)) is None


@needs_fixtures
def test_cli_converts_var_then_samples_and_edits(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["convert", "var-official", "--vae", str(VAR / "vae.pth"), "--var", str(VAR / "var.pth"),
                 str(out)]) == 0  # the scales 1,2,3,4,6,8 read from its lvl_1L
    assert (out / "tokenizers" / "vq" / "model.safetensors").is_file()
    assert main(["sample", str(out), "--classes", "1,8", "--out", str(tmp_path / "s")]) == 0
    pictures = sorted((tmp_path / "s").glob("class*.png"))
    assert len(pictures) == 2 and Image.open(pictures[0]).size == (128, 128)
    image = np.load(VAR / "io.npz")["images"][0]
    Image.fromarray(((image.transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)).save(tmp_path / "in.png")
    # a box that VAR's 3x3 and 6x6 grids do not divide evenly
    assert main(["edit", str(out), "--image", str(tmp_path / "in.png"), "--box", "40,40,50,50", "--class", "2",
                 "--out", str(tmp_path / "edit.png")]) == 0
    before, after = np.asarray(Image.open(tmp_path / "in.png")), np.asarray(Image.open(tmp_path / "edit.png"))
    outside = np.ones((128, 128), bool)
    outside[40:90, 40:90] = False
    assert np.array_equal(before[outside], after[outside]) and not np.array_equal(before, after)


@needs_fixtures
def test_cli_converts_llamagen_under_a_run_config_trains_its_prior_then_samples_and_edits(tmp_path, capsys):
    """LlamaGen's VQ as the tokenizer of a MaskGIT run: convert with --config, train the prior, use the run."""
    config = tiny_config(tmp_path / "unused", "maskgit")
    del config["tokenizers"]
    config["data"].update(num_classes=2, train_size=16, eval_size=8)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["convert", "llamagen-vq", "--checkpoint", str(LLAMAGEN / "vq.pt"), "--resolution", "32",
                 "--config", str(tmp_path / "base.yaml"), str(out)]) == 0
    assert main(["train", str(out), "--resume"]) == 0
    assert main(["sample", str(out), "--classes", "0,1", "--out", str(tmp_path / "s")]) == 0
    assert Image.open(sorted((tmp_path / "s").glob("class*.png"))[0]).size == (32, 32)
    image = np.load(LLAMAGEN / "io.npz")["images"][0]
    Image.fromarray(((image.transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)).save(tmp_path / "in.png")
    assert main(["edit", str(out), "--image", str(tmp_path / "in.png"), "--box", "8,8,16,16", "--class", "1",
                 "--out", str(tmp_path / "edit.png")]) == 0
    assert Image.open(tmp_path / "edit.png").size == (32, 32)


@needs_fixtures
def test_a_tokenizer_only_conversion_suggests_evaluating_it_not_sampling(tmp_path, capsys):
    assert main(["convert", "llamagen-vq", "--checkpoint", str(LLAMAGEN / "vq.pt"), "--resolution", "32",
                 str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"stratagen eval {tmp_path / 'run'} --tokenizers-only" in out and "stratagen sample" not in out
