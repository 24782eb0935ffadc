"""Conformance: every registered component, built at tiny size, honours its contract.

Parametrized over the registry (as timm parametrizes its tests over its model registry), so a
plugin's new tokenizer, prior, critic, sampler, schedule, decode order or metric is checked
by merely being installed: shapes and value ranges, determinism with a seed, and an exact
save/load round trip through safetensors. Components are built from their ``tiny`` settings
(``register(..., tiny=...)``) over their config defaults.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from stratagen import api
from stratagen.data.synthetic import SyntheticShapes
from stratagen.eval import ReferenceSet
from stratagen.registry import (UNKNOWN, Critic, DecodeOrder, IncompatibleComponentsError, LevelSpec,
                                MaskSchedule, MissingWeightsError, Prior, Sampler, StageSettings, Tokenizer,
                                get_registry, stream_parts)
from stratagen.sampling import iterative_decode
from tinyconfigs import tiny_config, write_config

REGISTRY = get_registry()
RESOLUTION = 16
NUM_CLASSES = 3
TARGET = LevelSpec("tokens", 4, 4, 16)
CONDITION = LevelSpec("coarse", 2, 2, 8)


def names(kind: str) -> list[str]:
    return REGISTRY.names(kind)


def build(kind: str, name: str, seed: int = 0, **wiring):
    component = REGISTRY.get(kind, name)
    torch.manual_seed(seed)
    config = component.tiny_config()
    return REGISTRY.build(kind, config if config is not None else name, **wiring)


def round_trip(module: torch.nn.Module, fresh: torch.nn.Module) -> torch.nn.Module:
    """``fresh`` with ``module``'s weights, through safetensors bytes."""
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    fresh.load_state_dict(load_bytes(save_bytes(state)))
    return fresh


def build_prior(name: str, seed: int = 0) -> Prior:
    """A prior of TARGET; one that needs a condition level gets CONDITION."""
    try:
        return build("prior", name, seed, target=TARGET, conditions=[], num_classes=NUM_CLASSES)
    except IncompatibleComponentsError:
        return build("prior", name, seed, target=TARGET, conditions=[CONDITION], num_classes=NUM_CLASSES)


def condition_grids(module, batch: int, generator: torch.Generator) -> list[torch.Tensor]:
    return [torch.randint(0, c.codebook_size, (batch, c.height, c.width), generator=generator)
            for c in module.conditions]


# ----------------------------------------------------------------------------- tokenizers
@pytest.mark.parametrize("name", names("tokenizer"))
def test_tokenizer_contract(name):
    tokenizer = build("tokenizer", name, resolution=RESOLUTION).eval()
    assert isinstance(tokenizer, Tokenizer)
    images = torch.rand(2, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(0)) * 2 - 1
    specs = tokenizer.level_specs(RESOLUTION)
    assert tuple(s.name for s in specs) == tokenizer.level_names
    with torch.no_grad():
        grids = tokenizer.encode(images)
        assert list(grids) == list(tokenizer.level_names)
        for spec in specs:
            grid = grids[spec.name]
            assert grid.dtype == torch.long and tuple(grid.shape) == (2, spec.height, spec.width)
            assert 0 <= int(grid.min()) and int(grid.max()) < spec.codebook_size
        decoded = tokenizer.decode(grids)
        assert tuple(decoded.shape) == (2, 3, RESOLUTION, RESOLUTION) and torch.isfinite(decoded).all()
        twin = build("tokenizer", name, resolution=RESOLUTION).eval()  # same seed, same weights
        assert all(torch.equal(grids[k], twin.encode(images)[k]) for k in grids)
        other = build("tokenizer", name, seed=1, resolution=RESOLUTION).eval()
        loaded = round_trip(tokenizer, other).eval()
        assert all(torch.equal(grids[k], loaded.encode(images)[k]) for k in grids)
        assert torch.equal(decoded, loaded.decode(grids))
    tokenizer.train()
    losses, logs = tokenizer.losses(images, step=0)
    assert set(losses) <= set(tokenizer.parameter_groups())
    assert all(torch.isfinite(loss) for loss in losses.values())


