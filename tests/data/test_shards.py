"""WebDataset tar shards: `stratagen data pack` writes them, the `webdataset` dataset reads them back."""
import hashlib
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from stratagen.data import ImageFolder, Key, StepBatches, image_loader
from stratagen.data.shards import TarShards, pack_folder
from stratagen.data.transforms import to_uint8
from stratagen.plugins.datasets import build_webdataset
from stratagen.registry import StratagenError


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder of 3 classes x 6 images (PNG, JPEG, BMP, mixed sizes) and a text file, packed 4 per shard."""
    root = tmp_path_factory.mktemp("shards")
    folder, out = root / "images", root / "shards"
    rng = np.random.default_rng(0)
    for c in range(3):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (12 + i, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"c{c}" / f"{i}.{['png', 'jpg', 'bmp'][i % 3]}")
    (folder / "c1" / "notes.txt").write_text("not an image")
    exe = Path(sys.executable).with_name("stratagen")
    result = subprocess.run([str(exe), "data", "pack", str(folder), str(out), "--shard-size", "4"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["left out (not an image): c1/notes.txt",
                                          f"18 images in 5 shard(s) under {out}"]
    return folder, out


def _digest(image: torch.Tensor) -> str:
    return hashlib.sha256(image.numpy().tobytes()).hexdigest()


def test_packed_shards_read_back_the_same_images_and_labels(packed, tmp_path: Path) -> None:
    folder, out = packed
    reference = ImageFolder(str(folder), resolution=8)
    readable = [i for i in range(len(reference)) if not reference.path(i).endswith(".txt")]
    expected = [reference[i] for i in readable]
    fs = fsspec.filesystem("memory")
    memory = f"/shards-{uuid.uuid4().hex}"
    for path in out.iterdir():
        fs.pipe_file(f"{memory}/{path.name}", path.read_bytes())
    for urls in (str(out), out.as_uri(), f"memory://{memory}", str(out) + "/shard-{000000..000004}.tar"):
        shards = TarShards(urls, resolution=8)
        assert len(shards) == 18 and shards.counts == [4, 4, 4, 4, 2] and shards.class_names == ["c0", "c1", "c2"]
        for i, (image, label) in enumerate(expected):
            got, got_label = shards[i]
            assert got_label == label and torch.equal(got, image), (urls, i)
    # augmented views: crops and flips of the same decoded image, seeded by the shard file and key
    augmented = TarShards(str(out), resolution=8, augment=True, seed=2)
    views, label = augmented.views(0, [None, 0, 1, 2, 3])  # a 16 x 12 image: 3 px of crop range
    assert torch.equal(views[0], expected[0][0]) and label == expected[0][1]
    assert torch.equal(views[1], augmented[Key(0, 0)][0]) and len({_digest(v) for v in views[1:]}) > 1
    assert torch.equal(TarShards(f"memory://{memory}", 8, augment=True, seed=2)[Key(0, 3)][0], views[4])
    fs.rm(memory, recursive=True)


def test_stream_is_split_by_process_and_worker_and_resumes_exactly(packed) -> None:
    _, out = packed
    shards = TarShards(str(out), resolution=8, augment=True, seed=0, shuffle_buffer=3)
    everything = {_digest(to_uint8(shards[Key(i, None)][0])) for i in range(18)}
    firsts = []
    for rank in range(2):
        batches = [b for _, b in zip(range(5), image_loader(shards, 2, seed=0, rank=rank, world=2, workers=2))]
        firsts.append(batches)
        restarted = next(iter(image_loader(shards, 2, seed=0, rank=rank, world=2, start=3, workers=2)))
        assert torch.equal(restarted.images, batches[3].images) and torch.equal(restarted.labels, batches[3].labels)
    # epoch 0 deals whole shards: centre crops of what each process read are disjoint parts of the data
    plain = TarShards(str(out), resolution=8, seed=0, shuffle_buffer=3)
    parts = []
    for rank in range(2):
        stream = plain.stream(seed=0, rank=rank, world=2, batch=1, start=0)
        n = sum(plain.counts[j] for j in stream.shards_of(epoch=0))
        parts.append({_digest(x) for x, _, _ in (item for _, item in zip(range(n), stream))})
    assert not parts[0] & parts[1] and parts[0] | parts[1] == everything


def test_corrupt_sample_in_a_shard_is_skipped_and_reported(packed, tmp_path: Path) -> None:
    folder, _ = packed
    broken = tmp_path / "broken"
    for path in folder.rglob("*"):
        if path.is_file():
            (broken / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            (broken / path.relative_to(folder)).write_bytes(path.read_bytes())
    data = (broken / "c0" / "0.png").read_bytes()
    (broken / "c0" / "0.png").write_bytes(data[:60])  # a PNG header, then nothing
    assert pack_folder(str(broken), str(tmp_path / "out"), 5)[:2] == (18, 4)
    shards = TarShards(str(tmp_path / "out"), resolution=8)
    batches = StepBatches(shards, batch=4, seed=0, rank=0, world=1, workers=0, device=torch.device("cpu"))
    for step in range(5):
        assert batches.at(step).images.shape == (4, 3, 8, 8)
    assert batches.skipped == {f"{tmp_path / 'out'}/shard-000000.tar#000000000"}


def test_object_store_without_its_package_is_a_clean_error() -> None:
    with pytest.raises(StratagenError, match=r"data.urls: s3://bucket/train: Install s3fs"):
        build_webdataset(split="train", urls="s3://bucket/train", eval_urls=None, num_classes=3, resolution=8,
                         augment=True, shuffle_buffer=10, seed=0)


def test_pack_refuses_a_used_folder_and_a_folder_without_images(packed, tmp_path: Path) -> None:
    """Packing over an earlier pack would leave its shards beside the new ones (a dataset of both):
    refused, nothing touched; an empty folder packs nothing: refused; an empty OUT is fine."""
    folder, out = packed
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    small = tmp_path / "small"
    (small / "c0").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(small / "c0" / "a.png")
    with pytest.raises(StratagenError, match="already holds files .* give a new or empty folder"):
        pack_folder(str(small), str(out), 4)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (tmp_path / "blank" / "c0").mkdir(parents=True)
    (tmp_path / "blank" / "c0" / "notes.txt").write_text("not an image")
    with pytest.raises(StratagenError, match="blank: no images to pack"):
        pack_folder(str(tmp_path / "blank"), str(tmp_path / "blank-out"), 4)
    assert not (tmp_path / "blank-out").exists()
    (tmp_path / "empty-out").mkdir()
    assert pack_folder(str(small), str(tmp_path / "empty-out"), 4)[:2] == (1, 1)
    assert len(TarShards(str(tmp_path / "empty-out"), resolution=8)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank", "empty-out", "small"]  # no staging folder left


def _copy(out: Path, to: Path) -> Path:
    shutil.copytree(out, to)
    return to


def test_unreadable_shards_are_skipped_and_counted_not_a_crash(packed, tmp_path: Path) -> None:
    """A truncated shard yields what it holds and counts once as skipped; a shard that is no tar
    file counts once; training goes on (with and without loader workers) and evaluation indexing
    passes over what is missing."""
    _, out = packed
    broken = _copy(out, tmp_path / "broken")
    data = (broken / "shard-000001.tar").read_bytes()
    (broken / "shard-000001.tar").write_bytes(data[: len(data) // 2])
    (broken / "shard-000003.tar").write_bytes(b"not a tar file" * 100)
    shards = TarShards(str(broken), resolution=8)
    for workers in (0, 2):
        batches = StepBatches(shards, batch=4, seed=0, rank=0, world=1, workers=workers, device=torch.device("cpu"))
        for step in range(6):  # more than one epoch of what is left
            assert batches.at(step).images.shape == (4, 3, 8, 8)
        assert batches.skipped == {str(broken / "shard-000001.tar"), str(broken / "shard-000003.tar")}
    readable = [shards[i] for i in range(len(shards))]  # index.json still counts 18: the gaps are passed over
    assert len(readable) == 18 and all(image.shape == (3, 8, 8) for image, _ in readable)


def test_too_many_unreadable_shards_stop_training_with_one_clear_error(packed, tmp_path: Path) -> None:
    _, out = packed
    broken = _copy(out, tmp_path / "broken")
    for shard in broken.glob("*.tar"):
        shard.write_bytes(b"garbage")
    batches = StepBatches(TarShards(str(broken), resolution=8), batch=4, seed=0, rank=0, world=1, workers=0,
                          device=torch.device("cpu"))
    with pytest.raises(StratagenError, match="broken: the tar shards this process reads hold no readable image"):
        batches.at(0)
    folder, _ = packed
    pack_folder(str(folder), str(tmp_path / "one-each"), 1)  # 18 shards of one image: 17 broken
    for shard in sorted((tmp_path / "one-each").glob("*.tar"))[1:]:
        shard.write_bytes(b"garbage")
    batches = StepBatches(TarShards(str(tmp_path / "one-each"), resolution=8), batch=4, seed=0, rank=0, world=1,
                          workers=0, device=torch.device("cpu"))
    with pytest.raises(StratagenError, match="17 unreadable files or shards .* more than the 16 tolerated"):
        batches.at(0)


def test_an_over_counting_index_and_fewer_shards_than_workers_neither_hang_nor_crash(packed, tmp_path: Path) -> None:
    _, out = packed
    copy = _copy(out, tmp_path / "copy")
    index = json.loads((copy / "index.json").read_text())
    index["shards"][0]["count"] = 40  # over-counts
    (copy / "index.json").write_text(json.dumps(index))
    shards = TarShards(str(copy), resolution=8)
    assert len(shards) == 54
    assert all(shards[i][0].shape == (3, 8, 8) for i in range(0, 54, 7))
    batches = StepBatches(shards, batch=4, seed=0, rank=0, world=1, workers=8, device=torch.device("cpu"))
    assert batches.at(0).images.shape == (4, 3, 8, 8)  # 5 shards, 8 workers asked: 5 read
    one = _copy(out, tmp_path / "one")
    for shard in sorted(one.glob("*.tar"))[1:]:
        shard.unlink()
    (one / "index.json").unlink()
    with pytest.raises(StratagenError, match="1 tar shard\\(s\\) cannot feed 2 processes"):
        image_loader(TarShards(str(one), resolution=8), 2, seed=0, rank=0, world=2)


@pytest.mark.parametrize("text", ["{not json", '{"classes": ["a"]}', '{"classes": ["a"], "shards": [{"name": 1}]}'])
def test_a_bad_index_is_named(packed, tmp_path: Path, text: str) -> None:
    _, out = packed
    copy = _copy(out, tmp_path / "copy")
    (copy / "index.json").write_text(text)
    with pytest.raises(StratagenError, match=f"{copy}/index.json: not a shard index"):
        TarShards(str(copy), resolution=8)
