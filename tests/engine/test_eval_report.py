"""`stratagen eval` on a two-level run: the level-swap test in the report, a figure and TensorBoard."""
import json

import pytest

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stratagen import api
from stratagen.cli import main
from tinyconfigs import tiny_config, write_config


def test_eval_reports_level_swaps_with_a_figure_and_tensorboard(tmp_path, capsys):
    config = tiny_config(tmp_path / "run", "strait")
    for section in (config["tokenizers"]["vq"], config["priors"]["top"], config["priors"]["bottom"]):
        section["train"]["steps"] = 2
    api.train(api.load(str(write_config(tmp_path / "c.yaml", config))))
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--tokenizers-only"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = printed["tokenizers"]["vq"]
    for key in ("swap_keep_top_psnr", "swap_keep_bottom_psnr", "swap_other_psnr", "top_only_psnr"):
        assert 0 < report[key] < 100 and report[f"{key}_image_std"] >= 0, key
    assert printed == json.loads((tmp_path / "run/eval.json").read_text())
    figure = tmp_path / "run/figures/level_swap_vq.png"
    assert printed["figures"] == {"level_swap_vq": str(figure)} and figure.stat().st_size > 1000
    events = EventAccumulator(str(tmp_path / "run/tb/eval"))
    events.Reload()
    assert events.Scalars("eval/vq/swap_keep_top_psnr")[0].value == pytest.approx(report["swap_keep_top_psnr"], rel=1e-6)
    assert "eval/vq/level_swaps" in events.Tags()["images"]
