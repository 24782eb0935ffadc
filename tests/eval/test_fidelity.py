"""Sample-quality metrics: FID equals torch-fidelity's and a direct computation; caching; missing weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from pydantic import ValidationError
from torch_fidelity import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_statistics_to_metric

import stratagen.eval.classifier as classifier_module
import stratagen.plugins.metrics as metrics_plugin
from stratagen.data import SyntheticShapes
from stratagen.eval import (IN_DOMAIN_EXTRACTOR, InceptionMetric, InDomainMetric, ReferenceSet,
                            SlicedWassersteinMetric, frechet_distance, to_uint8)
from stratagen.eval.classifier import load_classifier
from stratagen.registry import MissingWeightsError, Provider, Registry, StratagenError

REFERENCE_SEED = 1_000_003


def images_of(data: SyntheticShapes) -> torch.Tensor:
    """All images of a synthetic dataset, ``[N, 3, H, W]`` in [-1, 1]."""
    return data.images.float() / 127.5 - 1


def shuffled_pixels(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The same colours at random positions: ``[N, 3, H, W]`` -> ``[N, 3, H, W]``."""
    n, c, h, w = images.shape
    order = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    return images.flatten(2)[..., order].view(n, c, h, w)


def write_pngs(images: torch.Tensor, folder: Path) -> Path:
    folder.mkdir()
    for i, image in enumerate(to_uint8(images)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A reference set (400 synthetic eval images) with its in-domain classifier trained and cached."""
    root = tmp_path_factory.mktemp("fidelity")
    reference = ReferenceSet(SyntheticShapes(10, 32, 400, REFERENCE_SEED), root / "cache")
    metric = InDomainMetric(kid_subset_size=50)  # the default 300 classifier steps
    real = SyntheticShapes(10, 32, 100, seed=5)
    scores = metric.compute(images_of(real), real.labels, reference)
    return root, reference, metric, real, scores


# ----------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_closed_form_for_shared_eigenvectors() -> None:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    a, b = torch.rand(6, generator=g, dtype=torch.float64), torch.rand(6, generator=g, dtype=torch.float64)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    expected = float((mu1 - mu2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    got = frechet_distance(mu1, q @ torch.diag(a) @ q.T, mu2, q @ torch.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_equals_torch_fidelity_on_singular_covariances() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 32)), rng.normal(loc=0.3, size=(25, 32)) * 1.5  # rank < dimension
    stats = [{"mu": f.mean(0), "sigma": np.cov(f, rowvar=False)} for f in (x, y)]
    expected = fid_statistics_to_metric(*stats, verbose=False)[torch_fidelity.KEY_METRIC_FID]
    got = frechet_distance(*(torch.from_numpy(s[k]) for s in stats for k in ("mu", "sigma")))
    assert got == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- in-domain FID equality
@pytest.mark.parametrize("variant", ["other seed", "noised"])
def test_fid_equals_torch_fidelity_and_direct_computation(scored, tmp_path, variant) -> None:
    _, reference, metric, real, _ = scored
    generated = images_of(real)
    if variant == "noised":
        generated = (generated + 0.3 * torch.randn(generated.shape, generator=torch.Generator().manual_seed(1)))
        generated = to_uint8(generated).float() / 127.5 - 1  # what a PNG holds
    platform_fid = metric.compute(generated, real.labels, reference)["fid"]

    # (a) torch-fidelity's own pipeline on PNG folders, with the registered in-domain extractor
    generated_dir = write_pngs(generated, tmp_path / "generated")
    reference_dir = write_pngs(images_of(reference.dataset), tmp_path / "reference")
    torch_fidelity_fid = torch_fidelity.calculate_metrics(
        input1=str(generated_dir), input2=str(reference_dir), fid=True, cuda=False, cache=False, verbose=False,
        save_cpu_ram=True, feature_extractor=IN_DOMAIN_EXTRACTOR,
        feature_extractor_weights_path=metric.classifier_path(reference))[torch_fidelity.KEY_METRIC_FID]
    assert platform_fid == pytest.approx(torch_fidelity_fid, rel=1e-3)

    # (b) straight from the classifier's multi-layer features, numpy statistics
    classifier = load_classifier(metric.classifier_path(reference))
    with torch.no_grad():
        fake, real_features = (classifier.multiscale(x).double().numpy()
                               for x in (generated, images_of(reference.dataset)))
    stats = [torch.from_numpy(s) for f in (fake, real_features) for s in (f.mean(0), np.cov(f, rowvar=False))]
    assert platform_fid == pytest.approx(frechet_distance(*stats), rel=1e-3)


def test_fid_separates_real_images_from_shuffled_pixels(scored) -> None:
    _, reference, metric, real, scores = scored
    noise = metric.compute(shuffled_pixels(images_of(real)), real.labels, reference)
    assert scores["fid"] * 20 < noise["fid"]
    assert scores["kid"] < noise["kid"]
    assert scores["is"] > noise["is"]


def test_class_accuracy_of_real_images_matches_classifier_accuracy(scored) -> None:
    root, reference, metric, real, scores = scored
    summary = classifier_module.checkpoint.read_json(reference.path(f"{metric.key}.json"))
    assert summary["held_out_accuracy"] > 0.9
    assert scores["class_accuracy"] == pytest.approx(summary["held_out_accuracy"], abs=0.05)
    wrong = metric.compute(images_of(real), (real.labels + 1) % 10, reference)
    assert wrong["class_accuracy"] < 0.1
    assert set(scores) == {"fid", "is", "kid", "precision", "recall", "class_accuracy"}


# ----------------------------------------------------------------------------- reference cache
def test_reference_cache_is_built_once_and_reused(scored, monkeypatch) -> None:
    root, reference, metric, real, scores = scored
    cached = sorted(Path(reference.cache_dir, reference.key).iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in cached}
    key = metric.key
    assert [p.name for p in cached] == sorted([f"features-{key}-multi.safetensors",
                                               f"features-{key}-logits.safetensors",
                                               f"{key}.json", f"{key}.safetensors"])

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been reused")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    same_data = ReferenceSet(SyntheticShapes(10, 32, 400, REFERENCE_SEED), root / "cache")
    assert same_data.key == reference.key
    again = metric.compute(images_of(real), real.labels, same_data)
    assert again == pytest.approx(scores)
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes
    other_data = ReferenceSet(SyntheticShapes(10, 32, 400, REFERENCE_SEED + 1), root / "cache")
    assert other_data.key != reference.key


def test_resolution_mismatch_is_a_user_error(scored) -> None:
    _, reference, metric, _, _ = scored
    with pytest.raises(StratagenError, match="reference images"):
        metric.compute(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long), reference)


# ----------------------------------------------------------------------------- inception weights
@pytest.fixture
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("attempted a download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_inception_without_weights_fails_at_construction(tmp_path, no_downloads) -> None:
    with pytest.raises(MissingWeightsError, match="weights-inception-2015-12-05-6726825d.pth") as error:
        InceptionMetric(weights=None)
    assert "github.com/toshas/torch-fidelity/releases" in str(error.value)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        InceptionMetric(weights=str(tmp_path / "absent.pth"))


def test_inception_prc_needs_vgg_weights_too(tmp_path, no_downloads) -> None:
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"")
    InceptionMetric(weights=str(weights), metrics=["fid", "kid"])  # checks files only: no loading, no work
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        InceptionMetric(weights=str(weights), metrics=["fid", "prc"])
    with pytest.raises(MissingWeightsError, match="weights-inception"):
        InceptionMetric(weights=None, metrics=["fid", "prc"], vgg_weights=str(weights))
    InceptionMetric(weights=None, metrics=["prc"], vgg_weights=str(weights))  # prc alone needs VGG16 only


def test_unreadable_inception_weights_are_reported(tmp_path, no_downloads, scored) -> None:
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"not a state dict")
    metric = InceptionMetric(weights=str(weights), metrics=["fid"])
    with pytest.raises(StratagenError, match="not a PyTorch checkpoint"):
        metric.compute(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), scored[1])


def test_inception_path_runs_with_a_local_weights_file(tmp_path, no_downloads, monkeypatch) -> None:
    """The Inception wiring end to end: torch-fidelity's real network (random weights stand in for
    the file, whose loading is stubbed), scores, and the reference feature cache."""
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"stand-in")
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: {})
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    reference = ReferenceSet(SyntheticShapes(4, 32, 8, REFERENCE_SEED), tmp_path / "cache")
    generated = SyntheticShapes(4, 32, 6, seed=5)
    metric = InceptionMetric(weights=str(weights), metrics=["fid", "isc", "kid"], kid_subset_size=50)
    scores = metric.compute(images_of(generated), generated.labels, reference)
    assert set(scores) == {"fid", "is", "kid"} and all(np.isfinite(list(scores.values())))
    names = sorted(p.name for p in Path(reference.cache_dir, reference.key).iterdir())
    assert len(names) == 2 and all(n.startswith("features-inception-v3-compat-") for n in names)
    assert {n.rsplit("-", 1)[1] for n in names} == {"2048.safetensors", "logits_unbiased.safetensors"}


# ----------------------------------------------------------------------------- plugin
def test_metrics_register_as_plugins(no_downloads) -> None:
    registry = Registry()
    registry.register_plugin(metrics_plugin, Provider("metrics", "stratagen", "0.1.0"))
    assert not registry.failures
    assert registry.names("metric") == ["in-domain", "inception", "swd"]
    built = registry.build("metric", metrics_plugin.InDomainConfig(classifier_steps=10))
    assert isinstance(built, InDomainMetric) and built.classifier_steps == 10
    swd = registry.build("metric", metrics_plugin.SlicedWassersteinConfig(directions=16, seed=3))
    assert isinstance(swd, SlicedWassersteinMetric) and (swd.directions, swd.seed, swd.repeats) == (16, 3, 4)
    with pytest.raises(MissingWeightsError):
        registry.build("metric", metrics_plugin.InceptionConfig(metrics=["fid", "kid"]))
    with pytest.raises(ValidationError, match="fdi"):
        metrics_plugin.InceptionConfig(metrics=["fdi"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_fails_at_construction() -> None:
    with pytest.raises(StratagenError, match="CUDA is not available"):
        InDomainMetric(device="cuda")
    with pytest.raises(StratagenError, match="not a device name"):
        InDomainMetric(device="gpu0")
