"""The evaluation protocol of the published ImageNet tables: ADM's evaluator (Dhariwal & Nichol 2021,
guided-diffusion ``evaluations/evaluator.py``), which VAR, LlamaGen and ADM report with.

A *reference batch* is an ``.npz`` holding

* ``mu`` ``[2048]``, ``sigma`` ``[2048, 2048]``: mean and covariance of Inception pool features (FID);
* ``mu_s`` ``[2023]``, ``sigma_s`` ``[2023, 2023]``: the same of the spatial features (sFID);
* ``arr_0`` ``[N, H, W, 3]`` uint8 (optional): reference images, whose pool features give the
  k-nearest-neighbour manifolds of precision and recall.

The scores, named by protocol so that none is taken for another metric of the project:

* ``fid_adm``: Fréchet distance of the samples' pool features to (``mu``, ``sigma``);
* ``sfid_adm``: the same on the spatial features and (``mu_s``, ``sigma_s``) (Nash et al. 2021);
* ``precision_adm``, ``recall_adm``: Kynkäänniemi et al. 2019 with k = 3 on pool features, as ADM's
  ``ManifoldEstimator`` computes them (see :func:`precision_recall`);
* ``is_adm``: Inception Score over consecutive splits of 5000 samples, unshuffled.

Where this differs from ADM's TensorFlow evaluator (see :class:`AdmInception` for the network):
the Fréchet distance is computed from eigenvalues in float64 (ADM: ``scipy.linalg.sqrtm``; the two
agree to about 1e-8 when the covariances are well determined); means are float64 (ADM's are
float32 ``np.mean`` of float32 activations); the softmax of the Inception Score is float64; and the
float16 distance arithmetic of precision/recall is emulated on the metric's device, whose matmul
may sum in another order than TensorFlow's kernel (a distance then differs by one float16 step at
most). Nothing in a reference file is unpickled: ``np.load(..., allow_pickle=False)``, and
``arr_0`` is read in batches from its ``.npy`` header and raw bytes.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, Iterable, Iterator, NamedTuple

import fsspec
import numpy as np
import torch
from torch_fidelity import FeatureExtractorInceptionV3

from stratagen.io import checkpoint
from stratagen.registry import StratagenError

from .fidelity import frechet_distance_to, gaussian_stats, load_extractor, resolve_device

POOL_DIM = 2048
#: ADM keeps the first 7 of the 192 channels of ``mixed_6/conv`` (17 x 17 at 299 px)
SPATIAL_CHANNELS = 7
SPATIAL_SIDE = 17
SPATIAL_DIM = SPATIAL_SIDE * SPATIAL_SIDE * SPATIAL_CHANNELS
#: k of the k-nearest-neighbour radii (ADM's ``nhood_sizes=(3,)``)
NEIGHBOURS = 3
#: rows (and columns) of one block of pairwise distances, as ADM's ManifoldEstimator
DISTANCE_BATCH = 10000
IS_SPLIT_SIZE = 5000
STAT_SHAPES = {"mu": (POOL_DIM,), "sigma": (POOL_DIM, POOL_DIM), "mu_s": (SPATIAL_DIM,),
               "sigma_s": (SPATIAL_DIM, SPATIAL_DIM)}
IMAGES = "arr_0"
LAYOUT = "an ADM reference batch holds mu, sigma, mu_s, sigma_s and optionally arr_0 (uint8 [N, H, W, 3])"


class AdmFeatures(NamedTuple):
    """Inception features of ``N`` images: ``pool`` ``[N, 2048]``, ``spatial`` ``[N, 2023]``,
    ``logits`` ``[N, 1008]``."""

    pool: torch.Tensor
    spatial: torch.Tensor
    logits: torch.Tensor


class AdmInception:
    """torch-fidelity's Inception-v3 giving the three feature sets ADM's evaluator reads.

    ADM imports TensorFlow's ``classify_image_graph_def.pb`` (the 2015-12-05 Inception), whose
    weights torch-fidelity converts into ``FeatureExtractorInceptionV3`` (same TF1 bilinear resize to
    299 px, same ``(x - 128) / 128`` input scaling). The tensors ADM fetches, and what gives them here:

    ==========================  =================================================================
    TF graph tensor             torch-fidelity module
    ==========================  =================================================================
    ``pool_3:0``                feature ``"2048"``: global average pool after ``Mixed_7c``, ``[N, 2048]``
    ``mixed_6/conv:0``          output of ``Mixed_6d.branch1x1`` (1x1 conv 768 -> 192, batch norm,
                                ReLU), ``[N, 192, 17, 17]``, read by a forward hook
    ``softmax/logits/MatMul``   feature ``"logits_unbiased"``: pool features times the classifier
                                weights, no bias, ``[N, 1008]``
    ==========================  =================================================================

    ``mixed_6`` is the seventh mixed block of the graph (``mixed``, ``mixed_1``, ... count from
    torchvision's ``Mixed_5b``): torch-fidelity's weight converter maps
    ``mixed_6/conv/conv2d_params`` and ``mixed_6/conv/batchnorm`` to ``Mixed_6d.branch1x1.conv`` and
    ``.bn``, and the graph node ``mixed_6/conv`` is the ReLU after them, the 1x1 branch that
    ``mixed_6/join`` concatenates. ADM slices ``[..., :7]`` of that NHWC tensor and flattens it per
    image, so the spatial features here are channels 0-6 in (row, column, channel) order: ``[N, 2023]``,
    laid out as in published ``mu_s`` / ``sigma_s``.

    Args:
        weights: local ``weights-inception-2015-12-05-6726825d.pth``.
        device: where the network runs (``auto``, ``cpu``, ``cuda``, ...).
        batch_size: images per forward.
    """

    def __init__(self, weights: str, device: str | torch.device = "cpu", batch_size: int = 64):
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        extractor, self.key = load_extractor(FeatureExtractorInceptionV3, "inception-v3-compat",
                                             ("2048", "logits_unbiased"), weights)
        self.extractor = extractor.to(self.device).eval()
        self.batch_size = batch_size
        self._spatial: list[torch.Tensor] = []
        self.extractor.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        channels = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)  # NHWC, as the TF graph
        self._spatial.append(channels.reshape(len(output), -1).float().cpu())

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> AdmFeatures:
        """uint8 ``[B, 3, H, W]`` -> the features of those images."""
        self._spatial.clear()
        pool, logits = self.extractor(images.to(self.device))
        return AdmFeatures(pool.float().cpu(), self._spatial.pop(), logits.float().cpu())

    def features(self, batches: Iterable[torch.Tensor]) -> AdmFeatures:
        """The features of uint8 ``[B, 3, H, W]`` batches, concatenated."""
        parts = [self(batch) for batch in batches]
        if not parts:
            raise StratagenError("no images to extract Inception features from")
        return AdmFeatures(*(torch.cat(p) for p in zip(*parts)))


# ----------------------------------------------------------------------------- statistics
class GaussianAccumulator:
    """Mean and unbiased covariance of feature rows given in batches, in float64 and constant memory.

    Batches merge by the pairwise update of Chan et al. (1979): with ``delta`` the difference of
    the batch mean and the running mean, the sum of squared deviations grows by the batch's own
    plus ``delta delta^T n_a n_b / (n_a + n_b)``. The result equals ``np.mean`` / ``np.cov`` of all
    rows at once (to float64 rounding), whatever the batch sizes.
    """

    def __init__(self, dim: int):
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.squares = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, features: torch.Tensor) -> None:
        """Take the rows of ``[B, D]``."""
        rows = features.double()
        if len(rows) == 0:
            return
        batch_mean = rows.mean(0)
        centred = rows - batch_mean
        delta = batch_mean - self.mean
        total = self.count + len(rows)
        self.squares += centred.T @ centred + torch.outer(delta, delta) * (self.count * len(rows) / total)
        self.mean += delta * (len(rows) / total)
        self.count = total

    def covariance(self) -> torch.Tensor:
        """``[D, D]``, normalised by ``count - 1`` (as ``np.cov``)."""
        if self.count < 2:
            raise StratagenError(f"a covariance needs at least 2 images, got {self.count}")
        return self.squares / (self.count - 1)


class ImageSink:
    """Reference images (uint8) streamed to a local temporary file, later stored as ``arr_0``."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile()
        self.count = 0
        self.shape: tuple[int, int] | None = None

    def add(self, images: torch.Tensor) -> None:
        """Append uint8 ``[B, 3, H, W]`` (stored NHWC, as ADM's ``arr_0``)."""
        if len(images) == 0:
            return
        self.shape = self.shape or tuple(images.shape[-2:])
        self.file.write(images.permute(0, 2, 3, 1).contiguous().numpy().tobytes())
        self.count += len(images)

    def copy_to(self, out: IO[bytes]) -> None:
        self.file.seek(0)
        while block := self.file.read(1 << 24):
            out.write(block)


def write_reference(url: str, pool: GaussianAccumulator, spatial: GaussianAccumulator,
                    images: ImageSink | None = None) -> None:
    """Write an ADM reference batch (uncompressed ``.npz``, as ``np.savez``) to ``url``, atomically.

    Statistics are float64; ``images`` become ``arr_0`` ``[N, H, W, 3]`` uint8 when given and not empty.
    """
    arrays = {"mu": pool.mean, "sigma": pool.covariance(), "mu_s": spatial.mean, "sigma_s": spatial.covariance()}
    with checkpoint.atomic_open(url) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        if images is not None and images.count:
            with archive.open(f"{IMAGES}.npy", "w", force_zip64=True) as member:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                          "shape": (images.count, *images.shape, 3)}
                np.lib.format.write_array_header_1_0(member, header)
                images.copy_to(member)
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, value.numpy(), allow_pickle=False)


