"""LPIPS perceptual loss (Zhang et al. 2018) on frozen VGG16 features with LPIPS's learned heads."""

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from stratagen.io.checkpoint import read_state_dict

_STAGES = [0, 1, 2, 3, 4]  # timm VGG taps: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def lpips_vgg_heads() -> list[Tensor]:
    """LPIPS v0.1's learned per-channel weights of the five VGG16 taps, [64], [128], [256], [512], [512].

    Read from the file the ``lpips`` wheel ships (``lpips/weights/v0.1/vgg.pth``, a state
    dict of tensors) with ``torch.load(weights_only=True)``; the package is not imported.
    """
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the lpips package (its wheel holds the LPIPS heads) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "weights" / "v0.1" / "vgg.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    return [state[f"lin{i}.model.1.weight"].flatten().float() for i in range(len(_STAGES))]


class PerceptualLoss(nn.Module):
    """Distance between VGG16 features of two image batches [B,3,H,W] in [-1, 1] -> scalar.

    Features are taken after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3
    and unit-normalised over channels. Per stage the squared difference is
    weighted per channel by LPIPS's learned linear head (:func:`lpips_vgg_heads`),
    summed over channels and averaged over positions; stages are summed and the
    batch averaged: LPIPS-VGG (v0.1) of each pair, averaged.

    Weights come only from ``weights_path``: a VGG16 ImageNet state dict
    (timm ``vgg16.tv_in1k`` or torchvision ``vgg16`` layout; only the
    ``features.*`` convolutions are used) saved as .safetensors, or as
    .pth/.pt (read with ``torch.load(weights_only=True)``). Nothing is ever
    downloaded. The network is frozen and always in eval mode.
    """

    def __init__(self, weights_path: str) -> None:
        super().__init__()
        if not Path(weights_path).is_file():
            raise FileNotFoundError(
                f"VGG16 weights not found at {weights_path!r}; save the ImageNet VGG16 state dict "
                "(timm 'vgg16.tv_in1k' or torchvision vgg16) there as .safetensors or .pth"
            )
        import timm  # imported on use: timm's import costs seconds

        # Built on the meta device to skip randomly initialising 138M parameters that are about to
        # be overwritten; pruning drops the classifier and everything after relu5_3.
        self.vgg = timm.create_model("vgg16", pretrained=False, device="meta")
        self.vgg.prune_intermediate_layers(_STAGES, prune_head=True)
        # .safetensors, or anything else with torch.load(weights_only=True): no code in the file runs.
        # The "features.*" keys are named alike in timm and torchvision checkpoints.
        state = read_state_dict(str(weights_path))
        features = {k: v.float() for k, v in state.items() if k.startswith("features.")}
        self.vgg.load_state_dict(features, strict=True, assign=True)
        self.vgg.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for i, head in enumerate(lpips_vgg_heads()):
            self.register_buffer(f"head{i}", head.view(1, -1, 1, 1), persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        """Always stays in eval mode, whatever ``mode`` is."""
        return super().train(False)

    def _features(self, x: Tensor) -> list[Tensor]:
        # LPIPS's scaling layer is this normalisation written for [-1, 1] inputs.
        x = ((x + 1) / 2 - self.mean) / self.std
        features = self.vgg.forward_intermediates(x, indices=_STAGES, intermediates_only=True)
        return [f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in features]

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        per_image = sum(
            ((fx - fy).pow(2) * getattr(self, f"head{i}")).sum(1).mean((1, 2))
            for i, (fx, fy) in enumerate(zip(self._features(x), self._features(y)))
        )
        return per_image.mean()
