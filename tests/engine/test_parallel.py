"""Distributed training (gloo, 2 processes) against one process accumulating the same micro-batches
(and recomputing activations: dropout included, neither changes a result beyond rounding); exact
resume under FSDP; compiled blocks change no result."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stratagen import api
from stratagen.io import checkpoint
from stratagen.engine.parallel import blocks, block_options
from stratagen.nn import TransformerBlock
from tinyconfigs import tiny_config, write_config

#: Float rounding differs between two processes' gradient average and one process's running sum.
#: Adam normalises each update, so for a weight whose gradient is ~0 that rounding can flip the
#: update's sign: the largest difference is bounded by lr x steps (3 steps at 1e-3), while 99% of
#: the weights agree to 1e-5, a hundredth of one step's movement.
WORST, TYPICAL = 3e-3, 1e-5

RUN_RANKS = (
    "import sys\n"
    "import stratagen.engine.train as t\n"
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


def config(run_dir: Path, accumulate: int = 1, prior_parallel: str = "ddp", recompute: bool = False) -> dict:
    c = tiny_config(run_dir)
    for section in (c["tokenizers"]["vq"], c["priors"]["main"]):
        section["train"].update(steps=3, checkpoint_every=2, accumulate=accumulate, checkpoint_activations=recompute)
    c["priors"]["main"]["model"]["dropout"] = 0.1  # seeded per micro-batch, and recomputed identically
    c["tokenizers"]["vq"]["model"]["loss"].update(gan_weight=0.1, disc_max_channels=8)  # two optimizers
    c["priors"]["main"]["train"]["parallel"] = prior_parallel
    return c


def torchrun(tmp: Path, config_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp / "ranks.py"
    script.write_text(RUN_RANKS)
    runner = Path(sys.executable).with_name("torchrun")
    return subprocess.run([str(runner), "--standalone", "--nproc-per-node=2", str(script), str(config_path), *args],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def weights(run_dir: Path, kind: str, cid: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / f"{kind}s" / cid / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One process accumulating 2 micro-batches of 4 (recomputing activations in the backward pass);
    two processes of 4 each under DDP; the same with the prior under FSDP; and that FSDP run killed
    after its step-2 checkpoint, then resumed."""
    tmp = tmp_path_factory.mktemp("parallel")
    api.train(api.load(str(write_config(tmp / "one.yaml", config(tmp / "one", accumulate=2, recompute=True)))))
    out = {"one": tmp / "one"}
    for name, parallel in (("ddp", "ddp"), ("fsdp", "fsdp")):
        result = torchrun(tmp, write_config(tmp / f"{name}.yaml", config(tmp / name, prior_parallel=parallel)))
        assert result.returncode == 0, result.stderr[-3000:]
        out[name] = tmp / name
    killed = write_config(tmp / "killed.yaml", config(tmp / "killed", prior_parallel="fsdp"))
    assert torchrun(tmp, killed, "2").returncode != 0  # after the step-2 checkpoint
    assert checkpoint.read_metadata(str(tmp / "killed/priors/main/checkpoint.safetensors"))["step"] == 2
    result = torchrun(tmp, killed, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    out["resumed"] = tmp / "killed"
    return out


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_two_processes_train_the_weights_of_one_process_with_the_same_global_batch(runs, name):
    for kind, cid in (("tokenizer", "vq"), ("prior", "main")):
        one, two = weights(runs["one"], kind, cid), weights(runs[name], kind, cid)
        assert one.keys() == two.keys()
        gaps = torch.cat([(one[k].float() - two[k].float()).abs().flatten() for k in one])
        assert gaps.max() < WORST and gaps.quantile(0.99) < TYPICAL, (kind, float(gaps.max()))
    # the priors trained on the same token cache, so their comparison is like for like
    for shard in (runs["one"] / "tokens/vq/train").glob("*.safetensors"):
        a, b = load_file(str(shard)), load_file(str(runs[name] / "tokens/vq/train" / shard.name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_moves_the_weights_far_beyond_the_tolerance(runs):
    """The comparison above is not vacuous."""
    initial = api.build(api.load(str(runs["one"].with_suffix(".yaml")))).model.priors["main"].prior.state_dict()
    trained = weights(runs["one"], "prior", "main")
    moved = torch.cat([(trained[k] - initial[k]).abs().flatten() for k in trained])
    assert moved.median() > 100 * TYPICAL


def test_fsdp_resume_is_exact(runs):
    for kind, cid in (("tokenizer", "vq"), ("prior", "main")):
        whole, resumed = weights(runs["fsdp"], kind, cid), weights(runs["resumed"], kind, cid)
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), kind
    a, b = (load_file(str(r / "priors/main/checkpoint.safetensors")) for r in (runs["fsdp"], runs["resumed"]))
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
