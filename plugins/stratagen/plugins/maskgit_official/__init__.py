"""Official MaskGIT (google-research/maskgit) in stratagen: its tokenizer and transformer
architectures and a converter for its released flax checkpoints.

- tokenizer ``maskgit-official``: the official VQGAN (:mod:`.tokenizer`);
- prior ``maskgit-bert``: the official BERT-style transformer (:mod:`.transformer`);
- converter ``maskgit-official``: ``stratagen convert maskgit-official --tokenizer FILE
  --transformer FILE OUT_RUN`` writes a run directory that every command uses (:mod:`.convert`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from stratagen.plugins.maskgit import TINY_TRANSFORMER, TransformerConfig
from stratagen.plugins.vqgan import TINY_CONV_VQ, ConvVQConfig, VQGANLossConfig, build_loss
from stratagen.registry import ComponentConfig, hookimpl

from .convert import convert_maskgit_official
from .flax_msgpack import read_flax_checkpoint
from .tokenizer import OfficialVQGANTokenizer
from .transformer import BertMaskedTokenTransformer


class MaskGITOfficialTokenizerConfig(ConvVQConfig):
    """The official VQGAN (defaults: the released ImageNet 256 tokenizer, 128 channels, 1024 x 256 codes)."""

    name: Literal["maskgit-official"] = "maskgit-official"
    codebook_size: int = Field(1024, ge=2)
    embedding_dim: int = Field(256, ge=1)
    loss: VQGANLossConfig = VQGANLossConfig(gan_weight=0.0, perceptual_weight=0.0)


class MaskGITBertConfig(TransformerConfig):
    """The official BERT-style transformer (defaults: the released ImageNet 256 model)."""

    name: Literal["maskgit-bert"] = "maskgit-bert"
    class_dropout: float = Field(0.0, ge=0, le=1, description="official MaskGIT trains without a null class")


class MaskGITOfficialConverterConfig(ComponentConfig):
    name: Literal["maskgit-official"] = "maskgit-official"
    tokenizer: str = Field(description="official VQGAN checkpoint, e.g. tokenizer_imagenet256_checkpoint")
    transformer: str = Field(description="official transformer checkpoint, e.g. maskgit_imagenet256_checkpoint")
    data_root: str = Field("/data/imagenet/train", description="ImageNet train folder, for `eval`")
    steps: int = Field(8, ge=1, description="decoding steps of the run's sampler (official: 8)")


def build_tokenizer(*, resolution: int, loss: VQGANLossConfig, **fields) -> OfficialVQGANTokenizer:
    return OfficialVQGANTokenizer(resolution=resolution, loss=build_loss(resolution, loss), **fields)


@hookimpl
def stratagen_register_tokenizers(register):
    register("maskgit-official", build_tokenizer, MaskGITOfficialTokenizerConfig,
             tiny={k: v for k, v in TINY_CONV_VQ.items() if k != "loss"})


@hookimpl
def stratagen_register_priors(register):
    register("maskgit-bert", BertMaskedTokenTransformer, MaskGITBertConfig, tiny=TINY_TRANSFORMER)


@hookimpl
def stratagen_register_converters(register):
    register("maskgit-official", convert_maskgit_official, MaskGITOfficialConverterConfig)


__all__ = ["BertMaskedTokenTransformer", "OfficialVQGANTokenizer", "convert_maskgit_official",
           "read_flax_checkpoint"]
