"""`cogview train-classifier`: the Fashion-MNIST judge that `cogview eval` scores images with.

Trains `cogview.bench.classifier.Classifier` on the real training split of fashion shards
(`cogview data fashion`), reports its accuracy on the real test split and writes
`OUT/step-N/` (kind "classifier", class names in the extra JSON).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cogview.bench.classifier import PRESETS, Classifier, accuracy, save_classifier
from cogview.checkpoint import step_dir_name
from cogview.errors import UserError


@dataclass(frozen=True)
class ClassifierTrainConfig:
    data: str
    out: str
    preset: str = "small"
    steps: int = 800
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1  # fraction of the steps with a linear warm-up, then cosine to 0
    flip: bool = True  # random horizontal flips (garments look alike mirrored)
    limit: int | None = None  # training images to load (default: all)
    test_limit: int | None = None
    seed: int = 0


@dataclass
class ClassifierResult:
    path: Path
    test_accuracy: float
    train_accuracy: float
    n_train: int
    n_test: int
    seconds: float


def labels_of(metas: list[dict[str, Any]], source: str) -> Tensor:
    """(N,) class labels from the samples' attribute JSON (`{"label": int, ...}`)."""
    try:
        return torch.tensor([int(m["label"]) for m in metas], dtype=torch.long)
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{source}: samples carry no integer 'label' in their .json (make the data with "
            "`cogview data fashion`)"
        ) from None


def class_names_of(data: str, metas: list[dict[str, Any]], n_classes: int) -> list[str]:
    """Class names: the data set's info.json "classes", else each label's "class" field."""
    from train.data.shards import read_info

    folder = Path(data) if Path(data).is_dir() else Path(data).parent
    info = read_info(folder) or {}
    names = info.get("classes")
    if isinstance(names, list) and len(names) >= n_classes:
        return [str(n) for n in names[:n_classes]]
    seen = {int(m["label"]): str(m.get("class", m["label"])) for m in metas}
    return [seen.get(i, str(i)) for i in range(n_classes)]


def fit_classifier(
    model: Classifier,
    images: Tensor,
    labels: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 1e-4,
    warmup: float = 0.1,
    flip: bool = True,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train `model` on uint8 images (N, 3, S, S) and labels (N,); the loss of every step."""
    if len(images) == 0:
        raise UserError("no training images")
    g = generator or torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n_warm = max(1, int(warmup * steps))

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, steps - n_warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        x = images[idx].float().div(255)  # (B, 3, S, S) in [0, 1]
        if flip:
            mirror = torch.rand(batch_size, generator=g) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    model.eval()
    return losses


def _accuracy_u8(model: Classifier, images: Tensor, labels: Tensor) -> float:
    return accuracy(model, images.float().div(255), labels)


def train_classifier(cfg: ClassifierTrainConfig, *, progress: bool = True) -> ClassifierResult:
    """Load the fashion shards, train, score the test split and write the checkpoint."""
    from tqdm import tqdm

    from train.data.loader import load_images

    if cfg.preset not in PRESETS:
        raise UserError(f"--preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
    if cfg.steps < 1 or cfg.batch_size < 1 or not cfg.lr > 0:
        raise UserError("--steps, --batch-size and --lr must be positive")
    config = PRESETS[cfg.preset]
    t0 = time.perf_counter()
    train = load_images(
        cfg.data, config.image_size, limit=cfg.limit, split="train", progress=progress
    )
    if len(train) == 0:
        raise UserError(f"--data {cfg.data}: the train split has no images")
    train_labels = labels_of(train.metas, f"--data {cfg.data}")
    test = load_images(
        cfg.data, config.image_size, limit=cfg.test_limit, split="test", progress=progress
    )
    test_labels = labels_of(test.metas, f"--data {cfg.data}") if len(test) else None
    n_classes = int(train_labels.max()) + 1
    if n_classes != config.num_classes:
        config = type(config)(**{**asdict(config), "num_classes": max(n_classes, 2)})
    names = class_names_of(cfg.data, train.metas + test.metas, config.num_classes)

    torch.manual_seed(cfg.seed)
    model = Classifier(config)
    bar = tqdm(total=cfg.steps, desc="train-classifier", unit="step", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)  # fmt: skip

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    with bar:
        fit_classifier(
            model, train.images, train_labels, steps=cfg.steps, batch_size=cfg.batch_size,
            lr=cfg.lr, weight_decay=cfg.weight_decay, warmup=cfg.warmup, flip=cfg.flip,
            generator=torch.Generator().manual_seed(cfg.seed), on_step=on_step,
        )  # fmt: skip
    n_check = min(len(train), 10000)
    train_acc = _accuracy_u8(model, train.images[:n_check], train_labels[:n_check])
    test_acc = (
        _accuracy_u8(model, test.images, test_labels) if test_labels is not None else math.nan
    )
    path = save_classifier(
        Path(cfg.out) / step_dir_name(cfg.steps),
        model,
        names,
        step=cfg.steps,
        extra={
            "test_accuracy": test_acc,
            "train_accuracy": train_acc,
            "n_train": len(train),
            "n_test": len(test),
            "train_args": asdict(cfg),
        },
    )
    return ClassifierResult(
        path=path,
        test_accuracy=test_acc,
        train_accuracy=train_acc,
        n_train=len(train),
        n_test=len(test),
        seconds=time.perf_counter() - t0,
    )
