"""Reconstruction and codebook metrics. Images are (B, 3, H, W) floats in [0, 1]."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]."""
    return (images.float() + 1.0) / 2.0


def quantize_uint8(images: Tensor) -> Tensor:
    """Round [0, 1] images to the 256 levels a saved PNG holds, so metrics see what users see."""
    return (images.clamp(0.0, 1.0) * 255.0).round() / 255.0


def mse_per_image(a: Tensor, b: Tensor) -> Tensor:
    """(B, C, H, W) x2 -> (B,) mean squared error."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def psnr_from_mse(mse: Tensor, max_db: float = 100.0) -> Tensor:
    """PSNR in dB for [0, 1] images; a perfect match is reported as `max_db`, not infinity."""
    floor = 10.0 ** (-max_db / 10.0)
    return -10.0 * torch.log10(mse.clamp(min=floor))


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """(B,) PSNR in dB of each image pair."""
    return psnr_from_mse(mse_per_image(a, b))


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    w = torch.outer(g, g)  # (size, size)
    return w.expand(channels, 1, size, size).contiguous()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """(B,) structural similarity with a gaussian window (Wang et al. 2004), averaged over
    channels and the positions where the window fits; matches skimage's
    `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1)`."""
    a, b = a.double(), b.double()
    c = a.shape[1]
    window = min(window, a.shape[-1], a.shape[-2])
    window -= 1 - window % 2  # odd, so the window has a centre
    w = _gaussian_window(window, sigma, c, a.device)
    c1, c2 = 0.01**2, 0.03**2

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, w, groups=c)  # (B, C, H - window + 1, W - window + 1)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    s = num / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).float()


def code_histogram(codes: Tensor, codebook_size: int) -> Tensor:
    """Any-shape int codes -> (K,) counts."""
    return torch.bincount(codes.flatten().long(), minlength=codebook_size)


def usage_and_perplexity(counts: Tensor) -> tuple[float, float]:
    """(K,) code counts -> (fraction of codes used at least once, perplexity exp(entropy)).
    Perplexity equals K when every code is used equally often."""
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    p = counts.double() / total
    nz = p[p > 0]
    entropy = -(nz * nz.log()).sum()
    return float((counts > 0).double().mean()), float(entropy.exp())
