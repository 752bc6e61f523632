"""Inpainting context without leaks (`cogview.inpainting`)."""

from __future__ import annotations

import torch

from cogview.inpainting import FILL, blank_cells, context_codes, context_from_codes
from vqvae.model import VQVAE, VQVAEConfig


def _vqvae() -> VQVAE:
    torch.manual_seed(0)
    config = VQVAEConfig(channels=8, channel_mult=(1, 1, 2), codebook_size=16, codebook_dim=4,
                         kmeans_init=False)
    return VQVAE(config).eval()


def _mask(h: int = 4, w: int = 4) -> torch.Tensor:
    mask = torch.zeros(2, h, w, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True
    mask[1, 0, 3] = True
    return mask


def test_blank_cells_fills_exactly_the_pixels_of_masked_cells():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    out = blank_cells(images, _mask())
    pixels = _mask().repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand_as(images)
    assert torch.all(out[pixels] == FILL)
    assert torch.equal(out[~pixels], images[~pixels])


def test_context_codes_do_not_depend_on_masked_pixels():
    vq = _vqvae()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = _mask()
    pixels = mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand_as(images)
    other = torch.where(pixels, torch.rand_like(images) * 2 - 1, images)
    assert torch.equal(context_codes(vq, images, mask), context_codes(vq, other, mask))
    # while codes of the whole images tell the two apart next to the mask
    assert not torch.equal(vq.encode(images), vq.encode(other))


def test_context_from_codes_keeps_the_codes_that_saw_no_masked_pixel():
    vq = _vqvae()
    codes = torch.randint(0, 16, (2, 4, 4))
    mask = _mask()
    context = context_from_codes(vq, codes, mask)
    decoded = vq.decode(codes).clamp(-1, 1)
    plain = vq.encode(decoded)
    blanked = context_codes(vq, decoded, mask)
    changed = blanked != plain
    assert torch.equal(context[changed], blanked[changed])  # what the blanking changed
    assert torch.equal(context[~changed], codes[~changed])  # the rest: the sample's own codes
