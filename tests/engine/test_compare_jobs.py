"""A comparison's runs trained side by side in processes of their own (``train_jobs``)."""
import re
import time
from types import SimpleNamespace

import pytest
import torch
import yaml

from stratagen import api
from stratagen.config import load_compare_config
from stratagen.engine.comparison import compare as compare_module
from stratagen.engine.comparison import jobs as jobs_module
from stratagen.engine.comparison.plan import plan_comparison
from stratagen.io import checkpoint
from stratagen.io.run import Run
from stratagen.registry import ConfigError
from tinyconfigs import tiny_config, write_config


@pytest.fixture
def compare_file(tmp_path):
    write_config(tmp_path / "maskgit.yaml", tiny_config(tmp_path / "runs/maskgit", "maskgit"))
    write_config(tmp_path / "strait.yaml", tiny_config(tmp_path / "runs/strait", "strait"))
    spec = {"dir": str(tmp_path / "out"), "device": "cpu", "seeds": [3, 4], "train_per_seed": True, "train_jobs": 2,
            "variants": {"tiny-maskgit": {"config": "maskgit.yaml"}, "tiny-strait": {"config": "strait.yaml"},
                         "tiny-maskgit-2steps": {"run": str(tmp_path / "runs/maskgit"),
                                                 "set": ["sampler.stage.steps=2"]}},
            "eval": {"samples_per_class": 2, "seed": 4, "batch_size": 8,
                     "metrics": [{"name": "in-domain", "classifier_steps": 10, "batch_size": 16,
                                  "kid_subset_size": 4}]}}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _weights(run_dir) -> dict[str, torch.Tensor]:
    run = Run(str(run_dir))
    out = {}
    for kind, cid in (("tokenizer", "vq"), ("prior", "main")):
        tensors, _ = checkpoint.load_tensors(run.component_url(kind, cid, "model.safetensors"))
        out |= {f"{kind}.{cid}.{k}": v for k, v in tensors.items()}
    return out


