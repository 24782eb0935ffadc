"""The MaskGIT sampler: one stream decoded from a blank (or partly known) canvas."""
from __future__ import annotations

from stratagen.registry import GenerativeModel, IncompatibleComponentsError, Stage, StageSettings, split_stream_key
from stratagen.sampling import StagedSampler


class MaskGITSampler(StagedSampler):
    """MaskGIT: one stream decoded from a blank (or partly known) canvas, then decoded by its tokenizer.

    Args:
        stage: decoding settings.
        stream: the stream to decode, ``"<tokenizer>.<level>"``; by default the only
            prior's target. On a StraIT model, the top level alone (VQGAN2-R decodes it
            without the bottom residual); on the cascade, the f16 stage alone.
    """

    def __init__(self, stage: StageSettings = StageSettings(), stream: str | None = None):
        self.stage = stage
        self.stream = stream

    def _stream(self, model: GenerativeModel) -> str:
        if self.stream is not None:
            return self.stream
        unconditioned = [s.target for s in model.priors.values() if not s.conditions]
        if len(unconditioned) != 1:
            raise IncompatibleComponentsError(
                "the maskgit sampler decodes one stream; set sampler.stream to one of: "
                + ", ".join(s.target for s in model.priors.values()))
        return unconditioned[0]

    def check(self, model: GenerativeModel) -> None:
        stream = self._stream(model)
        try:
            model.prior_for(stream)
        except IncompatibleComponentsError as exc:
            raise IncompatibleComponentsError(f"the maskgit sampler decodes one stream from scratch, but {exc}; "
                                              f"use the stratified or cascade sampler") from None
        tokenizer_id, level = split_stream_key(stream)
        tokenizer = model.tokenizers[tokenizer_id]
        if not tokenizer.can_decode({level}):
            raise IncompatibleComponentsError(
                f"tokenizer {tokenizer_id!r} cannot decode level {level!r} alone "
                f"(it needs {list(tokenizer.level_names)}); use a sampler that generates every level")

    def stages(self, model: GenerativeModel) -> list[Stage]:
        return [Stage(self._stream(model), self.stage)]

    def output_tokenizer(self, model: GenerativeModel) -> str:
        return split_stream_key(self._stream(model))[0]
