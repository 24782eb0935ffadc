"""Sampling and evaluation under torchrun: two processes give what one process gives.

One script runs twice, under ``torchrun --nproc-per-node=2`` and ``--nproc-per-node=1`` (both with
one thread per process, so the arithmetic is the same): it generates label sets whose batches do
not split evenly, runs ``stratagen eval`` on a copy of a trained run and ``stratagen compare`` on
a variant that the two-process launch trains (DDP) and the one-process launch loads; checks that
what rank 0 computes (a value or an error) reaches every rank, and that the process group is gone
when the processes exit.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tinyconfigs import tiny_config, write_config

METRICS = [{"name": "in-domain", "classifier_steps": 20, "batch_size": 16, "kid_subset_size": 4}, {"name": "swd"}]
#: (name, labels, batch size): 7 labels in batches of 3 (3 + 3 + 1: two rounds over two processes, the
#: second with one batch); 1 label (one batch: the second process samples nothing)
GENERATIONS = [("uneven", [3, 1, 0, 2, 2, 1, 0], 3), ("idle", [1], 4)]

SCRIPT = f"""
import atexit
import json
import os
import socket
import sys
import torch.distributed as dist
from safetensors.torch import save_file
from stratagen import api
from stratagen.cli import main
from stratagen.engine.evaluation import evaluate
from stratagen.engine.devices.processes import setup_processes
from stratagen.engine.devices.gather import on_main
from stratagen.registry import StratagenError

run, out, compare = sys.argv[1:4]
# registered first, so it runs last: is the process group still up when the process ends?
atexit.register(lambda: open(f"{{out}}/exit-rank{{os.environ['RANK']}}.json", "w").write(json.dumps(dist.is_initialized())))
procs = setup_processes("cpu")
pipe = api.Pipeline.from_run(run)
tensors = {{}}
for name, labels, batch_size in {GENERATIONS!r}:
    generated = evaluate.generate(pipe, labels, seed=5, batch_size=batch_size, procs=procs)
    assert (generated is None) == (procs.rank != 0)
    if generated is not None:
        tensors |= {{f"{{name}}.images": generated.images, f"{{name}}.labels": generated.labels}}
if procs.is_main:
    save_file(tensors, out + "/generated.safetensors")
