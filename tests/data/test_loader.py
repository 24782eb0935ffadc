"""Loaders: processes split each global batch, epochs reshuffle, workers change nothing, bad files are counted."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stratagen.data import ImageFolder, Key, Prefetched, StepBatches, StepSampler, image_loader
from stratagen.data.loader import to_uint8
from stratagen.data.photos import Photographs
from stratagen.data.synthetic import SyntheticShapes


def test_sampler_ranks_split_the_global_batch_cover_each_epoch_and_reshuffle() -> None:
    size, batch, world = 10, 3, 2
    samplers = [StepSampler(size, batch, seed=4, rank=r, world=world) for r in range(world)]
    # the global batch of a step is the same whatever the number of processes
    whole = StepSampler(size, batch * world, seed=4)
    for step in range(10):
        assert samplers[0].keys(step) + samplers[1].keys(step) == whole.keys(step)
    stream = [k for step in range(10) for k in whole.keys(step)]  # 60 positions: 6 epochs of 10
    epochs = [[k.index for k in stream if k.epoch == e] for e in range(6)]
    assert all(sorted(e) == list(range(size)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # a new epoch, a new order
    for s in samplers:
        # the batch of a step is a pure function of (seed, step): a sampler started there agrees
        resumed = StepSampler(size, batch, seed=4, rank=s.rank, world=world, start=7)
        assert next(iter(resumed)) == s.keys(7)
    assert StepSampler(size, batch, seed=5).keys(0) != StepSampler(size, batch, seed=4).keys(0)
    with pytest.raises(ValueError, match="cannot be shared"):
        StepSampler(1, 1, seed=0, rank=0, world=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes x 5 PNGs (16 x 12 px), a corrupt PNG and a text file."""
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "b" / "readme.txt").write_text("not an image")
    return root


def test_workers_give_the_same_batches_and_report_unreadable_files(folder: Path) -> None:
    dataset = ImageFolder(str(folder), resolution=8, augment=True, seed=3)
    runs = {}
    for workers in (0, 2):
        batches = StepBatches(dataset, batch=4, seed=1, rank=0, world=1, workers=workers, device=torch.device("cpu"))
        runs[workers] = [batches.at(step) for step in range(9)]  # 36 reads: three epochs of 12 files
        assert batches.skipped == {str(folder / "a/broken.png"), str(folder / "b/readme.txt")}
    for a, b in zip(runs[0], runs[2]):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # a bad file is replaced by the next readable one of the same epoch, so every batch is full
    sampler = StepSampler(len(dataset), 4, seed=1)
    for step, batch in enumerate(runs[0]):
        assert batch.images.shape == (4, 3, 8, 8) and batch.images.dtype == torch.uint8
        for key, image in zip(sampler.keys(step), batch.images):
            index = key.index
            while dataset.path(index) in ("a/broken.png", "b/readme.txt"):
                index = (index + 1) % len(dataset)
            assert torch.equal(image, to_uint8(dataset[Key(index, key.epoch)][0]))
    # a jump (resume) restarts the loader at that step
    restarted = StepBatches(dataset, batch=4, seed=1, rank=0, world=1, workers=0, device=torch.device("cpu"))
    assert torch.equal(restarted.at(5).images, runs[0][5].images)
    assert torch.equal(next(iter(image_loader(dataset, 4, seed=1, start=5))).images, runs[0][5].images)


def test_two_processes_read_disjoint_samples_covering_each_epoch(tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from stratagen.engine.devices.processes import setup_processes\n"
        "from stratagen.data import StepBatches, SyntheticShapes\n"
        "procs = setup_processes('cpu')\n"
        "data = SyntheticShapes(num_classes=16, resolution=8, size=16)  # label == index\n"
        "batches = StepBatches(data, batch=3, seed=0, rank=procs.rank, world=procs.world, workers=1,\n"
        "                      device=procs.device)\n"
        "labels = torch.cat([batches.at(step).labels for step in range(8)])  # 24 reads: 3 epochs of 8\n"
        "gathered = [torch.zeros_like(labels) for _ in range(procs.world)]\n"
        "dist.all_gather(gathered, labels)\n"
        "if procs.rank == 0:\n"
        "    torch.save(torch.stack(gathered), sys.argv[1])\n")
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "labels.pt"
    result = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2", str(script), str(out)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = torch.load(out, weights_only=True)  # [rank, 24]
    stream = seen.view(2, 8, 3).transpose(0, 1).flatten()  # step by step, rank 0's share then rank 1's
    epochs = stream.view(3, 16)
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(16))  # disjoint reads that cover the epoch
    assert epochs[0].tolist() != epochs[1].tolist()  # the next epoch reshuffles


def test_prefetched_returns_each_step_and_reads_the_next_one_ahead() -> None:
    import threading

    calls: list[tuple[int, str]] = []

    def fetch(step: int) -> int:
        calls.append((step, threading.current_thread().name))
        return step * 10

    steps = Prefetched(fetch)
    assert [steps.at(s) for s in (3, 4, 5)] == [30, 40, 50]
    assert steps.at(9) == 90 and steps.at(10) == 100  # a jump (resume) reads that step directly
    main = threading.current_thread().name
    assert [s for s, thread in calls if thread == main] == [3, 9]  # the others were read ahead
    assert {s for s, thread in calls if thread != main} - {11} == {4, 5, 6, 10}  # 11 may be under way


@pytest.mark.parametrize("make", [
    lambda: SyntheticShapes(num_classes=4, resolution=16, size=12, seed=0),
    lambda: Photographs(["astronaut", "coffee"], 16, 12, "train", short_side=64, seed=0),
], ids=["synthetic", "photos"])
def test_fixed_sample_datasets_feed_the_training_loader(make) -> None:
    """Training reads datasets by Key; a dataset whose samples do not change by epoch reads the same pixels."""
    dataset = make()
    batch = StepBatches(dataset, 4, seed=0, rank=0, world=1, workers=0, device=torch.device("cpu")).at(0)
    samples = [dataset[i] for i in range(len(dataset))]
    for image, label in zip(batch.images, batch.labels.tolist()):
        assert any(torch.equal(image, to_uint8(x)) and label == y for x, y in samples)
