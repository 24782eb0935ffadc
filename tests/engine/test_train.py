"""Training engine: resume is exact, DDP ranks agree, sampling is seeded, runs are self-describing."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from stratagen import api
from stratagen.io import checkpoint
from stratagen.io.tokens import TokenCache
from stratagen.registry import StratagenError
from tinyconfigs import tiny_config, write_config


def weights(run_dir: Path, kind: str, cid: str) -> dict[str, torch.Tensor]:
    return checkpoint.load_tensors(str(run_dir / f"{kind}s" / cid / "model.safetensors"))[0]


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, monkeypatch):
    whole = tiny_config(tmp_path / "whole")
    whole["tokenizers"]["vq"]["model"]["loss"]["gan_weight"] = 0.1  # two optimizers
    whole["tokenizers"]["vq"]["model"]["loss"]["disc_max_channels"] = 8
    api.train(api.load(str(write_config(tmp_path / "whole.yaml", whole))))

    parted = tiny_config(tmp_path / "parted")
    parted["tokenizers"]["vq"]["model"]["loss"] = whole["tokenizers"]["vq"]["model"]["loss"]
    path = write_config(tmp_path / "parted.yaml", parted)
    import stratagen.engine.training.train as train_module

    real_fit = train_module.fit
    calls = {"n": 0}

    def interrupted_fit(**kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the prior: stop after its step-2 checkpoint
            real_step = kwargs["loss_step"]

            def loss_step(micro):
                if micro.step == 3:
                    raise KeyboardInterrupt
                return real_step(micro)
            kwargs["loss_step"] = loss_step
        return real_fit(**kwargs)

    monkeypatch.setattr(train_module, "fit", interrupted_fit)
    try:
        api.train(api.load(str(path)))
    except KeyboardInterrupt:
        pass
    assert checkpoint.load_tensors(str(tmp_path / "parted/priors/main/model.safetensors"))[1]["step"] == 2
    monkeypatch.setattr(train_module, "fit", real_fit)
    try:
        api.train(api.load(str(path)))
        raise AssertionError("a second train without --resume must refuse")
    except StratagenError as exc:
        assert "--resume" in str(exc)
    api.train(api.load(str(path)), resume=True)
    for kind, cid in (("tokenizer", "vq"), ("prior", "main")):
        a, b = weights(tmp_path / "whole", kind, cid), weights(tmp_path / "parted", kind, cid)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kind


def test_prior_loss_falls_and_run_holds_config_tokens_and_logs(tmp_path):
    config = tiny_config(tmp_path / "run")
    config["priors"]["main"]["train"].update(steps=60, batch_size=16, lr=3e-3, log_every=1, checkpoint_every=60)
    config["tokenizers"]["vq"]["train"]["steps"] = 30
    api.train(api.load(str(write_config(tmp_path / "c.yaml", config))))
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["priors"]["main"]["model"]["name"] == "maskgit"
    cache = TokenCache(str(run / "tokens/vq/train")).open()
    assert cache.manifest["levels"]["tokens"] == {"shape": [4, 4], "codebook_size": 32, "dtype": "uint8"}
    grids, labels = cache.gather(np.arange(32), np.zeros(32, dtype=np.int64))
    assert grids["tokens"].shape == (32, 4, 4) and labels.tolist() == [i % 4 for i in range(32)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb")); events.Reload()
    losses = [e.value for e in events.Scalars("prior/main/loss/prior")]
    assert losses[-1] < 0.85 * losses[0]
    tags = set(events.Tags()["scalars"])
    assert {"tokenizer/vq/perplexity/tokens", "tokenizer/vq/usage/tokens", "prior/main/lr",
            "prior/main/grad_norm/prior"} <= tags
    assert {"tokenizer/vq/input_vs_reconstruction", "samples"} <= set(events.Tags()["images"])


def test_sample_cli_writes_pngs_and_is_seeded(tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))
    api.train(api.load(str(path)))
    exe = Path(sys.executable).with_name("stratagen")
    out = tmp_path / "samples"
    result = subprocess.run([str(exe), "sample", str(tmp_path / "run"), "--classes", "0,3", "--count", "2",
                             "--seed", "5", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.png")) == [
        "class0_0000.png", "class0_0001.png", "class3_0002.png", "class3_0003.png", "grid.png"]
    pipe = api.Pipeline.from_run(str(tmp_path / "run"))
    a, b = pipe.sample([0, 3], seed=5), pipe.sample([0, 3], seed=5)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, pipe.sample([0, 3], seed=6).images)


def test_missing_plugin_of_a_checkpoint_is_named(tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))
    api.train(api.load(str(path)))
    url = str(tmp_path / "run/priors/main/model.safetensors")
    tensors, meta = checkpoint.load_tensors(url)
    checkpoint.save_tensors(url, tensors, {**meta, "plugin": "fancy-prior", "distribution": "fancy-dist",
                                           "version": "2.0"})
    try:
        api.Pipeline.from_run(str(tmp_path / "run"))
        raise AssertionError("loading must fail")
    except StratagenError as exc:
        assert "fancy-prior" in str(exc) and "fancy-dist 2.0" in str(exc) and "install" in str(exc)


def test_two_process_ddp_ranks_hold_identical_weights(tmp_path):
    """Also the codebook and its usage counters, with dead codes restarted at every step."""
    config = tiny_config(tmp_path / "run")
    config["tokenizers"]["vq"]["train"]["steps"] = 3
    config["tokenizers"]["vq"]["model"].update(restart_dead_codes=True, dead_code_steps=1)
    config["priors"]["main"]["train"]["steps"] = 3
    path = write_config(tmp_path / "c.yaml", config)
    script = tmp_path / "ddp.py"
    # each rank dumps its in-memory weights after training through a hook on fit
    script.write_text(
        "import os, sys, torch\n"
        "import stratagen.engine.training.train as t\n"
        "from safetensors.torch import save_file\n"
        "real = t.fit\n"
        "def fit(**kw):\n"
        "    real(**kw)\n"
        "    state = {k: v.contiguous() for k, v in kw['replica'].module.state_dict().items()}\n"
        "    save_file(state, sys.argv[2] + f\"/{kw['cid']}-rank{os.environ['RANK']}.safetensors\")\n"
        "t.fit = fit\n"
        "from stratagen import api\n"
        "api.train(api.load(sys.argv[1]))\n")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2", str(script), str(path),
                             str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    from safetensors.torch import load_file

    assert "quantizer.steps_since_use" in load_file(str(tmp_path / "vq-rank0.safetensors"))  # counters compared too
    for cid in ("vq", "main"):
        r0, r1 = load_file(str(tmp_path / f"{cid}-rank0.safetensors")), load_file(str(tmp_path / f"{cid}-rank1.safetensors"))
        assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0), cid
        initial = weights(tmp_path / "run", "prior" if cid == "main" else "tokenizer", cid)
        assert all(torch.equal(initial[k], r0[k]) for k in r0)  # rank 0 wrote the checkpoint
