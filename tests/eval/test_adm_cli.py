"""``stratagen data stats`` and ``stratagen eval --reference`` end to end: the FID against a reference
batch written from a folder equals the FID against that folder."""
from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from stratagen import api, cli


def test_eval_against_the_reference_batch_of_a_folder_gives_the_folder_fid(trained_run, tmp_path, capsys,
                                                                          monkeypatch) -> None:
    from inception_weights import write_calibrated_inception

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    weights = write_calibrated_inception(tmp_path / "inception.pth")
    # the run's eval split (what its 'inception' metric scores against) as a class folder of PNGs
    smaller = ["data.eval_size=8"]  # each Inception forward costs about 0.2 s an image here
    split = api.build(api.load(str(run), smaller)).dataset("eval")
    for i, (image, label) in enumerate(zip(split.images, split.labels.tolist())):
        (tmp_path / "eval" / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "eval" / f"c{label}" / f"{i:03d}.png")
    reference = tmp_path / "ref.npz"
    assert cli.main(["data", "stats", str(tmp_path / "eval"), str(reference), "--inception-weights", str(weights),
                     "--resolution", "16", "--images", "5", "--batch-size", "3", "--device", "cpu"]) == 0
    assert f"{reference}: statistics of {len(split)} images, 5 images as arr_0" in capsys.readouterr().out
    with np.load(reference, allow_pickle=False) as npz:
        assert npz["arr_0"].shape == (5, 16, 16, 3) and npz["sigma_s"].shape == (2023, 2023)
        # the same images in one flat folder (no class sub-folders: a folder of samples) give the same batch
        (tmp_path / "flat").mkdir()
        for png in (tmp_path / "eval").rglob("*.png"):
            shutil.copy(png, tmp_path / "flat" / f"{png.parent.name}_{png.name}")
        assert cli.main(["data", "stats", str(tmp_path / "flat"), str(tmp_path / "flat.npz"), "--inception-weights",
                         str(weights), "--resolution", "16", "--batch-size", "3", "--device", "cpu"]) == 0
        assert f"statistics of {len(split)} images" in capsys.readouterr().out
        with np.load(tmp_path / "flat.npz", allow_pickle=False) as flat:
            for key in ("mu", "sigma", "mu_s", "sigma_s"):
                assert np.allclose(flat[key], npz[key], rtol=1e-5, atol=1e-6), key

    assert cli.main(["eval", str(run), "--reference", str(reference), "--set", smaller[0],
                     "--set", "eval.samples_per_class=1",
                     "--set", f"eval.metrics=[{{name: inception, weights: {weights}, metrics: [fid]}}]"]) == 0
    samples = json.loads((run / "eval.json").read_text())["samples"]
    assert samples["count"] == 4
    assert abs(samples["fid"] - samples["fid_adm"]) <= 1e-4 and samples["fid"] > 1
    assert samples["sfid_adm"] > 0 and samples["is_adm"] >= 1
    assert 0 <= samples["precision_adm"] <= 1 and 0 <= samples["recall_adm"] <= 1

    # --reference-only: the same ADM scores, nothing else, and the run's dataset is never opened
    from stratagen.engine.evaluation import evaluate

    def no_dataset(*args, **kwargs):
        raise AssertionError("the run's dataset was opened")

    monkeypatch.setattr(evaluate, "reference_set", no_dataset)
    assert cli.main(["eval", str(run), "--reference", str(reference), "--reference-only", "--set", smaller[0],
                     "--set", "eval.samples_per_class=1",
                     "--set", f"eval.metrics=[{{name: inception, weights: {weights}, metrics: [fid]}}]"]) == 0
    only = json.loads((run / "eval.json").read_text())
    assert set(only) == {"samples"}
    assert set(only["samples"]) == {"fid_adm", "sfid_adm", "is_adm", "precision_adm", "recall_adm",
                                    "sec_per_image", "count"}
    for key in ("fid_adm", "sfid_adm", "is_adm", "precision_adm", "recall_adm"):
        assert only["samples"][key] == samples[key], key  # same seeds, same images, same scores
