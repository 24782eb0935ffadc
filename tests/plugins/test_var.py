"""VAR / STAR plugins: the multi-scale tokenizer, the next-scale prior and its sampler."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stratagen import api, cli
from stratagen.data.synthetic import SyntheticShapes
from stratagen.io.tokens import TokenCache
from stratagen.plugins.var import MultiScaleVQTokenizer, NextScaleSampler, NextScaleTransformer
from stratagen.plugins.var.text import CaptionError
from stratagen.data.synthetic import class_caption
from stratagen.registry import (ConfigError, IncompatibleComponentsError, LevelSpec, MissingWeightsError, StageSettings,
                                get_registry)
from stratagen.sampling import filter_logits
from tinyconfigs import TINY_VAR, TINY_VQ, tiny_config, write_config

REGISTRY = get_registry()


def tiny_model(tmp_path, **prior):
    config = tiny_config(tmp_path / "run", "var")
    config["priors"]["main"]["model"].update(prior)
    built = api.build(api.load(str(write_config(tmp_path / "c.yaml", config))))
    for module in built.modules():
        module.eval()
    return built.model


def random_grids(prior: NextScaleTransformer, batch: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, s.codebook_size, (batch, s.height, s.width), generator=generator) for s in prior.scales]


def test_reconstruction_error_falls_with_every_scale_used():
    """VAR Alg. 2 from the coarsest k scales: after a short training the error never grows with k,
    and all scales reconstruct clearly better than the first one."""
    torch.manual_seed(0)
    tokenizer = REGISTRY.build("tokenizer", REGISTRY.get("tokenizer", "msvq").config.model_validate(
        {"name": "msvq", **TINY_VQ, "scales": [1, 2, 3, 4], "codebook_size": 64}), resolution=16)
    data = SyntheticShapes(4, 16, 64, seed=0)
    images = torch.stack([data[i][0] for i in range(64)])
    optimizer = torch.optim.Adam(tokenizer.parameter_groups()["generator"], lr=3e-3)
    for step in range(120):
        batch = images[(step * 16) % 64:(step * 16) % 64 + 16]
        losses, _ = tokenizer.losses(batch, step)
        optimizer.zero_grad()
        losses["generator"].backward()
        optimizer.step()
    tokenizer.eval()
    with torch.no_grad():
        grids = tokenizer.encode(images)
        names = list(tokenizer.level_names)
        errors = [torch.mean((tokenizer.decode({n: grids[n] for n in names[:k]}) - images) ** 2).item()
                  for k in range(1, len(names) + 1)]
    assert all(finer <= coarser for coarser, finer in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.7 * errors[0], errors
    assert not tokenizer.can_decode({"s2"}) and tokenizer.can_decode({"s1", "s2"})


def test_block_causal_mask_is_exact(tmp_path):
    """Changing the tokens of scale k never changes the logits of scales 1..k (bit for bit); it
    does change the logits of finer scales."""
    model = tiny_model(tmp_path)
    prior = model.priors["main"].prior
    grids = random_grids(prior, 2, seed=0)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        before = prior.logits(prior.teacher_inputs(grids), labels)
        for k in range(len(grids) - 1):
            changed = list(grids)
            changed[k] = (grids[k] + 1) % prior.target.codebook_size
            after = prior.logits(prior.teacher_inputs(changed), labels)
            end = prior.offsets[k + 1]
            assert torch.equal(before[:, :end], after[:, :end]), k
            assert not torch.allclose(before[:, end:], after[:, end:]), k


@pytest.mark.parametrize("settings", [StageSettings(steps=1),
                                      StageSettings(steps=1, guidance_scale=2.0, guidance_schedule="linear",
                                                    top_k=8, top_p=0.9, temperature=1.3)])
def test_kv_cache_sampling_equals_full_recompute(tmp_path, settings):
    model = tiny_model(tmp_path)
    labels = torch.tensor([0, 1, 2, 3])
    cached = NextScaleSampler(settings, use_cache=True).sample(model, labels, torch.Generator().manual_seed(3))
    full = NextScaleSampler(settings, use_cache=False).sample(model, labels, torch.Generator().manual_seed(3))
    assert list(cached.tokens) == ["vq.s1", "vq.s2", "vq.s3"]
    assert all(torch.equal(cached.tokens[s], full.tokens[s]) for s in cached.tokens)
    prior = model.priors["main"].prior
    with torch.no_grad():
        a, b = prior.begin(labels, use_cache=True), prior.begin(labels, use_cache=False)
        for grid in random_grids(prior, 4, seed=1):
            torch.testing.assert_close(prior.scale_logits(a), prior.scale_logits(b), rtol=1e-5, atol=1e-5)
            prior.advance(a, grid)
            prior.advance(b, grid)


def test_sampling_keeps_known_tokens_and_rope_changes_positions(tmp_path):
    model = tiny_model(tmp_path, position="rope")
    prior = model.priors["main"].prior
    assert prior.position is None and prior.rope is not None
    known = torch.full((2, 2, 2), -1)
    known[:, 0, 0] = 5
    out = NextScaleSampler().sample(model, torch.tensor([0, 1]), torch.Generator().manual_seed(0),
                                    canvas={"vq.s2": known})
    assert (out.tokens["vq.s2"][:, 0, 0] == 5).all()
    absolute = tiny_model(tmp_path).priors["main"].prior
    assert sum(p.numel() for p in absolute.parameters()) - sum(p.numel() for p in prior.parameters()) == \
        prior.offsets[-1] * TINY_VAR["width"]  # RoPE learns no positions


def test_top_k_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 0, 0.75)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 0, 0.85)).tolist() == [[False, False, False, True]]
    assert torch.equal(filter_logits(logits, 0, 1.0), logits)


def test_train_run_reports_every_scale_and_prior_loss_falls(tmp_path):
    config = tiny_config(tmp_path / "run", "var")
    config["tokenizers"]["vq"]["train"]["steps"] = 20
    config["priors"]["main"]["train"].update(steps=40, batch_size=16, lr=3e-3, log_every=1, checkpoint_every=40)
    pipe = api.train(api.load(str(write_config(tmp_path / "c.yaml", config))))
    cache = TokenCache(str(tmp_path / "run/tokens/vq/train")).open()
    assert {k: v["shape"] for k, v in cache.manifest["levels"].items()} == {"s1": [1, 1], "s2": [2, 2], "s3": [4, 4]}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run/tb")); events.Reload()
    losses = [e.value for e in events.Scalars("prior/main/loss/prior")]
    assert losses[-1] < 0.8 * losses[0]
    assert {f"tokenizer/vq/perplexity/s{k}" for k in (1, 2, 3)} <= set(events.Tags()["scalars"])
    out = pipe.sample([0, 3], seed=1)
    assert out.images.shape == (2, 3, 16, 16) and set(out.tokens) == {"vq.s1", "vq.s2", "vq.s3"}
    reloaded = api.Pipeline.from_run(str(tmp_path / "run"))  # the run's own config.yaml validates again
    assert torch.equal(reloaded.sample([0, 3], seed=1).images, out.images)


def test_paper_configs_count_vars_published_sizes():
    """VAR-d16 310M and VAR-d20 600M (VAR Table 1), within 2%; built on the meta device."""
    for path, published in (("configs/var_d16.yaml", 310e6), ("configs/var_d20.yaml", 600e6)):
        config = api.load(path)
        entry = config.priors["main"]
        scales = config.tokenizers["vq"].model.scales
        specs = [LevelSpec(f"s{k + 1}", s, s, config.tokenizers["vq"].model.codebook_size)
                 for k, s in enumerate(scales)]
        with torch.device("meta"):
            prior = REGISTRY.build("prior", entry.model, target=specs[-1], conditions=specs[:-1],
                                   num_classes=config.data.num_classes)
        count = sum(p.numel() for p in prior.parameters())
        assert abs(count - published) / published < 0.02, (path, count)


def test_mismatched_components_are_refused_in_one_line(tmp_path):
    config = tiny_config(tmp_path / "run", "var")
    config["tokenizers"]["vq"]["model"]["scales"] = [1, 2, 3]
    with pytest.raises(ConfigError, match="end at the token grid side 4") as error:
        api.build(api.load(str(write_config(tmp_path / "a.yaml", config))))
    assert "\n" not in str(error.value)
    config = tiny_config(tmp_path / "run", "var")
    config["priors"]["main"]["conditions"] = ["vq.s2", "vq.s1"]
    with pytest.raises(IncompatibleComponentsError, match="priors.main: the target and conditions"):
        api.build(api.load(str(write_config(tmp_path / "b.yaml", config))))
    config = tiny_config(tmp_path / "run", "var")
    config["sampler"]["scales"] = {"steps": 4}
    with pytest.raises(ConfigError, match="one step"):
        api.load(str(write_config(tmp_path / "c.yaml", config)))


# ----------------------------------------------------------------------------- STAR: text conditioning
def star_config(tmp_path, num_classes: int = 4) -> dict:
    config = tiny_config(tmp_path / "star", "var")
    config["data"]["num_classes"] = num_classes
    config["priors"]["main"]["model"].update(position="rope", text_encoder={"name": "small", "depth": 1},
                                             captions=[class_caption(c) for c in range(num_classes)])
    return config


def test_star_demo_captions_say_what_the_dataset_draws():
    config = api.load("configs/demo/star.yaml")
    model = config.priors["main"].model
    assert list(model.captions) == [class_caption(c) for c in range(config.data.num_classes)]
    assert model.position == "rope"


def test_text_conditioning_changes_samples_and_class_captions_are_the_default(tmp_path):
    built = api.build(api.load(str(write_config(tmp_path / "s.yaml", star_config(tmp_path)))))
    for module in built.modules():
        module.eval()
    model, sampler = built.model, built.sampler
    labels = torch.tensor([0, 1, 2, 3])
    by_class = sampler.sample(model, labels, torch.Generator().manual_seed(0))
    own = sampler.sample(model, labels, torch.Generator().manual_seed(0),
                         captions=[class_caption(c) for c in range(4)])
    other = sampler.sample(model, labels, torch.Generator().manual_seed(0),
                           captions=[class_caption(c) for c in (3, 2, 1, 0)])
    assert all(torch.equal(by_class.tokens[s], own.tokens[s]) for s in own.tokens)
    assert any(not torch.equal(own.tokens[s], other.tokens[s]) for s in own.tokens)
    with pytest.raises(CaptionError, match="outside the vocabulary: golden, unicorn; .* words of the prior's "
                                           r"captions \(model.captions\): a an at bottom ") as error:
        sampler.sample(model, labels[:1], torch.Generator(), captions=["a golden unicorn"])
    assert "\n" not in str(error.value)


def test_missing_text_encoder_weights_stop_the_build_in_one_line(tmp_path):
    config = star_config(tmp_path)
    config["priors"]["main"]["model"]["text_encoder"]["weights"] = str(tmp_path / "text.safetensors")
    with pytest.raises(MissingWeightsError, match="text.safetensors: no such file") as error:
        api.build(api.load(str(write_config(tmp_path / "s.yaml", config))))
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def star_run(tmp_path_factory) -> Path:
    """A tiny STAR run (small text encoder), trained two steps per component."""
    root = tmp_path_factory.mktemp("star")
    config = star_config(root)
    config["tokenizers"]["vq"]["train"]["steps"] = 2
    config["priors"]["main"]["train"]["steps"] = 2
    api.train(api.load(str(write_config(root / "c.yaml", config))))
    return root / "star"


def pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_sample_cli_draws_for_captions(star_run, tmp_path, capsys):
    """``stratagen sample RUN --caption TEXT --count N``: a PNG per image (named by caption) and a grid;
    same seed, same images; another caption, other images (the same noise: one caption per call)."""
    new, other = "a red ring at the top left on a plum ground", "a yellow square with dots in the centre on a teal ground"
    argv = ["sample", str(star_run), "--caption", new, "--caption", other, "--count", "2", "--seed", "5"]
    assert cli.main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert f"caption0: {new}\ncaption1: {other}\n4 images in" in capsys.readouterr().out
    first = pngs(tmp_path / "a")
    assert sorted(first) == ["caption0_0000.png", "caption0_0001.png", "caption1_0002.png", "caption1_0003.png",
                             "grid.png"]
    assert cli.main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert all(np.array_equal(first[name], image) for name, image in pngs(tmp_path / "b").items())
    for name, caption in (("new", new), ("other", other)):
        assert cli.main(["sample", str(star_run), "--caption", caption, "--count", "2", "--seed", "5",
                         "--out", str(tmp_path / name)]) == 0
    assert not np.array_equal(pngs(tmp_path / "new")["grid.png"], pngs(tmp_path / "other")["grid.png"])


def test_caption_words_ignore_punctuation_and_case():
    from stratagen.plugins.var.text import CaptionVocabulary, caption_words

    assert caption_words("A red disc, with dots.") == ["a", "red", "disc", "with", "dots"]
    vocabulary = CaptionVocabulary(["a red disc with dots"])
    assert torch.equal(vocabulary.encode(["A red disc, with dots."]), vocabulary.encode(["a red disc with dots"]))


def test_sample_cli_says_an_empty_caption_is_unconditional(star_run, tmp_path, capsys):
    assert cli.main(["sample", str(star_run), "--caption", " ", "--out", str(tmp_path)]) == 0
    assert "caption0: (empty: the null caption, so these images are unconditional)" in capsys.readouterr().out


def test_sample_cli_names_unknown_words_and_refuses_captions_for_classes(star_run, tmp_path, capsys):
    assert cli.main(["sample", str(star_run), "--caption", "a golden unicorn", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: caption 'a golden unicorn': words outside the vocabulary: golden, unicorn; ")
    assert "the prior's captions (model.captions): a an at bottom" in err and len(err.strip().splitlines()) == 1
    model = tiny_model(tmp_path)
    with pytest.raises(IncompatibleComponentsError, match="next-scale prior is class-conditioned"):
        NextScaleSampler().check_captions(model)


def test_info_says_what_each_sampler_does(tmp_path, capsys):
    """Next-scale: the scales with their token counts and the conditioning (no decode order: there is
    none); masked samplers: steps and decode order per stage."""
    for name, config in (("var", tiny_config(tmp_path / "var", "var")), ("star", star_config(tmp_path)),
                         ("maskgit", tiny_config(tmp_path / "maskgit"))):
        assert cli.main(["info", str(write_config(tmp_path / f"{name}.yaml", config))]) == 0
        line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("sampler"))
        if name == "maskgit":
            assert line.endswith("(compatible; vq.tokens: 3 steps, confidence order)"), line
            continue
        assert ("next-scale over 3 scales of vq, one forward each (KV cache): s1 1x1 (1), s2 2x2 (4), s3 4x4 (16), "
                f"21 tokens; {'text' if name == 'star' else 'class'}-conditioned; temperature 1, top-k off, "
                "top-p off, guidance off)") in line, line
        assert "order" not in line


def colour_classifier(num_classes: int, resolution: int):
    """A classifier on the synthetic attributes, tiny: nearest class centroid of the mean colours of
    the image's centre, top-left and bottom-right quarters (shape colour and place, ground colour)."""
    def features(images: torch.Tensor) -> torch.Tensor:
        q = resolution // 4
        regions = [images[..., q:3 * q, q:3 * q], images[..., :2 * q, :2 * q], images[..., 2 * q:, 2 * q:],
                   images[..., :q, 3 * q:]]
        return torch.cat([r.mean(dim=(-1, -2)) for r in regions], dim=1)

    data = SyntheticShapes(num_classes, resolution, 64 * num_classes, seed=7)
    real = torch.stack([data[i][0] for i in range(len(data))])
    centroids = torch.stack([features(real[data.labels == c]).mean(0) for c in range(num_classes)])
    return lambda images: torch.cdist(features(images), centroids).argmin(1)


