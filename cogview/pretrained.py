"""Loading trained models from checkpoint folders, and the hooks for the models that ship.

Each loader rebuilds the model from the folder alone (its config.json) and loads the weights
strictly; the model comes back in eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cogview.checkpoint import (
    CONFIG_FILE,
    config_from_dict,
    load_checkpoint,
    load_state_strict,
    save_checkpoint,
)
from cogview.defaults import DEFAULTS, model_path_or_default
from cogview.images import from_tensor, to_tensor
from vqvae.model import VQVAE, VQVAEConfig, fingerprint

VQVAE_KIND = "vqvae"

# Where the VQVAE that ships inside the package lives; used when a command gets no --vqvae.
DEFAULT_VQVAE: Path = DEFAULTS[VQVAE_KIND]


def resolve_vqvae_path(path: str | Path | None) -> Path:
    """The folder given with --vqvae, or the shipped default; a UserError when neither exists."""
    return model_path_or_default(path, VQVAE_KIND)


def load_vqvae(path: str | Path, device: str | torch.device = "cpu") -> VQVAE:
    """A VQVAE in eval mode from a checkpoint folder (or a training run: its newest step)."""
    ckpt = load_checkpoint(path, kind=VQVAE_KIND)
    config = config_from_dict(VQVAEConfig, ckpt.config, source=str(ckpt.path / CONFIG_FILE))
    model = VQVAE(config)
    load_state_strict(model, ckpt.state_dict, source=str(ckpt.path))
    # a codebook that training never initialised would otherwise be set by k-means from the
    # first batch it encodes, even in eval mode: a loaded VQVAE is a fixed function
    for name, buffer in model.named_buffers():
        if name.endswith("initted"):
            buffer.fill_(True)
    return model.to(device).eval()


def save_vqvae(
    path: str | Path,
    model: VQVAE,
    step: int = 0,
    extra: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write `model` as a checkpoint folder; its fingerprint travels in the extra JSON."""
    extra = {**(extra or {}), "fingerprint": fingerprint(model)}
    return save_checkpoint(
        path,
        kind=VQVAE_KIND,
        config=model.config,
        state_dict=model.state_dict(),
        step=step,
        extra=extra,
        training_state=training_state,
    )


@torch.inference_mode()
def encode_images(vqvae: Any, images: Tensor, batch_size: int = 64) -> Tensor:
    """uint8 images (N, 3, S, S) -> codes (N, h, w) on the CPU."""
    device = next(vqvae.parameters()).device
    out = [
        vqvae.encode(to_tensor(images[i : i + batch_size]).to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, 0, 0, dtype=torch.long)


@torch.inference_mode()
def decode_codes(vqvae: Any, codes: Tensor, batch_size: int = 64) -> np.ndarray:
    """Codes (N, h, w) -> uint8 images (N, H, W, 3)."""
    device = next(vqvae.parameters()).device
    out = [
        from_tensor(vqvae.decode(codes[i : i + batch_size].to(device)))
        for i in range(0, len(codes), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