def test_runs_trained_side_by_side_are_the_runs_one_process_trains(compare_file, tmp_path):
    result = compare_module.compare(str(compare_file))
    assert not result.failures
    assert {(r["variant"], r["seed"]) for r in result.seed_rows} == {
        (v, s) for v in ("tiny-maskgit", "tiny-strait", "tiny-maskgit-2steps") for s in (3, 4)}
    jobs = tmp_path / "out/jobs"
    assert sorted(p.name for p in jobs.glob("*.log")) == [
        "tiny-maskgit-seed3.log", "tiny-maskgit-seed4.log", "tiny-strait-seed3.log", "tiny-strait-seed4.log"]
    log = (jobs / "tiny-maskgit-seed4.log").read_text().splitlines()
    threads = max(1, torch.get_num_threads() // 2)
    assert log[0].endswith(f": OMP_NUM_THREADS={threads} -m stratagen.cli train {jobs / 'tiny-maskgit-seed4.yaml'} "
                           "--resume")
    assert any(line.startswith("prior/main: 4/4") for line in log)
    # the config the comparison would train itself, at the children's thread count: the same weights, bit for bit
    config = plan_comparison(load_compare_config(str(compare_file))).variants["tiny-maskgit"].run_configs[4]
    assert api.load(str(jobs / "tiny-maskgit-seed4.yaml")).model_dump() == config.model_dump()  # the dump is exact
    config = config.model_copy(update={"run": config.run.model_copy(update={"dir": str(tmp_path / "again")})})
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        api.train(config)
    finally:
        torch.set_num_threads(before)
    side_by_side, here = _weights(tmp_path / "runs/maskgit-seed4"), _weights(tmp_path / "again")
    assert side_by_side.keys() == here.keys() and all(torch.equal(side_by_side[k], here[k]) for k in here)
    # finished: nothing left to train
    assert jobs_module.jobs_to_train(plan_comparison(load_compare_config(str(compare_file)))) == []


def test_the_largest_run_trains_first_and_a_run_failing_fails_its_variants_only(compare_file, tmp_path):
    config = load_compare_config(str(compare_file), ["seeds=[3]", "train_jobs=3"])
    jobs = jobs_module.jobs_to_train(plan_comparison(config))
    assert [(j.label, j.name, j.steps) for j in jobs] == [("tiny-strait seed 3", "tiny-strait-seed3", 12),
                                                          ("tiny-maskgit seed 3", "tiny-maskgit-seed3", 8)]
    config = load_compare_config(str(compare_file), ["train_per_seed=false"])
    assert [(j.label, j.name, j.variants) for j in jobs_module.jobs_to_train(plan_comparison(config))] == [
        ("tiny-strait", "tiny-strait", ["tiny-strait"]), ("tiny-maskgit", "tiny-maskgit", ["tiny-maskgit"])]
    busy = Run(str(tmp_path / "runs/maskgit-seed3"))
    with busy.training():  # this process trains it: the child's `stratagen train` is refused
        result = compare_module.compare(str(compare_file), ["seeds=[3]"])
    assert set(result.failures) == {"tiny-maskgit", "tiny-maskgit-2steps"}
    assert re.search(r"training \S+maskgit-seed3 failed \(exit 2\): \S+maskgit-seed3: another process is training "
                     r"this run .*\(log: \S+tiny-maskgit-seed3\.log\)", result.failures["tiny-maskgit"])
    assert result.failures["tiny-maskgit-2steps"].startswith("variant tiny-maskgit trains its run: training ")
    assert {r["variant"] for r in result.seed_rows} == {"tiny-strait"}


def test_a_variant_whose_runs_both_fail_names_both(compare_file, tmp_path):
    config = load_compare_config(str(compare_file), ["train_jobs=3"])
    jobs = [job for job in jobs_module.jobs_to_train(plan_comparison(config)) if job.variants == ["tiny-maskgit"]]
    (tmp_path / "runs").mkdir()
    for seed in (3, 4):
        (tmp_path / f"runs/maskgit-seed{seed}").write_text("not a run")
    failures = jobs_module.train_in_processes(jobs, 2, str(tmp_path / "jobs"))
    assert list(failures) == ["tiny-maskgit"]
    failed = re.findall(r"training (\S+) failed \(exit 2\): run.dir: \1 is a file", failures["tiny-maskgit"])
    assert sorted(failed) == [f"{tmp_path}/runs/maskgit-seed{seed}" for seed in (3, 4)]


def test_an_interrupted_comparison_stops_its_children(compare_file, monkeypatch):
    started = []
    start = jobs_module._start

    def spy(*args):
        started.append(start(*args))
        return started[-1]

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs_module, "_start", spy)
    # Ctrl-C while the comparison waits for its children (only jobs.py's clock is replaced)
    monkeypatch.setattr(jobs_module, "time", SimpleNamespace(sleep=interrupt, monotonic=time.monotonic,
                                                             strftime=time.strftime))
    with pytest.raises(KeyboardInterrupt):
        compare_module.compare(str(compare_file))
    # stopped by SIGTERM: by the CLI's handler (143), or before it was set (-15)
    assert len(started) == 2 and all(child.returncode in (143, -15) for child in started)


def test_train_jobs_is_refused_under_torchrun(compare_file, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="train_jobs: 2 trains runs side by side in processes of its own, which "
                                          "torchrun's 2 processes cannot share; under torchrun set train_jobs: 1"):
        compare_module.check_compare(str(compare_file))


def test_train_jobs_is_refused_for_runs_in_memory(compare_file):
    with pytest.raises(ConfigError, match=re.escape("variant tiny-strait: run.dir memory://strait-seed3 lives in this "
                                                    "process's memory, which the processes that train_jobs trains in "
                                                    "do not share")):
        compare_module.check_compare(str(compare_file), ["variants.tiny-strait.set=[run.dir=memory://strait]"])
