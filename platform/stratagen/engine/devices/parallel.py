"""How one component trains across processes, and what each of its training steps runs.

``train.parallel`` chooses:

- ``ddp``: every process holds the whole component and gradients are averaged once per step,
  after its last micro-batch (DistributedDataParallel for priors and critics; an explicit
  all-reduce for tokenizers, whose generator and discriminator back-propagate separately
  over one forward).
- ``fsdp`` (priors and critics): FSDP2 (``fully_shard``) shards parameters, gradients and
  optimizer state per block; on CUDA parameters are gathered in bf16 and gradients reduced
  in fp32. The shards live in a training copy; :meth:`Replica.gather` writes its whole weights
  back into the component, which checkpoints and sampling read, so checkpoints stay plain
  safetensors of the whole model and resume under either strategy.

Per block (:data:`BLOCKS`), with either strategy: activation checkpointing
(``train.checkpoint_activations``: a block's activations are recomputed in the backward pass
instead of stored) and ``torch.compile`` (``train.compile``).
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.utils.checkpoint import checkpoint

from stratagen.io import checkpoint as checkpoint_io
from stratagen.nn import AdaLNBlock, PostNormBlock, ResBlock, TransformerBlock

from .processes import Processes, average_gradients

#: the units of sharding, activation checkpointing and compilation
BLOCKS = (TransformerBlock, PostNormBlock, AdaLNBlock, ResBlock)

Groups = dict[str, list[nn.Parameter]]


def blocks(module: nn.Module) -> list[nn.Module]:
    """The outermost :data:`BLOCKS` inside ``module``, in order."""
    found: list[nn.Module] = []
    for child in module.children():
        found.extend([child] if isinstance(child, BLOCKS) else blocks(child))
    return found


@contextlib.contextmanager
def block_options(module: nn.Module, checkpoint_activations: bool, compile_blocks: bool) -> Iterator[None]:
    """Within the context, ``module``'s blocks recompute their activations in the backward pass
    and/or run compiled; afterwards they are as before (sampling runs them plainly)."""
    found = blocks(module)
    for block in found:
        if checkpoint_activations:
            block.forward = _checkpointed(block.forward)
        if compile_blocks:
            block.compile()
    try:
        yield
    finally:
        for block in found:
            if checkpoint_activations:
                del block.forward
            if compile_blocks:
                block._compiled_call_impl = None


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)
    return run


#: methods of a block that compute with its weights outside ``forward`` (a prior projects its
#: conditions into every block's cross-attention keys and values once per call): FSDP gathers the
#: block's parameters around them as around ``forward``
FORWARD_METHODS = ("project_context",)


@contextlib.contextmanager
def replicate(module: nn.Module, objective: Callable[[nn.Module], nn.Module] | None,
              groups: Callable[[nn.Module], Groups], settings: Any, procs: Processes) -> Iterator["Replica"]:
    """``module`` made ready to train on this process under ``settings`` (``parallel``,
    ``checkpoint_activations``, ``compile``); when the context closes, it is as before.

    Args:
        module: the whole component; checkpoints are written from it and sampling reads it.
        objective: wraps a module into what a training step calls (a prior's loss as
            ``forward``), or None: steps call the component's own methods (tokenizers).
        groups: the parameter groups (one optimizer each) of a module.
    """
    sharded = settings.parallel == "fsdp" and procs.world > 1
    trained = copy.deepcopy(module) if sharded else module
    with block_options(trained, settings.checkpoint_activations, settings.compile):
        step = objective(trained) if objective is not None else trained
        if sharded:
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
                if procs.device.type == "cuda" else MixedPrecisionPolicy()
            for block in blocks(step):
                fully_shard(block, mp_policy=policy)
                for method in FORWARD_METHODS:
                    if hasattr(block, method):
                        register_fsdp_forward_method(block, method)
            fully_shard(step, mp_policy=policy)
        elif procs.world > 1 and objective is not None:
            step = nn.parallel.DistributedDataParallel(
                step, device_ids=None if procs.device.type == "cpu" else [procs.device.index])
        with warnings.catch_warnings():
            # FSDP warns that project_context returns views (keys and values of one projection):
            # an in-place op on them would skip its all-gather, and none is made
            warnings.filterwarnings("ignore", r"FSDP2-wrapped module \(.*\) returned a view tensor", UserWarning)
            yield Replica(module, step, groups(trained), sharded, procs)


class Replica:
    """A component as this process trains it (made by :func:`replicate`).

    ``module`` is the whole component; ``step_module`` is what a training step calls: the
    component itself, its objective, the objective under DistributedDataParallel, or (fsdp) the
    objective of a sharded copy; ``groups`` are the parameter groups the optimizers step.
    """

    def __init__(self, module: nn.Module, step_module: nn.Module, groups: Groups, sharded: bool,
                 procs: Processes):
        self.module, self.step_module, self.groups, self.sharded, self.procs = \
            module, step_module, groups, sharded, procs

    @contextlib.contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        """Forward and backward of one micro-batch; gradients are reduced over the processes only
        after the ``last`` one of a step."""
        if isinstance(self.step_module, nn.parallel.DistributedDataParallel) and not last:
            with self.step_module.no_sync():
                yield
        else:
            if isinstance(self.step_module, FSDPModule):
                self.step_module.set_requires_gradient_sync(last)
            yield

    def reduce_gradients(self, params: list[nn.Parameter]) -> None:
        """Average ``params``' gradients over the processes where no wrapper did (tokenizers)."""
        if self.procs.world > 1 and self.step_module is self.module:
            average_gradients(params, self.procs)

    def gather(self) -> None:
        """Write the training copy's whole weights into the component (every process calls it)."""
        if self.sharded:
            state = get_model_state_dict(self.step_module, options=StateDictOptions(full_state_dict=True))
            self.module.load_state_dict({_inner(k): v for k, v in state.items()})

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The whole optimizer state in the layout of :func:`stratagen.io.checkpoint.optimizer_state`
        (parameters by index), whatever the strategy (every process calls it; under FSDP only
        process 0 receives it, the others get empty dicts)."""
        if not self.sharded:
            return checkpoint_io.optimizer_state(optimizer)
        full = get_optimizer_state_dict(self.step_module, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not full:
            return {}, {}
        index = {name: i for i, name in enumerate(self._names(optimizer))}
        tensors, scalars = {}, {}
        for name, values in full["state"].items():
            for key, value in values.items():
                (tensors if isinstance(value, torch.Tensor) else scalars)[f"{index[name]}.{key}"] = value
        groups = [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]
        return tensors, {"param_groups": groups, "scalars": scalars}

    def load(self, model: dict[str, torch.Tensor], optimizers: dict[str, tuple[torch.optim.Optimizer, dict, dict]]
             ) -> None:
        """Resume: ``model``, the component's state dict (already loaded into :attr:`module`), and per
        optimizer its (optimizer, tensors, meta) in the layout of :meth:`optimizer_state`."""
        if not self.sharded:
            for optimizer, tensors, meta in optimizers.values():
                checkpoint_io.load_optimizer_state(optimizer, tensors, meta)
            return
        # Every process must distribute the tensors in the same order (safetensors files have none).
        options = StateDictOptions(full_state_dict=True)
        own = self.step_module.state_dict()
        set_model_state_dict(self.step_module, {k: model[_inner(k)] for k in own}, options=options)
        for optimizer, tensors, meta in optimizers.values():
            names = self._names(optimizer)
            values = {**tensors, **meta["scalars"]}
            state: dict[str, dict[str, Any]] = {}
            for key in sorted(values, key=lambda k: (int(k.split(".", 1)[0]), k)):
                i, name = key.split(".", 1)
                state.setdefault(names[int(i)], {})[name] = values[key]
            groups = [{**g, "params": [names[i] for i in g["params"]]} for g in meta["param_groups"]]
            set_optimizer_state_dict(self.step_module, optimizer, {"state": state, "param_groups": groups},
                                     options=options)

    def _names(self, optimizer: torch.optim.Optimizer) -> list[str]:
        """The names (in the training module) of ``optimizer``'s parameters, in its order."""
        names = {id(p): n for n, p in self.step_module.named_parameters()}
        return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _inner(name: str) -> str:
    """A parameter's name in the component, from its name in the objective that wraps it."""
    return name.removeprefix("module.")