# ----------------------------------------------------------------------------- reading
@dataclass
class ReferenceImages:
    """Where ``arr_0`` lies: its count and size, read from its ``.npy`` header."""

    count: int
    height: int
    width: int
    version: tuple[int, int]


_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def _first_line(exc: BaseException) -> str:
    """The reason, without numpy's advice to load pickled data (never taken here)."""
    text = str(exc).strip()
    if not text or "allow_pickle" in text:
        return type(exc).__name__
    return text.splitlines()[0]


def _images_header(archive: zipfile.ZipFile, url: str) -> ReferenceImages:
    """``arr_0``'s header, checked: uint8 ``[N, H, W, 3]`` in C order (never an object array)."""
    with archive.open(f"{IMAGES}.npy") as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise StratagenError(f"{url}: {IMAGES} is a .npy of version {version}; expected 1.0 or 2.0")
    if dtype.hasobject:
        raise StratagenError(f"{url}: {IMAGES} is a pickled object array; refused (never unpickled)")
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or fortran:
        raise StratagenError(f"{url}: {IMAGES} is {dtype} {list(shape)}{' (Fortran order)' if fortran else ''}; "
                             f"expected uint8 [N, H, W, 3] images")
    if shape[0] < NEIGHBOURS + 1:
        raise StratagenError(f"{url}: {IMAGES} holds {shape[0]} images; precision/recall (k = {NEIGHBOURS}) need "
                             f"at least {NEIGHBOURS + 1}")
    return ReferenceImages(int(shape[0]), int(shape[1]), int(shape[2]), version)


