"""Token cache format: compact dtypes that round-trip exactly, a manifest that alone makes a cache usable."""
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from safetensors import safe_open

from stratagen.io.tokens import Fingerprint, TokenCache, tensor_hash, token_dtype
from stratagen.registry import StratagenError

STAMP = Fingerprint(images=10, views=3, shard_size=6, tokenizer="w" * 64, config="c" * 64)


@pytest.mark.parametrize("codebook,dtype", [(256, torch.uint8), (257, torch.uint16), (8192, torch.uint16),
                                            (65536, torch.uint16), (65537, torch.int32)])
def test_smallest_dtype_round_trips_exactly(tmp_path: Path, codebook: int, dtype: torch.dtype) -> None:
    assert token_dtype(codebook) == dtype
    g = torch.Generator().manual_seed(codebook)
    grids = torch.randint(codebook, (10, 3, 2, 4), generator=g)
    grids[0, 0, 0, :2] = torch.tensor([0, codebook - 1])  # both ends of the codebook
    labels = torch.randint(1000, (10,), generator=g)
    cache = TokenCache(str(tmp_path / "tokens"))
    cache.write_shard(0, {"top": grids[:6].to(dtype)}, labels[:6], STAMP)
    cache.write_shard(1, {"top": grids[6:].to(dtype)}, labels[6:], STAMP)
    with pytest.raises(StratagenError, match="no complete token cache"):
        cache.open()  # shards without a manifest are never used
    cache.write_manifest([6, 4], {"top": {"shape": [2, 4], "codebook_size": codebook, "dtype": str(dtype)}}, STAMP)
    with safe_open(cache.shard_url(0), "pt") as f:
        assert f.get_slice("top").get_dtype() == {torch.uint8: "U8", torch.uint16: "U16", torch.int32: "I32"}[dtype]
    assert (tmp_path / "tokens/00000.safetensors").stat().st_size < 6 * 3 * 8 * dtype.itemsize + 6 * 8 + 512
    reader = cache.open()
    indices = np.array([9, 0, 5, 6, 3])
    views = np.array([2, 0, 1, 0, 2])
    got, got_labels = reader.gather(indices, views)
    assert got["top"].dtype == torch.int64
    assert torch.equal(got["top"], grids[indices, views]) and torch.equal(got_labels, labels[indices])
    assert len(reader) == 10 and reader.views == 3
    fs = fsspec.filesystem("memory")  # any fsspec URL: ranged reads
    remote = f"/tokens-{uuid.uuid4().hex}"
    for path in (tmp_path / "tokens").iterdir():
        fs.pipe_file(f"{remote}/{path.name}", path.read_bytes())
    got_remote, labels_remote = TokenCache(f"memory://{remote}").open().gather(indices, views)
    assert torch.equal(got_remote["top"], got["top"]) and torch.equal(labels_remote, got_labels)
    fs.rm(remote, recursive=True)


def test_stale_or_foreign_shards_are_removed_before_a_rebuild(tmp_path: Path) -> None:
    cache = TokenCache(str(tmp_path / "tokens"))
    other = Fingerprint(images=10, views=3, shard_size=6, tokenizer="x" * 64, config="c" * 64)
    for j in range(4):
        cache.write_shard(j, {"top": torch.zeros(2, 3, 1, 1, dtype=torch.uint8)}, torch.zeros(2), STAMP)
    cache.write_manifest([2] * 4, {"top": {"shape": [1, 1], "codebook_size": 4, "dtype": "uint8"}}, STAMP)
    assert cache.is_complete(STAMP) and not cache.is_complete(other)
    cache.write_shard(1, {"top": torch.zeros(2, 3, 1, 1, dtype=torch.uint8)}, torch.zeros(2), other)
    assert not cache.is_complete(STAMP)  # a shard of another cache under this manifest: not trusted
    with pytest.raises(StratagenError, match="00001.safetensors: made for another cache than manifest.json"):
        cache.open()
    cache.prepare(shards=3, fingerprint=STAMP)  # the new dataset needs 3 shards
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == ["00000.safetensors", "00002.safetensors"]
    assert cache.shard_is_done(0, STAMP) and not cache.shard_is_done(1, STAMP) and not cache.is_complete(STAMP)


def test_tensor_hash_sees_values_names_and_dtypes() -> None:
    a = {"w": torch.arange(4.0)}
    assert tensor_hash(a) == tensor_hash({"w": torch.arange(4.0)})
    assert len({tensor_hash(a), tensor_hash({"w": torch.arange(4.0) + 1e-6}), tensor_hash({"v": torch.arange(4.0)}),
                tensor_hash({"w": torch.arange(4.0).double()})}) == 4
