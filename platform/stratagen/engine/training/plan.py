"""The training plan: a dependency graph of stages derived from the model, run in topological order.

Stages are ``tokenizer:<id>`` (trained on images), ``tokens:<tokenizer id>`` (the token
cache, made with that tokenizer's trained weights), and one stage per component trained
on tokens: ``prior:<id>`` and ``critic:<id>``. A component trained on tokens comes after
the caches of its streams and after every component it uses (a critic after its prior, a
prior with condition augmentation after the priors of its conditions).
"""
from __future__ import annotations

from dataclasses import dataclass

from stratagen.registry import GenerativeModel, StratagenError, split_stream_key


@dataclass(frozen=True)
class TrainingStage:
    """One unit of training work and the stages it waits for."""

    kind: str  # "tokenizer", "tokens", "prior" or "critic"
    cid: str
    after: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.cid}"


def training_plan(model: GenerativeModel, augmented_priors: frozenset[str] = frozenset()) -> list[TrainingStage]:
    """Every stage of ``model`` in an order that respects its dependencies (declaration order
    among independent stages). ``augmented_priors``: priors trained with condition augmentation,
    which run the priors of their conditions."""

    def cache(stream: str) -> str:
        return f"tokens:{split_stream_key(stream)[0]}"

    stages = [TrainingStage("tokenizer", tid) for tid in model.tokenizers if model.owns_weights(tid)]
    streamed = [s for slot in model.priors.values() for s in (slot.target, *slot.conditions)]
    for tid in dict.fromkeys(split_stream_key(s)[0] for s in streamed):
        stages.append(TrainingStage("tokens", tid, (f"tokenizer:{model.shared.get(tid, tid)}",)))
    for pid, slot in model.priors.items():
        uses = [f"prior:{_prior_id(model, c)}" for c in slot.conditions] if pid in augmented_priors else []
        stages.append(TrainingStage("prior", pid, tuple(dict.fromkeys(
            [cache(s) for s in (slot.target, *slot.conditions)] + uses))))
    for cid, slot in model.critics.items():
        stages.append(TrainingStage("critic", cid, tuple(dict.fromkeys(
            [cache(s) for s in (slot.target, *slot.conditions)] + [f"prior:{slot.prior}"]))))
    return _topological(stages)


def _prior_id(model: GenerativeModel, stream: str) -> str:
    slot = model.prior_for(stream)
    return next(pid for pid, s in model.priors.items() if s is slot)


def _topological(stages: list[TrainingStage]) -> list[TrainingStage]:
    pending = {s.key: s for s in stages}
    unknown = {a for s in stages for a in s.after if a not in pending}
    if unknown:
        raise StratagenError(f"training plan: stages wait for {sorted(unknown)}, which nothing trains")
    done: list[TrainingStage] = []
    finished: set[str] = set()
    while pending:
        ready = [s for s in pending.values() if set(s.after) <= finished]
        if not ready:
            raise StratagenError("training plan: these stages wait for each other: " + ", ".join(pending))
        for stage in ready:
            done.append(pending.pop(stage.key))
            finished.add(stage.key)
    return done
