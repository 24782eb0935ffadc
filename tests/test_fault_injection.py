"""Fault injection: files on disk are checked, not trusted.

Every kind of file the platform writes (weights, checkpoints, configs, token shards and their
manifest, data shards and index.json, samples) is deleted, truncated or filled with garbage, a
process is killed with SIGKILL at each checkpoint phase, the disk fills up, and files a user hands
in carry code. Each case must end in one of two ways: the work completes with the right data
(a damaged cache is rebuilt, a killed run resumes to the same weights), or one ``error:`` line
naming the file, exit code 2, with nothing else on disk changed. Never exit 0 with wrong data.

The same rule is kept elsewhere for two kinds of files: data shards and index.json
(tests/data/test_shards.py: truncated, garbage, over-counted, fewer than the workers) and weights
files a user hands in that carry code (tests/io/test_weights_files.py: every loader; refused,
never run).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from fsspec.implementations.local import LocalFileOpener

import stratagen.engine.training.tokenize as tokenize_module
from stratagen import api, cli
from stratagen.io import checkpoint
from stratagen.io.run import Run
from stratagen.io.tokens import TokenCache
from stratagen.registry import StratagenError
from tinyconfigs import SHARD_SIZE, tiny_config, write_config

TOKENS = "tokens/vq/train"


def files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def weights_and_tokens(run: Path) -> dict[str, str]:
    """sha256 of the weights, checkpoints, token shards and manifest of a run."""
    return {k: v for k, v in files(run).items() if k.endswith((".safetensors", "manifest.json"))}


def stratagen(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI in this process: (exit code, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_error(code: int, err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    monkeypatch.setattr(tokenize_module, "SHARD_SIZE", SHARD_SIZE)


@pytest.fixture
def whole(sharded_run) -> Path:
    """The uninterrupted run (tests/conftest.py)."""
    return sharded_run


@pytest.fixture
def run(whole, tmp_path) -> Path:
    """A copy of the trained run whose config names the copy."""
    copy = tmp_path / "run"
    shutil.copytree(whole, copy)
    Run(str(copy)).save_config(api.load(str(copy)))
    return copy


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


# ----------------------------------------------------------------------------- token cache
def _edit_manifest(run: Path) -> None:
    manifest = json.loads((run / TOKENS / "manifest.json").read_text())
    manifest["shards"] = [n // 2 for n in manifest["shards"]]  # half the rows: half the data
    (run / TOKENS / "manifest.json").write_text(json.dumps(manifest))


CACHE_DAMAGE: dict[str, Callable[[Path], object]] = {
    "shard-deleted": lambda run: (run / TOKENS / "00001.safetensors").unlink(),
    "shard-truncated": lambda run: truncate(run / TOKENS / "00002.safetensors"),
    "shard-garbage-header": lambda run: (run / TOKENS / "00003.safetensors").write_bytes(b"\xff" * 64),
    "manifest-not-json": lambda run: (run / TOKENS / "manifest.json").write_text("{not json"),
    "manifest-rows-edited": _edit_manifest,
    "manifest-deleted": lambda run: (run / TOKENS / "manifest.json").unlink(),
}


@pytest.mark.parametrize("verb", ["train", "tokenize"])
@pytest.mark.parametrize("damage", list(CACHE_DAMAGE))
def test_a_damaged_token_cache_is_rebuilt_exactly(whole, run, capsys, damage, verb):
    CACHE_DAMAGE[damage](run)
    argv = ["train", run, "--resume"] if verb == "train" else ["tokenize", run]
    code, err = stratagen(argv, capsys)
    assert code == 0, err
    assert weights_and_tokens(run) == weights_and_tokens(whole)  # every row back, the same tokens
    assert len(TokenCache(str(run / TOKENS)).open()) == 32


def test_a_cache_opened_for_training_is_checked_against_its_manifest(run):
    (run / TOKENS / "00001.safetensors").unlink()
    with pytest.raises(StratagenError, match="00001.safetensors: file not found; `stratagen tokenize`"):
        TokenCache(str(run / TOKENS)).open()


def test_token_ids_beyond_the_codebook_are_named_not_trained_on(run, capsys):
    url = str(run / TOKENS / "00000.safetensors")
    tensors, meta = checkpoint.load_tensors(url)
    tensors["tokens"][0, 0, 0, 0] = 200  # codebook of 32; same dtype, same size, same fingerprint
    checkpoint.save_tensors(url, tensors, meta)
    shutil.rmtree(run / "priors")  # the prior trains again, on this cache
    before = files(run)
    code, err = stratagen(["train", run, "--resume"], capsys)
    assert_one_error(code, err, "00000.safetensors: tokens holds token id 200, beyond the codebook of 32")
    assert {k: v for k, v in files(run).items() if k in before} == before


# ----------------------------------------------------------------------------- weights, checkpoints, configs
@pytest.mark.parametrize("argv,damage,fragment", [
    (["sample", "{run}"], lambda run: truncate(run / "priors/main/model.safetensors"),
     "priors/main/model.safetensors: not a readable safetensors file (its tensors need"),
    (["sample", "{run}"], lambda run: truncate(run / "priors/main/model.safetensors"),
     "delete it and run `stratagen train {run} --resume`: it is rewritten from {run}/priors/main/"
     "checkpoint.safetensors (step 4), nothing is retrained"),
    (["sample", "{run}"], lambda run: (run / "priors/main/model.safetensors").write_bytes(b"\xff" * 64),
     "priors/main/model.safetensors: not a readable safetensors file (its header claims"),
    (["train", "{run}", "--resume"],
     lambda run: (run / "tokenizers/vq/checkpoint.safetensors").write_bytes(b"\xff\xff\xff\xff\xff\xff\x00\x00{}"),
     "tokenizers/vq/checkpoint.safetensors: not a readable safetensors file"),
    (["train", "{run}", "--resume"], lambda run: truncate(run / "priors/main/checkpoint.safetensors", 0.9),
     "priors/main/checkpoint.safetensors: not a readable safetensors file"),
    (["sample", "{run}"], lambda run: (run / "config.yaml").unlink(), "not a run directory (no config.yaml)"),
    (["sample", "{run}"], lambda run: (run / "config.yaml").write_text("run: {dir: [\n"), "config.yaml: not valid YAML"),
    (["sample", "{run}"], lambda run: truncate(run / "config.yaml", 0.1), "config.yaml"),
    (["train", "{run}", "--resume"], lambda run: (run / "priors/main/config.yaml").write_text("- a\n- list\n"),
     "priors/main/config.yaml: not a run config"),
], ids=["weights-truncated", "weights-truncated-hint", "weights-garbage-header", "checkpoint-garbage-header", "checkpoint-truncated",
        "config-deleted", "config-not-yaml", "config-truncated", "component-config-not-a-mapping"])
def test_a_damaged_run_file_is_one_line_naming_it(run, capsys, argv, damage, fragment):
    damage(run)
    before = files(run)
    code, err = stratagen([a.format(run=run) for a in argv], capsys)
    assert_one_error(code, err, fragment.format(run=run))
    assert files(run) == before


def test_deleted_final_weights_are_rewritten_from_the_final_checkpoint(whole, run, capsys):
    (run / "priors/main/model.safetensors").unlink()
    code, err = stratagen(["train", run, "--resume"], capsys)
    assert code == 0, err
    assert weights_and_tokens(run) == weights_and_tokens(whole)


# ----------------------------------------------------------------------------- samples
def test_sampling_again_replaces_the_folder_as_a_whole(run, tmp_path, capsys):
    out = tmp_path / "samples"
    assert stratagen(["sample", run, "--classes", "0,1,2,3", "--count", "2", "--out", out], capsys)[0] == 0
    assert len(list(out.glob("class*.png"))) == 8
    code, err = stratagen(["sample", run, "--classes", "1", "--out", out, "--seed", "3"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["class1_0000.png", "grid.png"]  # nothing stale beside them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "samples"]  # no staging folder left


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def _sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("interrupt,code,line", [
    (_ctrl_c, 130, "interrupted"),
    # a scheduler's stop (SIGTERM, e.g. `timeout`) cleans up like Ctrl-C and says how to go on
    (_sigterm, 143, "terminated (SIGTERM): no half-written file is left"),
], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_sample_leaves_the_earlier_images_untouched(run, tmp_path, capsys, monkeypatch,
                                                                  interrupt, code, line):
    import torchvision.utils

    from stratagen.engine.reporting import images

    out = tmp_path / "samples"
    assert stratagen(["sample", run, "--classes", "0,1", "--out", out], capsys)[0] == 0
    before = files(out)
    real, calls = torchvision.utils.save_image, []

    def interrupted_on_the_second_image(tensor, fp, **kwargs):
        calls.append(fp)
        if len(calls) == 2:
            Path(fp).write_bytes(b"\x89PNG torn")
            interrupt()
        return real(tensor, fp, **kwargs)

    monkeypatch.setattr(images, "save_image", interrupted_on_the_second_image)
    got, err = stratagen(["sample", run, "--classes", "2,3", "--out", out], capsys)
    assert got == code and err.strip().startswith(line)
    assert files(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run", "samples"]
    assert len(calls) == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command's handler is gone after it


def test_a_folder_with_other_files_is_refused_before_sampling(run, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"a user's picture")
    code, err = stratagen(["sample", run, "--out", out], capsys)
    assert_one_error(code, err, "mine holds other files than samples (e.g. holiday.png)")
    assert [p.name for p in out.iterdir()] == ["holiday.png"]


def test_an_edit_into_a_folder_writes_into_it(run, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "photo.png")
    (tmp_path / "edits").mkdir()
    code, err = stratagen(["edit", run, "--image", tmp_path / "photo.png", "--box", "0,0,8,8", "--class", "1",
                           "--out", tmp_path / "edits"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "edits").iterdir()) == ["photo_inpaint.png", "photo_inpaint_strip.png"]


def test_tokenize_needs_only_the_tokenizer(whole, run, capsys):
    shutil.rmtree(run / "priors")
    shutil.rmtree(run / "tokens")
    code, err = stratagen(["tokenize", run], capsys)
    assert code == 0, err
    assert {k: v for k, v in weights_and_tokens(whole).items() if k.startswith("tokens/")} == \
        {k: v for k, v in weights_and_tokens(run).items() if k.startswith("tokens/")}


# ----------------------------------------------------------------------------- a full disk
@pytest.mark.parametrize("target", ["priors/main/checkpoint.safetensors", "priors/main/model.safetensors",
                                    f"{TOKENS}/00002.safetensors", f"{TOKENS}/manifest.json"])
def test_a_full_disk_is_one_line_naming_the_file_and_resume_completes_exactly(whole, run, capsys, monkeypatch,
                                                                              target):
    """The disk fills up while ``target`` is written: one error line naming it, no torn or temporary
    file; once there is space again, --resume ends with the uninterrupted run's files."""
    shutil.rmtree(run / "priors")
    if target.startswith("tokens"):
        shutil.rmtree(run / "tokens")
    real_write = LocalFileOpener.write

    def write(self, data):
        if self.path.startswith(str(run / target) + checkpoint.TEMPORARY):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    with monkeypatch.context() as full:
        full.setattr(LocalFileOpener, "write", write)
        code, err = stratagen(["train", run, "--resume"], capsys)
    assert_one_error(code, err, f"{run / target}: No space left on device")
    assert not list(run.rglob(f"*{checkpoint.TEMPORARY}*"))
    code, err = stratagen(["train", run, "--resume"], capsys)
    assert code == 0, err
    assert weights_and_tokens(run) == weights_and_tokens(whole)


