"""Distributed training (gloo, 2 processes) against one process accumulating the same micro-batches
(and recomputing activations: dropout included, neither changes a result beyond rounding); exact
resume under FSDP; compiled blocks change no result."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stratagen import api
from stratagen.io import checkpoint
from stratagen.engine.devices.parallel import blocks, block_options
from stratagen.nn import TransformerBlock
from tinyconfigs import tiny_config, write_config

#: Float rounding differs between two processes' gradient average and one process's running sum.
#: Adam normalises each update, so for a weight whose gradient is ~0 that rounding can flip the
#: update's sign: the largest difference is bounded by lr x steps (3 steps at 1e-3), while 99% of
#: the weights agree to 1e-4, a tenth of one step's movement.
WORST, TYPICAL = 3e-3, 1e-4

RUN_RANKS = (
    "import sys\n"
    "import stratagen.engine.training.train as t\n"
    "from stratagen import api\n"
    "stop = next((int(a) for a in sys.argv[2:] if a.isdigit()), None)\n"
    "real = t.fit\n"
    "def fit(**kw):  # stop the prior before step `stop` on every rank (a kill)\n"
    "    if stop is not None and kw['kind'] == 'prior':\n"
    "        step = kw['loss_step']\n"
    "        def loss_step(micro):\n"
    "            if micro.step == stop:\n"
    "                raise SystemExit(3)\n"
    "            return step(micro)\n"
    "        kw['loss_step'] = loss_step\n"
    "    real(**kw)\n"
    "t.fit = fit\n"
    "api.train(api.load(sys.argv[1]), resume='--resume' in sys.argv)\n")


#: what the runs train: StraIT's tokenizer and its two priors, the bottom one conditioned on the top
#: level through cross-attention (keys and values projected outside the blocks' forward)
COMPONENTS = (("tokenizer", "vq"), ("prior", "top"), ("prior", "bottom"))


def config(run_dir: Path, accumulate: int = 1, prior_parallel: str = "ddp", recompute: bool = False) -> dict:
    c = tiny_config(run_dir, "strait")
    for section in (c["tokenizers"]["vq"], *c["priors"].values()):
        section["train"].update(steps=3, checkpoint_every=2, accumulate=accumulate, checkpoint_activations=recompute)
    c["tokenizers"]["vq"]["model"]["loss"].update(gan_weight=0.1, disc_max_channels=8)  # two optimizers
    for prior in c["priors"].values():
        prior["model"]["dropout"] = 0.1  # seeded per micro-batch, and recomputed identically
        prior["train"]["parallel"] = prior_parallel
    return c


def torchrun(tmp: Path, config_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp / "ranks.py"
    script.write_text(RUN_RANKS)
    runner = Path(sys.executable).with_name("torchrun")
    return subprocess.run([str(runner), "--standalone", "--nproc-per-node=2", str(script), str(config_path), *args],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def weights(run_dir: Path, kind: str, cid: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / f"{kind}s" / cid / "model.safetensors"))


def on_the_tokens_of_one(tmp: Path, name: str, parallel: str) -> Path:
    """The config of a 2-process run whose priors train on the 1-process run's tokenizer and token
    cache (copied, then ``--resume``): a tokenizer trained on 2 processes differs by rounding, which
    flips a few tokens (4 of 512 here), and priors are compared like for like."""
    shutil.copytree(tmp / "one", tmp / name, ignore=shutil.ignore_patterns("priors", "tb"))
    c = config(tmp / name, prior_parallel=parallel)
    c["tokenizers"] = config(tmp / name, accumulate=2, recompute=True)["tokenizers"]  # as it was trained
    return write_config(tmp / f"{name}.yaml", c)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One process accumulating 2 micro-batches of 4 (recomputing activations in the backward pass);
    two processes of 4 each training everything under DDP (its tokenizer is compared); two processes
    training the priors on the first run's tokens under DDP and under FSDP; and that FSDP run killed
    after its step-2 checkpoint, then resumed."""
    tmp = tmp_path_factory.mktemp("parallel")
    api.train(api.load(str(write_config(tmp / "one.yaml", config(tmp / "one", accumulate=2, recompute=True)))))
    result = torchrun(tmp, write_config(tmp / "scratch.yaml", config(tmp / "scratch")))
    assert result.returncode == 0, result.stderr[-3000:]
    for name, parallel in (("ddp", "ddp"), ("fsdp", "fsdp")):
        result = torchrun(tmp, on_the_tokens_of_one(tmp, name, parallel), "--resume")
        assert result.returncode == 0, result.stderr[-3000:]
    killed = on_the_tokens_of_one(tmp, "killed", "fsdp")
    assert torchrun(tmp, killed, "--resume", "2").returncode != 0  # after the step-2 checkpoint
    assert checkpoint.read_metadata(str(tmp / "killed/priors/top/checkpoint.safetensors"))["step"] == 2
    result = torchrun(tmp, killed, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: tmp / name for name in ("one", "scratch", "ddp", "fsdp")} | {"resumed": tmp / "killed"}


