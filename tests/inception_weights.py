"""A stand-in for torch-fidelity's Inception weights file, which cannot be downloaded here."""
from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch
from torch_fidelity import FeatureExtractorInceptionV3


def write_calibrated_inception(path: Path, seed: int = 0) -> Path:
    """torch-fidelity's Inception-v3 with random weights, saved as a plain state dict at ``path``.

    PyTorch's default initialisation makes the deep features almost constant; here every batch
    norm takes the statistics of its input on 4 synthetic images (one forward in training mode), so
    each layer is normalised and the features vary with the image, as a trained network's do.
    """
    from stratagen.data import SyntheticShapes

    torch.manual_seed(seed)
    with mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", lambda *args, **kwargs: {}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # the running statistics become this batch's exactly
            module.train()
    with torch.no_grad():
        network(SyntheticShapes(4, 32, 4, seed=seed).images)
    torch.save({k: v.clone() for k, v in network.state_dict().items()}, path)
    return path
