"""The kill matrix: a run stopped at any point and resumed with ``--resume`` ends bit-identical to
an uninterrupted run (weights, checkpoints, token cache), with no temporary file left behind.

Each kill point raises KeyboardInterrupt at one moment of training (as Ctrl-C or a dying process
would stop it there); ``KILL_POINTS`` lists them (11).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
from fsspec.implementations.local import LocalFileSystem

import stratagen.engine.training.tokenize as tokenize_module
import stratagen.engine.training.train as train_module
from stratagen import api
from stratagen.io import checkpoint
from stratagen.io.run import Run
from stratagen.io.tokens import TokenCache
from tinyconfigs import SHARD_SIZE, tiny_config, write_config

STEPS = 4  # checkpoints at steps 2 and 4 (tinyconfigs)


class Killed(KeyboardInterrupt):
    """The interruption a kill point raises."""


def kill_in_fit(kind: str, at_step: int) -> Callable[[pytest.MonkeyPatch], None]:
    """Stop when ``kind``'s training reaches step ``at_step`` (before that step runs)."""
    def install(monkeypatch: pytest.MonkeyPatch) -> None:
        real_fit = train_module.fit

        def fit(**kwargs):
            if kwargs["kind"] == kind:
                real_step = kwargs["loss_step"]

                def loss_step(micro):
                    if micro.step == at_step:
                        raise Killed
                    return real_step(micro)
                kwargs["loss_step"] = loss_step
            return real_fit(**kwargs)
        monkeypatch.setattr(train_module, "fit", fit)
    return install


def kill_between_final_weights_and_checkpoint(kind: str, cid: str) -> Callable[[pytest.MonkeyPatch], None]:
    """Stop after the final ``model.safetensors`` of ``kind`` is written, before its final checkpoint."""
    def install(monkeypatch: pytest.MonkeyPatch) -> None:
        real_save = checkpoint.save_tensors

        def save_tensors(url, tensors, metadata=None):
            if url.endswith(f"{kind}s/{cid}/checkpoint.safetensors") and (metadata or {}).get("step") == STEPS:
                raise Killed
            real_save(url, tensors, metadata)
        monkeypatch.setattr(checkpoint, "save_tensors", save_tensors)
    return install


def kill_inside_atomic_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop inside the atomic write of the prior's first checkpoint: its temporary file is written,
    not yet moved into place; a second, stale temporary file stands for one a SIGKILL leaves."""
    real_mv = LocalFileSystem.mv

    def mv(self, source, destination, **kwargs):
        if destination.endswith("priors/main/checkpoint.safetensors"):
            Path(f"{destination}{checkpoint.TEMPORARY}killed00").write_bytes(Path(source).read_bytes()[:100])
            raise Killed
        return real_mv(self, source, destination, **kwargs)
    monkeypatch.setattr(LocalFileSystem, "mv", mv)


def kill_after_shard(index: int) -> Callable[[pytest.MonkeyPatch], None]:
    """Stop right after token shard ``index`` is written (after the last one: before the manifest)."""
    def install(monkeypatch: pytest.MonkeyPatch) -> None:
        real_write = TokenCache.write_shard

        def write_shard(self, j, *args):
            real_write(self, j, *args)
            if j == index:
                raise Killed
        monkeypatch.setattr(TokenCache, "write_shard", write_shard)
    return install


#: kill points, in the order one run meets them: each chain kills one run at each of its points in
#: turn (every resume but the last is killed at the next point), then lets it finish
KILL_CHAINS = {
    "tokenizer": [("before its first checkpoint", kill_in_fit("tokenizer", 1)),
                  ("after a checkpoint", kill_in_fit("tokenizer", 3)),
                  ("between its final weights and final checkpoint",
                   kill_between_final_weights_and_checkpoint("tokenizer", "vq"))],
    "tokenization": [(f"after shard {j}", kill_after_shard(j)) for j in range(4)],  # the last: before the manifest
    "prior": [("before its first checkpoint", kill_in_fit("prior", 1)),
              ("inside the atomic write of its first checkpoint", kill_inside_atomic_write),
              ("after a checkpoint", kill_in_fit("prior", 3)),
              ("between its final weights and final checkpoint",
               kill_between_final_weights_and_checkpoint("prior", "main"))],
}
KILL_POINTS = [f"{stage}: {point}" for stage, chain in KILL_CHAINS.items() for point, _ in chain]


def run_files(run: Path) -> dict[str, dict]:
    """Every weights, checkpoint and token file of a run: tensors and metadata (run-independent keys)."""
    files = {}
    for path in sorted(run.glob("tokenizers/**/*.safetensors")) + sorted(run.glob("priors/**/*.safetensors")) \
            + sorted(run.glob("tokens/**/*.safetensors")):
        tensors, meta = checkpoint.load_tensors(str(path))
        files[str(path.relative_to(run))] = {"tensors": tensors, "meta": meta}
    manifest = run / "tokens/vq/train/manifest.json"
    files["manifest"] = {"tensors": {}, "meta": checkpoint.read_json(str(manifest))}
    return files


def assert_identical(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        ta, tb = a[name]["tensors"], b[name]["tensors"]
        assert ta.keys() == tb.keys(), name
        assert all(ta[k].dtype == tb[k].dtype and ta[k].equal(tb[k]) for k in ta), name
        assert a[name]["meta"] == b[name]["meta"], name


@pytest.fixture
def whole(sharded_run) -> Path:
    """The uninterrupted run (tests/conftest.py)."""
    return sharded_run


@pytest.mark.parametrize("stage", list(KILL_CHAINS))
def test_killed_run_resumes_bit_identical(whole, tmp_path, monkeypatch, stage):
    monkeypatch.setattr(tokenize_module, "SHARD_SIZE", SHARD_SIZE)
    run = tmp_path / "run"
    path = write_config(tmp_path / "c.yaml", tiny_config(run))
    if stage != "tokenizer":  # the kills come later: start from the uninterrupted run's tokenizer
        shutil.copytree(whole / "tokenizers", run / "tokenizers")
    for resume, (point, install) in enumerate(KILL_CHAINS[stage]):
        with monkeypatch.context() as killing:
            install(killing)
            with pytest.raises(Killed):
                api.train(api.load(str(path)), resume=bool(resume) or stage != "tokenizer")
            assert [p for p in run.rglob(f"*{checkpoint.TEMPORARY}*")] in ([], list(
                run.glob(f"priors/main/*{checkpoint.TEMPORARY}killed00"))), point
    api.train(api.load(str(path)), resume=True)
    assert_identical(run_files(run), run_files(whole))
    assert not [p for p in run.rglob(f"*{checkpoint.TEMPORARY}*")]


def test_final_checkpoint_ahead_of_its_weights_is_repaired_on_resume(whole, tmp_path, monkeypatch):
    """A run written by the old order (final checkpoint, then a kill before the final weights):
    resume writes the final weights from the checkpoint instead of keeping the older ones."""
    monkeypatch.setattr(tokenize_module, "SHARD_SIZE", SHARD_SIZE)
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    write_config(tmp_path / "c.yaml", tiny_config(run))
    url = Run(str(run)).component_url("prior", "main")
    tensors, meta = checkpoint.load_tensors(url)
    checkpoint.save_tensors(url, {k: v + 1 for k, v in tensors.items()}, {**meta, "step": 2})  # one behind
    api.train(api.load(str(tmp_path / "c.yaml")), resume=True)
    assert_identical(run_files(run), run_files(whole))
