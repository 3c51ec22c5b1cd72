"""Motion-blur kernels and their application (pure torch, CPU, < 1 s each)."""

from __future__ import annotations

import pytest
import torch

from asaptrain.data.blur import (
    Degrade,
    apply_blur,
    jpeg_like,
    kernel_spread,
    random_kernels,
    sharp_test_image,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1 / mse)).mean())


@pytest.mark.parametrize("strength", [0.0, 0.1, 0.5, 1.0])
def test_kernels_sum_to_one_and_are_nonnegative(strength):
    k = random_kernels(32, strength, generator=gen())
    assert k.shape[0] == 32 and k.shape[1] == k.shape[2] and k.shape[1] % 2 == 1
    assert torch.allclose(k.sum(dim=(1, 2)), torch.ones(32), atol=1e-5)
    assert (k >= 0).all()


def test_strength_zero_is_a_delta_and_a_delta_changes_nothing():
    k = random_kernels(4, 0.0, generator=gen())
    assert k.shape == (4, 3, 3) and torch.equal(k[:, 1, 1], torch.ones(4))
    img = sharp_test_image(64, 96)[None].repeat(4, 1, 1, 1)
    for method in ("conv", "fft"):
        assert torch.allclose(apply_blur(img, k, method=method), img, atol=1e-5)


def test_larger_strength_gives_longer_kernels_on_average():
    spreads = [float(kernel_spread(random_kernels(128, s, generator=gen(1))).mean()) for s in (0.1, 0.3, 0.6, 1.0)]
    assert spreads == sorted(spreads) and spreads[0] < 1.0 < spreads[-1]


def test_blur_lowers_psnr_monotonically_in_strength_without_changing_brightness():
    img = sharp_test_image(96, 96)[None].repeat(8, 1, 1, 1)
    scores = []
    for s in (0.05, 0.25, 0.5, 0.75, 1.0):
        out = apply_blur(img, random_kernels(8, s, generator=gen(2)))
        scores.append(psnr(out, img))
        # sum-1 kernels conserve light: the mean moves only by reflect-padding border effects
        assert abs(float(out.mean() - img.mean())) < 0.01
    assert scores == sorted(scores, reverse=True), scores


def test_per_sample_strength_and_fixed_size():
    s = torch.tensor([0.0, 1.0])
    k = random_kernels(2, s, size=21, generator=gen())
    assert k.shape == (2, 21, 21)
    assert k[0, 10, 10] == 1.0 and kernel_spread(k)[1] > 1.0
    assert torch.allclose(k.sum(dim=(1, 2)), torch.ones(2), atol=1e-5)  # truncated, not lost


def test_same_seed_same_kernels_and_kernels_are_centred():
    a = random_kernels(16, 0.7, generator=gen(5))
    b = random_kernels(16, 0.7, generator=gen(5))
    assert torch.equal(a, b)
    k = a.shape[-1]
    coords = torch.arange(k, dtype=torch.float32)
    assert torch.allclose((a.sum(2) * coords).sum(1), torch.full((16,), (k - 1) / 2), atol=1e-3)


def test_conv_and_fft_agree_and_blur_is_a_convolution_not_a_correlation():
    img = torch.zeros(1, 1, 15, 15)
    img[0, 0, 7, 7] = 1.0
    ker = torch.zeros(1, 5, 5)
    ker[0, 2, 4] = 1.0  # shifts light 2 px to the right under convolution
    for method in ("conv", "fft"):
        out = apply_blur(img, ker, method=method)
        assert out[0, 0, 7, 9] == pytest.approx(1.0, abs=1e-5)
    x = sharp_test_image(40, 56)[None].repeat(3, 1, 1, 1)
    k = random_kernels(3, 0.8, size=31, generator=gen())
    assert torch.allclose(apply_blur(x, k, "conv"), apply_blur(x, k, "fft"), atol=1e-4)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        random_kernels(2, 1.5)
    with pytest.raises(ValueError, match="odd"):
        random_kernels(2, 0.5, size=4)
    with pytest.raises(ValueError, match="kernels must be"):
        apply_blur(torch.zeros(2, 3, 8, 8), torch.ones(3, 3, 3))


def test_degrade_is_off_by_default_and_each_switch_degrades():
    img = sharp_test_image(64, 64)[None]
    assert not Degrade().enabled and torch.equal(Degrade()(img), img)
    noisy = Degrade(noise_std=0.05)(img, generator=gen())
    assert 0.02 < float((noisy - img).std()) < 0.06 and noisy.min() >= 0 and noisy.max() <= 1
    errs = [float((jpeg_like(img, q) - img).abs().mean()) for q in (95, 50, 10)]
    assert errs == sorted(errs) and errs[0] < 0.02
    odd = sharp_test_image(37, 45)[None]
    assert jpeg_like(odd, 50).shape == odd.shape
