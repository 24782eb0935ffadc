"""Compare runs: identical sampling across variants, outputs, skipped finished work, the dashboard."""
import csv
import os
import re

import pytest
import yaml

from stratagen import api
from stratagen import config as cfg
from stratagen.engine.comparison import compare as compare_module
from stratagen.engine.comparison import plan as compare_plan
from stratagen.engine.evaluation import evaluate
from stratagen.engine.reporting import dashboard
from stratagen.registry import ConfigError, StratagenError
from tinyconfigs import tiny_config, write_config


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    write_config(root / "maskgit.yaml", tiny_config(root / "runs/maskgit", "maskgit"))
    write_config(root / "strait.yaml", tiny_config(root / "runs/strait", "strait"))
    spec = {
        "dir": str(root / "out"),
        "device": "cpu",
        "variants": {
            "tiny-maskgit": {"config": "maskgit.yaml"},
            "tiny-strait": {"config": "strait.yaml"},
            # a run the first variant trains, read with its own sampler settings
            "tiny-maskgit-2steps": {"run": str(root / "runs/maskgit"), "set": ["sampler.stage.steps=2"]},
        },
        "eval": {"samples_per_class": 3, "seed": 4, "batch_size": 6,
                 "metrics": [{"name": "in-domain", "classifier_steps": 20, "batch_size": 16, "kid_subset_size": 4}]},
        "sweeps": {"temperature": [0.5, 2.0], "schedule": ["linear"], "guidance_scale": [1.5]},
    }
    path = root / "compare.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = compare_module.compare(str(path))
    return root, path, result


def test_every_variant_is_sampled_and_scored_alike(compare_run):
    root, _, result = compare_run
    assert not result.failures
    rows = list(csv.DictReader(open(root / "out/results.csv")))
    by_variant = {v: [r for r in rows if r["variant"] == v] for v in ("tiny-maskgit", "tiny-strait")}
    expected = [("default", "-"), ("guidance_scale", "1.5"), ("schedule", "linear"), ("temperature", "0.5"),
                ("temperature", "2")]  # sweeps in the file's order (yaml.safe_dump sorts the keys)
    for variant in ("tiny-maskgit", "tiny-strait"):
        assert [(r["sweep"], r["value"]) for r in by_variant[variant]] == expected
    assert by_variant["tiny-strait"][0]["tokens"] == "4x4 + 8x8" and by_variant["tiny-strait"][0]["steps"] == "3+2"
    steps = {v: {r["steps"] for r in rows if r["variant"] == v and r["sweep"] == "default"}
             for v in ("tiny-maskgit", "tiny-maskgit-2steps")}
    assert steps == {"tiny-maskgit": {"3"}, "tiny-maskgit-2steps": {"2"}}  # read from the run the first trained
    for row in rows:
        assert 0 <= float(row["class_accuracy"]) <= 1 and float(row["fid"]) >= 0


def test_identical_labels_and_seeds_for_every_variant(compare_run, monkeypatch):
    root, path, _ = compare_run
    calls = []
    real = evaluate.generate

    def spy(pipe, labels, seed, batch_size, sampler=None, **options):
        calls.append((tuple(labels), seed, batch_size))
        return real(pipe, labels, seed, batch_size, sampler, **options)

    monkeypatch.setattr(evaluate, "generate", spy)
    out = root / "out2"
    compare_module.compare(str(path), [f"dir={out}", "sweeps={}"])
    assert len(calls) == 3 and calls[0] == calls[1] == calls[2]
    assert calls[0][0] == tuple(c for c in range(4) for _ in range(3)) and calls[0][1] == 4


