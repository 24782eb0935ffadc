"""The in-domain metric: a small classifier trained on the reference images, used as a torch-fidelity extractor.

Inception-v3 (ImageNet, 299 px) says little about 32-px synthetic shapes, and its weights
cannot be downloaded here. The ``in-domain`` metric trains a small CNN on the reference
(eval-domain) images once, caches it, and reports FID, IS, KID, precision and recall in its
feature space, plus ``class_accuracy``: the share of generated images it assigns to their
conditioning label.

A classifier's last layer is built to ignore what does not change the class: its pooled
features barely move under blur or noise. FID, KID, precision and recall therefore use
``multi``: the spatial mean and standard deviation of the activations of every stage (early
stages respond to edges, noise and texture). Precision and recall are Kynkäänniemi et al.
2019 (k-NN manifolds, k = 3, torch-fidelity's implementation): precision is the share of
generated images inside the real manifold (quality), recall the share of real images inside
the generated one (diversity). IS and ``class_accuracy`` read the logits and see the class only.

These numbers are NOT comparable to published (Inception) FID/IS/KID, nor across reference
sets or classifier settings: they depend on this classifier and its training. Compare runs
scored against the same cached classifier only.

Cache entries, under ``<cache_dir>/<reference key>/``::

    in-domain-s<steps>-b<batch>.safetensors    classifier weights (+ num_classes, accuracy in metadata)
    in-domain-s<steps>-b<batch>.json           training summary: held-out accuracy, sizes, seconds
    features-in-domain-s<steps>-b<batch>-multi.safetensors   reference features (see fidelity.py)

The classifier is registered with torch-fidelity as ``stratagen-in-domain``, so its FID can
also be computed by ``torch_fidelity.calculate_metrics(..., feature_extractor="stratagen-in-domain",
feature_extractor_weights_path=<classifier .safetensors>)``.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from stratagen.io import checkpoint
from stratagen.registry import MissingWeightsError, StratagenError

from .fidelity import Metric, ReferenceSet, extract_features, fidelity_scores, from_uint8, resolve_device, to_uint8

IN_DOMAIN_EXTRACTOR = "stratagen-in-domain"
#: (output channels, stride) of the conv stages; 32 px in -> 4x4 at the end
STAGES = ((16, 2), (32, 2), (64, 1), (96, 2), (128, 1))
HELD_OUT_FRACTION = 0.2
MAX_SHIFT = 2  # pixels of random translation during training
LR = 3e-3
WEIGHT_DECAY = 1e-4
WARMUP_FRACTION = 0.1
SEED = 0


class DomainClassifier(nn.Module):
    """Conv3x3-GroupNorm-ReLU stages, global average pooling, a linear head (about 190k parameters).

    ``[B, 3, H, W]`` in [-1, 1] -> features ``[B, 128]`` (pooled, non-negative, like Inception's
    pool3) and logits ``[B, num_classes]``.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width, stride in STAGES:
            layers += [nn.Conv2d(channels, width, 3, stride, 1, bias=False), nn.GroupNorm(8, width), nn.ReLU()]
            channels = width
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)
        self.num_classes = num_classes

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    @property
    def multiscale_dim(self) -> int:
        return 2 * sum(width for width, _ in STAGES)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(images).mean((2, 3))
        return features, self.head(features)

    def multiscale(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, multiscale_dim]``: the spatial mean and standard deviation of every
        stage's activations. The early stages respond to edges, noise and texture that the
        class-discriminative last stage averages away, so blur and noise move these features."""
        parts, x = [], images
        for layer in self.trunk:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                parts += [x.mean((2, 3)), x.std((2, 3))]
        return torch.cat(parts, 1)


@torch.enable_grad()  # callers may evaluate under no_grad (e.g. rFID inside evaluate_tokenizer)
def train_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int,
                     device: torch.device) -> tuple[DomainClassifier, dict[str, float]]:
    """Train on a seeded 80 % of ``images`` (uint8 ``[N, 3, H, W]``, ``labels`` ``[N]``).

    AdamW with linear warmup and cosine decay; each batch is shifted by up to ``MAX_SHIFT`` pixels.
    Seeded throughout: the same data and settings give the same classifier.

    Returns:
        the classifier (eval mode, on CPU) and ``{"held_out_accuracy", "held_out_size", "train_size"}``.
    """
    if len(images) < 2:
        raise StratagenError("the in-domain classifier needs at least 2 reference images")
    generator = torch.Generator().manual_seed(SEED)
    order = torch.randperm(len(images), generator=generator)
    held = max(1, int(len(images) * HELD_OUT_FRACTION))
    test, train = order[:held], order[held:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = DomainClassifier(int(labels.max()) + 1).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    warmup = max(1, int(steps * WARMUP_FRACTION))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    data = from_uint8(images.to(device))
    targets = labels.to(device)
    model.train()
    for _ in range(steps):
        index = train[torch.randint(len(train), (batch_size,), generator=generator)].to(device)
        dx, dy = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2,), generator=generator).tolist()
        batch = torch.roll(data[index], (dy, dx), dims=(2, 3))
        loss = F.cross_entropy(model(batch)[1], targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(data[i])[1].argmax(1) == targets[i]).sum()) for i in test.split(batch_size))
    return model.cpu(), {"held_out_accuracy": correct / held, "held_out_size": held, "train_size": len(train)}


def load_classifier(url: str) -> DomainClassifier:
    """A classifier written by :class:`InDomainMetric` (safetensors, ``num_classes`` in its metadata)."""
    tensors, meta = checkpoint.load_tensors(url)
    if "num_classes" not in meta:
        raise StratagenError(f"{url}: not an in-domain classifier (no num_classes in its metadata)")
    model = DomainClassifier(meta["num_classes"])
    model.load_state_dict(tensors)
    return model.eval()


class InDomainExtractor(FeatureExtractorBase):
    """torch-fidelity view of a :class:`DomainClassifier`: uint8 ``[B, 3, H, W]`` -> ``feat`` ``[B, 128]``
    (the pooled last stage), ``multi`` ``[B, 672]`` (every stage's activation mean and standard
    deviation: FID, KID, precision/recall) and ``logits`` ``[B, C]`` (IS), in ``features_list`` order.

    torch-fidelity builds it as ``cls(name, features_list, **calculate_metrics_kwargs)``; the
    classifier file comes in ``feature_extractor_weights_path``.
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise MissingWeightsError(f"feature extractor {name!r} needs feature_extractor_weights_path: an "
                                      f"in-domain classifier .safetensors written by the in-domain metric")
        self.classifier = load_classifier(feature_extractor_weights_path)
        self.requires_grad_(False)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "feat", "multi", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "multi", "kid": "multi", "prc": "multi"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return True

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        images = from_uint8(images)
        features, logits = self.classifier(images)
        named = {"feat": features, "logits": logits}
        if "multi" in self.features_list:
            named["multi"] = self.classifier.multiscale(images)
        return tuple(named[name] for name in self.features_list)


