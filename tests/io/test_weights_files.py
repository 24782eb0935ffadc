"""A weights file that carries code (a pickle whose ``__reduce__`` creates a file) is refused,
never run, wherever a user passes a weights file."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from stratagen.eval import InceptionMetric
from stratagen.io import checkpoint
from stratagen.nn.perceptual import PerceptualLoss
from stratagen.plugins.maskgit_official.flax_msgpack import read_flax_checkpoint
from stratagen.plugins.var.clip import load_clip_text
from stratagen.plugins.var.text import TextEncoder
from stratagen.registry import StratagenError
from weightfiles import write_pickle_with_code


#: every place a user names a weights file: (id, load it)
LOADERS: list[tuple[str, Callable[[Path], Any]]] = [
    ("perceptual-vgg16", lambda p: PerceptualLoss(str(p))),
    ("inception-metric", lambda p: InceptionMetric(weights=str(p), metrics=["fid"])._extractor("inception-v3-compat")),
    ("inception-prc-vgg16", lambda p: InceptionMetric(weights=None, metrics=["prc"], vgg_weights=str(p))
     ._extractor("vgg16")),
    ("run-weights-and-checkpoints", lambda p: checkpoint.load_tensors(str(p))),
    ("maskgit-official-checkpoint", lambda p: read_flax_checkpoint(p.read_bytes(), str(p))),
    ("star-small-text-encoder", lambda p: TextEncoder(["a red disc"], width=8, depth=1, heads=2, weights=str(p))),
    ("star-clip-text-tower", lambda p: load_clip_text(str(p))),
]


@pytest.mark.parametrize("load", [loader for _, loader in LOADERS], ids=[name for name, _ in LOADERS])
def test_a_pickle_carrying_code_is_refused_and_never_run(tmp_path, load):
    marker = tmp_path / "code-ran"
    path = write_pickle_with_code(tmp_path / "weights.pth", marker)
    with pytest.raises(StratagenError):
        load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file does carry code: plain unpickling runs it
    assert marker.exists()


def test_plain_tensors_still_load(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.arange(3.0)}, path)
    assert checkpoint.read_state_dict(str(path))["w"].tolist() == [0.0, 1.0, 2.0]


class RunsACommand:
    """Unpickling it would run ``os.system`` (what a hostile checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_payload_is_named_and_a_foreign_file_is_one_line(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"w": torch.zeros(2), "payload": RunsACommand(marker)}, tmp_path / "evil.pth")
    with pytest.raises(StratagenError, match=r"evil.pth: refused, it holds (posix|os)\.system, which is not a tensor"):
        checkpoint.load_torch_file(str(tmp_path / "evil.pth"))
    assert not marker.exists()
    (tmp_path / "text.pth").write_text("hello world\n")  # torch's loader fails with a KeyError on it
    with pytest.raises(StratagenError, match=r"text.pth: not a PyTorch checkpoint \(KeyError: unreadable\)"):
        checkpoint.read_state_dict(str(tmp_path / "text.pth"))