def test_outputs_and_rerun_skips_finished_work(compare_run, monkeypatch):
    root, path, _ = compare_run
    out = root / "out"
    for name in ("results.csv", "results.md", "tokenizers.md", "figures/side_by_side.png",
                 "figures/fid_vs_temperature.png", "figures/class_accuracy_vs_schedule.png"):
        assert (out / name).exists(), name
    md = (out / "results.md").read_text()
    assert "best FID over the temperature sweep" in md and "tiny-strait" in md and "Failed variants" not in md
    tokenizers_md = (out / "tokenizers.md").read_text()
    assert "psnr" in tokenizers_md and "swap_keep_top_psnr" in tokenizers_md and "top_only_psnr" in tokenizers_md
    assert (out / "figures/tiny-strait_level_swap_vq.png").exists()  # two levels: a level-swap figure
    assert not (out / "figures/tiny-maskgit_level_swap_vq.png").exists()  # one level: nothing to swap
    assert sorted(os.listdir(out / "tb")) == ["claims", "tiny-maskgit", "tiny-maskgit-2steps", "tiny-strait"]
    claims = list(csv.DictReader(open(out / "claims.csv")))
    assert claims and all(c["verdict"] == "not tested" or c["verdict"].startswith(("indicative (1 seed): ", "indicative (1 training seed): "))
                          for c in claims)  # one seed: no bare verdict
    assert "sampling seeds [4] of one trained model per variant (training seed 0)" in md

    def must_not_run(*args, **kwargs):
        raise AssertionError("finished work was redone")

    def load_or_crash(config, resume=False, registry=None, label=None):  # loads, trains nothing; one variant crashes
        if config.run.dir.endswith("maskgit"):
            raise RuntimeError("out of memory")
        return compare_module.Pipeline.from_config(config, registry=registry)

    monkeypatch.setattr(evaluate, "generate", must_not_run)
    monkeypatch.setattr(compare_module, "train", load_or_crash)
    again = compare_module.compare(str(path))  # a crashed variant is reported, the others finish
    assert len(again.rows) == 10 and again.failures == {"tiny-maskgit": "RuntimeError: out of memory"}
    assert "- tiny-maskgit: RuntimeError: out of memory" in (out / "results.md").read_text()


def test_dashboard_http_api_lists_every_variant(compare_run):
    root, _, _ = compare_run
    # (a re-run above rewrote the dashboard with the variants that finished: tiny-maskgit crashed there)
    report = dashboard.check_dashboard(str(root / "out/tb"), ["tiny-maskgit-2steps", "tiny-strait"], screenshot=None)
    assert {"tiny-maskgit-2steps", "tiny-strait"} <= set(report.runs)
    assert "default/fid" in report.scalar_tags["tiny-maskgit-2steps"]
    assert "temperature/class_accuracy" in report.scalar_tags["tiny-strait"]
    assert {"tokenizer/vq/swap_keep_top_psnr", "tokenizer/vq/swap_keep_bottom_psnr",
            "tokenizer/vq/top_only_psnr"} <= set(report.scalar_tags["tiny-strait"])


@pytest.mark.skipif(dashboard.find_chromium() is None,
                    reason="no Chromium installed (CI installs Debian's chromium; `apt-get install chromium`)")
def test_dashboard_in_a_real_browser(compare_run):
    root, _, _ = compare_run
    shot = root / "dashboard.png"
    dashboard.check_dashboard(str(root / "out/tb"), ["tiny-maskgit-2steps", "tiny-strait"], screenshot=str(shot))
    assert shot.stat().st_size > 10_000


def test_seeds_give_mean_std_per_seed_caches_and_claims(compare_run, monkeypatch):
    root, path, _ = compare_run
    out = root / "out-seeds"
    overrides = [f"dir={out}", "seeds=[1, 2]", "sweeps={}"]
    seeds = []
    real = evaluate.generate

    def spy(pipe, labels, seed, batch_size, sampler=None, **options):
        seeds.append(seed)
        return real(pipe, labels, seed, batch_size, sampler, **options)

    monkeypatch.setattr(evaluate, "generate", spy)
    result = compare_module.compare(str(path), overrides)
    assert seeds == [1, 2, 1, 2, 1, 2]
    per_seed = list(csv.DictReader(open(out / "results_per_seed.csv")))
    assert [(r["variant"], r["seed"]) for r in per_seed] == [
        ("tiny-maskgit", "1"), ("tiny-maskgit", "2"), ("tiny-maskgit-2steps", "1"), ("tiny-maskgit-2steps", "2"),
        ("tiny-strait", "1"), ("tiny-strait", "2")]
    for row in result.rows:
        fids = [float(r["fid"]) for r in per_seed if r["variant"] == row["variant"]]
        assert row["seeds"] == 2 and row["fid"] == pytest.approx(sum(fids) / 2, abs=1e-4)
        assert row["fid_std"] == pytest.approx(abs(fids[0] - fids[1]) / 2 ** 0.5, abs=1e-4) and row["fid_std"] > 0
    assert fids[0] != fids[1]  # the seeds really sample differently
    md = (out / "results.md").read_text()
    assert "std over sampling seeds [1, 2] of one trained model per variant" in md
    assert "(best)" in md and " ± " in md
    assert "## The paper's claims, checked by this run" in md and "| Table 7 |" in md
    assert os.path.exists(out / "cache/tiny-strait/seed2/default--.json")

    monkeypatch.setattr(evaluate, "generate", lambda *args, **kwargs: pytest.fail("finished work was redone"))
    monkeypatch.setattr(api, "train", lambda config, resume=False, registry=None: None)
    assert len(compare_module.compare(str(path), overrides).seed_rows) == 6


