"""Inpainting context without leaks: codes of the image with the masked cells blanked.

A VQVAE code depends on pixels beyond its own cell (its encoder's receptive field), so the
codes of kept cells next to a mask, taken from the whole image, describe part of what the
mask erased. A model that sees them learns to copy the erased object from its neighbours,
and an edit ("a yellow triangle here" over a blue square) comes out as a yellow square. The
context is therefore encoded from the image with every masked cell filled with `FILL`, in
training (from the codes of the token shards, decoded to pixels first) and in sampling alike.

No I/O: callers pass the VQVAE (`vqvae.VQVAE`) and tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

FILL = -1.0  # black in the VQVAE's input range [-1, 1]: the shapes background, and a neutral hole


def blank_cells(images: Tensor, cell_mask: Tensor, fill: float = FILL) -> Tensor:
    """Images (B, 3, H, W) in [-1, 1] with the pixels of masked cells (B, h, w) set to `fill`;
    the grid divides the image evenly (H = h * f)."""
    b, _, height, width = images.shape
    h, w = cell_mask.shape[-2:]
    if height % h or width % w:
        raise ValueError(f"a {h}x{w} cell grid does not divide {height}x{width} pixels")
    pixels = cell_mask.to(images.device, torch.bool).reshape(b, 1, h, w)
    pixels = pixels.repeat_interleave(height // h, 2).repeat_interleave(width // w, 3)
    return images.masked_fill(pixels, fill)


@torch.inference_mode()
def context_codes(vqvae, images: Tensor, cell_mask: Tensor) -> Tensor:
    """Codes (B, h, w) of images (B, 3, H, W) in [-1, 1] with the masked cells (B, h, w)
    blanked: what the kept cells of an inpainting prefix show."""
    return vqvae.encode(blank_cells(images, cell_mask))


@torch.inference_mode()
def context_from_codes(vqvae, codes: Tensor, cell_mask: Tensor) -> Tensor:
    """`context_codes` of the image that codes (B, h, w) stand for: the training form, where
    the token shards hold codes and no pixels. The codes are decoded and encoded again with
    and without the blanking; a cell whose code the blanking changed saw masked pixels and
    shows the blanked code, every other cell keeps its own code (so the decode-encode round
    trip adds no noise of its own)."""
    device = next(vqvae.parameters()).device
    images = vqvae.decode(codes.to(device)).clamp(-1, 1)
    both = vqvae.encode(torch.cat([images, blank_cells(images, cell_mask)]))
    plain, blanked = both.to(codes.device).chunk(2)
    return torch.where(blanked == plain, codes, blanked)


@torch.inference_mode()
def blank_codes(vqvae, size: int) -> Tensor:
    """Codes (h, w) of an empty image of `size` px (every pixel `FILL`)."""
    device = next(vqvae.parameters()).device
    return vqvae.encode(torch.full((1, 3, size, size), FILL, device=device))[0]
