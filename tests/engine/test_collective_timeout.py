"""STRATAGEN_COLLECTIVE_TIMEOUT: a process that hangs fails the others after that many seconds."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stratagen.engine.devices.processes import collective_timeout
from stratagen.registry import StratagenError

HANGING_RANK = (
    "import time\n"
    "import torch.distributed as dist\n"
    "from stratagen.engine.devices.processes import setup_processes\n"
    "procs = setup_processes('cpu')\n"
    "if procs.rank == 1:\n"
    "    time.sleep(120)  # a stopped process: it never reaches the collective\n"
    "dist.barrier()\n")


def test_a_hanging_process_fails_the_others_after_the_timeout(tmp_path: Path):
    script = tmp_path / "hang.py"
    script.write_text(HANGING_RANK)
    runner = Path(sys.executable).with_name("torchrun")
    start = time.monotonic()
    result = subprocess.run([str(runner), "--standalone", "--nproc-per-node=2", str(script)], capture_output=True,
                            text=True, timeout=110,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "STRATAGEN_COLLECTIVE_TIMEOUT": "3"})
    assert result.returncode != 0
    assert time.monotonic() - start < 100  # rank 0 gave up long before rank 1 woke (gloo's default: 30 min)
    assert "timed out" in result.stderr.lower() or "timeout" in result.stderr.lower(), result.stderr[-2000:]


@pytest.mark.parametrize("value", ["0", "0.0001", "-5", "ten", "nan", "inf", "1e20"])
def test_a_bad_timeout_is_one_line(monkeypatch, value):
    monkeypatch.setenv("STRATAGEN_COLLECTIVE_TIMEOUT", value)
    with pytest.raises(StratagenError, match="a number of seconds, at least 1 and"):
        collective_timeout()


def test_the_timeout_is_read_in_seconds(monkeypatch):
    monkeypatch.setenv("STRATAGEN_COLLECTIVE_TIMEOUT", "90")
    assert collective_timeout().total_seconds() == 90
    monkeypatch.delenv("STRATAGEN_COLLECTIVE_TIMEOUT")
    assert collective_timeout() is None