def test_shuffled_captions_lower_caption_image_agreement(tmp_path):
    """Train a tiny STAR run; images drawn for their own captions agree with them (by the attribute
    classifier) far more often than images drawn for shuffled captions."""
    config = star_config(tmp_path)
    config["data"]["train_size"] = 256
    config["tokenizers"]["vq"]["train"].update(steps=80, batch_size=16, lr=3e-3)
    config["priors"]["main"]["train"].update(steps=150, batch_size=32, lr=3e-3, checkpoint_every=150)
    pipe = api.train(api.load(str(write_config(tmp_path / "s.yaml", config))))
    classify = colour_classifier(4, 16)
    labels = torch.arange(4).repeat(8)
    shuffled = (labels + 1 + torch.arange(32) % 3) % 4  # every row another class's caption
    sampler, model = pipe.built.sampler, pipe.model
    with torch.no_grad():
        own = sampler.sample(model, labels, torch.Generator().manual_seed(0),
                             captions=[class_caption(int(c)) for c in labels]).images
        other = sampler.sample(model, labels, torch.Generator().manual_seed(0),
                               captions=[class_caption(int(c)) for c in shuffled]).images
    agreement = (classify(own) == labels).float().mean().item()
    shuffled_agreement = (classify(other) == labels).float().mean().item()
    assert agreement >= 0.6 and shuffled_agreement <= agreement - 0.4, (agreement, shuffled_agreement)


def test_captions_without_a_text_encoder_get_the_small_one(tmp_path):
    """STAR's default text encoder: captions with ``text_encoder: null`` (or no such key) read with the small one."""
    removed = api.load("configs/demo/star.yaml", ["priors.main.model.text_encoder=null"])
    assert removed.priors["main"].model.text_encoder.name == "small"
    config = star_config(tmp_path)
    config["priors"]["main"]["model"]["text_encoder"] = None  # an explicit null, not merged away
    explicit = api.load(str(write_config(tmp_path / "s.yaml", config)))
    assert explicit.priors["main"].model.text_encoder.name == "small"