def test_per_seed_training_uses_the_seed_and_its_own_run_directory(compare_run):
    root, path, _ = compare_run
    config = cfg.load_compare_config(str(path), [f"dir={root / 'out-train'}", "seeds=[3, 5]", "train_per_seed=true"])
    configs = compare_plan.resolve_variants(config)["tiny-strait"].run_configs
    assert {s: (c.run.seed, c.run.dir) for s, c in configs.items()} == {
        3: (3, str(root / "runs/strait") + "-seed3"), 5: (5, str(root / "runs/strait") + "-seed5")}
    config = cfg.load_compare_config(str(path), [f"dir={root / 'out-train'}", "seeds=[3]"])
    assert compare_plan.resolve_variants(config)["tiny-strait"].run_configs[None].run.dir == str(root / "runs/strait")
    # trained with seed 3 into runs/maskgit-seed3, which the run: variant then reads
    result = compare_module.compare(str(path), [f"dir={root / 'out-train'}", "seeds=[3]", "train_per_seed=true",
                                                "variants.tiny-strait=null", "sweeps={}"])
    assert not result.failures and api.load(str(root / "runs/maskgit-seed3")).run.seed == 3
    assert [(r["variant"], r["steps"]) for r in result.rows] == [("tiny-maskgit", "3"), ("tiny-maskgit-2steps", "2")]
    assert "std over seeds [3], each a model trained with that seed" in (root / "out-train/results.md").read_text()


def test_steps_sweeps_give_one_value_per_stage(tmp_path):
    strait = api.load(str(write_config(tmp_path / "s.yaml", tiny_config(tmp_path / "run", "strait"))))
    points = compare_module.sweep_points(strait.sampler, {"steps": [[2, 1], 5], "choice_temperature": [0.0]})
    assert [(sweep, label) for sweep, label, _ in points] == [
        ("default", "-"), ("steps", "2+1"), ("steps", "5"), ("choice_temperature", "0")]
    assert (points[1][2].top.steps, points[1][2].bottom.steps) == (2, 1)
    assert (points[2][2].top.steps, points[2][2].bottom.steps) == (5, 5)
    assert points[3][2].top.choice_temperature == 0.0 and points[3][2].top.temperature == 1.0


@pytest.mark.parametrize("sweeps, message", [
    ({"steps": [-3]}, "steps = -3: Input should be greater than or equal to 1"),
    ({"steps": [[2, -3]]}, "steps = -3: Input should be greater than or equal to 1"),
    ({"temperature": [0]}, "temperature = 0: Input should be greater than 0"),
    ({"guidance_scale": [-2]}, "guidance_scale = -2: Input should be greater than or equal to 0"),
    ({"schedule": ["cosin"]}, "unknown schedule 'cosin'"),
    ({"order": ["haltn"]}, "unknown order 'haltn'"),
    ({"guidance": [1.0]}, "unknown sweep 'guidance'; stage settings: steps, schedule, order"),
    ({"temperature": []}, "sweep 'temperature' has no values; give at least one, or remove it"),
])
def test_bad_sweep_values_are_refused_when_the_compare_config_is_read(tmp_path, sweeps, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dir": str(tmp_path / "out"), "variants": {"a": {"run": "x"}},
                                    "sweeps": sweeps}))
    with pytest.raises(ConfigError, match=re.escape(message)):
        cfg.load_compare_config(str(path))


