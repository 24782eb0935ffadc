"""Sample-quality metrics on torch-fidelity feature extractors, with cached reference features.

A :class:`Metric` compares generated images with a :class:`ReferenceSet`: real images (e.g.
the run's eval split) plus a local cache directory. Features of the reference images are
extracted once per (reference set, extractor) and cached as safetensors::

    <cache_dir>/<reference key>/features-<extractor key>-<layer>.safetensors   {"features": [N, D]}

Feature extraction runs torch-fidelity 0.4.0's own extractors (Inception-v3 with its
TF-compatible resize; VGG16 for precision/recall) on uint8 images, and IS/KID/PRC use its
metric functions. The top-level ``torch_fidelity.calculate_metrics`` is not called because
it can reuse reference features only through its own pickle cache; the tests check that
the FID reported here equals ``calculate_metrics`` on the same images.

``inception`` (:class:`InceptionMetric`) gives numbers comparable to published FID/IS only
with torch-fidelity's Inception weights, and only at the published sample counts (e.g.
50k samples against ImageNet train statistics). Nothing is ever downloaded: the weights
are local files, checked when the metric is built.
"""
from __future__ import annotations

import hashlib
import io
import os
from abc import ABC, abstractmethod
from functools import cached_property
from typing import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from torch_fidelity import FeatureExtractorBase, FeatureExtractorInceptionV3, FeatureExtractorVGG16
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from stratagen.io import checkpoint
from stratagen.registry import MissingWeightsError, StratagenError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
#: torchvision's ImageNet VGG16, which torch-fidelity 0.4.0 loads for precision/recall
VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
#: reference items hashed into the reference key (evenly spaced over the dataset)
FINGERPRINT_ITEMS = 64
ISC_SPLITS = 10


