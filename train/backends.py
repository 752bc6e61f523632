"""How a step runs: the model and its objective's loss as one module, AdamW, and the backend
that runs forward, backward and the update: `LocalBackend` (one process, plain PyTorch) here,
`train.distributed.DeepSpeedBackend` for data parallelism."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from cogview.checkpoint import CheckpointError
from cogview.errors import ConfigError
from cogview.losses import LossSums
from train.config import LoopConfig

DEEPSPEED_DIR = "deepspeed"  # inside a step folder: the DeepSpeed engine checkpoint


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: nn.Module, cfg: LoopConfig) -> None:
    """Set up `model` for training as `cfg` asks, in place (its state dict keeps its keys):
    activation checkpointing (`cfg.checkpointing`, a model with a `checkpointing` switch) and
    torch.compile of each transformer block (`cfg.compile`, a model with `blocks`)."""
    if cfg.checkpointing:
        if not hasattr(model, "checkpointing"):
            raise ConfigError.of("checkpointing", f"{type(model).__name__} does not support it")
        model.checkpointing = True
    if cfg.compile:
        blocks = getattr(model, "blocks", None)
        if blocks is None:
            raise ConfigError.of("compile", f"{type(model).__name__} has no blocks to compile")
        for block in blocks:
            block.compile()


class LossModule(nn.Module):
    """model + objective loss as one module, so that DeepSpeed's engine runs the forward pass.

    Returns (summed loss, per-task sums, per-task counts, a term that is a mean already) of
    one micro-batch (`LossSums`; the last is 0 when the objective has none).
    """

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module, Any], LossSums]) -> None:
        super().__init__()
        self.model = model
        self._loss = loss

    def forward(self, batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        s = self._loss(self.model, batch)
        extra = s.extra if s.extra is not None else torch.zeros((), device=s.total.device)
        return s.total, s.task_sums, s.task_counts, extra


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (linear weights, embeddings), none on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() lists a tied weight once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: LoopConfig) -> torch.optim.Optimizer:
    device = next(model.parameters()).device
    # the fused kernel runs AdamW in one pass over each tensor; the per-op version was ~40x
    # slower on this CPU for a 5M-parameter model (many small elementwise kernels)
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=fused
    )


class Backend(Protocol):
    rank: int
    world: int
    device: torch.device
    precision: str
    multi_backward: bool  # may a micro-batch run as several backward passes?
    module: LossModule  # the unwrapped module: .model is the model being trained

    def forward(self, batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...

    def backward(self, loss: Tensor, boundary: bool) -> None:
        """Backpropagate a micro-batch's share of the global mean loss."""
        ...

    def step(self, lr: float) -> float:
        """Clip, update, zero the gradients; return the gradient norm before clipping."""
        ...

    def all_reduce(self, t: Tensor) -> Tensor: ...

    def barrier(self) -> None: ...

    def optimizer_state(self) -> dict[str, Any] | None: ...

    def save_engine(self, path: Path) -> Path | None:
        """Collective: write engine state to `path` (DeepSpeed); None when there is none."""
        ...

    def load(self, step_dir: Path, training_state: dict[str, Any]) -> None: ...


class LocalBackend:
    """One process (CPU or one GPU), plain PyTorch."""

    rank = 0
    world = 1
    multi_backward = True

    def __init__(self, module: LossModule, cfg: LoopConfig, device: torch.device) -> None:
        self.device = device
        self.precision = cfg.precision
        self.module = module.to(device)
        self.cfg = cfg
        self.optimizer = make_optimizer(module.model, cfg)

    def forward(self, batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with autocast(self.device, self.precision):
            return self.module(batch)

    def backward(self, loss: Tensor, boundary: bool) -> None:
        loss.backward()

    def step(self, lr: float) -> float:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.cfg.clip if self.cfg.clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return norm  # the loop stops before any weight sees it
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def all_reduce(self, t: Tensor) -> Tensor:
        return t

    def barrier(self) -> None:
        pass

    def optimizer_state(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def save_engine(self, path: Path) -> None:
        return None

    def load(self, step_dir: Path, training_state: dict[str, Any]) -> None:
        if "optimizer" not in training_state:
            raise CheckpointError(f"{step_dir}: no optimizer state (a DeepSpeed run? add "
                                  "--deepspeed to resume it)")
        self.optimizer.load_state_dict(training_state["optimizer"])
