from pathlib import Path

import pytest
import safetensors.torch
import torch

from stratagen.nn import PerceptualLoss

# torchvision / timm VGG16 "features" layout: conv widths, "M" = max pool.
VGG16_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_state_dict() -> dict[str, torch.Tensor]:
    """A deterministic, non-default VGG16 state dict (each conv is followed by a ReLU)."""
    generator = torch.Generator().manual_seed(0)
    state, in_channels, index = {}, 3, 0
    for layer in VGG16_LAYERS:
        if layer == "M":
            index += 1
            continue
        std = (2.0 / (9 * in_channels)) ** 0.5
        state[f"features.{index}.weight"] = torch.randn(layer, in_channels, 3, 3, generator=generator) * std
        state[f"features.{index}.bias"] = torch.randn(layer, generator=generator) * 0.01
        in_channels, index = layer, index + 2
    # Classifier entries of a full checkpoint are not used and must be ignored.
    state["classifier.6.bias"] = torch.zeros(1000)
    return state


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path, Path]:
    state = vgg16_state_dict()
    folder = tmp_path_factory.mktemp("vgg")
    safetensors.torch.save_file(state, folder / "vgg16.safetensors")
    torch.save(state, folder / "vgg16.pth")
    return state, folder / "vgg16.safetensors", folder / "vgg16.pth"


@pytest.mark.parametrize("file_index", [1, 2], ids=["safetensors", "pth"])
def test_loads_weights_from_file(saved_weights, file_index):
    state = saved_weights[0]
    loss = PerceptualLoss(str(saved_weights[file_index]))
    loaded = loss.vgg.state_dict()
    assert loaded.keys() == {k for k in state if k.startswith("features.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


@pytest.fixture(scope="module")
def perceptual(saved_weights) -> PerceptualLoss:
    return PerceptualLoss(str(saved_weights[1]))


def test_frozen_and_always_eval(perceptual):
    assert all(not p.requires_grad for p in perceptual.parameters())
    perceptual.train()
    assert not perceptual.training
    assert not any(m.training for m in perceptual.modules())


def test_loss_values_and_gradient(perceptual):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    assert perceptual(x, x).item() == 0.0

    x.requires_grad_()
    distance = perceptual(x, y)
    assert distance.ndim == 0 and distance.item() > 0
    torch.testing.assert_close(perceptual(y, x), distance.detach())
    distance.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_loss_grows_with_distortion(perceptual):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    noise = torch.randn_like(x)
    assert perceptual(x, x + 0.05 * noise) < perceptual(x, x + 0.5 * noise)


def test_missing_weights_file(tmp_path):
    path = tmp_path / "missing" / "vgg16.pth"
    with pytest.raises(FileNotFoundError, match="missing/vgg16.pth"):
        PerceptualLoss(str(path))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_equals_the_lpips_package_with_the_same_vgg(saved_weights, perceptual):
    lpips = pytest.importorskip("lpips")
    reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    # lpips slices torchvision's VGG16 features keeping their indices: features.{i} -> net.sliceK.{i}.
    state = saved_weights[0]
    slices = {0: 1, 2: 1, 5: 2, 7: 2, 10: 3, 12: 3, 14: 3, 17: 4, 19: 4, 21: 4, 24: 5, 26: 5, 28: 5}
    reference.net.load_state_dict({f"slice{k}.{i}.{p}": state[f"features.{i}.{p}"]
                                   for i, k in slices.items() for p in ("weight", "bias")})
    torch.manual_seed(0)
    x, y = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = reference(x, y).mean()
        heads = [getattr(perceptual, f"head{i}").flatten() for i in range(5)]
    assert not all(torch.equal(h, torch.ones_like(h)) for h in heads)  # learned heads, not all-ones
    torch.testing.assert_close(perceptual(x, y), expected, rtol=1e-5, atol=1e-6)
