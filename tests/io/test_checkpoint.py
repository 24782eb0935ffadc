"""Checkpoint IO: exact round trips through fsspec, atomic writes, no unpickling."""
import pickle

import fsspec
import pytest
import torch

from stratagen.io import checkpoint
from stratagen.registry import StratagenError


@pytest.mark.parametrize("root", ["{tmp}", "file://{tmp}", "memory://ckpt-test"])
def test_tensors_and_metadata_round_trip_exactly(tmp_path, root):
    url = root.format(tmp=tmp_path) + "/a/b/model.safetensors"
    tensors = {"w": torch.randn(3, 4), "i": torch.arange(5), "h": torch.randn(2).half()}
    checkpoint.save_tensors(url, tensors, {"plugin": "vqgan", "step": 7})
    loaded, meta = checkpoint.load_tensors(url)
    assert meta == {"plugin": "vqgan", "step": 7}
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_interrupted_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    url = str(tmp_path / "model.safetensors")
    checkpoint.save_tensors(url, {"w": torch.ones(2)}, {"step": 1})
    fs = fsspec.filesystem("file")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(fs), "mv", crash)
    with pytest.raises(OSError):
        checkpoint.save_tensors(url, {"w": torch.zeros(2)}, {"step": 2})
    tensors, meta = checkpoint.load_tensors(url)
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.ones(2))


def test_optimizer_state_round_trip():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.96))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tensors, meta = checkpoint.optimizer_state(optimizer)
    fresh = torch.optim.AdamW(model.parameters(), lr=1.0)
    checkpoint.load_optimizer_state(fresh, tensors, meta)
    a, b = optimizer.state_dict(), fresh.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 1e-2
    for index, state in a["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][name]))


def test_a_pickle_is_refused_not_unpickled(tmp_path):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(StratagenError, match="not a readable safetensors file"):
        checkpoint.load_tensors(str(path))
    assert not marker.exists()
