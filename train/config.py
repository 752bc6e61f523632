"""What a training run is, whatever the model: the loop's settings, the learning-rate schedule
and the precision.

Every trainer shares `LoopConfig`; each keeps its own defaults as a `LoopConfig` instance
(`train.lm.LOOP_DEFAULTS`, `train.vqvae.LOOP_DEFAULTS`, ...), and the command line builds its
flags from the fields below, showing the trainer's defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from cogview.config import option
from cogview.devices import cpu_has_bf16
from cogview.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# fields that a resumed run may change; any other change would make it another run
RESUME_MAY_CHANGE = ("steps", "save_every", "eval_every", "deepspeed", "compile",
                     "checkpointing")


@dataclass(frozen=True)
class LoopConfig:
    """How to train, independent of the model. `batch_size` is global (all processes)."""

    steps: int = option(2000, "optimizer steps")
    batch_size: int = option(
        64, "global batch in samples, over all processes (with --deepspeed also taken from "
        "train_batch_size of its config)")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float = option(1e-3, "peak learning rate")
    warmup: int = option(100, "linear warmup steps")
    min_lr: float = option(1e-4, "learning rate at the end of the cosine decay")
    weight_decay: float = option(0.1, "AdamW weight decay of matrices (not norms, biases)")
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = option(1.0, "max global gradient norm; 0 = no clipping")
    ema: float | None = option(
        None, "keep an EMA of the weights with this decay (e.g. 0.999) and export it",
        type=float, metavar="DECAY")
    precision: str = option(
        "auto", "auto: bf16 autocast on CUDA or a CPU with AVX-512 BF16/AMX, else fp32; fp16 "
        "only with DeepSpeed on CUDA", choices=PRECISIONS)
    save_every: int = option(500, "checkpoint interval in steps")
    eval_every: int = option(250, "held-out evaluation interval; 0 = at the end only")
    seed: int = option(0, "seed of the initial weights and of the batches")
    deepspeed: str | None = option(
        None, "train data-parallel with DeepSpeed using this config (e.g. ds_config.json)",
        type=str, metavar="DS_CONFIG")
    compile: bool = option(
        False, "torch.compile the transformer blocks (pays on a GPU; on a CPU the eager step "
        "was as fast, see benchmarks/README.md)")
    checkpointing: bool = option(
        False, "activation checkpointing: recompute each block's activations in the backward "
        "pass (less memory for the large presets, about a third more compute)")

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
        check(self.clip >= 0, "clip", f"must not be negative, got {self.clip}")
        check(self.ema is None or 0 < self.ema < 1, "ema", f"must lie in (0, 1), got {self.ema}")
        check(self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")

    def resolved(self, device: torch.device) -> LoopConfig:
        """This config with `precision` made concrete for `device` (ConfigError when it cannot
        run there)."""
        cuda = device.type == "cuda"
        if self.precision == "fp16" and not (self.deepspeed and cuda):
            detail = "fp16 needs DeepSpeed on a CUDA GPU (loss scaling)"
            raise ConfigError(f"precision {detail}", field="precision", detail=detail)
        if self.deepspeed and not cuda:
            if self.precision == "bf16":
                detail = "bf16: DeepSpeed on a CPU trains in fp32; leave it out"
                raise ConfigError(f"precision {detail}", field="precision", detail=detail)
            return replace(self, precision="fp32")
        return replace(self, precision=resolve_precision(self.precision, device))


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
