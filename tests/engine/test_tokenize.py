"""Token cache production: an interrupted cache is completed, never used half-made; a smaller
dataset leaves no old shards behind."""
from pathlib import Path

import numpy as np
import pytest
import torch

import stratagen.engine.training.tokenize as tokenize_module
from stratagen import api
from stratagen.data import SyntheticShapes
from stratagen.engine import build
from stratagen.engine.devices.processes import Processes
from stratagen.io.run import Run
from stratagen.io.tokens import TokenCache, TokenReader
from stratagen.registry import StratagenError
from tinyconfigs import tiny_config, write_config


def _all(url: Path, size: int) -> dict[str, torch.Tensor]:
    reader = TokenCache(str(url)).open()
    grids, labels = reader.gather(np.arange(size), np.zeros(size, dtype=np.int64))
    return {**grids, "labels": labels}


def test_cache_killed_half_way_is_completed_on_resume_and_priors_see_every_image(tmp_path, monkeypatch):
    monkeypatch.setattr(tokenize_module, "SHARD_SIZE", 8)  # 32 images: 4 shards
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))
    written: list[int] = []
    real_write = TokenCache.write_shard

    def write_shard(self, index, *args):
        if len(written) == 2 and not resumed:
            raise KeyboardInterrupt  # killed while encoding the third shard
        written.append(index)
        real_write(self, index, *args)

    monkeypatch.setattr(TokenCache, "write_shard", write_shard)
    resumed = False
    with pytest.raises(KeyboardInterrupt):
        api.train(api.load(str(path)))
    cache_dir = tmp_path / "run/tokens/vq/train"
    assert sorted(p.name for p in cache_dir.iterdir()) == ["00000.safetensors", "00001.safetensors"]
    with pytest.raises(StratagenError, match="no complete token cache"):
        TokenCache(str(cache_dir)).open()

    seen: list[int] = []
    real_gather = TokenReader.gather
    monkeypatch.setattr(TokenReader, "gather", lambda self, idx, views: seen.extend(idx.tolist())
                        or real_gather(self, idx, views))
    resumed = True
    api.train(api.load(str(path)), resume=True)
    assert written == [0, 1, 2, 3]  # the two finished shards were kept, the others made
    assert TokenCache(str(cache_dir)).manifest()["shards"] == [8, 8, 8, 8]
    assert set(seen) == set(range(32))  # 4 steps x batch 8: one epoch over every image

    # the completed cache equals one made in a single pass with the same weights
    config = api.load(str(path))
    pipe = api.Pipeline.from_run(str(tmp_path / "run"))
    fresh = Run(str(tmp_path / "fresh"))
    tokenize_module.tokenize(fresh, config, "vq", pipe.model.tokenizers["vq"], pipe.built.dataset("train"),
                             "train", Processes(), batch_size=5)
    a, b = _all(cache_dir, 32), _all(tmp_path / "fresh/tokens/vq/train", 32)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_retokenizing_a_smaller_dataset_leaves_no_stale_shards(tmp_path):
    config = api.load(str(write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))))
    tokenizer = build.build(config).model.tokenizers["vq"].eval()
    run = Run(str(tmp_path / "run"))
    cache_dir = tmp_path / "run/tokens/vq/train"
    big, small = SyntheticShapes(4, 16, 32, seed=0), SyntheticShapes(4, 16, 12, seed=9)
    tokenize_module.tokenize(run, config, "vq", tokenizer, big, "train", Processes(), shard_size=8)
    assert len(list(cache_dir.glob("*.safetensors"))) == 4
    tokenize_module.tokenize(run, config, "vq", tokenizer, small, "train", Processes(), shard_size=8)
    assert sorted(p.name for p in cache_dir.iterdir()) == ["00000.safetensors", "00001.safetensors", "manifest.json"]
    cached = _all(cache_dir, 12)
    with torch.no_grad():
        expected = tokenizer.encode(torch.stack([small[i][0] for i in range(12)]))["tokens"]
    assert torch.equal(cached["tokens"], expected) and cached["labels"].tolist() == [i % 4 for i in range(12)]
    assert len(TokenCache(str(cache_dir)).open()) == 12
    # new weights: the old cache is stale and rebuilt, not used
    old_hash = TokenCache(str(cache_dir)).manifest()["fingerprint"]["tokenizer"]
    with torch.no_grad():
        next(tokenizer.parameters()).add_(1.0)
    tokenize_module.tokenize(run, config, "vq", tokenizer, small, "train", Processes(), shard_size=8)
    with torch.no_grad():
        assert torch.equal(_all(cache_dir, 12)["tokens"],
                           tokenizer.encode(torch.stack([small[i][0] for i in range(12)]))["tokens"])
    assert TokenCache(str(cache_dir)).manifest()["fingerprint"]["tokenizer"] != old_hash