eval_set = ["--set", "eval.samples_per_class=3", "--set", "eval.batch_size=5", "--set", "eval.metrics={METRICS!r}"]
assert main(["eval", run, *eval_set]) == 0
assert main(["compare", compare, "--set", f"dir={{out}}/compare"]) == 0
assert main(["sample", run, "--count", "2", "--seed", "5", "--out", out + "/sample"]) == 0
# what rank 0 computes reaches every rank, its value or its error
try:
    on_main(procs, lambda: 1 // 0)
except Exception as exc:
    error = f"{{type(exc).__name__}}: {{exc}}"
with open(f"{{out}}/on_main-rank{{procs.rank}}.json", "w") as f:
    json.dump({{"value": on_main(procs, lambda: procs.rank + 7), "error": error}}, f)
# a run another process (here torchrun's agent) trains: rank 0 holds runs for all, and every rank is refused
hold = {{"pid": os.getppid(), "host": socket.gethostname(), "since": "then"}}
on_main(procs, lambda: open(run + "/.training", "w").write(json.dumps(hold)))
try:
    api.train(api.load(run), resume=True)
    refused = None
except StratagenError as exc:
    refused = str(exc)
with open(f"{{out}}/refused-rank{{procs.rank}}.json", "w") as f:
    json.dump(refused, f)
"""


def launch(root: Path, trained_run: Path, processes: int) -> tuple[Path, str]:
    """Run the script under torchrun with ``processes`` processes; its outputs and stdout."""
    out = root / f"np{processes}"
    out.mkdir()
    run = out / "run"
    shutil.copytree(trained_run, run)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(torchrun), "--standalone", f"--nproc-per-node={processes}", str(root / "script.py"),
                             str(run), str(out), str(root / "compare.yaml")], capture_output=True, text=True,
                            env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


@pytest.fixture(scope="module")
def launches(tmp_path_factory, trained_run):
    """The outputs of the two-process launch, then of the one-process launch."""
    root = tmp_path_factory.mktemp("distributed")
    (root / "script.py").write_text(SCRIPT)
    config = tiny_config(root / "compare-run")
    for section in (config["tokenizers"]["vq"], config["priors"]["main"]):
        section["train"]["steps"] = 2
    write_config(root / "variant.yaml", config)
    (root / "compare.yaml").write_text(yaml.safe_dump({
        "dir": str(root / "unused"), "device": "cpu", "variants": {"tiny": {"config": "variant.yaml"}},
        "eval": {"samples_per_class": 2, "seed": 3, "batch_size": 3, "metrics": METRICS},
        "sweeps": {"temperature": [2.0]}}))
    two = launch(root, trained_run, 2)  # trains the compare variant under DDP
    assert (root / "compare-run/priors/main/model.safetensors").exists()
    return two, launch(root, trained_run, 1)


def test_two_processes_generate_the_single_process_images_bitwise(launches):
    (two, _), (one, _) = launches
    split, whole = load_file(str(two / "generated.safetensors")), load_file(str(one / "generated.safetensors"))
    assert split.keys() == whole.keys()
    for name, labels, _ in GENERATIONS:
        assert split[f"{name}.images"].dtype == torch.uint8 and len(split[f"{name}.images"]) == len(labels)
        assert split[f"{name}.labels"].tolist() == labels == whole[f"{name}.labels"].tolist()
        assert torch.equal(split[f"{name}.images"], whole[f"{name}.images"]), name
    images = whole["uneven.images"]
    assert not torch.equal(images[0], images[3])  # batches differ (their seeds do), so the order is tested


def test_two_process_eval_writes_the_single_process_metrics(launches):
    (two, _), (one, _) = launches
    split, whole = (json.loads((out / "run/eval.json").read_text()) for out in (two, one))
    assert split["tokenizers"] == whole["tokenizers"] and "rfid" in whole["tokenizers"]["vq"]
    for report in (split, whole):
        assert report["samples"].pop("sec_per_image") > 0
    assert split["samples"] == whole["samples"] and whole["samples"]["count"] == 12
    assert {"fid", "swd", "class_accuracy"} <= whole["samples"].keys()


def test_two_process_compare_trains_and_scores_as_one_process(launches):
    (two, two_stdout), (one, _) = launches
    rows = [list(csv.DictReader(open(out / "compare/results_per_seed.csv"))) for out in (two, one)]
    for table in rows:
        for row in table:
            assert float(row.pop("sec_per_image")) > 0
    assert rows[0] == rows[1] and [r["sweep"] for r in rows[0]] == ["default", "temperature"]
    assert two_stdout.count("open the dashboard") == 1  # only rank 0 reports
    assert two_stdout.count("prior/main: 0/2 (started)") == 1  # and shows progress
    assert sorted(os.listdir(two / "compare/tb")) == ["claims", "tiny"]  # the claims text run beside the variant


def test_sample_under_torchrun_draws_on_process_0_the_images_of_one_process(launches):
    (two, two_stdout), (one, one_stdout) = launches
    pngs = [{p.name: p.read_bytes() for p in (out / "sample").glob("*.png")} for out in (two, one)]
    assert pngs[0] == pngs[1] and len(pngs[0]) == 4 * 2 + 1  # 2 per class and the grid
    assert two_stdout.count("8 images in") == 1 and "sample draws its images in one sampler call" in two_stdout
    assert "one sampler call" not in one_stdout


def test_rank_0s_value_and_error_reach_every_rank(launches):
    (two, _), _ = launches
    seen = [json.loads((two / f"on_main-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert seen[0]["value"] == seen[1]["value"] == 7
    assert seen[0]["error"] == "ZeroDivisionError: integer division or modulo by zero"
    assert seen[1]["error"] == "StratagenError: ZeroDivisionError: integer division or modulo by zero"


def test_every_process_leaves_the_process_group_before_it_exits(launches):
    # left to the interpreter's teardown, gloo's threads abort about one exit in eight
    (two, _), _ = launches
    assert [json.loads((two / f"exit-rank{rank}.json").read_text()) for rank in (0, 1)] == [False, False]


def test_a_run_another_process_trains_is_refused_on_every_rank(launches):
    """Rank 0 alone holds a run; its refusal reaches every rank, so none trains on (or, in a
    compare, samples a variant rank 0 recorded as failed)."""
    (two, _), (one, _) = launches
    for out, ranks in ((two, 2), (one, 1)):
        refusals = [json.loads((out / f"refused-rank{r}.json").read_text()) for r in range(ranks)]
        assert all(r is not None and "another process is training this run" in r for r in refusals), refusals
