"""Sliced Wasserstein distance pieces: exact pyramid round trip, distances, seeding, class conditioning."""
import torch

from stratagen.eval.swd import SlicedWassersteinMetric, _blur, laplacian_pyramid, sliced_wasserstein


def reconstruct(bands: list[torch.Tensor]) -> torch.Tensor:
    current = bands[-1]
    for band in reversed(bands[:-1]):
        up = torch.zeros_like(band)
        up[..., ::2, ::2] = current
        current = band + 4 * _blur(up)
    return current


def test_laplacian_pyramid_shapes_and_exact_round_trip():
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    bands = laplacian_pyramid(images, 3)
    assert [tuple(b.shape[-2:]) for b in bands] == [(32, 32), (16, 16), (8, 8)]
    assert torch.allclose(reconstruct(bands), images, atol=1e-5)
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert laplacian_pyramid(flat, 3)[0].abs().max() < 1e-5  # a flat image has no band-pass detail


def test_sliced_wasserstein_of_shifted_sets():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=generator)
    assert sliced_wasserstein(a, a[torch.randperm(500)], 16, 2, generator) < 1e-6  # order does not matter
    # shifting every point by d moves each 1-D projection by <d, u>; E|<d, u>| grows with |d|
    near = sliced_wasserstein(a, a + 0.1, 64, 2, torch.Generator().manual_seed(5))
    far = sliced_wasserstein(a, a + 1.0, 64, 2, torch.Generator().manual_seed(5))  # the same directions
    assert 0 < near < far and abs(far / near - 10) < 1e-3


def test_metric_is_seeded_class_conditional_and_sees_blur():
    generator = torch.Generator().manual_seed(1)
    real = torch.rand(40, 3, 16, 16, generator=generator) * 2 - 1
    real[20:] = real[20:] * 0.2  # class 1: low contrast
    labels = torch.arange(40) // 20
    metric = SlicedWassersteinMetric(patches_per_image=16, directions=32, repeats=2)
    same = metric.distance(real, labels, real, labels)
    assert set(same) == {"swd16", "swd8", "swd"} and same == metric.distance(real, labels, real, labels)
    swapped = metric.distance(real, 1 - labels, real, labels)
    blurred = metric.distance(_blur(real), labels, real, labels)
    assert swapped["swd"] > 2 * same["swd"] and blurred["swd16"] > 2 * same["swd16"]
