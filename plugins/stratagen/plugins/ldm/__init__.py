"""Tokenizers on the LDM/taming autoencoder and converters for official VAR and LlamaGen checkpoints.

- tokenizer ``llamagen-vq``: LlamaGen's VQ (one level, l2-normalised codes; VQ-16 by default);
- tokenizer ``var-vqvae``: VAR's VQVAE (multi-scale residual VQ with partially shared phi, levels
  ``s1 .. sK``, the ``msvq`` contract) on the LDM networks;
- converter ``var-official``: ``stratagen convert var-official --vae VAE.pth --var VAR.pth OUT``
  (:mod:`.convert_var`), a run with ``var-vqvae`` and the ``var`` prior in VAR's official mode;
- converter ``llamagen-vq``: ``stratagen convert llamagen-vq --checkpoint VQ.pt OUT``
  (:mod:`.convert_llamagen`).

Checkpoints load with ``torch.load(weights_only=True)`` only (:func:`stratagen.io.checkpoint.load_torch_file`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stratagen.plugins.var import MultiScaleVQConfig
from stratagen.plugins.vqgan import TINY_CONV_VQ, ConvVQConfig, VQGANLossConfig, build_loss
from stratagen.registry import ComponentConfig, ConfigError, hookimpl

from .convert_llamagen import convert_llamagen_vq
from .convert_var import convert_var_official
from .tokenizer import LDMVQTokenizer, build_var_tokenizer

#: the official releases train their tokenizers elsewhere: no perceptual or adversarial loss by default
NO_GAN = VQGANLossConfig(gan_weight=0.0, perceptual_weight=0.0)


class LDMNetworkFields(BaseModel):
    """Settings of the LDM encoder/decoder beyond ``channels``, ``channel_mult``, ``num_res_blocks``
    (:class:`stratagen.nn.LDMEncoder`)."""

    model_config = ConfigDict(extra="forbid")
    z_channels: int = Field(256, ge=1, description="channels before the quant conv (taming's z_channels)")
    attention_levels: tuple[int, ...] | None = Field(
        None, description="levels (0: full resolution) whose blocks are followed by self-attention; "
                          "default: the coarsest level only (taming's attn_resolutions [16] at 256 px, f16)")
    mid_attention: bool = Field(True, description="self-attention between the two middle blocks")
    quant_kernel: Literal[1, 3] = Field(1, description="kernel of the quant / post-quant convs (VAR: 3)")

    @model_validator(mode="after")
    def _levels_exist(self) -> "LDMNetworkFields":
        levels = len(getattr(self, "channel_mult", ()))
        if self.attention_levels is not None and any(not 0 <= i < levels for i in self.attention_levels):
            raise ValueError(f"attention_levels {list(self.attention_levels)} must index the {levels} levels of "
                             f"channel_mult (0 .. {levels - 1})")
        return self


class LlamaGenVQConfig(ConvVQConfig, LDMNetworkFields):
    """LlamaGen's VQ (defaults: VQ-16, 16384 codes of 8 channels, l2-normalised, z 256, width 128)."""

    name: Literal["llamagen-vq"] = "llamagen-vq"
    codebook_size: int = Field(16384, ge=2)
    embedding_dim: int = Field(8, ge=1)
    l2_normalized_codes: bool = Field(True, description="LlamaGen: l2-normalised latents and codes")
    loss: VQGANLossConfig = NO_GAN


class VarVQVAEConfig(MultiScaleVQConfig, LDMNetworkFields):
    """VAR's VQVAE (defaults: ``vae_ch160v4096z32``: width 160, 4096 codes of 32 channels, z 32, f16,
    quant convs 3x3, 4 partially shared phi, scales 1 .. 16)."""

    name: Literal["var-vqvae"] = "var-vqvae"
    z_channels: int = Field(32, ge=1, description="channels before the quant conv (VAR: the code dimension)")
    quant_kernel: Literal[1, 3] = Field(3, description="kernel of the quant / post-quant convs (VAR: 3)")
    shared_phis: int = Field(4, ge=0, description="0: one phi conv per scale; n: VAR's partially shared phi (VAR: 4)")
    loss: VQGANLossConfig = NO_GAN


class VarOfficialConverterConfig(ComponentConfig):
    name: Literal["var-official"] = "var-official"
    vae: str = Field(description="VAR's VQVAE state dict, e.g. vae_ch160v4096z32.pth")
    var: str = Field(description="VAR's transformer state dict, e.g. var_d16.pth")
    patch_nums: str | None = Field(None, description="token-grid sides of the scales, coarse to fine (default: read "
                                   "from the checkpoint's level table, lvl_1L; VAR's 256 px: 1,2,3,4,5,6,8,10,13,16)")
    data_root: str = Field("/data/imagenet/train", description="ImageNet train folder, for `eval`")
    guidance_scale: float = Field(1.5, ge=0, description="classifier-free guidance (VAR's FID setting: 1.5)")
    top_k: int = Field(900, ge=0, description="top-k of sampling (VAR's FID setting: 900)")
    top_p: float = Field(0.96, gt=0, le=1, description="top-p of sampling (VAR's FID setting: 0.96)")


class LlamaGenConverterConfig(ComponentConfig):
    name: Literal["llamagen-vq"] = "llamagen-vq"
    checkpoint: str = Field(description="LlamaGen's VQ checkpoint, e.g. vq_ds16_c2i.pt")
    resolution: int = Field(256, ge=1, description="image size of the run (LlamaGen c2i: 256 or 384)")
    data_root: str = Field("/data/imagenet/train", description="image folder of the run (without --config)")
    num_classes: int = Field(1000, ge=1, description="classes of that folder (without --config)")
    config: str | None = Field(None, description="run config whose data, priors, sampler and eval the run takes "
                                                 "(priors on vq.tokens; then `stratagen train OUT --resume`)")


def build_llamagen_vq(*, resolution: int, loss: VQGANLossConfig, **fields) -> LDMVQTokenizer:
    try:
        return LDMVQTokenizer(resolution=resolution, loss=build_loss(resolution, loss), **fields)
    except ValueError as exc:
        raise ConfigError(f"llamagen-vq: {exc}") from None


def build_var_vqvae(*, resolution: int, loss: VQGANLossConfig, **fields):
    try:
        return build_var_tokenizer(resolution=resolution, loss=build_loss(resolution, loss), **fields)
    except ValueError as exc:
        raise ConfigError(f"var-vqvae: {exc}") from None


TINY_LDM = {k: v for k, v in TINY_CONV_VQ.items() if k != "loss"} | {"z_channels": 8}


@hookimpl
def stratagen_register_tokenizers(register):
    register("llamagen-vq", build_llamagen_vq, LlamaGenVQConfig, tiny=TINY_LDM)
    register("var-vqvae", build_var_vqvae, VarVQVAEConfig, tiny=TINY_LDM | {"scales": [1, 2, 4], "shared_phis": 2})


@hookimpl
def stratagen_register_converters(register):
    register("var-official", convert_var_official, VarOfficialConverterConfig)
    register("llamagen-vq", convert_llamagen_vq, LlamaGenConverterConfig)


__all__ = ["LDMVQTokenizer", "build_var_tokenizer", "convert_llamagen_vq", "convert_var_official"]
