"""The GPU scripts, run on the CPU at tiny size: benchmarks/gpu_var_official.sh converts the official
code's tiny VAR (../shared/fixtures/var-llamagen-official), samples under torchrun and scores it with
ADM's protocol against a reference batch, exactly the steps it takes with VAR-d16 on a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stratagen import cli

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
           "PER_CLASS": "1", "BATCH": "5", "PATCH_NUMS": "1,2,3,4,6,8", "PYTHON": sys.executable,
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
