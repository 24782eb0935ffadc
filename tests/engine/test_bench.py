"""`stratagen bench`: FLOPs per row are the model's, MFU is achieved over the peak measured in the run."""
import json
import subprocess
import sys

import pytest

from stratagen.config.schema import validate
from stratagen.engine.evaluation.bench import benchmark, count_flops
from tinyconfigs import tiny_config, write_config


def test_bench_rows_count_model_flops_and_divide_by_the_measured_peak(tmp_path):
    config = validate(tiny_config(tmp_path / "run"), "test")
    result = benchmark(config, repeats=1, batches=[1, 2])
    rows = {(r["component"], r["what"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {("tokenizer vq", "train step", 8), ("prior main", "train step", 8),
                         *{("sampler maskgit", what, b) for what in ("sample", "sample, guidance 0.2") for b in (1, 2)}}
    plain1, plain2 = rows["sampler maskgit", "sample", 1], rows["sampler maskgit", "sample", 2]
    guided1 = rows["sampler maskgit", "sample, guidance 0.2", 1]
    assert plain1["flops_per_image"] == pytest.approx(plain2["flops_per_image"], rel=1e-9)  # same work per image
    assert guided1["flops_per_image"] > plain1["flops_per_image"]
    for r in result["rows"]:
        assert r["flops"] > 0 and r["seconds"] > 0
        assert r["peak_flops"] == max(result["peaks"][r["dtype"]].values())
        assert r["mfu"] == pytest.approx(r["flops"] / r["seconds"] / r["peak_flops"])


def test_train_rows_run_with_the_block_options_and_count_model_flops(tmp_path, monkeypatch):
    """A prior training with activation checkpointing is timed checkpointed, its FLOPs are the plain
    step's (recomputation is not model work), and its blocks are plain again afterwards."""
    from stratagen.engine.evaluation import bench
    from stratagen.engine.devices.parallel import blocks

    config = validate(tiny_config(tmp_path / "run"), "test")
    plain = {r["component"]: r for r in benchmark(config, repeats=1, parts=["priors"])["rows"]}
    config = config.model_copy(deep=True)
    config.priors["main"].train.checkpoint_activations = True
    built = bench.build(config)
    timed_checkpointed = []

    def timing(fn, device, repeats, min_seconds=0.5):
        timed_checkpointed.append(all("forward" in vars(b) for b in blocks(built.model.priors["main"].prior)))
        return original(fn, device, repeats, min_seconds)

    original = bench.seconds_per_call
    monkeypatch.setattr(bench, "seconds_per_call", timing)
    monkeypatch.setattr(bench, "build", lambda _: built)
    [checkpointed] = benchmark(config, repeats=1, parts=["priors"])["rows"]
    assert checkpointed["what"] == "train step, checkpointed" and plain["prior main"]["what"] == "train step"
    assert checkpointed["flops"] == plain["prior main"]["flops"]
    assert timed_checkpointed.count(True) == 1  # the step's timing; the peaks are timed before and after
    assert not any("forward" in vars(b) for b in blocks(built.model.priors["main"].prior))


def test_count_flops_of_a_matmul():
    import torch

    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_guidance_doubles_the_counted_prior_flops(tmp_path):
    import torch

    from stratagen import api
    from stratagen.engine.pipeline import Pipeline
    from stratagen.io.run import Run

    config = validate(tiny_config(tmp_path / "run"), "test")
    pipe = Pipeline(api.build(config), Run(str(tmp_path / "run")), torch.device("cpu")).ready()
    samplers = {g: pipe.sampler(config.sampler.with_setting("guidance_scale", g)) for g in (0.0, 0.2)}
    plain, guided = (count_flops(lambda: pipe.sample([0, 1], sampler=samplers[g])) for g in (0.0, 0.2))
    tokens = torch.zeros(2, 4, 4, dtype=torch.long)
    decode = count_flops(lambda: pipe.model.tokenizers["vq"].decode({"tokens": tokens}))
    assert 0 < decode < plain and guided - decode == 2 * (plain - decode)


def test_the_cli_runs_as_a_module_as_torchrun_launches_it(tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))
    result = subprocess.run([sys.executable, "-m", "stratagen.cli", "bench", str(config), "--parts", "sample",
                             "--batches", "1", "--repeats", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)["rows"]
    assert [(r["what"], r["batch"]) for r in rows] == [("sample", 1), ("sample, guidance 0.2", 1)]
