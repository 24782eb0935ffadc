"""ADM's evaluation protocol: precision/recall against a numpy reference written from ADM's definitions,
the Inception Score, streaming statistics, the Fréchet distance of few samples, the spatial features'
layer, and reference batches (written, read back, and refused when malformed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stratagen.data import ImageFolder, SyntheticShapes
from stratagen.engine.evaluation.evaluate import reference_statistics
from stratagen.eval import frechet_distance, gaussian_stats, to_uint8
from stratagen.eval.adm import (SPATIAL_DIM, AdmEvaluator, AdmFeatures, AdmInception, GaussianAccumulator,
                                ReferenceBatch, inception_score, precision_recall)
from stratagen.eval.fidelity import features_frechet_distance, frechet_distance_to
from stratagen.registry import StratagenError
from inception_weights import write_calibrated_inception
from referencefiles import statistics, write_npz_with_code


# ----------------------------------------------------------------------------- numpy reference of ADM's P/R
def numpy_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """ADM's DistanceBlock in numpy: ``max(|u|^2 - 2 u v^T + |v|^2, 0)`` with float16 tensors (float16
    inputs, squares, norms, product and sums; products and norms summed in float32), in float32 when
    the float16 block holds a non-finite value."""
    u16, v16 = u.astype(np.float16), v.astype(np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        norm_u = np.square(u16).astype(np.float32).sum(1).astype(np.float16)
        norm_v = np.square(v16).astype(np.float32).sum(1).astype(np.float16)
        product = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
        block = np.maximum(norm_u[:, None] - np.float16(2) * product + norm_v[None, :], np.float16(0))
    if np.isfinite(block).all():
        return block.astype(np.float32)
    u, v = u.astype(np.float32), v.astype(np.float32)
    return np.maximum((u * u).sum(1)[:, None] - 2 * (u @ v.T) + (v * v).sum(1)[None, :], 0)


def numpy_radii(features: np.ndarray, k: int, batch: int) -> np.ndarray:
    """ManifoldEstimator.manifold_radii: per row batch, the distances to every column batch, then the
    k-th entry of a partition over 0..k (the row's own distance, about 0, is entry 0)."""
    radii = np.zeros(len(features), np.float32)
    for b1 in range(0, len(features), batch):
        rows = features[b1:b1 + batch]
        block = np.concatenate([numpy_distances(rows, features[b2:b2 + batch])
                                for b2 in range(0, len(features), batch)], axis=1)
        radii[b1:b1 + batch] = np.partition(block, np.arange(k + 1), axis=1)[:, k]
    return radii


def numpy_precision_recall(reference: np.ndarray, sample: np.ndarray, k: int = 3, batch: int = 10000):
    """ManifoldEstimator.evaluate_pr: reference points inside the sample balls (recall) and samples inside
    the reference balls (precision), block by block."""
    radii_ref, radii_sample = numpy_radii(reference, k, batch), numpy_radii(sample, k, batch)
    ref_in, sample_in = np.zeros(len(reference), bool), np.zeros(len(sample), bool)
    for b1 in range(0, len(reference), batch):
        for b2 in range(0, len(sample), batch):
            block = numpy_distances(reference[b1:b1 + batch], sample[b2:b2 + batch])
            ref_in[b1:b1 + batch] |= (block <= radii_sample[None, b2:b2 + batch]).any(1)
            sample_in[b2:b2 + batch] |= (block <= radii_ref[b1:b1 + batch, None]).any(0)
    return sample_in.mean(), ref_in.mean()


@pytest.mark.parametrize("scale", [1.0, 400.0], ids=["float16", "float32-fallback"])
@pytest.mark.parametrize("batch", [10000, 7])
def test_precision_recall_equal_a_numpy_reference(scale, batch) -> None:
    rng = np.random.default_rng(0)
    reference = (rng.gamma(2.0, 0.2, size=(40, 64)) * scale).astype(np.float32)  # ReLU-like, positive
    sample = (rng.gamma(2.0, 0.2, size=(30, 64)) * 1.15 * scale + 0.05 * scale).astype(np.float32)
    expected = numpy_precision_recall(reference, sample, batch=batch)
    got = precision_recall(torch.from_numpy(reference), torch.from_numpy(sample), batch=batch)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0 < got[0] < 1 and 0 < got[1] < 1  # the sets overlap partly: the values are informative
    assert got != numpy_precision_recall(sample, reference, batch=batch)  # not symmetric


def test_precision_recall_of_a_set_with_itself_and_with_a_distant_set() -> None:
    features = torch.from_numpy(np.random.default_rng(1).gamma(2.0, 0.2, size=(25, 32)).astype(np.float32))
    assert precision_recall(features, features) == (1.0, 1.0)
    assert precision_recall(features, features + 5) == (0.0, 0.0)
    with pytest.raises(StratagenError, match="at least 4"):
        precision_recall(features, features[:3])


def test_inception_score_over_unshuffled_splits() -> None:
    logits = torch.from_numpy(np.random.default_rng(2).normal(size=(12, 10)) * 3)
    probs = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    scores = []
    for part in (probs[:5], probs[5:10], probs[10:]):  # ADM: consecutive splits, the last one smaller
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    assert inception_score(logits, split_size=5) == pytest.approx(np.mean(scores), rel=1e-12)
    uniform = torch.zeros(7, 10)  # every image the same distribution: IS 1
    assert inception_score(uniform) == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------- statistics
def test_streaming_statistics_equal_full_batch_statistics() -> None:
    features = torch.from_numpy(np.random.default_rng(3).normal(loc=2.0, size=(103, 9)).astype(np.float32))
    stream = GaussianAccumulator(9)
    for part in features.split([1, 40, 2, 0, 60]):
        stream.add(part)
    data = features.double().numpy()
    assert stream.count == 103
    np.testing.assert_allclose(stream.mean.numpy(), data.mean(0), rtol=0, atol=1e-13)
    np.testing.assert_allclose(stream.covariance().numpy(), np.cov(data, rowvar=False), rtol=0, atol=1e-13)


def test_frechet_distance_of_few_samples_is_exact() -> None:
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(size=(30, 12)))
    y = torch.from_numpy(rng.normal(loc=0.2, size=(8, 12)) * 1.3)
    assert frechet_distance_to(y, *gaussian_stats(x)) == pytest.approx(
        frechet_distance(*gaussian_stats(y), *gaussian_stats(x)), rel=1e-7)  # N < D: the [N, N] route
    assert features_frechet_distance(x, y) == pytest.approx(features_frechet_distance(y, x), rel=1e-12)
    # a set against itself, N = 40 in the 2023 spatial dimensions: 0 (the [D, D] route is off by ~6e-4)
    spatial = torch.from_numpy(rng.gamma(2.0, 0.5, size=(40, SPATIAL_DIM)))
    assert abs(frechet_distance_to(spatial, *gaussian_stats(spatial))) < 1e-9


