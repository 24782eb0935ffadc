"""The floating-point type each device computes in (``run.inference_dtype``), and autocast to it.

bf16 pays where the hardware multiplies bf16 natively: CUDA GPUs from Ampere on, and CPUs with
AVX512-BF16 or AMX (on this project's CPU a bf16 matmul ran 3-4x faster than fp32). Without
those instructions PyTorch emulates bf16 on the CPU and it ran slower than fp32, so ``auto``
probes the device (CPU feature flags, not a timing: the answer does not depend on the load).
Autocast covers the networks (matmuls, attention, convolutions); the decoding arithmetic
(softmax, confidences, Gumbel noise) runs in float32 on the float32 logits.
"""
from __future__ import annotations

import contextlib
from typing import Literal

import torch

DtypeSetting = Literal["auto", "float32", "bfloat16"]


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware (CUDA: compute capability 8.0 or newer;
    CPU: AVX512-BF16 or AMX tiles)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def inference_dtype(setting: DtypeSetting, device: torch.device) -> torch.dtype:
    """``torch.bfloat16`` or ``torch.float32`` for ``setting`` on ``device`` (``auto``: bf16 where native)."""
    if setting == "auto":
        return torch.bfloat16 if bf16_native(device) else torch.float32
    return torch.bfloat16 if setting == "bfloat16" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` (nothing for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