# ----------------------------------------------------------------------------- priors and critics
@pytest.mark.parametrize("name", names("prior"))
def test_prior_contract(name):
    prior = build_prior(name).eval()
    assert isinstance(prior, Prior) and prior.target == TARGET and prior.mask_token_id == TARGET.codebook_size
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 17, (3, TARGET.length), generator=generator)  # 16 = [MASK]
    labels = torch.tensor([0, 1, NUM_CLASSES])  # the null class too
    conditions = condition_grids(prior, 3, generator)
    with torch.no_grad():
        logits = prior(tokens, labels, prior.encode_conditions(conditions, labels))
        assert tuple(logits.shape) == (3, TARGET.length, TARGET.codebook_size) and torch.isfinite(logits).all()
        positions = torch.stack([torch.randperm(TARGET.length, generator=generator)[:5] for _ in range(3)])
        at = prior(tokens, labels, prior.encode_conditions(conditions, labels), positions)
        assert torch.allclose(at, logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1])), atol=1e-5)
        loaded = round_trip(prior, build_prior(name, seed=1)).eval()
        assert torch.equal(logits, loaded(tokens, labels, loaded.encode_conditions(conditions, labels)))
    schedule = REGISTRY.build("schedule", "cosine")
    prior.train()
    grid = tokens.clamp(max=15).view(3, TARGET.height, TARGET.width)
    first = prior.loss(grid, labels.clamp(max=NUM_CLASSES - 1), conditions, schedule, torch.Generator().manual_seed(1))
    again = prior.loss(grid, labels.clamp(max=NUM_CLASSES - 1), conditions, schedule, torch.Generator().manual_seed(1))
    assert first.loss.requires_grad and torch.isfinite(first.loss) and first.loss.item() == again.loss.item()