# ----------------------------------------------------------------------------- the files
class PixelFeatures:
    """A fast stand-in for :class:`AdmInception`: fixed random projections of the pixels."""

    batch_size = 3
    device = torch.device("cpu")

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.pool = torch.randn(3 * 16 * 16, 2048, generator=generator)
        self.spatial = torch.randn(3 * 16 * 16, SPATIAL_DIM, generator=generator)

    def __call__(self, images: torch.Tensor) -> AdmFeatures:
        pixels = images.double().flatten(1) / 255  # float64: the same values whatever the batch
        return AdmFeatures((pixels @ self.pool.double()).float(), (pixels @ self.spatial.double()).float(),
                           torch.zeros(len(images), 1008))


def test_data_stats_stream_a_folder_and_its_shards_alike(tmp_path) -> None:
    from stratagen.data.shards import TarShards, pack_folder

    data = SyntheticShapes(2, 16, 7, seed=3)
    folder = write_folder(data.images, data.labels, tmp_path / "images")
    (folder / "c0" / "003.png").write_text("not an image")  # the third of 8 files (sorted), a chosen one
    pack_folder(str(folder), str(tmp_path / "shards"), shard_size=3)
    features = PixelFeatures()
    files = ImageFolder(str(folder), 16)
    readable = [i for i in range(len(files)) if files.path(i) != "c0/003.png"]
    images = torch.stack([to_uint8(files[i][0]) for i in readable])
    full = torch.cat([features(images).pool, features(images).spatial], 1).double().numpy()
    # the folder's files 0, 2, 4, 6 of 8 are chosen (j * 8 // 4); file 2 is unreadable, file 3 stands in for it;
    # the shards hold the 7 readable images (packing leaves the other out): items 0, 1, 3, 5 (j * 7 // 4)
    arr_0 = {"folder": [0, 2, 3, 5], "shards": [0, 1, 3, 5]}  # positions among the readable images
    for name, dataset in (("folder", files), ("shards", TarShards(str(tmp_path / "shards"), 16))):
        out = tmp_path / f"{name}.npz"
        count, kept, left_out = reference_statistics(dataset, str(out), features, images=4)
        assert (count, kept) == (7, 4) and left_out == ([str(folder / "c0/003.png")] if name == "folder" else [])
        with np.load(out, allow_pickle=False) as npz:
            np.testing.assert_allclose(npz["mu"], full[:, :2048].mean(0), rtol=0, atol=1e-10)
            np.testing.assert_allclose(npz["sigma_s"], np.cov(full[:, 2048:], rowvar=False), rtol=0, atol=1e-9)
            np.testing.assert_array_equal(npz["arr_0"], images[arr_0[name]].permute(0, 2, 3, 1).numpy())


