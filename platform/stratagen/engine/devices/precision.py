"""The floating-point type each device computes in (``run.inference_dtype``), and the networks
sampling runs: copies of the priors and critics made once in that type.

bf16 pays where the hardware multiplies bf16 natively: CUDA GPUs from Ampere on, and CPUs with
AVX512-BF16 or AMX (on this project's CPU a bf16 matmul ran about 2x as fast as the fastest fp32 one). Without
those instructions PyTorch emulates bf16 on the CPU and it ran slower than fp32, so ``auto``
probes the device (CPU feature flags, not a timing: the answer does not depend on the load).

Sampling does not autocast the priors' fp32 weights: autocast keeps the residual stream and
LayerNorms in fp32 and casts every activation before every matmul (4-6% of a bf16 decode at
8 x 512 on an idle CPU; far more when other jobs contend for the cores). :class:`InferenceNetworks`
instead keeps a copy of each prior and critic whose weights are cast once, so the whole network
computes in bf16 and only its logits are cast back; the decoding arithmetic (softmax, confidences,
Gumbel noise) runs in float32 on float32 logits, and the trained fp32 weights are never touched.
The tokenizers' decoders still run under autocast (:func:`autocast`). On a CPU with oneDNN the
copies' ``nn.Linear`` layers are :class:`OneDNNLinear`, in fp32 too: on this project's AMD CPU
oneDNN's fp32 GEMM ran 1.2-1.6x faster than torch's default (MKL) one.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import Hashable, Literal, Sequence

import torch
from torch import nn

from stratagen.registry import GenerativeModel

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


def onednn_linear_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :class:`OneDNNLinear` runs ``dtype`` on ``device`` (CPU builds with oneDNN; bf16 also
    needs oneDNN's bf16 kernels)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class OneDNNLinear(nn.Module):
    """An inference-only ``nn.Linear`` on the CPU through oneDNN's matmul with the bias fused
    (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor uses for CPU linears).

    ``x`` ``[..., in_features]`` -> ``[..., out_features]`` in the weight's dtype (an input of
    another dtype is cast first, as autocast would). fp32 stays fp32 arithmetic: against
    ``F.linear`` (MKL) only the summation order differs (a few ulp). The op has no backward,
    so calling it with gradients enabled raises.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("OneDNNLinear is for inference only: call it under torch.no_grad()")
        return torch.ops.mkldnn._linear_pointwise(x.to(self.weight.dtype), self.weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def onednn_linear_flops(x_shape: Sequence[int], w_shape: Sequence[int], *args: object, **kwargs: object) -> int:
    """Model FLOPs of one :class:`OneDNNLinear` call, ``2 * rows * in * out`` (a ``FlopCounterMode``
    formula for ``torch.ops.mkldnn._linear_pointwise``, which it does not count by itself)."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


def inference_copies(modules: Sequence[nn.Module], dtype: torch.dtype, device: torch.device) -> list[nn.Module]:
    """Copies of ``modules`` for inference (evaluation mode, no gradients) whose floating-point
    parameters are ``dtype`` (in float32 they share the originals' storage; buffers are always
    shared), with every ``nn.Linear`` a :class:`OneDNNLinear` where oneDNN runs ``dtype`` on
    ``device``. One copy per distinct module, and a module one of them refers to (a critic's
    prior) is that module's copy. The originals are left as they are."""
    memo: dict[int, object] = {}
    for module in modules:
        memo |= {id(b): b for b in module.buffers()}
        memo |= {id(p): nn.Parameter(p.detach().to(dtype) if p.is_floating_point() else p.detach(),
                                     requires_grad=False) for p in module.parameters()}
    copies = [copy.deepcopy(module, memo).eval() for module in modules]
    if onednn_linear_supported(device, dtype):
        for twin in copies:
            for parent in list(twin.modules()):
                for name, child in parent.named_children():
                    if type(child) is nn.Linear:  # not subclasses: MultiheadAttention reads its out_proj's weight
                        setattr(parent, name, OneDNNLinear(child))
    return copies


class InferenceNetworks:
    """The priors and critics sampling runs: :func:`inference_copies` in ``dtype`` on ``device``.

    The copies are made at the first :meth:`model` call and again whenever a weight of the
    originals changed (moved, loaded or trained in place: the key is each parameter's storage
    and version counter), so sampling between training steps sees the current weights.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype = dtype
        self.device = device
        self._key: Hashable = None
        self._model: GenerativeModel | None = None

    def model(self, model: GenerativeModel) -> GenerativeModel:
        """``model`` with its priors and critics replaced by their inference copies (tokenizers shared)."""
        networks = list({id(n): n for n in [*(s.prior for s in model.priors.values()),
                                            *(s.critic for s in model.critics.values())]}.values())
        key = (id(model), *((id(n), *((p.data_ptr(), p._version) for p in n.parameters())) for n in networks))
        if key != self._key:
            twin = dict(zip(map(id, networks), inference_copies(networks, self.dtype, self.device)))
            self._model = dataclasses.replace(
                model, priors={pid: dataclasses.replace(s, prior=twin[id(s.prior)]) for pid, s in model.priors.items()},
                critics={cid: dataclasses.replace(s, critic=twin[id(s.critic)]) for cid, s in model.critics.items()})
            self._key = key
        return self._model
