"""An example third-party stratagen plugin.

It adds two components through stratagen's pluggy hooks:

* the ``quartic`` mask schedule, gamma(r) = 1 - r^4;
* the ``dependency-order`` sampler, which decodes every prior's stream in dependency
  order (unconditioned streams first, then the streams whose conditions are decoded) and
  turns the result into images with the tokenizer of the last stream decoded. It drives a
  one-level MaskGIT model as well as a two-level StraIT or cascade model.

The distribution declares ``example = "stratagen_example"`` in the ``stratagen``
entry-point group; ``stratagen plugins`` then lists both components.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch

from stratagen.registry import (GenerativeModel, IncompatibleComponentsError, MaskSchedule, PriorSlot,
                                SamplerConfig, Stage, StageSettings, hookimpl, split_stream_key)
from stratagen.sampling import StagedSampler

__version__ = "0.1.0"

Register = Callable[..., None]


# ----------------------------------------------------------------------------- schedule
class QuarticSchedule(MaskSchedule):
    """gamma(r) = 1 - r^4: even more concave than cubic; few tokens early, many late."""

    name = "quartic"

    def __call__(self, ratio: torch.Tensor | float, total: int | torch.Tensor) -> torch.Tensor:
        """Masked fraction after progress ``ratio`` (any shape, clamped to [0, 1]); ``total`` is unused."""
        r = torch.as_tensor(ratio, dtype=torch.float64).clamp(0.0, 1.0)
        return (1 - r**4).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return "QuarticSchedule()"


# ----------------------------------------------------------------------------- sampler
class DependencyOrderConfig(SamplerConfig):
    """Settings of the ``dependency-order`` sampler: one :class:`StageSettings` for every stream."""

    name: Literal["dependency-order"] = "dependency-order"
    stage: StageSettings = StageSettings()


class DependencyOrderSampler(StagedSampler):
    """Decode every prior's stream in dependency order, all with the same settings.

    Args:
        stage: decoding settings (steps, schedule, temperatures, guidance) used for every stream.
    """

    def __init__(self, stage: StageSettings = StageSettings()) -> None:
        self.stage = stage

    def order(self, model: GenerativeModel) -> list[str]:
        """The streams to decode: layer by layer, each prior after the priors of its conditions.

        Within a layer the priors keep their config order. Raises
        IncompatibleComponentsError if there is no prior, two priors generate one stream,
        a condition has no prior, or the priors' conditions form a cycle.
        """
        if not model.priors:
            raise IncompatibleComponentsError("the dependency-order sampler needs at least one prior")
        owner: dict[str, str] = {}
        for pid, slot in model.priors.items():
            if slot.target in owner:
                raise IncompatibleComponentsError(
                    f"priors {owner[slot.target]!r} and {pid!r} both generate stream {slot.target!r}")
            owner[slot.target] = pid
        for pid, slot in model.priors.items():
            missing = [c for c in slot.conditions if c not in owner]
            if missing:
                raise IncompatibleComponentsError(
                    f"prior {pid!r} is conditioned on {missing}, which no prior generates; "
                    f"the dependency-order sampler generates every stream it decodes")
        order: list[str] = []
        pending = dict(model.priors)
        while pending:
            ready = [pid for pid, slot in pending.items() if all(c in order for c in slot.conditions)]
            if not ready:
                raise IncompatibleComponentsError(
                    "the priors' conditions form a cycle, so no decoding order exists: "
                    + " -> ".join(_cycle(pending, owner)))
            order += [pending.pop(pid).target for pid in ready]
        return order

    def check(self, model: GenerativeModel) -> None:
        order = self.order(model)
        tokenizer_id = split_stream_key(order[-1])[0]
        levels = {split_stream_key(s)[1] for s in order if split_stream_key(s)[0] == tokenizer_id}
        tokenizer = model.tokenizers[tokenizer_id]
        if not tokenizer.can_decode(levels):
            raise IncompatibleComponentsError(
                f"tokenizer {tokenizer_id!r} (of the last decoded stream {order[-1]!r}) cannot decode the "
                f"generated levels {sorted(levels)}; it needs {list(tokenizer.level_names)}")

    def stages(self, model: GenerativeModel) -> list[Stage]:
        return [Stage(stream, self.stage) for stream in self.order(model)]

    def output_tokenizer(self, model: GenerativeModel) -> str:
        return split_stream_key(self.order(model)[-1])[0]

    def __repr__(self) -> str:
        return f"DependencyOrderSampler(stage={self.stage!r})"


def _cycle(pending: dict[str, PriorSlot], owner: dict[str, str]) -> list[str]:
    """Prior ids along one cycle among ``pending`` priors, first id repeated at the end."""
    path = [next(iter(pending))]
    while True:
        pid = next(owner[c] for c in pending[path[-1]].conditions if owner[c] in pending)
        if pid in path:
            return path[path.index(pid):] + [pid]
        path.append(pid)


# ----------------------------------------------------------------------------- hooks
@hookimpl
def stratagen_register_schedules(register: Register) -> None:
    """Mask schedules take no config: the registry calls ``QuarticSchedule()``."""
    register(QuarticSchedule.name, QuarticSchedule)


@hookimpl
def stratagen_register_samplers(register: Register) -> None:
    """The registry validates ``sampler:`` with the config, then calls ``DependencyOrderSampler(stage=...)``."""
    register("dependency-order", DependencyOrderSampler, DependencyOrderConfig)


__all__ = ["DependencyOrderConfig", "DependencyOrderSampler", "QuarticSchedule"]