def _statistic(npz: np.lib.npyio.NpzFile, key: str, url: str) -> torch.Tensor:
    try:
        value = npz[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise StratagenError(f"{url}: {key} is a pickled object array; refused (never unpickled)") from None
        raise
    if value.shape != STAT_SHAPES[key] or value.dtype.kind != "f":
        raise StratagenError(f"{url}: {key} is {value.dtype} {list(value.shape)}; expected float "
                             f"{list(STAT_SHAPES[key])} ({LAYOUT})")
    if not np.isfinite(value).all():
        raise StratagenError(f"{url}: {key} holds NaN or infinite values")
    return torch.from_numpy(value.astype(np.float64))


@dataclass
class ReferenceBatch:
    """An ADM reference batch read from ``url``: the four statistics (float64 tensors; None when the
    file holds only images, whose statistics are then computed, as ADM does) and ``images`` (None
    without ``arr_0``). Read with :meth:`read`, which checks everything before any work."""

    url: str
    stats: dict[str, torch.Tensor] | None
    images: ReferenceImages | None

    @classmethod
    def read(cls, url: str) -> "ReferenceBatch":
        """Read and check ``url``; a malformed file is a one-line :class:`StratagenError`."""
        fs, path = fsspec.core.url_to_fs(url)
        if not fs.isfile(path):
            raise StratagenError(f"{url}: no such file ({LAYOUT})")
        try:
            with fs.open(path, "rb") as f:
                npz = np.load(f, allow_pickle=False)
                if not isinstance(npz, np.lib.npyio.NpzFile):
                    raise StratagenError(f"{url}: a single .npy array, not an .npz archive ({LAYOUT})")
                found = set(npz.files)
                present = [k for k in STAT_SHAPES if k in found]
                if present and len(present) < len(STAT_SHAPES):
                    missing = [k for k in STAT_SHAPES if k not in found]
                    raise StratagenError(f"{url}: missing {', '.join(missing)} ({LAYOUT})")
                if not present and IMAGES not in found:
                    raise StratagenError(f"{url}: holds {', '.join(sorted(found)) or 'nothing'}; {LAYOUT}")
                stats = {k: _statistic(npz, k, url) for k in present} or None
                images = _images_header(npz.zip, url) if IMAGES in found else None
        except StratagenError:
            raise
        except _READ_ERRORS as exc:
            raise StratagenError(f"{url}: not a readable .npz file ({_first_line(exc)})") from None
        return cls(url, stats, images)

    def image_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The reference images as uint8 ``[B, 3, H, W]``, read ``batch_size`` at a time."""
        assert self.images is not None
        n, h, w = self.images.count, self.images.height, self.images.width
        read_header = (np.lib.format.read_array_header_1_0 if self.images.version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        try:
            with fsspec.open(self.url, "rb") as f, zipfile.ZipFile(f) as archive, \
                    archive.open(f"{IMAGES}.npy") as member:
                np.lib.format.read_magic(member)
                read_header(member)
                for start in range(0, n, batch_size):
                    rows = min(batch_size, n - start)
                    data = member.read(rows * h * w * 3)
                    if len(data) != rows * h * w * 3:
                        raise StratagenError(f"{self.url}: {IMAGES} ends after {start} images; its header says {n}")
                    nhwc = np.frombuffer(data, np.uint8).reshape(rows, h, w, 3).copy()
                    yield torch.from_numpy(nhwc).permute(0, 3, 1, 2)
        except StratagenError:
            raise
        except _READ_ERRORS as exc:
            raise StratagenError(f"{self.url}: {IMAGES} is not readable ({_first_line(exc)})") from None

    def key(self) -> str:
        """A hash of the whole file: names the cached features of its images."""
        digest = hashlib.sha256()
        with fsspec.open(self.url, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
        return f"adm-{digest.hexdigest()[:16]}"


# ----------------------------------------------------------------------------- precision / recall
def _half(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to float16 and back (overflow gives inf, as float16 arithmetic)."""
    return x.half().float()


def adm_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[R, C]`` between rows of ``u`` ``[R, D]`` and ``v`` ``[C, D]``, as ADM's
    ``DistanceBlock``: ``max(|u|^2 - 2 u.v + |v|^2, 0)`` evaluated in float16 (inputs, squares, norms,
    the product and each sum rounded to float16; the matmul and the norms summed in float32), and
    again in float32 when any float16 result of the block is not finite."""
    u, v = u.float(), v.float()
    u16, v16 = _half(u), _half(v)
    norm_u, norm_v = _half(_half(u16 * u16).sum(1)), _half(_half(v16 * v16).sum(1))
    twice = _half(2 * _half(u16 @ v16.T))
    distances = _half(_half(norm_u[:, None] - twice) + norm_v[None]).clamp_min(0)
    if torch.isfinite(distances).all():
        return distances
    return (u.pow(2).sum(1)[:, None] - 2 * (u @ v.T) + v.pow(2).sum(1)[None]).clamp_min(0)


def manifold_radii(features: torch.Tensor, k: int = NEIGHBOURS, batch: int = DISTANCE_BATCH) -> torch.Tensor:
    """``[N]``: the squared distance of each row of ``features`` ``[N, D]`` to its k-th nearest neighbour,
    i.e. the (k+1)-th smallest entry of its row of :func:`adm_distances` against all rows (its own
    entry, about 0, included), as ADM's ``manifold_radii`` partitions it."""
    if len(features) <= k:
        raise StratagenError(f"precision/recall with k = {k} need at least {k + 1} images, got {len(features)}")
    radii = []
    for rows in features.split(batch):
        block = torch.cat([adm_distances(rows, cols) for cols in features.split(batch)], dim=1)
        radii.append(block.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def precision_recall(reference: torch.Tensor, sample: torch.Tensor, k: int = NEIGHBOURS,
                     batch: int = DISTANCE_BATCH) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``sample`` ``[M, D]`` against
    ``reference`` ``[N, D]``, as ADM's ``compute_prec_recall``.

    A point lies in a set's manifold when its squared distance to some member is at most that
    member's k-NN radius (:func:`manifold_radii`). Precision: the share of samples inside the
    reference manifold; recall: the share of reference points inside the sample manifold. Distances
    are :func:`adm_distances` in blocks of ``batch`` x ``batch`` (ADM's 10000, which also decides
    where the float32 fallback applies); run on the device the features are on.
    """
    radii_ref, radii_sample = manifold_radii(reference, k, batch), manifold_radii(sample, k, batch)
    ref_inside = torch.zeros(len(reference), dtype=torch.bool, device=reference.device)
    sample_inside = torch.zeros(len(sample), dtype=torch.bool, device=sample.device)
    for i in range(0, len(reference), batch):
        for j in range(0, len(sample), batch):
            block = adm_distances(reference[i:i + batch], sample[j:j + batch])
            ref_inside[i:i + batch] |= (block <= radii_sample[j:j + batch][None]).any(1)
            sample_inside[j:j + batch] |= (block <= radii_ref[i:i + batch][:, None]).any(0)
    return float(sample_inside.double().mean()), float(ref_inside.double().mean())


def inception_score(logits: torch.Tensor, split_size: int = IS_SPLIT_SIZE) -> float:
    """ADM's Inception Score of ``logits`` ``[N, 1008]``: exp of the mean KL divergence between each
    image's class distribution and the split's marginal, over consecutive splits of ``split_size``
    (the last may be smaller; not shuffled), averaged."""
    scores = []
    for part in logits.double().split(split_size):
        log_p = part.log_softmax(dim=1)
        kl = log_p.exp() * (log_p - log_p.exp().mean(0, keepdim=True).log())
        scores.append(kl.sum(1).mean().exp())
    return float(torch.stack(scores).mean())


# ----------------------------------------------------------------------------- scoring
class AdmEvaluator:
    """Scores generated images against a reference batch with ADM's protocol.

    The features of the reference images (``arr_0``) are extracted once and cached as
    ``<cache_dir>/<file hash>/features-<extractor key>.safetensors``.
    """

    def __init__(self, reference: ReferenceBatch, inception: AdmInception):
        self.reference = reference
        self.inception = inception

    def reference_features(self, cache_dir: str) -> AdmFeatures:
        """Pool, spatial and logit features of ``arr_0`` (needs it), from the cache or extracted."""
        url = os.path.join(cache_dir, self.reference.key(), f"features-{self.inception.key}.safetensors")
        if checkpoint.exists(url):
            return AdmFeatures(**checkpoint.load_tensors(url)[0])
        features = self.inception.features(self.reference.image_batches(self.inception.batch_size))
        checkpoint.save_tensors(url, features._asdict(), {"reference": self.reference.url})
        return features

    def score(self, images: torch.Tensor, cache_dir: str) -> dict[str, float]:
        """``fid_adm``, ``sfid_adm``, ``is_adm`` and, when the reference holds images,
        ``precision_adm`` / ``recall_adm`` of uint8 ``images`` ``[N, 3, H, W]``."""
        sample = self.inception.features(images.split(self.inception.batch_size))
        reference = self.reference_features(cache_dir) if self.reference.images is not None else None
        stats = self.reference.stats
        if stats is None:  # images only: their statistics, as ADM's read_statistics
            stats = dict(zip(("mu", "sigma"), gaussian_stats(reference.pool)))
            stats.update(zip(("mu_s", "sigma_s"), gaussian_stats(reference.spatial)))
        out = {"fid_adm": frechet_distance_to(sample.pool, stats["mu"], stats["sigma"]),
               "sfid_adm": frechet_distance_to(sample.spatial, stats["mu_s"], stats["sigma_s"]),
               "is_adm": inception_score(sample.logits)}
        if reference is not None:
            device = self.inception.device
            out["precision_adm"], out["recall_adm"] = precision_recall(reference.pool.to(device),
                                                                       sample.pool.to(device))
        return out
