"""Token-Critic (Lezama et al., "Improved Masked Image Generation with Token-Critic", ECCV 2022).

- ``token-critic`` (kind ``critic``): a bidirectional transformer trained after its prior, on
  the prior's own samples, to tell which tokens of a filled-in grid were sampled;
- ``critic`` (kind ``order``): the decode order that re-masks the tokens the critic scores as
  least likely real.

::

    critics:
      top_critic: {prior: top, model: {name: token-critic, depth: 2, width: 128, heads: 4, mlp_dim: 256}}
    sampler: {name: stratified, top: {order: critic}}
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from stratagen.registry import ComponentConfig, hookimpl

from .model import TokenCritic
from .order import CriticOrder


class TokenCriticConfig(ComponentConfig):
    """Size of the critic transformer (defaults: a quarter-depth MaskGIT transformer)."""

    name: Literal["token-critic"] = "token-critic"
    depth: int = Field(6, ge=1)
    width: int = Field(768, ge=8)
    heads: int = Field(12, ge=1)
    mlp_dim: int = Field(3072, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)


@hookimpl
def stratagen_register_critics(register):
    register("token-critic", TokenCritic, TokenCriticConfig,
             tiny={"depth": 1, "width": 32, "heads": 2, "mlp_dim": 64, "dropout": 0.0})


@hookimpl
def stratagen_register_orders(register):
    register(CriticOrder.name, CriticOrder)


__all__ = ["CriticOrder", "TokenCritic", "TokenCriticConfig"]
