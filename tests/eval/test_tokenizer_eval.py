"""Tokenizer evaluation (StraIT Table 1): PSNR, per-level perplexity and usage, rFID wiring."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from stratagen.data import SyntheticShapes
from stratagen.eval import Metric, ReferenceSet, evaluate_tokenizer, level_swap_examples, psnr, to_uint8
from stratagen.eval.tokenizer_eval import swap_partners
from stratagen.nn import codebook_stats
from stratagen.plugins.strait import build_vqgan2
from stratagen.plugins.vqgan import VQGANLossConfig, build_vqgan
from stratagen.registry import LevelSpec, StratagenError, TokenGrids, Tokenizer

BATCH = 8


@pytest.fixture
def vqgan():
    torch.manual_seed(0)
    return build_vqgan(resolution=32, factor=4, loss=VQGANLossConfig(gan_weight=0.0), channels=16,
                       channel_mult=(1, 2, 2), num_res_blocks=1, codebook_size=64, embedding_dim=8,
                       commitment_cost=0.25, restart_dead_codes=False)


@pytest.fixture(scope="module")
def data() -> SyntheticShapes:
    return SyntheticShapes(10, 32, 20, seed=3)  # batches of 8, 8, 4


def test_psnr_by_hand() -> None:
    images = torch.zeros(2, 3, 4, 4)
    off = images.clone()
    off[1] += 0.2  # error 0.1 on [0, 1]: 20 dB
    assert psnr(images, off).tolist() == pytest.approx([100.0, 20.0])


def test_psnr_of_known_reconstruction_error(vqgan, data, monkeypatch) -> None:
    """decode(encode(x)) = x moved 0.1 towards 0: every pixel is off by 0.05 on [0, 1], 26.02 dB."""
    seen: list[torch.Tensor] = []
    encode = vqgan.encode

    def remembering_encode(images: torch.Tensor):
        seen.append(images)
        return encode(images)

    monkeypatch.setattr(vqgan, "encode", remembering_encode)
    monkeypatch.setattr(vqgan, "decode", lambda tokens: seen[-1] - 0.1 * torch.where(seen[-1] >= 0, 1.0, -1.0))
    result = evaluate_tokenizer(vqgan, data, BATCH, "cpu")
    assert result["psnr"] == pytest.approx(20 * math.log10(1 / 0.05), abs=1e-4)


def test_perplexity_and_usage_equal_codebook_stats(vqgan, data) -> None:
    vqgan.train()
    result = evaluate_tokenizer(vqgan, data, BATCH, "cpu")
    assert vqgan.training  # mode restored
    vqgan.eval()
    with torch.no_grad():
        batches = [vqgan.encode(images)["tokens"] for images, _ in DataLoader(data, batch_size=BATCH)]
    per_batch = torch.tensor([codebook_stats(t, 64)[0] for t in batches], dtype=torch.float64)
    dataset_ppl, usage = codebook_stats(torch.cat(batches), 64)
    assert result["ppl_tokens"] == pytest.approx(per_batch.mean().item())
    assert result["ppl_std_tokens"] == pytest.approx(per_batch.std(unbiased=False).item())
    assert result["ppl_dataset_tokens"] == pytest.approx(dataset_ppl)
    assert result["usage_tokens"] == pytest.approx(usage)
    assert set(result) == {"psnr", "ppl_tokens", "ppl_std_tokens", "ppl_dataset_tokens", "usage_tokens"}
    assert 0 < result["psnr"] < 100


class RecordingMetric(Metric):
    """Records what it is asked to score; reports a fixed FID."""

    def __init__(self, fid: float | None = 1.5):
        self.fid = fid
        self.calls: list[tuple[torch.Tensor, torch.Tensor, ReferenceSet]] = []

    def compute(self, generated: torch.Tensor, labels: torch.Tensor, reference: ReferenceSet) -> dict[str, float]:
        self.calls.append((generated, labels, reference))
        return {} if self.fid is None else {"fid": self.fid}


def test_rfid_scores_reconstructions_against_the_dataset(vqgan, data, tmp_path) -> None:
    metric = RecordingMetric()
    result = evaluate_tokenizer(vqgan, data, BATCH, "cpu", fid_metric=metric, cache_dir=tmp_path)
    assert result["rfid"] == 1.5
    (generated, labels, reference), = metric.calls
    with torch.no_grad():
        images = data.images.float() / 127.5 - 1
        expected = to_uint8(vqgan.decode(vqgan.encode(images))).float() / 127.5 - 1
    torch.testing.assert_close(generated, expected, atol=1 / 127.5 + 1e-6, rtol=0)  # batching may flip a rounding
    assert torch.equal(labels, data.labels)
    assert reference.dataset is data and reference.cache_dir == str(tmp_path)


def test_rfid_needs_a_cache_dir_and_a_fid(vqgan, data, tmp_path) -> None:
    with pytest.raises(StratagenError, match="cache_dir"):
        evaluate_tokenizer(vqgan, data, BATCH, "cpu", fid_metric=RecordingMetric())
    with pytest.raises(StratagenError, match="no fid"):
        evaluate_tokenizer(vqgan, data, BATCH, "cpu", fid_metric=RecordingMetric(fid=None), cache_dir=tmp_path)


class StoredImages(Tokenizer):
    """A two-level tokenizer over a known image list: ``top`` names the image (id = its index), ``bottom``
    adds nothing; decoding returns the stored image of the top id. All the image lives in the top level."""

    level_names = ("top", "bottom")

    def __init__(self, images: torch.Tensor, top_alone: bool):
        super().__init__()
        self.images, self.top_alone = images, top_alone

    def level_specs(self, resolution: int):
        return (LevelSpec("top", 1, 1, len(self.images)), LevelSpec("bottom", 2, 2, 4))

    def encode(self, images: torch.Tensor) -> TokenGrids:
        ids = (images[:, None] - self.images[None]).flatten(2).abs().amax(2).argmin(1)
        return TokenGrids({"top": ids.view(-1, 1, 1), "bottom": torch.zeros(len(ids), 2, 2, dtype=torch.long)})

    def decode(self, tokens):
        return self.images[tokens["top"].flatten()]

    def can_decode(self, levels: set[str]) -> bool:
        return levels == {"top", "bottom"} or (self.top_alone and levels == {"top"})

    def autoencode(self, images):
        raise AssertionError("not used")

    def parameter_groups(self):
        return {}

    def losses(self, images, step):
        raise AssertionError("not used")


def test_swap_partners_is_a_seeded_derangement() -> None:
    for batch in (2, 3, 8, 13):
        partner = swap_partners(batch, torch.Generator().manual_seed(0))
        assert sorted(partner.tolist()) == list(range(batch))  # a permutation: each image is a B once
        assert (partner != torch.arange(batch)).all()
        assert torch.equal(partner, swap_partners(batch, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("top_alone", [True, False])
def test_level_swap_when_the_top_level_carries_everything(data, top_alone: bool) -> None:
    images = torch.stack([data[i][0] for i in range(len(data))])
    result = evaluate_tokenizer(StoredImages(images, top_alone), data, BATCH, "cpu")
    assert result["psnr"] == 100.0
    assert result["swap_keep_top_psnr"] == 100.0 and result["swap_keep_top_psnr_image_std"] == 0.0
    # keeping only the bottom level gives back image B, exactly what an unrelated image scores
    assert result["swap_keep_bottom_psnr"] == pytest.approx(result["swap_other_psnr"])
    assert result["swap_other_psnr"] < 20
    # the pairs are the seeded derangement of each batch (8, 8, 4)
    generator = torch.Generator().manual_seed(0)
    expected = torch.cat([psnr(images[s:s + n], images[s:s + n][swap_partners(n, generator)])
                          for s, n in ((0, 8), (8, 8), (16, 4))])
    assert result["swap_other_psnr"] == pytest.approx(expected.mean().item())
    assert result["swap_other_psnr_image_std"] == pytest.approx(expected.std(unbiased=False).item())
    assert ("top_only_psnr" in result) == top_alone
    if top_alone:
        assert result["top_only_psnr"] == 100.0


@pytest.mark.parametrize("fusion", ["residual", "concat"])
def test_level_swap_on_vqgan2(fusion: str) -> None:
    torch.manual_seed(0)
    tokenizer = build_vqgan2(fusion=fusion, resolution=32, channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                             codebook_size=32, bottom_codebook_size=None, embedding_dim=8, commitment_cost=0.25,
                             restart_dead_codes=False, latent_blocks=1, loss=VQGANLossConfig(gan_weight=0.0))
    data = SyntheticShapes(4, 32, 8, seed=1)
    result = evaluate_tokenizer(tokenizer, data, 4, "cpu")
    swap_keys = {"swap_keep_top_psnr", "swap_keep_bottom_psnr", "swap_other_psnr"}
    assert swap_keys <= set(result) and ("top_only_psnr" in result) == (fusion == "residual")
    examples = level_swap_examples(tokenizer, data, 4, "cpu")
    assert set(examples) == {"image", "reconstruction", "swap_keep_top", "swap_keep_bottom", "swap_other"} | (
        {"top_only"} if fusion == "residual" else set())
    tokenizer.eval()
    with torch.no_grad():  # the examples use the first batch's pairing
        grids = tokenizer.encode(examples["image"])
        partner = swap_partners(4, torch.Generator().manual_seed(0))
        assert torch.allclose(examples["swap_keep_top"], tokenizer.decode(
            {"top": grids["top"], "bottom": grids["bottom"][partner]}).clamp(-1, 1))
        assert torch.equal(examples["swap_other"], examples["image"][partner])
        assert torch.allclose(examples["reconstruction"], tokenizer.decode(grids).clamp(-1, 1))
