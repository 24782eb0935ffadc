"""The GPU scripts, run on the CPU at tiny size: benchmarks/gpu_var_official.sh converts the official
code's tiny VAR (../shared/fixtures/var-llamagen-official), samples under torchrun and scores it with
ADM's protocol against a reference batch, exactly the steps it takes with VAR-d16 on a GPU;
benchmarks/gpu_medium.sh runs a comparison with training seeds and writes the results files and
the stage times that the medium comparison commits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import yaml

from stratagen import cli
from tinyconfigs import tiny_config, write_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = next((p / "shared/fixtures/var-llamagen-official/var" for p in ROOT.parents
                 if (p / "shared/fixtures/var-llamagen-official/var").is_dir()), None)


@pytest.mark.skipif(FIXTURES is None, reason="official VAR/LlamaGen fixtures not present")
def test_var_official_script_converts_samples_and_scores_the_fixture(tmp_path, capsys):
    from inception_weights import write_calibrated_inception

    inception = write_calibrated_inception(tmp_path / "inception.pth")
    with np.load(FIXTURES / "io.npz") as io:
        images = ((io["images"].transpose(0, 2, 3, 1) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    folder = tmp_path / "reference" / "c0"
    folder.mkdir(parents=True)
    for i, image in enumerate([*images, *images[:, ::-1], *images[:, :, ::-1]]):
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"{i}.png")
    reference = tmp_path / "ref.npz"
    assert cli.main(["data", "stats", str(tmp_path / "reference"), str(reference), "--inception-weights",
                     str(inception), "--resolution", "128", "--images", "6", "--device", "cpu"]) == 0
    capsys.readouterr()

    env = {**os.environ, "VAE": str(FIXTURES / "vae.pth"), "VAR": str(FIXTURES / "var.pth"), "REF": str(reference),
           "INCEPTION": str(inception), "OUT": str(tmp_path / "out"), "DEVICE": "cpu", "NPROC": "1",
           "PER_CLASS": "1", "BATCH": "5", "PYTHON": sys.executable,
           "STRATAGEN_PROGRESS": "0"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_var_official.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    samples = json.loads((tmp_path / "out/var_official/var/eval.json").read_text())["samples"]
    assert samples["count"] == 10  # the fixture's 10 classes, one image each
    assert samples["fid_adm"] > 0 and samples["sfid_adm"] > 0 and samples["is_adm"] >= 1
    assert 0 <= samples["precision_adm"] <= 1 and 0 <= samples["recall_adm"] <= 1
    summary = (tmp_path / "out/var_official/summary.md").read_text()
    assert summary in done.stdout and f"| var | 10 | {samples['fid_adm']:.4g} |" in summary


def test_medium_script_runs_a_comparison_and_writes_its_results_and_stage_times(tmp_path):
    write_config(tmp_path / "strait.yaml", tiny_config(tmp_path / "runs/strait", "strait"))
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump({
        "dir": str(tmp_path / "compare"), "device": "cpu", "seeds": [0, 1], "train_per_seed": True, "train_jobs": 2,
        "variants": {"tiny-strait": {"config": "strait.yaml"}},
        "eval": {"samples_per_class": 2, "seed": 0, "batch_size": 4,
                 "metrics": [{"name": "in-domain", "classifier_steps": 5, "batch_size": 8, "kid_subset_size": 4}]},
        "sweeps": {"choice_temperature": [3.0]}}))
    env = {**os.environ, "CONFIG": str(tmp_path / "compare.yaml"), "OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable, "STRATAGEN_PROGRESS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_medium.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "out/medium"
    assert (out / "results.md").read_text() == (tmp_path / "compare/results.md").read_text()
    assert "choice_temperature" in (out / "results.csv").read_text() and (out / "claims.csv").exists()
    stages = (out / "stages.txt").read_text().splitlines()
    trained = [line for line in stages if ": training " in line]
    assert trained == [f"tiny-strait seed {s}: training {tmp_path}/runs/strait-seed{s} (log: {tmp_path}/compare/"
                       f"jobs/tiny-strait-seed{s}.log)" for s in (0, 1)]
    for seed in (0, 1):  # each run's stages, from the log of the process that trained it
        job = stages.index(f"== tiny-strait-seed{seed} (trained in a process of its own)")
        assert [line.split(":")[0] for line in stages[job + 1:job + 5]] == [
            "tokenizer/vq", "tokenize vq (train, 1 view(s), rank 0)", "prior/top", "prior/bottom"]
    total = sum(int(line.rsplit("(done in ", 1)[1].split()[0]) for line in stages if "(done in " in line)
    assert f"sum of the stage times: {total} s" in stages[-2] and stages[-1].startswith("compare exit 0 after ")
    assert "StraIT" not in done.stderr and "results.md" not in done.stderr
