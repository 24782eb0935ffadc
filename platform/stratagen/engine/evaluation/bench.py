"""Measure a config's speed against the hardware it runs on: seconds, FLOPs and MFU.

Every row times one operation (a training step of one component, or one sampler call at one
batch size, with or without classifier-free guidance) after a warm-up, with the device
synchronized around the timing. Its FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``
on one run of the same operation: matrix multiplications, convolutions and attention (SDPA), i.e.
the model FLOPs; element-wise work (norms, softmax, sampling) is not counted. A training step runs
with the component's ``checkpoint_activations`` and ``compile`` settings, and its FLOPs are counted
without them (recomputed activations are not model FLOPs). The peak is a dense
square matmul in the dtype the row computes in, measured in the same run (at the start and again at
the end; the larger is used), and MFU = achieved FLOP/s / peak FLOP/s. Random token grids stand
in for a token cache and untrained weights for trained ones (speed does not depend on them).
Figures are printed, never asserted.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from stratagen.io.run import Run
from stratagen.registry import StratagenError

from ..build import BuiltRun, build
from ..devices.parallel import block_options
from ..devices.precision import inference_dtype, onednn_linear_flops, onednn_linear_supported
from ..devices.processes import Processes
from ..pipeline import Pipeline
from ..training.train import autocast as train_autocast
from ..training.train import stack_batch

#: classifier-free guidance scale of the "with guidance" rows when the config sets none (StraIT Table 3)
DEFAULT_GUIDANCE = 0.2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], Any], device: torch.device, repeats: int, min_seconds: float = 0.5) -> float:
    """Mean wall time of ``fn`` after one warm-up call: at least ``repeats`` calls and ``min_seconds``."""
    fn()
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while calls < repeats or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
        synchronize(device)
    return (time.perf_counter() - start) / calls


def count_flops(fn: Callable[[], Any]) -> int:
    """Model FLOPs of one call of ``fn`` (matmuls, convolutions, attention, oneDNN linears; FlopCounterMode)."""
    onednn = {torch.ops.mkldnn._linear_pointwise: onednn_linear_flops} if torch.backends.mkldnn.is_available() else {}
    with FlopCounterMode(display=False, custom_mapping=onednn) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """FLOP/s of a dense square ``dtype`` matmul (4096 on CUDA, 2048 on the CPU) on ``device``: the
    faster of ``torch.matmul`` and, where the inference copies use it, oneDNN's linear
    (:class:`stratagen.engine.devices.precision.OneDNNLinear`; in fp32 on AMD CPUs it beats the default GEMM)."""
    n = 4096 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    kernels = [lambda: a @ b]
    if onednn_linear_supported(device, dtype):
        kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    return max(2 * n**3 / seconds_per_call(k, device, repeats, min_seconds=0.3) for k in kernels)


def training_rows(built: BuiltRun, device: torch.device, repeats: int, tokenizers: bool = True,
                  priors: bool = True) -> list[dict[str, Any]]:
    """One train step (forward, loss, backward) of every tokenizer and/or prior, as training runs it on
    one process: autocast as configured, blocks checkpointed and/or compiled as ``train:`` says."""
    config, model = built.config, built.model
    procs = Processes(device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for tid, tokenizer in model.tokenizers.items():
        if not tokenizers or not model.owns_weights(tid):
            continue
        data = built.dataset("train")
        tokenizer.to(device).train()
        batch = config.tokenizers[tid].train.batch_size
        images = stack_batch(data, torch.arange(batch) % len(data), model.resolution_of(tid))[0].to(device)

        def step(tokenizer=tokenizer, images=images):
            with train_autocast(procs):
                losses, _ = tokenizer.losses(images, 10**9)
            sum(losses.values()).backward()
        rows.append(row(f"tokenizer {tid}", train_step_name(config.tokenizers[tid].train), batch, dtype, step,
                        device, repeats, options_for(tokenizer, config.tokenizers[tid].train)))
    for pid, slot in model.priors.items() if priors else ():
        prior = slot.prior.to(device).train()
        batch = config.priors[pid].train.batch_size
        tokens = torch.randint(0, prior.target.codebook_size, (batch, prior.target.height, prior.target.width),
                               device=device)
        conditions = [torch.randint(0, c.codebook_size, (batch, c.height, c.width), device=device)
                      for c in prior.conditions]
        labels = torch.randint(0, model.num_classes, (batch,), device=device)
        generator = torch.Generator(device).manual_seed(0)

        def prior_step(prior=prior, tokens=tokens, conditions=conditions, labels=labels, pid=pid):
            with train_autocast(procs):
                loss = prior.loss(tokens, labels, conditions, built.schedules[pid], generator).loss
            loss.backward()
        rows.append(row(f"prior {pid}", train_step_name(config.priors[pid].train), batch, dtype, prior_step,
                        device, repeats, options_for(prior, config.priors[pid].train)))
    return rows


def options_for(module: torch.nn.Module, train: Any) -> Callable[[], contextlib.AbstractContextManager]:
    """The block options a component trains with (``train.checkpoint_activations``, ``train.compile``)."""
    return lambda: block_options(module, train.checkpoint_activations, train.compile)


def train_step_name(train: Any) -> str:
    """``"train step"`` plus the block options it runs with, e.g. ``"train step, checkpointed, compiled"``."""
    return ", ".join(["train step"] + ["checkpointed"] * train.checkpoint_activations + ["compiled"] * train.compile)


def sampling_rows(built: BuiltRun, device: torch.device, batches: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """The config's sampler at each batch size, without and with classifier-free guidance."""
    if built.sampler is None:
        return []
    pipe = Pipeline(built, Run(built.config.run.dir), device).ready()  # untrained weights: nothing is loaded
    config = built.config.sampler
    stages = [getattr(config, name) for name in config.stage_names()]
    scale = max(s.guidance_scale for s in stages) or DEFAULT_GUIDANCE
    rows = []
    for guidance in (0.0, scale):
        sampler = pipe.sampler(config.with_setting("guidance_scale", guidance))
        for batch in batches:
            classes = [i % built.model.num_classes for i in range(batch)]
            what = "sample" + (f", guidance {guidance:g}" if guidance else "")
            rows.append(row(f"sampler {config.name}", what, batch, pipe.dtype,
                            lambda: pipe.sample(classes, seed=0, sampler=sampler), device, repeats))
    return rows