# ----------------------------------------------------------------------------- determinism
def test_a_resume_in_another_environment_is_warned_about(run, capsys, caplog):
    """Checkpoints record the torch version and thread count; a resume with others warns (bitwise
    resume needs both) and still completes."""
    import torch

    url = str(run / "priors/main/checkpoint.safetensors")
    tensors, meta = checkpoint.load_tensors(url)
    assert meta["environment"] == {"torch": torch.__version__, "threads": torch.get_num_threads()}
    checkpoint.save_tensors(url, tensors, {**meta, "step": 2, "environment": {"torch": "1.0", "threads": 99}})
    code, err = stratagen(["train", run, "--resume"], capsys)
    assert code == 0, err
    assert (f"in another environment (torch 1.0 -> {torch.__version__}, threads 99 -> {torch.get_num_threads()})"
            in caplog.text)
    assert checkpoint.load_tensors(url)[1]["environment"]["threads"] == torch.get_num_threads()


# ----------------------------------------------------------------------------- kill -9
#: run in a child process: ``train RUN --resume`` that SIGKILLs itself at one checkpoint phase
KILLER = """
import os, signal, sys
import torch
from fsspec.implementations.local import LocalFileSystem
import stratagen.engine.training.tokenize as tokenize_module
from stratagen import cli
from stratagen.io import checkpoint
from stratagen.io.tokens import TokenCache

run, phase, steps = sys.argv[1], sys.argv[2], [0]
tokenize_module.SHARD_SIZE = int(sys.argv[3])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if phase == "inside an atomic write":  # the temporary file written, not yet moved into place
    real_mv = LocalFileSystem.mv
    def mv(self, source, destination, **kwargs):
        if destination.endswith("priors/main/checkpoint.safetensors"):
            die()
        return real_mv(self, source, destination, **kwargs)
    LocalFileSystem.mv = mv
elif phase == "between final weights and final checkpoint":
    real_save = checkpoint.save_tensors
    def save_tensors(url, tensors, metadata=None):
        if url.endswith("priors/main/checkpoint.safetensors") and (metadata or {}).get("step") == 4:
            die()
        real_save(url, tensors, metadata)
    checkpoint.save_tensors = save_tensors
elif phase == "after a token shard":
    real_write = TokenCache.write_shard
    def write_shard(self, j, *args):
        real_write(self, j, *args)
        if j == 1:
            die()
    TokenCache.write_shard = write_shard
elif phase == "inside an optimizer step":  # the prior's third step, after its first checkpoint
    real_step = torch.optim.AdamW.step
    def step(self, *args, **kwargs):
        steps[0] += 1
        if steps[0] == 3:
            die()
        return real_step(self, *args, **kwargs)
    torch.optim.AdamW.step = step
sys.exit(cli.main(["train", run, "--resume"]))
"""
KILL_PHASES = ["inside an atomic write", "between final weights and final checkpoint", "after a token shard",
               "inside an optimizer step"]


@pytest.mark.parametrize("phase", KILL_PHASES)
def test_sigkill_at_each_checkpoint_phase_resumes_to_the_same_files(whole, run, capsys, phase):
    shutil.rmtree(run / "priors")
    if phase == "after a token shard":
        shutil.rmtree(run / "tokens")
    killed = subprocess.run([sys.executable, "-c", KILLER, str(run), phase, str(SHARD_SIZE)], capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    code, err = stratagen(["train", run, "--resume"], capsys)
    assert code == 0, err
    assert weights_and_tokens(run) == weights_and_tokens(whole)
    assert not list(run.rglob(f"*{checkpoint.TEMPORARY}*"))  # what the killed write left is cleaned up
