"""Token-Critic: its objective learns, it trains after its prior, and the critic order decodes with it."""
from __future__ import annotations

import pytest
import torch

from stratagen import api
from stratagen.engine.training.plan import training_plan
from stratagen.plugins.critic import TokenCritic
from stratagen.plugins.maskgit import MaskedTokenTransformer
from stratagen.registry import ConfigError, IncompatibleComponentsError, LevelSpec, get_registry
from tinyconfigs import TINY_TRAIN, tiny_config, write_config

CRITIC = {"name": "token-critic", "depth": 1, "width": 32, "heads": 2, "mlp_dim": 64, "dropout": 0.0}


def with_critic(config: dict, prior: str) -> dict:
    config["critics"] = {"critic": {"prior": prior, "model": dict(CRITIC), "train": dict(TINY_TRAIN)}}
    return config


def test_critic_learns_to_find_the_priors_samples():
    """A prior that always proposes token 0, real grids of tokens 1..15: the critic must learn to
    flag exactly the refilled positions (loss from ~0.5 to near 0, accuracy 1)."""
    torch.manual_seed(0)
    spec = LevelSpec("tokens", 4, 4, 16)
    prior = MaskedTokenTransformer(target=spec, num_classes=2, depth=1, width=32, heads=2, mlp_dim=64, dropout=0.0)
    with torch.no_grad():
        prior.head_bias[0] = 50.0
    critic = TokenCritic(target=spec, num_classes=2, prior=prior, depth=1, width=32, heads=2, mlp_dim=64, dropout=0.0)
    assert not any(p is q for p in critic.parameters() for q in prior.parameters())  # the prior is not a submodule
    schedule = get_registry().build("schedule", "cosine")
    optimizer = torch.optim.Adam(critic.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses, accuracies = [], []
    for _ in range(60):
        tokens = torch.randint(1, 16, (16, 4, 4), generator=generator)
        result = critic.loss(tokens, torch.zeros(16, dtype=torch.long), [], schedule, generator)
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
        losses.append(result.loss.item())
        accuracies.append(result.logs["critic_accuracy"])
    assert result.logs["sampled_differs"] == 1.0
    assert sum(losses[:10]) / 10 > 0.3 and sum(losses[-10:]) / 10 < 0.05
    assert sum(accuracies[-10:]) / 10 > 0.99


def test_training_plan_puts_the_critic_after_its_prior_and_the_caches(tmp_path):
    config = api.load(str(write_config(tmp_path / "c.yaml", with_critic(tiny_config(tmp_path / "run", "strait"),
                                                                           "bottom"))))
    plan = [s.key for s in training_plan(api.build(config).model)]
    assert plan.index("tokenizer:vq") < plan.index("tokens:vq") < plan.index("prior:bottom") < plan.index(
        "critic:critic")
    assert set(plan) == {"tokenizer:vq", "tokens:vq", "prior:top", "prior:bottom", "critic:critic"}


def test_a_critic_of_an_unknown_prior_is_refused(tmp_path):
    config = with_critic(tiny_config(tmp_path / "run", "maskgit"), "nope")
    with pytest.raises(ConfigError, match="critics.critic.prior: 'nope' is not a prior of this run; priors: main"):
        api.build(api.load(str(write_config(tmp_path / "c.yaml", config))))


def test_the_critic_order_without_a_critic_is_refused_before_any_work(tmp_path):
    config = tiny_config(tmp_path / "run", "maskgit")
    config["sampler"]["stage"]["order"] = "critic"
    with pytest.raises(IncompatibleComponentsError, match="needs a critic of stream 'vq.tokens'"):
        api.train(api.load(str(write_config(tmp_path / "c.yaml", config))))
    assert not (tmp_path / "run").exists()


def test_critic_run_trains_end_to_end_and_samples_reproducibly(tmp_path):
    config = with_critic(tiny_config(tmp_path / "run", "strait"), "top")
    config["sampler"]["top"]["order"] = "critic"
    pipe = api.train(api.load(str(write_config(tmp_path / "c.yaml", config))))
    assert (tmp_path / "run/critics/critic/model.safetensors").exists()
    first = pipe.sample([0, 1, 2], seed=3)
    loaded = api.Pipeline.from_run(str(tmp_path / "run"))
    again = loaded.sample([0, 1, 2], seed=3)
    assert torch.equal(first.images, again.images)
    for stream, tokens in first.tokens.items():
        assert torch.equal(tokens, again.tokens[stream])
    # without Gumbel noise the two orders rank by their own scores: the critic's choice differs
    quiet = loaded.config.sampler.with_setting("choice_temperature", 0.0)
    by_critic = loaded.sample([0, 1, 2], seed=3, sampler=loaded.sampler(quiet))
    by_confidence = loaded.sample([0, 1, 2], seed=3, sampler=loaded.sampler(quiet.with_setting("order", "confidence")))
    assert not torch.equal(by_critic.tokens["vq.top"], by_confidence.tokens["vq.top"])
