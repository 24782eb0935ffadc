import uuid
import zipfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from stratagen.data import ImageFolder, Key, UnreadableImage, resize_center_crop, to_tensor

CLASSES = ["cat", "dog", "emu"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 4 random PNGs of mixed sizes, one corrupt PNG, one text file."""
    root = tmp_path_factory.mktemp("images") / "imgs"
    rng = np.random.default_rng(0)
    for name in CLASSES:
        for i in range(4):
            h, w = (10, 14) if i % 2 else (16, 12)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            path = root / name / ("nested" if i == 3 else "") / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    (root / "dog" / "corrupt.png").write_bytes(rng.bytes(200))
    (root / "emu" / "notes.txt").write_text("not an image")
    return root


def _zip(image_dir: Path, prefix: str) -> Path:
    archive = image_dir.parent / f"{prefix or 'flat'}.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(image_dir.rglob("*")):
            if path.is_file():
                z.write(path, prefix + path.relative_to(image_dir).as_posix())
    return archive


@pytest.fixture(scope="module")
def memory_url(image_dir: Path):
    fs = fsspec.filesystem("memory")
    root = f"/stratagen-test-{uuid.uuid4().hex}"
    for path in image_dir.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"{root}/{path.relative_to(image_dir).as_posix()}", path.read_bytes())
    yield f"memory://{root}"
    fs.rm(root, recursive=True)


READABLE = [i for i in range(14) if i not in (7, 13)]  # sorted listing: dog/corrupt.png, emu/notes.txt


def _all(ds: ImageFolder, epoch: int | None = None) -> tuple[torch.Tensor, list[int]]:
    images, labels = zip(*(ds[Key(i, epoch)] for i in READABLE))
    return torch.stack(images), list(labels)


def test_every_backend_lists_the_same_files_and_reads_the_same_images(image_dir: Path, memory_url: str) -> None:
    roots = [
        str(image_dir),
        image_dir.as_uri(),  # file://
        str(_zip(image_dir, "")),  # plain .zip path
        f"zip://::{_zip(image_dir, '')}",
        f"zip://imgs::{_zip(image_dir, 'imgs/')}",  # root inside the archive
        memory_url,
    ]
    reference = None
    for root in roots:
        ds = ImageFolder(root, resolution=8)  # lists only: the corrupt file is found when read
        assert ds.class_names == CLASSES and ds.num_classes == 3 and len(ds) == 14, root
        assert [ds.path(i) for i in (7, 13)] == ["dog/corrupt.png", "emu/notes.txt"]
        for bad in (7, 13):
            with pytest.raises(UnreadableImage, match="cannot identify image file"):
                ds[Key(bad, None)]
            # evaluation reads pass over it to the next readable file (wrapping around)
            assert torch.equal(ds[bad][0], ds[Key((bad + 1) % 14, None)][0])
        images, labels = _all(ds)
        assert images.shape == (12, 3, 8, 8) and images.min() >= -1 and images.max() <= 1
        assert labels == [0] * 4 + [1] * 4 + [2] * 4
        if reference is None:
            reference = images
        assert torch.equal(images, reference), root


def test_labels_follow_sorted_folders(tmp_path: Path) -> None:
    for name in ["zebra", "ant", "moth"]:
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4), (len(name) * 10, 0, 0)).save(tmp_path / name / "x.png")
    ds = ImageFolder(str(tmp_path), resolution=4)
    assert ds.class_names == ["ant", "moth", "zebra"]
    assert [ds[i][1] for i in range(3)] == [0, 1, 2]
    assert [round((ds[i][0][0, 0, 0].item() + 1) * 127.5) for i in range(3)] == [30, 40, 50]


def test_missing_root_and_bad_layout(tmp_path: Path) -> None:
    for missing in [tmp_path / "nope", tmp_path / "nope.zip"]:
        with pytest.raises(FileNotFoundError, match="nope"):
            ImageFolder(str(missing), resolution=8)
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")  # no class folder around it
    with pytest.raises(ValueError, match="one sub-folder per class"):
        ImageFolder(str(tmp_path), resolution=8)
    flat = ImageFolder(str(tmp_path), resolution=8, unlabelled_ok=True)  # statistics need no labels
    assert len(flat) == 1 and flat.class_names == [""] and flat.path(0) == "loose.png"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"holds both sub-folders with files \(docs\) and 1 file\(s\) beside them "
                                         r"\(e.g. loose.png\); give one layout"):
        ImageFolder(str(tmp_path), resolution=8, unlabelled_ok=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no files under .*empty: expected its images, or one sub-folder per class$"):
        ImageFolder(str(empty), resolution=8, unlabelled_ok=True)


def test_crops_and_flips_are_seeded_per_epoch_and_differ_between_epochs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(6):
        (tmp_path / "a").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(tmp_path / "a" / f"{i}.png")
    a = ImageFolder(str(tmp_path), resolution=8, augment=True, seed=1)
    b = ImageFolder(str(tmp_path), resolution=8, augment=True, seed=1)
    assert torch.equal(torch.stack([a[Key(i, 3)][0] for i in range(6)]), torch.stack([b[Key(i, 3)][0] for i in range(6)]))

    def crops(epoch: int) -> list[tuple[int, bool]]:
        """(left edge, flipped) of each image's crop, found by matching against every candidate."""
        found = []
        for i in range(6):
            x = a[Key(i, epoch)][0]
            base = to_tensor(Image.open(tmp_path / "a" / f"{i}.png").resize((13, 8), Image.Resampling.BICUBIC))
            matches = [(left, flip) for left in range(6) for flip in (False, True)
                       if torch.equal(x, base[:, :, left: left + 8].flip(-1) if flip else base[:, :, left: left + 8])]
            assert len(matches) == 1
            found.append(matches[0])
        return found

    epochs = [crops(e) for e in range(4)]
    assert all(e != epochs[0] for e in epochs[1:])  # a fresh draw every epoch
    assert {flip for e in epochs for _, flip in e} == {False, True}
    assert len({left for e in epochs for left, _ in e}) > 2
    centre = a[Key(0, None)][0]  # evaluation: the centre crop, unflipped
    assert torch.equal(centre, a[0][0])
    assert torch.equal(centre, to_tensor(resize_center_crop(Image.open(tmp_path / "a" / "0.png"), 8)))
    plain = ImageFolder(str(tmp_path), resolution=8, augment=False)
    assert torch.equal(plain[Key(0, 5)][0], centre)


def test_resize_center_crop_known_pixels() -> None:
    # 4x2 (w x h): the short side already matches, so the crop keeps the middle two columns.
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    img = Image.new("RGB", (4, 2))
    for x, colour in enumerate(colours):
        img.putpixel((x, 0), colour)
        img.putpixel((x, 1), colour)
    out = resize_center_crop(img, 2)
    assert out.size == (2, 2)
    pixels = [out.getpixel((x, y)) for y in range(2) for x in range(2)]
    assert pixels == [colours[1], colours[2]] * 2
    # Downscaling a flat image keeps its colour; the shorter side becomes the resolution.
    flat = Image.new("RGB", (30, 12), (10, 200, 90))
    assert np.array(resize_center_crop(flat, 5)).tolist() == [[[10, 200, 90]] * 5] * 5
    assert resize_center_crop(Image.new("RGB", (7, 20)), 6).size == (6, 6)


def test_to_tensor_and_flip() -> None:
    img = Image.new("L", (3, 2), 255)
    img.putpixel((0, 0), 0)
    x = to_tensor(img)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert x[:, 0, 0].tolist() == [-1.0] * 3 and x[:, 1, 2].tolist() == [1.0] * 3
