"""Run directories: a copy is itself the run; resuming with a changed config keeps what is valid;
progress reaches a log; one process at a time trains a run."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from stratagen import api, cli
from stratagen.engine.reporting import logger
from stratagen.io.run import Run
from stratagen.registry import StratagenError


def test_a_copied_run_directory_is_the_run(trained_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    before = sorted(p.relative_to(trained_run) for p in trained_run.rglob("*"))
    assert cli.main(["sample", str(copy), "--classes", "0", "--count", "2"]) == 0
    assert sorted(p.name for p in (copy / "samples").iterdir()) == ["class0_0000.png", "class0_0001.png", "grid.png"]
    assert sorted(p.relative_to(trained_run) for p in trained_run.rglob("*")) == before  # the original is untouched
    assert api.load(str(copy)).run.dir == str(copy)


def test_resume_accepts_changes_that_touch_no_trained_component(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    changes = ["sampler.stage.steps=5", "run.device=cpu", "priors.main.train.log_every=7", "eval.seed=3",
               # how a step is computed: another number of processes needs these
               "priors.main.train.accumulate=2", "priors.main.train.parallel=fsdp",
               "tokenizers.vq.train.checkpoint_activations=true", "priors.main.train.compile=true"]
    api.train(api.load(str(copy), changes), resume=True)
    stored = yaml.safe_load((copy / "config.yaml").read_text())
    assert stored["sampler"]["stage"]["steps"] == 5 and stored["run"]["dir"] == str(copy)
    with pytest.raises(StratagenError, match="priors.main.model.depth was 1, now 2.*prior 'main'"):
        api.train(api.load(str(copy), ["priors.main.model.depth=2"]), resume=True)
    assert yaml.safe_load((copy / "config.yaml").read_text()) == stored  # the refused config is not written


def test_progress_prints_lines_when_output_is_a_log(capsys, monkeypatch):
    monkeypatch.delenv("STRATAGEN_PROGRESS", raising=False)
    monkeypatch.setattr(logger, "LOG_EVERY_SECONDS", 0.0)
    bar = logger.progress(range(2, 4), desc="prior/main", total=4, initial=2)
    for _ in bar:
        bar.set_postfix({"loss/prior": "3.1"})
    assert capsys.readouterr().out.splitlines() == [
        "prior/main: 2/4 (started)", "prior/main: 3/4 loss/prior=3.1 (0 s)", "prior/main: 4/4 loss/prior=3.1 (0 s)",
        "prior/main: 4/4 loss/prior=3.1 (done in 0 s)"]
    monkeypatch.setenv("STRATAGEN_PROGRESS", "0")
    assert list(logger.progress(range(3), desc="quiet")) == [0, 1, 2] and capsys.readouterr().out == ""


def test_only_components_still_to_train_must_split_over_the_processes(trained_run):
    """A finished run is sampled and compared on any number of processes, whatever its batch."""
    from stratagen.engine.pipeline import settings_to_train
    from stratagen.io.run import Run

    def to_train(changes: list[str]) -> list[str]:
        config = api.load(str(trained_run), changes)
        return [key for key, _ in settings_to_train(config, api.build(config).model, Run(str(trained_run)))]

    assert to_train([]) == []
    assert to_train(["priors.main.train.steps=9"]) == ["priors.main.train"]


def test_raising_steps_under_a_constant_rate_extends_a_finished_component_exactly(tmp_path):
    """A prior trained 2 steps and then extended to 4 ends with the weights of one trained 4 steps;
    its tokenizer cannot be extended under it, nor a cosine schedule."""
    from safetensors.torch import load_file

    from tinyconfigs import tiny_config, write_config

    def train(name: str, steps: int, run: str, resume: bool = False, schedule: str = "constant") -> None:
        config = tiny_config(tmp_path / run)
        config["tokenizers"]["vq"]["train"].update(steps=2, lr_schedule="constant", warmup_steps=0)
        config["priors"]["main"]["train"].update(steps=steps, lr_schedule=schedule, warmup_steps=0)
        api.train(api.load(str(write_config(tmp_path / name, config))), resume=resume)

    train("short.yaml", 2, "extended")
    train("long.yaml", 4, "extended", resume=True)
    train("direct.yaml", 4, "direct")
    weights = [load_file(next((tmp_path / run / "priors/main").glob("*.safetensors"))) for run in ("extended", "direct")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    with pytest.raises(StratagenError, match="tokenizers.vq.train.steps was 2, now 3.*prior 'main'"):
        api.train(api.load(str(tmp_path / "extended"), ["tokenizers.vq.train.steps=3"]), resume=True)
    # the extension is the component's record now: the shorter config cannot take the longer weights back
    assert yaml.safe_load((tmp_path / "extended/priors/main/config.yaml").read_text())["priors"]["main"][
        "train"]["steps"] == 4
    with pytest.raises(StratagenError, match="steps was 4, now 2.*steps cannot be lowered"):
        train("short.yaml", 2, "extended", resume=True)
    train("cosine.yaml", 2, "cosine", schedule="cosine")
    with pytest.raises(StratagenError, match="priors.main.train.steps was 2, now 4.*only under lr_schedule: constant"):
        train("cosine-long.yaml", 4, "cosine", resume=True, schedule="cosine")


HOLDER = """
import sys
from stratagen.io.run import Run
with Run(sys.argv[1]).training():
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes it
"""


def test_a_run_being_trained_is_refused_to_a_second_trainer_and_left_as_it_was(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(copy)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
        with pytest.raises(StratagenError, match=rf"another process is training this run \(process {holder.pid} on "
                                                 rf".*remove .*\.training if that process is gone"):
            api.train(api.load(str(copy)), resume=True)
        assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    finally:
        holder.communicate("")
    assert holder.returncode == 0 and not (copy / ".training").exists()  # released when its block ends
    api.train(api.load(str(copy)), resume=True)
    assert not (copy / ".training").exists()


def test_the_hold_of_a_process_that_died_is_taken_over_and_another_hosts_is_not(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    hold = {"pid": dead.pid, "host": socket.gethostname(), "since": "2026-01-01 00:00:00"}
    (copy / ".training").write_text(json.dumps(hold))
    api.train(api.load(str(copy)), resume=True)  # a killed trainer's hold does not block the next
    assert not (copy / ".training").exists()
    (copy / ".training").write_text(json.dumps(hold | {"host": "another-host", "pid": os.getpid()}))
    with pytest.raises(StratagenError, match=r"process \d+ on another-host, since 2026-01-01 00:00:00"):
        api.train(api.load(str(copy)), resume=True)


def test_a_hold_naming_this_very_process_is_an_earlier_process_s_and_is_taken_over(tmp_path):
    """A restarted container gives its trainer the killed one's process id: that hold is no one's."""
    (tmp_path / ".training").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                    "since": "2026-01-01 00:00:00"}))
    with Run(str(tmp_path)).training():
        assert json.loads((tmp_path / ".training").read_text())["since"] != "2026-01-01 00:00:00"
    assert not (tmp_path / ".training").exists()


def test_a_filesystem_without_hard_links_trains_unheld_with_a_warning(tmp_path, monkeypatch, caplog):
    """FAT and FUSE mounts of buckets refuse os.link: training goes on, as on an object store."""
    def no_link(source, target):
        raise OSError(errno.EPERM, "Operation not permitted", source)

    monkeypatch.setattr(os, "link", no_link)
    with caplog.at_level(logging.WARNING, "stratagen"), Run(str(tmp_path)).training():
        assert not [p.name for p in tmp_path.iterdir()]  # no hold, and no temporary file left
    assert "its filesystem has no hard links, so this run is not held" in caplog.text


def test_a_hold_copied_with_the_run_holds_only_the_original(tmp_path):
    """A run copied while it trains (to fork it) carries the live trainer's hold: the copy is free."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(original)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        shutil.copytree(original, copy)
        with Run(str(copy)).training():
            assert json.loads((copy / ".training").read_text())["pid"] == os.getpid()
        with pytest.raises(StratagenError, match=rf"another process is training this run \(process {holder.pid} "):
            with Run(str(original)).training():
                pass
    finally:
        holder.communicate("")
    assert holder.returncode == 0 and not (original / ".training").exists()