if IN_DOMAIN_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(IN_DOMAIN_EXTRACTOR, InDomainExtractor)


class InDomainMetric(Metric):
    """FID / IS / KID / precision / recall in the feature space of a classifier trained on the reference
    set, and ``class_accuracy``.

    The classifier is trained on the first :meth:`compute` against a reference set and cached
    there; later calls (any run, same reference data and settings) reuse it. Not comparable to
    published Inception numbers (see the module docstring).

    Args:
        classifier_steps: training steps of the classifier.
        batch_size: training batch and extraction batch.
        kid_subset_size: KID subset size (clipped to the sample counts).
        device: where the classifier trains and runs.
    """

    def __init__(self, classifier_steps: int = 300, batch_size: int = 64, kid_subset_size: int = 100,
                 device: str = "cpu"):
        self.classifier_steps = classifier_steps
        self.batch_size = batch_size
        self.kid_subset_size = kid_subset_size
        self.device = resolve_device(device)

    @property
    def key(self) -> str:
        """Names this classifier's cache entries."""
        return f"in-domain-s{self.classifier_steps}-b{self.batch_size}"

    def classifier_path(self, reference: ReferenceSet) -> str:
        """The cached classifier for ``reference``, trained (and written, with a JSON summary) if missing."""
        url = reference.path(f"{self.key}.safetensors")
        if checkpoint.exists(url):
            return url
        batches = list(reference.batches(self.batch_size))
        images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        start = time.perf_counter()
        model, stats = train_classifier(images, labels, self.classifier_steps, self.batch_size, self.device)
        summary = {"reference": reference.key, "num_classes": model.num_classes, **stats,
                   "steps": self.classifier_steps, "batch_size": self.batch_size,
                   "train_seconds": round(time.perf_counter() - start, 2)}
        checkpoint.save_tensors(url, model.state_dict(), summary)
        checkpoint.write_json(reference.path(f"{self.key}.json"), summary)
        return url

    def compute(self, generated: torch.Tensor, labels: torch.Tensor, reference: ReferenceSet) -> dict[str, float]:
        if tuple(generated.shape[-2:]) != reference.resolution:
            raise StratagenError(f"in-domain metric: generated images are {tuple(generated.shape[-2:])} but the "
                                 f"reference images (and its classifier) are {reference.resolution}")
        extractor = InDomainExtractor(IN_DOMAIN_EXTRACTOR, ["multi", "logits"],
                                      feature_extractor_weights_path=self.classifier_path(reference))
        images = to_uint8(generated.cpu())
        features = extract_features(extractor, images.split(self.batch_size), self.device)
        out = fidelity_scores(features, extractor, self.key, reference, ("fid", "isc", "kid", "prc"), self.batch_size,
                              self.device, self.kid_subset_size)
        out["class_accuracy"] = (features["logits"].argmax(1) == labels.cpu()).float().mean().item()
        return out