def row(component: str, what: str, batch: int, dtype: torch.dtype, fn: Callable[[], Any], device: torch.device,
        repeats: int, options: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        ) -> dict[str, Any]:
    """One timed, FLOP-counted operation (``peak``/``mfu`` are filled in by :func:`benchmark`); it is
    timed within ``options()`` and its FLOPs are counted outside."""
    flops = count_flops(fn)
    with options():
        seconds = seconds_per_call(fn, device, repeats)
    return {"component": component, "what": what, "batch": batch, "dtype": str(dtype).removeprefix("torch."),
            "seconds": seconds, "seconds_per_image": seconds / batch, "flops": flops,
            "flops_per_image": flops / batch, "achieved_flops": flops / seconds}


PARTS = ("tokenizers", "priors", "sample")


def benchmark(config: Any, repeats: int = 3, batches: Sequence[int] = (1, 8, 32, 128),
              parts: Sequence[str] = PARTS) -> dict[str, Any]:
    """``{"device", "threads", "torch", "peaks": {dtype: {"start", "end"}}, "rows": [...]}`` for the
    ``parts`` asked for (tokenizer train steps, prior train steps, sampling); each row has
    ``seconds``, ``seconds_per_image``, ``flops``, ``achieved_flops``, ``peak_flops`` and ``mfu``.
    Sampling computes in ``run.inference_dtype``, training as :func:`stratagen.engine.training.train.autocast`."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise StratagenError(f"bench: unknown parts {sorted(unknown)}; parts: {', '.join(PARTS)}")
    device = torch.device("cuda" if config.run.device != "cpu" and torch.cuda.is_available() else "cpu")
    built = build(config)
    train = "tokenizers" in parts or "priors" in parts
    sample = "sample" in parts and built.sampler is not None
    dtypes = {torch.bfloat16 if device.type == "cuda" else torch.float32} if train else set()
    if sample:
        dtypes.add(inference_dtype(config.run.inference_dtype, device))
    start = {dtype: matmul_peak(device, dtype) for dtype in dtypes}
    rows = training_rows(built, device, repeats, "tokenizers" in parts, "priors" in parts) if train else []
    rows += sampling_rows(built, device, batches, repeats) if sample else []
    end = {dtype: matmul_peak(device, dtype) for dtype in dtypes}
    peaks = {str(d).removeprefix("torch."): {"start": start[d], "end": end[d]} for d in dtypes}
    for r in rows:
        r["peak_flops"] = max(peaks[r["dtype"]].values())
        r["mfu"] = r["achieved_flops"] / r["peak_flops"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "threads": torch.get_num_threads(), "torch": torch.__version__, "peaks": peaks,
            "rows": rows}