def test_a_sweep_that_does_not_fit_a_variant_is_refused_before_any_work(tmp_path):
    write_config(tmp_path / "m.yaml", tiny_config(tmp_path / "run", "maskgit"))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dir": str(tmp_path / "out"), "variants": {"mg": {"config": "m.yaml"}},
                                    "sweeps": {"steps": [[18, 6]]}}))
    with pytest.raises(ConfigError, match=re.escape("variant mg: steps [18, 6]: sampler 'maskgit' has 1 stages")):
        compare_module.compare(str(path))
    assert not (tmp_path / "run").exists()  # nothing was trained


@pytest.mark.parametrize("variant", [{}, {"config": "a.yaml", "run": "runs/a"}])
def test_a_variant_needs_exactly_one_source(tmp_path, variant):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dir": str(tmp_path / "out"), "variants": {"a": variant}}))
    with pytest.raises(ConfigError, match="variants.a: give exactly one of 'config' or 'run'"):
        cfg.load_compare_config(str(path))


def test_a_variant_may_bring_its_own_sweeps(tmp_path):
    write_config(tmp_path / "m.yaml", tiny_config(tmp_path / "run", "maskgit"))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dir": str(tmp_path / "out"), "sweeps": {"steps": [[18, 6]]},
                                    "variants": {"mg": {"config": "m.yaml", "sweeps": {"steps": [0]}}}}))
    with pytest.raises(ConfigError, match=re.escape("variants.mg.sweeps: steps = 0")):
        cfg.load_compare_config(str(path))
    path.write_text(yaml.safe_dump({"dir": str(tmp_path / "out"), "sweeps": {"steps": [[18, 6]]},
                                    "variants": {"mg": {"config": "m.yaml", "sweeps": {"steps": [5]}}}}))
    plan = compare_plan.plan_comparison(cfg.load_compare_config(str(path)))  # [18, 6] would not fit one stage
    assert [label for _, label, _ in plan.variants["mg"].points] == ["-", "5"]


def test_tokenizer_reports_of_several_training_seeds_keep_the_seed_spread_apart_from_the_image_spread():
    seeds = [{"vq": {"swap_keep_top_psnr": 10.0, "swap_keep_top_psnr_image_std": 2.0}},
             {"vq": {"swap_keep_top_psnr": 12.0, "swap_keep_top_psnr_image_std": 3.0}}]
    mean = compare_module._mean_reports(seeds)["vq"]
    assert mean == {"swap_keep_top_psnr": 11.0, "swap_keep_top_psnr_std": pytest.approx(2 ** 0.5),
                    "swap_keep_top_psnr_image_std": 2.5}


COMPARISON_HOLDER = """
import sys
from stratagen.engine.comparison.compare import COMPARING
from stratagen.io.run import held_by_this_process
with held_by_this_process(sys.argv[1] + "/" + COMPARING, sys.argv[1], "running this comparison", "compare", ""):
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes it
"""


def test_a_compare_directory_another_comparison_runs_is_refused_and_left_as_it_was(compare_run):
    import subprocess
    import sys

    root, path, _ = compare_run
    out = root / "out"
    holder = subprocess.Popen([sys.executable, "-c", COMPARISON_HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        with pytest.raises(StratagenError, match=re.escape(f"{out}: another process is running this comparison "
                                                           f"(process {holder.pid} on ") + r".*remove .*\.comparing "
                                                 r"if that process is gone"):
            compare_module.compare(str(path))
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    finally:
        holder.communicate("")
    assert holder.returncode == 0 and not (out / ".comparing").exists()
    assert not compare_module.compare(str(path)).failures and not (out / ".comparing").exists()


def test_a_compare_dir_that_is_a_file_is_refused_before_any_work(compare_run, tmp_path):
    _, path, _ = compare_run
    (tmp_path / "results").write_text("not a directory")
    with pytest.raises(ConfigError, match=re.escape(f"dir: {tmp_path / 'results'} is a file; give a directory")):
        compare_module.check_compare(str(path), [f"dir={tmp_path / 'results'}"])