# ----------------------------------------------------------------------------- helpers
def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` in [-1, 1] -> uint8 in [0, 255], rounded as torchvision's ``save_image``."""
    return (images.clamp(-1, 1) * 0.5 + 0.5).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float32 in [-1, 1]; :func:`to_uint8` gives the same uint8 back."""
    return images.float() / 127.5 - 1


def resolve_device(setting: str) -> torch.device:
    """``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; an unusable device is a user error."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise StratagenError(f"metric device {setting!r} is not a device name (cpu, cuda, cuda:1, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StratagenError(f"metric device {setting!r}: CUDA is not available here; use device: cpu")
    return device


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, D]`` features -> float64 mean ``[D]`` and unbiased covariance ``[D, D]`` (as ``np.cov``)."""
    features = features.double()
    return features.mean(0), torch.cov(features.T)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): FID on features' statistics.

    ``|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^(1/2))``, computed in float64 with
    ``tr((s1 s2)^(1/2)) = tr((s1^(1/2) s2 s1^(1/2))^(1/2))``: the eigenvalues of a symmetric PSD
    matrix, so singular covariances (fewer samples than dimensions) need no regularisation.
    Args are ``[D]`` and ``[D, D]``.
    """
    mu1, sigma1, mu2, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    values, vectors = torch.linalg.eigh(sigma1)
    root1 = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    inner = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * tr_covmean)


def frechet_distance_to(features: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> float:
    """:func:`frechet_distance` between the Gaussian statistics of ``features`` ``[N, D]`` and N(mu, sigma).

    With fewer samples than dimensions (N <= D) the trace term comes from an ``[N, N]`` matrix:
    with ``C`` the centred features over sqrt(N - 1), ``sigma1 = C^T C`` and
    ``sigma1^(1/2) sigma sigma1^(1/2)`` has the nonzero eigenvalues of ``C sigma C^T``. That is exact
    where the ``[D, D]`` route sums the square roots of D - N rounding-noise eigenvalues (about 6e-4
    of error at N = 40, D = 2048), and O(N^2 D) instead of O(D^3).
    """
    features = torch.as_tensor(features).double()
    n, d = features.shape
    mu, sigma = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(sigma, dtype=torch.float64)
    if n > d:
        return frechet_distance(*gaussian_stats(features), mu, sigma)
    mean = features.mean(0)
    centred = (features - mean) / max(n - 1, 1) ** 0.5
    inner = centred @ sigma @ centred.T
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    diff = mean - mu
    return float(diff @ diff + centred.pow(2).sum() + sigma.trace() - 2 * tr_covmean)


def features_frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """FID between two feature sets ``[N, D]`` and ``[M, D]`` (symmetric: the smaller set keeps its features)."""
    small, large = sorted((x, y), key=len)
    return frechet_distance_to(small, *gaussian_stats(large))


@torch.no_grad()
def extract_features(extractor: FeatureExtractorBase, batches: Iterable[torch.Tensor],
                     device: torch.device) -> dict[str, torch.Tensor]:
    """Run a torch-fidelity extractor over uint8 ``[B, 3, H, W]`` batches -> ``{layer: [N, D]}`` on CPU."""
    extractor.to(device).eval()
    parts: list[dict[str, torch.Tensor]] = []
    for batch in batches:
        named = extractor.convert_features_tuple_to_dict(extractor(batch.to(device)))
        parts.append({name: value.float().cpu() for name, value in named.items()})
    return {name: torch.cat([p[name] for p in parts]) for name in extractor.features_list}


# ----------------------------------------------------------------------------- reference set
class ReferenceSet:
    """Real images that generated ones are compared with, and where their features are cached.

    Args:
        dataset: yields ``(image [3, H, W] in [-1, 1], label)``, e.g. the run's eval split.
        cache_dir: a local directory; entries live under ``<cache_dir>/<key>/``.
    """

    def __init__(self, dataset: Dataset, cache_dir: str | os.PathLike):
        if len(dataset) == 0:
            raise StratagenError("the reference dataset is empty")
        self.dataset = dataset
        self.cache_dir = os.fspath(cache_dir)

    @cached_property
    def key(self) -> str:
        """``<dataset class>-<size>-<hash>``: a hash of the size, and of the pixels and labels of
        up to :data:`FINGERPRINT_ITEMS` evenly spaced items (cheap, yet changes with the data)."""
        size = len(self.dataset)
        digest = hashlib.sha256(f"{type(self.dataset).__qualname__}:{size}".encode())
        for index in torch.linspace(0, size - 1, min(size, FINGERPRINT_ITEMS)).round().long().tolist():
            image, label = self.dataset[index]
            digest.update(to_uint8(image).numpy().tobytes())
            digest.update(f":{int(label)};".encode())
        return f"{type(self.dataset).__name__.lower()}-{size}-{digest.hexdigest()[:12]}"

    @cached_property
    def resolution(self) -> tuple[int, int]:
        """``(H, W)`` of the reference images (from the first item)."""
        return tuple(self.dataset[0][0].shape[-2:])

    def path(self, filename: str) -> str:
        """Where this reference set's cache entry ``filename`` lives."""
        return os.path.join(self.cache_dir, self.key, filename)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The reference images as uint8 ``[B, 3, H, W]`` with labels ``[B]``, in dataset order."""
        for images, labels in DataLoader(self.dataset, batch_size=batch_size, shuffle=False):
            yield to_uint8(images), torch.as_tensor(labels)

    def features(self, extractor: FeatureExtractorBase, extractor_key: str, layer: str, batch_size: int,
                 device: torch.device) -> torch.Tensor:
        """Features ``[N, D]`` of every reference image at ``layer``: read from the cache, or extracted
        (all of ``extractor.features_list`` at once) and cached. ``extractor_key`` names the extractor
        and its weights."""
        url = self.path(f"features-{extractor_key}-{layer}.safetensors")
        if not checkpoint.exists(url):
            features = extract_features(extractor, (images for images, _ in self.batches(batch_size)), device)
            for name, value in features.items():
                checkpoint.save_tensors(self.path(f"features-{extractor_key}-{name}.safetensors"),
                                        {"features": value}, {"reference": self.key, "extractor": extractor_key})
        return checkpoint.load_tensors(url)[0]["features"]


# ----------------------------------------------------------------------------- metrics
class Metric(ABC):
    """A sample-quality metric: generated images against a reference set."""

    #: whether :meth:`compute` reports ``fid`` (the rFID of tokenizer reports uses the first such metric)
    reports_fid = True

    @abstractmethod
    def compute(self, generated: torch.Tensor, labels: torch.Tensor, reference: ReferenceSet) -> dict[str, float]:
        """Score ``generated`` ``[N, 3, H, W]`` in [-1, 1], drawn for class ``labels`` ``[N]``."""


def fidelity_scores(generated: dict[str, torch.Tensor], extractor: FeatureExtractorBase, extractor_key: str,
                    reference: ReferenceSet, metrics: Sequence[str], batch_size: int, device: torch.device,
                    kid_subset_size: int) -> dict[str, float]:
    """torch-fidelity metrics from the generated images' features (``{layer: [N, D]}``).

    ``metrics`` are torch-fidelity names (``fid``, ``isc``, ``kid``, ``prc``), each on the
    extractor's default layer for it. Returns ``fid``, ``is`` (mean), ``kid`` (mean, subsets of
    ``min(kid_subset_size, N_generated, N_reference)``), ``precision`` and ``recall``.
    """
    out: dict[str, float] = {}
    for metric in metrics:
        layer = extractor.get_default_feature_layer_for_metric(metric)
        fake = generated[layer]
        if metric == "isc":
            out["is"] = isc_features_to_metric(fake, splits=min(ISC_SPLITS, len(fake)))[KEY_METRIC_ISC_MEAN]
            continue
        real = reference.features(extractor, extractor_key, layer, batch_size, device)
        if metric == "fid":
            out["fid"] = features_frechet_distance(fake, real)
        elif metric == "kid":
            size = min(kid_subset_size, len(fake), len(real))
            out["kid"] = kid_features_to_metric(fake, real, kid_subset_size=size, verbose=False)[KEY_METRIC_KID_MEAN]
        else:
            prc = prc_features_to_metric(fake, real, verbose=False)
            out["precision"], out["recall"] = prc[KEY_METRIC_PRECISION], prc[KEY_METRIC_RECALL]
    return out


def _file_key(path: str) -> str:
    """A short content hash of a weights file, naming the features it produces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def load_extractor(cls: type[FeatureExtractorBase], name: str, layers: Sequence[str],
                   path: str) -> tuple[FeatureExtractorBase, str]:
    """torch-fidelity extractor ``cls`` (registered as ``name``) giving ``layers``, with the weights
    file ``path``, and its cache key ``<name>-<hash of the file>``."""
    # torch-fidelity unpickles its weights file with weights_only=False; it gets, in memory, the
    # tensors read here without running code, serialised again by us (plain tensors only).
    plain = io.BytesIO()
    torch.save(checkpoint.read_state_dict(path), plain)
    plain.seek(0)
    try:
        extractor = cls(name, list(layers), feature_extractor_weights_path=plain, verbose=False)
    except Exception as exc:  # a state dict of another network: say which file
        first = str(exc).strip().splitlines()[0]
        raise StratagenError(f"{path}: not a usable {name} state dict for torch-fidelity ({first})") from None
    return extractor, f"{name}-{_file_key(path)}"


def _require_file(path: str | None, what: str, filename: str, url: str, field: str) -> str:
    if path is None:
        raise MissingWeightsError(f"metric 'inception' needs {what} ({filename}, from {url}); download it "
                                  f"elsewhere and set {field}: <local path>. Nothing is downloaded at run time")
    if not os.path.isfile(path):
        raise MissingWeightsError(f"metric 'inception': {field} {path} does not exist (expected {filename}, "
                                  f"from {url})")
    return path


class InceptionMetric(Metric):
    """FID / IS / KID on torch-fidelity's Inception-v3, precision/recall on its VGG16.

    Comparable to published numbers (same weights, same resizing), sample counts permitting.
    torch-fidelity's ``calculate_metrics`` passes one ``feature_extractor_weights_path`` to both
    of its extractors when ``prc`` joins ``fid``/``isc``/``kid``; here each extractor gets its
    own file, so ``prc`` needs ``vgg_weights`` besides ``weights``.

    Args:
        weights: local ``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity release asset).
        metrics: any of ``fid``, ``isc``, ``kid``, ``prc``.
        kid_subset_size: KID subset size (clipped to the sample counts).
        device: where the extractors run.
        vgg_weights: local ``vgg16-397923af.pth`` (torchvision's ImageNet VGG16), for ``prc``.
        batch_size: images per extractor forward.

    Raises:
        MissingWeightsError: at construction, when a needed weights file is not given or absent.
    """

    def __init__(self, weights: str | None, metrics: Sequence[str] = ("fid", "isc"), kid_subset_size: int = 1000,
                 device: str = "cpu", vgg_weights: str | None = None, batch_size: int = 64):
        metrics = tuple(dict.fromkeys(metrics))
        if not metrics or set(metrics) - {"fid", "isc", "kid", "prc"}:
            raise StratagenError(f"metric 'inception': metrics must be some of fid, isc, kid, prc; got {list(metrics)}")
        inception = tuple(m for m in metrics if m != "prc")
        #: torch-fidelity extractor name -> (class, weights file, metrics it serves)
        self.groups: dict[str, tuple[type[FeatureExtractorBase], str, tuple[str, ...]]] = {}
        if inception:
            path = _require_file(weights, "torch-fidelity's Inception-v3 weights", INCEPTION_FILE, URL_INCEPTION_V3,
                                 "weights")
            self.groups["inception-v3-compat"] = (FeatureExtractorInceptionV3, path, inception)
        if "prc" in metrics:
            path = _require_file(vgg_weights, "VGG16 weights for prc", VGG16_FILE, VGG16_URL, "vgg_weights")
            self.groups["vgg16"] = (FeatureExtractorVGG16, path, ("prc",))
        self.kid_subset_size = kid_subset_size
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self._extractors: dict[str, tuple[FeatureExtractorBase, str]] = {}

    def _extractor(self, name: str) -> tuple[FeatureExtractorBase, str]:
        """torch-fidelity's extractor ``name`` with its weights, and its cache key; loaded once."""
        if name not in self._extractors:
            cls, path, metrics = self.groups[name]
            layers = list(dict.fromkeys(cls.get_default_feature_layer_for_metric(m) for m in metrics))
            self._extractors[name] = load_extractor(cls, name, layers, path)
        return self._extractors[name]

    def compute(self, generated: torch.Tensor, labels: torch.Tensor, reference: ReferenceSet) -> dict[str, float]:
        images = to_uint8(generated.cpu())
        out: dict[str, float] = {}
        for name, (_, _, metrics) in self.groups.items():
            extractor, key = self._extractor(name)
            features = extract_features(extractor, images.split(self.batch_size), self.device)
            out.update(fidelity_scores(features, extractor, key, reference, metrics, self.batch_size, self.device,
                                       self.kid_subset_size))
        return out
