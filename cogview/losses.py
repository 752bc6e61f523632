"""Losses for CogLM: cross-entropy and PolyLoss (poly-1) over target positions only.

Training wants a mean over every target token of a global batch that may be split over
micro-batches and processes, and a log of the loss per task. So the functions here return
sums and counts (`LossSums`); the caller divides by the number of targets of the whole batch.

Logits are computed only where a label is a target (`model.hidden`, then `model.head` on those
rows): with a prefix of text and an image, most positions carry no loss, and the output head
is the widest matmul of a small model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cogview.masks import IGNORE, TASKS, TaskBatch

LOSS_KINDS = ("ce", "poly1")


@dataclass(frozen=True)
class LossConfig:
    kind: str = "ce"  # "ce" or "poly1"
    poly_eps: float = 1.0  # poly-1: CE + eps * (1 - p_target); eps = 0 is plain CE
    contrastive_weight: float = 0.0  # InfoNCE of the batch's pairs (`cogview.contrastive`)

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss {self.kind!r}; choose from {', '.join(LOSS_KINDS)}")


@dataclass
class LossSums:
    """Token losses of one micro-batch, summed; divide by a target count for a mean."""

    total: Tensor  # () sum of token losses, with grad
    task_sums: Tensor  # (n_tasks,) float32 sums per task, detached
    task_counts: Tensor  # (n_tasks,) int64 number of target tokens per task
    # a term that is a mean already (the contrastive loss times this micro-batch's share of
    # the global batch's pairs), added to the mean over targets as it is; with grad
    extra: Tensor | None = None
    contrastive: tuple[Tensor, Tensor] | None = None  # InfoNCE and its accuracy, detached

    @property
    def count(self) -> int:
        return int(self.task_counts.sum())

    def mean(self) -> Tensor:
        return self.total / max(self.count, 1)


def token_losses(logits: Tensor, targets: Tensor, config: LossConfig = LossConfig()) -> Tensor:
    """Per-token loss (N,) from logits (N, V) and targets (N,), computed in float32."""
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    if config.kind == "ce" or config.poly_eps == 0:
        return ce
    # poly-1 (Leng et al. 2022): the first polynomial term of CE, weighted by eps
    return ce + config.poly_eps * (1.0 - torch.exp(-ce))


def _masked_mean(logits: Tensor, labels: Tensor, config: LossConfig) -> Tensor:
    """logits (..., V), labels (...) with IGNORE -> mean over non-IGNORE positions."""
    keep = labels != IGNORE
    losses = token_losses(logits[keep], labels[keep], config)
    return losses.sum() / keep.sum().clamp(min=1)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over positions whose label is not IGNORE."""
    return _masked_mean(logits, labels, LossConfig("ce"))


def poly1_loss(logits: Tensor, labels: Tensor, eps: float = 1.0) -> Tensor:
    """Mean PolyLoss (poly-1: CE + eps * (1 - p_target)) over positions not IGNORE."""
    return _masked_mean(logits, labels, LossConfig("poly1", eps))


def lm_loss(
    model: nn.Module,
    batch: TaskBatch,
    config: LossConfig = LossConfig(),
    n_tasks: int = len(TASKS),
) -> LossSums:
    """Run `model` (a CogLM) on `batch` and sum its loss over the targets, per task too; with
    a `contrastive_weight` and a batch that has pairs, the weighted contrastive loss too."""
    h = model.hidden(**batch.model_inputs())  # (B, T, dim)
    target = batch.labels != IGNORE  # (B, T)
    logits = model.head(h[target])  # (N, vocab), N = number of targets
    losses = token_losses(logits, batch.labels[target], config)  # (N,)
    task = batch.task[:, None].expand_as(batch.labels)[target]  # (N,) task of each target
    sums = torch.zeros(n_tasks, device=losses.device).index_add_(0, task, losses.detach())
    counts = torch.bincount(task, minlength=n_tasks)
    out = LossSums(total=losses.sum(), task_sums=sums, task_counts=counts)
    if batch.pairs is not None and config.contrastive_weight > 0:
        from cogview.contrastive import contrastive_loss

        con, accuracy = contrastive_loss(model, h, batch.pairs)
        out.extra = config.contrastive_weight * batch.pairs.share * con
        out.contrastive = (con.detach(), accuracy)
    return out