def agree(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor], what: str, worst: float = WORST) -> None:
    assert one.keys() == two.keys()
    gaps = torch.cat([(one[k].float() - two[k].float()).abs().flatten() for k in one])
    assert gaps.max() < worst and gaps.quantile(0.99) < TYPICAL, (what, float(gaps.max()), float(gaps.quantile(0.99)))


def test_two_processes_train_the_tokenizer_of_one_process_with_the_same_global_batch(runs):
    agree(weights(runs["one"], "tokenizer", "vq"), weights(runs["scratch"], "tokenizer", "vq"), "tokenizer")


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_two_processes_train_the_priors_of_one_process_with_the_same_global_batch(runs, name):
    for cid in ("top", "bottom"):  # the bottom prior cross-attends to the top level
        # on the same tokens no update flipped: measured 6e-8 at most
        agree(weights(runs["one"], "prior", cid), weights(runs[name], "prior", cid), f"prior {cid}", worst=1e-5)


def logged(run: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_the_logged_losses_are_those_of_the_global_batch(runs, name):
    """Each process computes the loss of its slice; the log holds their mean, as one process logs
    the mean over its micro-batches."""
    for cid in ("top", "bottom"):
        one, two = (logged(runs[r], f"prior/{cid}/loss/prior") for r in ("one", name))
        assert len(one) == 3 and two == pytest.approx(one, rel=1e-6, abs=0)


def test_training_moves_the_weights_far_beyond_the_tolerance(runs):
    """The comparison above is not vacuous."""
    initial = api.build(api.load(str(runs["one"].with_suffix(".yaml")))).model.priors["bottom"].prior.state_dict()
    trained = weights(runs["one"], "prior", "bottom")
    moved = torch.cat([(trained[k] - initial[k]).abs().flatten() for k in trained])
    assert moved.median() > 10 * TYPICAL


def test_fsdp_resume_is_exact(runs):
    for kind, cid in COMPONENTS:
        whole, resumed = weights(runs["fsdp"], kind, cid), weights(runs["resumed"], kind, cid)
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), kind
    for prior in ("top", "bottom"):
        a, b = (load_file(str(r / f"priors/{prior}/checkpoint.safetensors")) for r in (runs["fsdp"], runs["resumed"]))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # optimizer state too


def test_block_options_recompute_and_compile_then_restore():
    torch.manual_seed(0)
    model = torch.nn.Sequential(TransformerBlock(16, 2, 32), torch.nn.Linear(16, 16), TransformerBlock(16, 2, 32))
    assert blocks(model) == [model[0], model[2]]
    x = torch.randn(2, 5, 16)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    reference = run()
    for options in ({"checkpoint_activations": True, "compile_blocks": False},
                    {"checkpoint_activations": False, "compile_blocks": True}):
        with block_options(model, **options):
            assert all(("forward" in b.__dict__) == options["checkpoint_activations"] for b in blocks(model))
            assert all((b._compiled_call_impl is not None) == options["compile_blocks"] for b in blocks(model))
            out, grads = run()
        assert torch.allclose(out, reference[0], atol=1e-5)
        assert all(torch.allclose(g, r, atol=1e-4) for g, r in zip(grads, reference[1]))
        assert all("forward" not in b.__dict__ and b._compiled_call_impl is None for b in blocks(model))
