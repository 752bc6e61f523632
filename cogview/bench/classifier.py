"""A small CNN that classifies 32 px Fashion-MNIST images; `cogview eval` uses it as a judge.

Generated fashion images are scored by asking this classifier which class they show and
comparing with the class the prompt named. It is trained on real images only
(`cogview train-classifier`), so its accuracy on the real test split is the ceiling that
generated images are measured against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cogview.checkpoint import (
    CONFIG_FILE,
    config_from_dict,
    load_checkpoint,
    load_state_strict,
    save_checkpoint,
)
from cogview.errors import UserError

CLASSIFIER_KIND = "classifier"


@dataclass(frozen=True)
class ClassifierConfig:
    num_classes: int = 10
    image_size: int = 32
    in_channels: int = 1  # RGB inputs are averaged to grey first (Fashion-MNIST is grey)
    channels: tuple[int, ...] = (16, 32, 64)  # one conv stage per entry, each halves the size
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError("num_classes must be at least 2")
        if self.image_size % (2 ** len(self.channels)):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**{len(self.channels)}"
            )


# named sizes: `tiny` trains in seconds (tests), `small` is the judge `cogview eval` uses
PRESETS: dict[str, ClassifierConfig] = {
    "tiny": ClassifierConfig(channels=(8, 16), dropout=0.0),
    "small": ClassifierConfig(),
}


def classifier_config(name: str) -> ClassifierConfig:
    """The preset called `name`; ValueError naming the choices if none."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


class Classifier(nn.Module):
    """(B, C, H, W) images in [0, 1] -> (B, num_classes) logits."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = config.in_channels
        for c in config.channels:
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = config.image_size // 2 ** len(config.channels)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(c_in * side * side, config.num_classes),
        )

    def prepare(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) or (B, H, W) in [0, 1] -> normalised input (B, in_channels, S, S)."""
        x = images.float()
        if x.dim() == 3:
            x = x[:, None]
        if x.shape[1] != self.config.in_channels:
            if self.config.in_channels != 1:
                raise ValueError(f"expected {self.config.in_channels} channels, got {x.shape[1]}")
            x = x.mean(dim=1, keepdim=True)
        s = self.config.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return (x - 0.5) / 0.5

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(self.prepare(images)))

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """(B,) predicted class indices, in batches."""
        out = [
            self(images[i : i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(model: Classifier, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Fraction of `images` (B, C, H, W) whose predicted class equals `labels` (B,)."""
    if len(images) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    pred = model.predict(images, batch_size)
    model.train(was_training)
    return float((pred == labels.to(pred.device)).float().mean())


def save_classifier(
    path: str | Path,
    model: Classifier,
    class_names: list[str],
    step: int = 0,
    extra: dict | None = None,
    training_state: dict | None = None,
) -> Path:
    """Write a classifier checkpoint folder; the class names travel with it (index = label)."""
    if len(class_names) != model.config.num_classes:
        raise ValueError(f"{len(class_names)} class names for {model.config.num_classes} classes")
    return save_checkpoint(
        path,
        kind=CLASSIFIER_KIND,
        config=model.config,
        state_dict=model.state_dict(),
        step=step,
        extra={**(extra or {}), "class_names": list(class_names)},
        training_state=training_state,
    )


def load_classifier(path: str | Path) -> tuple[Classifier, list[str]]:
    """A classifier in eval mode and its class names, from a checkpoint folder or a run."""
    ckpt = load_checkpoint(path, kind=CLASSIFIER_KIND)
    source = str(ckpt.path / CONFIG_FILE)
    config = config_from_dict(ClassifierConfig, ckpt.config, source=source)
    names = ckpt.extra.get("class_names")
    if not isinstance(names, list) or len(names) != config.num_classes:
        raise UserError(f"{source}: class_names missing or not {config.num_classes} long")
    model = Classifier(config)
    load_state_strict(model, ckpt.state_dict, source=str(ckpt.path))
    return model.eval(), [str(n) for n in names]
