"""What a training run is, whatever the model: the loop's settings, the learning-rate schedule
and the precision."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cogview.devices import cpu_has_bf16
from cogview.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class LoopConfig:
    """How to train, independent of the model. `batch_size` is global (all processes)."""

    steps: int = 2000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    warmup: int = 100
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0  # max global gradient norm; 0 = no clipping
    ema: float | None = None  # EMA decay of the exported weights; None = no EMA
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (DeepSpeed on CUDA only)
    save_every: int = 500
    eval_every: int = 250  # 0 = only at the end
    seed: int = 0
    deepspeed: str | None = None  # path of ds_config.json; None = one process, plain PyTorch

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, detail: str) -> None:
            if not ok:
                raise ConfigError(f"{name} {detail}", field=name, detail=detail)

        for name in ("steps", "batch_size", "grad_accum", "save_every"):
            check(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("warmup", "eval_every"):
            check(getattr(self, name) >= 0, name, "must not be negative")
        check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        check(0 <= self.min_lr <= self.lr, "min_lr", f"must lie between 0 and lr ({self.lr})")
        check(self.ema is None or 0 < self.ema < 1, "ema", f"must lie in (0, 1), got {self.ema}")
        check(self.precision in PRECISIONS[1:], "precision",
              f"must be one of {', '.join(PRECISIONS)}")


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to min_lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA with bf16 or on a CPU with bf16 instructions, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"