@pytest.mark.parametrize("name", names("critic"))
def test_critic_contract(name):
    prior = build_prior("maskgit").eval()
    critic = build("critic", name, target=TARGET, conditions=[], num_classes=NUM_CLASSES, prior=prior).eval()
    assert isinstance(critic, Critic)
    assert not {id(p) for p in prior.parameters()} & {id(p) for p in critic.parameters()}
    tokens = torch.randint(0, 16, (2, TARGET.length), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        scores = critic(tokens, labels, critic.encode_conditions([], labels))
        assert tuple(scores.shape) == (2, TARGET.length) and torch.isfinite(scores).all()
        loaded = round_trip(critic, build("critic", name, seed=1, target=TARGET, conditions=[],
                                          num_classes=NUM_CLASSES, prior=prior)).eval()
        assert torch.equal(scores, loaded(tokens, labels, loaded.encode_conditions([], labels)))
    critic.train()
    result = critic.loss(tokens.view(2, 4, 4), labels, [], REGISTRY.build("schedule", "cosine"),
                         torch.Generator().manual_seed(0))
    assert result.loss.requires_grad and torch.isfinite(result.loss)


# ----------------------------------------------------------------------------- schedules and orders
@pytest.mark.parametrize("name", names("schedule"))
def test_schedule_contract(name):
    schedule = REGISTRY.build("schedule", name)
    assert isinstance(schedule, MaskSchedule)
    ratios = torch.linspace(0, 1, 101, dtype=torch.float64)
    gamma = schedule(ratios, 256)
    # gamma(0) is 1 up to one token (official exp: 1 - 1/N), gamma(1) is 0
    assert 1 - 1 / 256 - 1e-12 <= float(gamma[0]) <= 1 and float(gamma[-1]) == pytest.approx(0.0, abs=1e-9)
    assert (gamma[1:] <= gamma[:-1] + 1e-12).all() and ((0 <= gamma) & (gamma <= 1)).all()
    per_row = schedule(torch.tensor(0.5, dtype=torch.float64), torch.tensor([16, 256]))
    assert per_row.shape in ((), (2,))


@pytest.mark.parametrize("name", names("order"))
def test_decode_order_contract(name, tmp_path):
    """Decoding with the order fills every unknown position, keeps the known ones, and repeats
    exactly with the same seed. An order that needs a model component gets one (a critic)."""
    config = tiny_config(tmp_path / "run", "maskgit")
    config["critics"] = {"c": {"prior": "main", "model": {"name": "token-critic", **REGISTRY.get(
        "critic", "token-critic").tiny}}}
    model = api.build(api.load(str(write_config(tmp_path / "c.yaml", config)))).model
    for module in [model.priors["main"].prior, model.critics["c"].critic]:
        module.eval()
    prior = model.priors["main"].prior
    order = REGISTRY.build("order", name)
    assert isinstance(order, DecodeOrder)
    canvas = torch.full((2, prior.target.length), UNKNOWN)
    canvas[0, :5] = 3
    labels = torch.tensor([0, 1])

    def decode(seed: int) -> torch.Tensor:
        context = order.begin(model, "vq.tokens", labels, [])
        return iterative_decode(prior, canvas, labels, [], StageSettings(steps=4), torch.Generator().manual_seed(seed),
                                order, context).tokens

    tokens = decode(0)
    assert (tokens >= 0).all() and (tokens < prior.target.codebook_size).all()
    assert torch.equal(tokens[0, :5], canvas[0, :5])
    assert torch.equal(tokens, decode(0))


# ----------------------------------------------------------------------------- samplers
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    out = {}
    for variant in ("maskgit", "strait", "cascade", "upsample", "var"):
        config = api.load(str(write_config(root / f"{variant}.yaml", tiny_config(root / variant, variant))))
        built = api.build(config)
        for module in built.modules():
            module.eval()
        out[variant] = built.model
    return out


@pytest.mark.parametrize("name", names("sampler"))
def test_sampler_contract(name, tiny_models):
    sampler = build("sampler", name)
    assert isinstance(sampler, Sampler)
    fitting = []
    for variant, model in tiny_models.items():
        try:
            sampler.check(model)
            fitting.append(model)
        except IncompatibleComponentsError:
            continue
    assert fitting, f"sampler {name!r} with its default settings fits none of the tiny models {list(tiny_models)}"
    model = fitting[0]
    labels = torch.tensor([0, 1])
    out = sampler.sample(model, labels, torch.Generator().manual_seed(0))
    stages = sampler.stages(model)
    resolution = model.resolution_of(sampler.output_tokenizer(model))
    assert tuple(out.images.shape) == (2, 3, resolution, resolution) and torch.isfinite(out.images).all()
    streams = [part for s in stages for part in stream_parts(s.stream)]  # a joint stage: its levels
    assert set(out.tokens) == set(streams) and out.steps == sum(s.settings.steps for s in stages)
    for stream in streams:
        spec = model.level_spec(stream)
        assert tuple(out.tokens[stream].shape) == (2, spec.height, spec.width)
        assert 0 <= int(out.tokens[stream].min()) and int(out.tokens[stream].max()) < spec.codebook_size
    again = sampler.sample(model, labels, torch.Generator().manual_seed(0))
    assert torch.equal(out.images, again.images)
    described = sampler.describe(model)
    assert described["params"] > 0 and described["steps"] == "+".join(str(s.settings.steps) for s in stages)


# ----------------------------------------------------------------------------- metrics
@pytest.fixture(scope="module")
def metric_data(tmp_path_factory):
    reference = SyntheticShapes(size=48, num_classes=NUM_CLASSES, resolution=RESOLUTION, seed=1)
    images = torch.stack([reference[i][0] for i in range(24)])
    labels = torch.tensor([reference[i][1] for i in range(24)])
    return ReferenceSet(reference, str(tmp_path_factory.mktemp("metric-cache"))), images, labels


@pytest.mark.parametrize("name", names("metric"))
def test_metric_contract(name, metric_data):
    """Scores are finite and repeat exactly; a metric that needs weights files says so at once."""
    reference, images, labels = metric_data
    try:
        metric = build("metric", name)
        first = metric.compute(images, labels, reference)
    except MissingWeightsError as exc:
        assert "weights" in str(exc) and "\n" not in str(exc)
        return
    assert first and all(isinstance(v, float) and v == v for v in first.values())
    assert metric.compute(images, labels, reference) == first
