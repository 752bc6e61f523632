"""How a training step runs: activation checkpointing changes memory, not results."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cogview.errors import UserError
from cogview.model import CogLM, coglm_config
from train.backends import prepare_model
from train.config import LoopConfig


def _grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = CogLM(coglm_config("tiny", 100))
    prepare_model(model, LoopConfig(checkpointing=checkpointing))
    ids = torch.randint(0, 100, (3, 20), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(20).expand(3, 20)
    loss = model(ids, pos, prefix_len=torch.tensor([5, 7, 20])).logsumexp(-1).mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    loss, grads = _grads(False)
    loss_c, grads_c = _grads(True)
    assert torch.equal(loss, loss_c)
    for name, g in grads.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-6, atol=1e-7, msg=name)


def test_step_options_on_a_model_without_them_name_the_field():
    with pytest.raises(UserError, match="^checkpointing Linear does not support it"):
        prepare_model(nn.Linear(2, 2), LoopConfig(checkpointing=True))
    with pytest.raises(UserError, match="^compile Linear has no blocks"):
        prepare_model(nn.Linear(2, 2), LoopConfig(compile=True))


@pytest.mark.parametrize(("preset", "factor"), [("f16", 16), ("f8", 8)])
def test_256px_presets_fit_the_gpu_coglm_presets(preset, factor):
    """The f16 and f8 VQVAEs downsample 16x and 8x (a 256 px image: 16x16 or 32x32 codes),
    and the base, large and xl presets fit any task's sequence at that grid with a caption of
    up to 126 tokens."""
    from train.lm import max_sequence_len
    from vqvae.model import VQVAE, vqvae_config

    torch.manual_seed(0)
    vq = VQVAE(vqvae_config(preset)).eval()
    with torch.no_grad():
        codes = vq.encode(torch.zeros(1, 3, 64, 64))  # 256 px works alike, 16x the time
    assert codes.shape == (1, 64 // factor, 64 // factor)
    grid = 256 // factor
    for name in ("base", "large", "xl"):
        config = coglm_config(name, 100)
        assert config.max_grid >= grid
        for task in ("t2i", "cap", "inp"):
            assert max_sequence_len(task, 126, grid, grid) <= config.max_seq_len, (name, task)