# ----------------------------------------------------------------------------- the network
@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> tuple[Path, AdmInception]:
    weights = write_calibrated_inception(tmp_path_factory.mktemp("inception") / "inception.pth")
    return weights, AdmInception(str(weights), "cpu", batch_size=3)


def write_folder(images: torch.Tensor, labels: torch.Tensor, root: Path) -> Path:
    """uint8 ``[N, 3, H, W]`` as PNGs under ``root/<class>/``."""
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / f"c{label}" / f"{i:03d}.png")
    return root


def test_spatial_features_are_mixed_6d_branch1x1(inception) -> None:
    """The hook's features are the first 7 channels of Mixed_6d's 1x1 branch, flattened NHWC (ADM's
    ``mixed_6/conv[..., :7]``), computed here by running torch-fidelity's blocks by hand."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    _, network = inception
    images = to_uint8(SyntheticShapes(2, 16, 2, seed=7).images.float() / 127.5 - 1)
    features = network(images)
    net = network.extractor
    with torch.no_grad():
        x = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
        x = (x - 128) / 128
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c"):
            x = getattr(net, name)(x)
        branch = net.Mixed_6d.branch1x1(x)  # [2, 192, 17, 17]
    assert branch.shape == (2, 192, 17, 17)
    expected = torch.stack([branch[:, c] for c in range(7)], dim=-1).reshape(2, -1)  # (row, column, channel)
    torch.testing.assert_close(features.spatial, expected, rtol=0, atol=1e-5)
    assert features.spatial.std(0).mean() > 0.1  # the stand-in weights give informative features


@pytest.fixture(scope="module")
def reference(inception, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """6 images as a class folder, and their ADM reference batch (all kept as arr_0)."""
    _, network = inception
    root = tmp_path_factory.mktemp("reference")
    data = SyntheticShapes(3, 16, 6, seed=11)
    folder = write_folder(data.images, data.labels, root / "images")
    out = root / "ref.npz"
    count, kept, left_out = reference_statistics(ImageFolder(str(folder), 16), str(out), network, images=6)
    assert (count, kept, left_out) == (6, 6, [])
    return out, torch.stack([to_uint8(ImageFolder(str(folder), 16)[i][0]) for i in range(6)])


def test_reference_batch_reads_back(reference) -> None:
    out, images = reference
    with np.load(out, allow_pickle=False) as npz:  # what ADM's evaluator reads
        assert sorted(npz.files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
        assert npz["mu"].dtype == npz["sigma_s"].dtype == np.float64 and npz["sigma_s"].shape == (2023, 2023)
        np.testing.assert_array_equal(npz["arr_0"], images.permute(0, 2, 3, 1).numpy())  # NHWC uint8, as ADM
    read = ReferenceBatch.read(str(out))
    assert read.images.count == 6 and (read.images.height, read.images.width) == (16, 16)
    assert torch.equal(torch.cat(list(read.image_batches(5))), images)


def test_a_set_scored_against_its_own_reference_batch(inception, reference, tmp_path) -> None:
    out, images = reference
    _, network = inception
    scores = AdmEvaluator(ReferenceBatch.read(str(out)), network).score(images, str(tmp_path / "cache"))
    assert set(scores) == {"fid_adm", "sfid_adm", "is_adm", "precision_adm", "recall_adm"}
    assert abs(scores["fid_adm"]) < 1e-4 and abs(scores["sfid_adm"]) < 1e-4
    assert scores["precision_adm"] == scores["recall_adm"] == 1.0
    other = to_uint8(SyntheticShapes(4, 16, 4, seed=12).images.float() / 127.5 - 1)
    again = AdmEvaluator(ReferenceBatch.read(str(out)), network).score(other, str(tmp_path / "cache"))
    assert again["fid_adm"] > 1 and again["sfid_adm"] > 1
    assert len(list((tmp_path / "cache").rglob("features-*.safetensors"))) == 1  # reference features cached once


# ----------------------------------------------------------------------------- malformed reference batches
def test_statistics_only_batch_reads(tmp_path) -> None:
    np.savez(tmp_path / "ok.npz", **statistics())
    read = ReferenceBatch.read(str(tmp_path / "ok.npz"))
    assert read.images is None and read.stats["sigma"].shape == (2048, 2048)


@pytest.mark.parametrize("make,fragment", [
    (lambda p: np.savez(p, **statistics(sigma_s=None)), "missing sigma_s"),
    (lambda p: np.savez(p, foo=np.zeros(3)), "holds foo; an ADM reference batch holds"),
    (lambda p: np.savez(p, **statistics(mu=np.zeros(1000))), "mu is float64 [1000]; expected float [2048]"),
    (lambda p: np.savez(p, **statistics(mu=np.full(2048, np.nan))), "mu holds NaN or infinite values"),
    (lambda p: np.savez(p, **statistics(mu=np.array([None] * 2048, dtype=object))), "mu is a pickled object array"),
    (lambda p: np.savez(p, **statistics(), arr_0=np.zeros((5, 8, 8, 3), np.float32)), "arr_0 is float32 [5, 8, 8, 3]"),
    (lambda p: np.savez(p, **statistics(), arr_0=np.zeros((3, 8, 8, 3), np.uint8)), "holds 3 images"),
    (lambda p: np.savez(p, arr_0=np.array([None] * 5, dtype=object)), "arr_0 is a pickled object array"),
    (lambda p: np.save(p, np.zeros(3)), "a single .npy array, not an .npz archive"),
    (lambda p: p.write_bytes(b"not an archive at all"), "not a readable .npz file"),
    (lambda p: None, "no such file"),
], ids=["missing-key", "foreign-keys", "wrong-shape", "nan", "object-array", "images-float", "too-few-images",
        "images-object", "plain-npy", "not-a-file-format", "absent"])
def test_malformed_reference_batch_is_one_line(tmp_path, make, fragment) -> None:
    path = tmp_path / "ref.npz"
    make(path)
    if path.with_suffix(".npz.npy").exists():
        path.with_suffix(".npz.npy").rename(path)
    with pytest.raises(StratagenError) as error:
        ReferenceBatch.read(str(path))
    assert fragment in str(error.value) and "\n" not in str(error.value)
    assert "allow_pickle" not in str(error.value)  # never numpy's advice to unpickle


def test_an_object_array_carrying_code_is_never_unpickled(tmp_path) -> None:
    marker = tmp_path / "MARKER"
    with pytest.raises(StratagenError, match="mu is a pickled object array"):
        ReferenceBatch.read(str(write_npz_with_code(tmp_path / "ref.npz", marker)))
    assert not marker.exists()

