"""`cogview train-classifier`: the Fashion-MNIST judge that `cogview eval` scores images with.

Trains `cogview.bench.classifier.Classifier` on the real training split of fashion shards
(`cogview data fashion`) on the shared training loop (`train.loop`: checkpoints, exact resume,
signals, metrics), reports its accuracy on the real test split and writes `OUT/step-N/`
(kind "classifier", class names in the extra JSON).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cogview.bench.classifier import (
    PRESETS,
    Classifier,
    accuracy,
    classifier_config,
    save_classifier,
)
from cogview.config import option
from cogview.errors import ConfigError, UserError
from cogview.losses import LossSums
from train.config import LoopConfig
from train.loop import run_objective

# the loop settings of `cogview train-classifier`: a 10% warmup, then cosine to 0
LOOP_DEFAULTS = LoopConfig(steps=800, batch_size=128, lr=3e-3, warmup=80, min_lr=0.0,
                           weight_decay=1e-4, betas=(0.9, 0.999), clip=0.0, precision="fp32",
                           save_every=200, eval_every=0)
TRAIN_ACCURACY_IMAGES = 10000  # training images scored for the train accuracy


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """What `cogview train-classifier` asks for besides the loop."""

    data: str = option(help="fashion shards folder (cogview data fashion)", metavar="SHARDS")
    out: str = option(help="run folder for checkpoints", metavar="DIR")
    preset: str = option("small", "classifier size: tiny or small", metavar="NAME")
    flip: bool = option(True, "random horizontal flips (garments look alike mirrored)")
    limit: int | None = option(None, "training images to load (default: all)", type=int,
                               metavar="N")
    test_limit: int | None = option(None, "test images to score (default: all)", type=int,
                                    metavar="N")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError.of("preset", f"{self.preset!r}: choose from {', '.join(PRESETS)}")
        for name in ("limit", "test_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError.of(name, "must be at least 1")


@dataclass
class ClassifierResult:
    path: Path | None
    test_accuracy: float
    train_accuracy: float
    n_train: int
    n_test: int
    seconds: float
    interrupted: str | None = None


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


@dataclass
class LabelledBatch:
    images: Tensor  # uint8 (B, 3, S, S)
    labels: Tensor  # (B,)

    def to(self, device: torch.device) -> LabelledBatch:
        return LabelledBatch(self.images.to(device), self.labels.to(device))


@dataclass
class ClassifierObjective:
    """Cross-entropy on labelled uint8 images; accuracy on the test split (and on up to
    TRAIN_ACCURACY_IMAGES training images) as its evaluation."""

    model: Classifier
    images: Tensor
    labels: Tensor
    save_fn: Callable[..., Path]
    test_images: Tensor | None = None
    test_labels: Tensor | None = None
    flip: bool = True
    task_names: tuple[str, ...] = ("ce",)

    def __post_init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def draw(self, step: int, n: int, g: torch.Generator) -> list[tuple[Tensor, int]]:
        idx = torch.randint(len(self.images), (n,), generator=g)
        x = self.images[idx]
        if self.flip:
            mirror = torch.rand(n, generator=g) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        return list(zip(x, self.labels[idx].tolist(), strict=True))

    def collate(self, samples: Sequence[tuple[Tensor, int]]) -> LabelledBatch:
        return LabelledBatch(torch.stack([x for x, _ in samples]),
                             torch.tensor([y for _, y in samples], dtype=torch.long))

    def count(self, samples: Sequence[Any]) -> tuple[int, int]:
        return len(samples), len(samples)

    def loss(self, model: nn.Module, batch: LabelledBatch) -> LossSums:
        logits = model(batch.images.float().div(255))
        total = F.cross_entropy(logits.float(), batch.labels, reduction="sum")
        n = torch.tensor([len(batch.labels)], device=total.device)
        return LossSums(total, total.detach()[None], n)

    def evaluate(self, model: nn.Module, device: torch.device, precision: str) -> dict[str, float]:
        n = min(len(self.images), TRAIN_ACCURACY_IMAGES)
        self.metrics = {"train_accuracy": _accuracy_u8(model, self.images[:n], self.labels[:n])}
        if self.test_labels is not None:
            self.metrics["test_accuracy"] = _accuracy_u8(model, self.test_images,
                                                         self.test_labels)
        return self.metrics

    def save(self, path: Path, state_dict: dict[str, Tensor], **kwargs: Any) -> Path:
        return self.save_fn(path, state_dict, metrics=self.metrics, **kwargs)


def _accuracy_u8(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    device = next(model.parameters()).device
    return accuracy(model, images.float().div(255).to(device), labels.to(device))


def train_classifier(
    cfg: ClassifierTrainConfig,
    loop: LoopConfig = LOOP_DEFAULTS,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> ClassifierResult:
    """Load the fashion shards, train, score the test split and write the checkpoint."""
    from train.data.loader import load_images

    config = classifier_config(cfg.preset)
    train = load_images(
        cfg.data, config.image_size, limit=cfg.limit, split="train", progress=progress
    )
    if len(train) == 0:
        raise ConfigError.of("data", f"{cfg.data}: the train split has no images")
    train_labels = labels_of(train.metas, f"data {cfg.data}")
    test = load_images(
        cfg.data, config.image_size, limit=cfg.test_limit, split="test", progress=progress
    )
    test_labels = labels_of(test.metas, f"data {cfg.data}") if len(test) else None
    n_classes = int(train_labels.max()) + 1
    if n_classes != config.num_classes:
        config = type(config)(**{**asdict(config), "num_classes": max(n_classes, 2)})
    names = class_names_of(cfg.data, train.metas + test.metas, config.num_classes)

    torch.manual_seed(loop.seed)
    model = Classifier(config)
    info = {"n_train": len(train), "n_test": len(test), "train_args": {**asdict(cfg),
                                                                        **asdict(loop)}}

    def save_fn(path, state_dict, *, step, training_state, copy, ema, metrics):
        saved = Classifier(config)
        saved.load_state_dict(state_dict)
        return save_classifier(path, saved, names, step=step, extra={**info, **metrics},
                               training_state=training_state)

    objective = ClassifierObjective(model=model, images=train.images, labels=train_labels,
                                    save_fn=save_fn, test_images=test.images,
                                    test_labels=test_labels, flip=cfg.flip)
    result = run_objective(objective, loop, cfg.out, resume=resume, progress=progress,
                           on_step=on_step)
    metrics = result.metrics
    return ClassifierResult(
        path=result.checkpoint,
        test_accuracy=metrics.get("test_accuracy", math.nan),
        train_accuracy=metrics.get("train_accuracy", math.nan),
        n_train=len(train),
        n_test=len(test),
        seconds=result.seconds,
        interrupted=result.interrupted,
    )
