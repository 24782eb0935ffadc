"""The in-domain classifier: size, accuracy on the synthetic data, and its torch-fidelity extractor."""
from __future__ import annotations

import time

import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from stratagen.data import SyntheticShapes
from stratagen.io import checkpoint
from stratagen.eval import IN_DOMAIN_EXTRACTOR, DomainClassifier, InDomainExtractor
from stratagen.eval.classifier import load_classifier, train_classifier
from stratagen.registry import MissingWeightsError, StratagenError


def test_classifier_size_and_shapes() -> None:
    model = DomainClassifier(10)
    assert 100_000 <= sum(p.numel() for p in model.parameters()) <= 300_000
    for side in (32, 64):
        features, logits = model(torch.zeros(2, 3, side, side))
        assert features.shape == (2, model.feature_dim) and 64 <= model.feature_dim <= 128
        assert logits.shape == (2, 10)


def test_trains_to_high_held_out_accuracy_on_synthetic_shapes() -> None:
    """A third of the default 300 steps already suffices (test_fidelity checks the default)."""
    data = SyntheticShapes(10, 32, 500, seed=1_000_003)
    start = time.perf_counter()
    model, stats = train_classifier(data.images, data.labels, steps=100, batch_size=64, device=torch.device("cpu"))
    seconds = time.perf_counter() - start
    assert stats["held_out_size"] == 100 and stats["train_size"] == 400
    assert stats["held_out_accuracy"] > 0.9, stats
    unseen = SyntheticShapes(10, 32, 200, seed=7)
    with torch.no_grad():
        predicted = model(unseen.images.float() / 127.5 - 1)[1].argmax(1)
    assert (predicted == unseen.labels).float().mean() > 0.9
    print(f"classifier: held-out accuracy {stats['held_out_accuracy']:.3f}, trained in {seconds:.1f} s")


def test_training_is_deterministic() -> None:
    data = SyntheticShapes(4, 16, 20, seed=0)
    first, second = (train_classifier(data.images, data.labels, 3, 8, torch.device("cpu"))[0] for _ in range(2))
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(StratagenError, match="at least 2"):
        train_classifier(data.images[:1], data.labels[:1], 3, 8, torch.device("cpu"))


def test_registered_with_torch_fidelity(tmp_path) -> None:
    model = DomainClassifier(4).eval()
    url = str(tmp_path / "classifier.safetensors")
    checkpoint.save_tensors(url, model.state_dict(), {"num_classes": 4})
    assert FEATURE_EXTRACTORS_REGISTRY[IN_DOMAIN_EXTRACTOR] is InDomainExtractor
    extractor = create_feature_extractor(IN_DOMAIN_EXTRACTOR, ["logits", "feat"], cuda=False, verbose=False,
                                         feature_extractor_weights_path=url)
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    logits, features = extractor(images)  # in features_list order
    expected_features, expected_logits = load_classifier(url)(images.float() / 127.5 - 1)
    torch.testing.assert_close(features, expected_features)
    torch.testing.assert_close(logits, expected_logits)
    assert extractor.get_default_feature_layer_for_metric("fid") == "multi"
    assert extractor.get_default_feature_layer_for_metric("prc") == "multi"
    multi = create_feature_extractor(IN_DOMAIN_EXTRACTOR, ["multi"], cuda=False, verbose=False,
                                     feature_extractor_weights_path=url)(images)[0]
    classifier = load_classifier(url)
    assert multi.shape == (3, classifier.multiscale_dim) == (3, 672)
    torch.testing.assert_close(multi, classifier.multiscale(images.float() / 127.5 - 1))
    # per stage: channel means, then channel stds; the last stage's means are the pooled `feat`
    torch.testing.assert_close(multi[:, 416:544], expected_features)
    assert extractor.get_default_feature_layer_for_metric("isc") == "logits"
    with pytest.raises(ValueError, match="uint8"):
        extractor(images.float())
    with pytest.raises(MissingWeightsError):
        create_feature_extractor(IN_DOMAIN_EXTRACTOR, ["feat"], cuda=False, verbose=False)
    checkpoint.save_tensors(url, model.state_dict())
    with pytest.raises(StratagenError, match="not an in-domain classifier"):
        load_classifier(url)
