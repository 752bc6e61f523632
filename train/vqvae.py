"""Training and evaluation of the VQVAE image tokenizer, on the shared training loop.

Images live in memory as uint8 tensors, one set per image size; every step draws one batch at
one size (sizes take turns, larger sizes fewer images: the same pixel count) from the loop's
seeded generator. The loop (`train.loop`) brings the optimizer, schedule, signals, metrics,
checkpoints and exact resume; torch's global RNG, which the codebook's k-means init and
dead-code replacement draw from, is in every checkpoint, so a resumed run ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from cogview.checkpoint import read_meta, step_dirs
from cogview.config import option
from cogview.errors import ConfigError
from cogview.losses import LossSums
from cogview.pretrained import save_vqvae
from train.config import LoopConfig
from train.loop import TrainResult, check_unchanged, run_objective
from vqvae.metrics import (
    code_histogram,
    mse_per_image,
    psnr_from_mse,
    quantize_uint8,
    ssim,
    to_unit,
    usage_and_perplexity,
)
from vqvae.model import VQVAE, VQVAEConfig

LOSSES = ("mse", "l1")
# the loop settings of `cogview train-vqvae`: min_lr is 2% of lr; bf16 autocast (where the CPU
# has it) matched fp32 PSNR on shapes (36.2 vs 36.5 dB at 500 steps) at 1.6x the speed
LOOP_DEFAULTS = LoopConfig(steps=4000, batch_size=64, lr=2e-3, warmup=100, min_lr=4e-5,
                           weight_decay=0.0, betas=(0.9, 0.99), clip=1.0, save_every=500,
                           eval_every=500)
# fields of VQVAETrainConfig that a resumed run may change
RESUME_MAY_CHANGE = ("eval_images",)


def image_sizes(text: str) -> tuple[int, ...]:
    """'32,64' -> (32, 64)."""
    sizes = tuple(int(s) for s in text.split(",") if s.strip())
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"expected positive sizes like 32,64, got {text!r}")
    return sizes


@dataclass(frozen=True)
class VQVAETrainConfig:
    """What VQVAE training asks for besides the loop (`LoopConfig`, whose `batch_size` is the
    images of a step at the smallest size)."""

    sizes: tuple[int, ...] = option((32, 64), "image sizes to train on, taking turns",
                                    type=image_sizes, metavar="S,S")
    # PSNR is a function of the MSE; on shapes (500 steps) "l1" reached 23.0 dB where "mse"
    # reached 36.2 dB held-out
    loss: str = option("mse", "reconstruction loss", choices=LOSSES)
    flip: bool = option(True, "random horizontal flips (reconstruction does not care about "
                        "left and right)")
    eval_images: int = option(512, "held-out images per size at each evaluation", metavar="N")

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError.of("loss", f"must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not self.sizes or any(s < 1 for s in self.sizes):
            raise ConfigError.of("sizes", f"must be positive, got {self.sizes}")
        if self.eval_images < 1:
            raise ConfigError.of("eval_images", f"must be at least 1, got {self.eval_images}")


def batch_size_at(batch_size: int, size: int, sizes: Sequence[int]) -> int:
    """Images of a step at `size`: `batch_size` at the smallest size, the same pixels above."""
    return max(1, round(batch_size * (min(sizes) / size) ** 2))


@dataclass
class VQVAEEval:
    size: int
    images: int
    psnr: float  # from the mean squared error over the whole set (dB)
    psnr_mean: float  # mean of per-image PSNR (dB)
    ssim: float
    usage: float  # fraction of the codebook used at least once
    perplexity: float
    counts: Tensor | None = field(default=None, repr=False)  # (K,) uses of each code

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "counts"}


def to_model_range(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


@torch.no_grad()
def evaluate_vqvae(
    model: VQVAE, images: Tensor, batch_size: int = 256, progress: bool = False
) -> VQVAEEval:
    """Reconstruct uint8 images (N, 3, s, s) and measure them as saved PNGs would be."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sq, per_image_psnr, ssims = [], [], []
    counts = torch.zeros(model.codebook_size, dtype=torch.long)
    try:
        for i in tqdm(range(0, len(images), batch_size), disable=not progress, file=sys.stderr,
                      desc=f"eval {images.shape[-1]}px"):
            x = to_model_range(images[i : i + batch_size])
            codes = model.encode(x.to(device))
            recon = quantize_uint8(to_unit(model.decode(codes).cpu()))
            codes = codes.cpu()
            target = to_unit(x)
            mse = mse_per_image(recon, target)
            sq.append(mse)
            per_image_psnr.append(psnr_from_mse(mse))
            ssims.append(ssim(recon, target))
            counts += code_histogram(codes, model.codebook_size)
    finally:
        model.train(was_training)
    mse = torch.cat(sq)
    usage, perplexity = usage_and_perplexity(counts)
    return VQVAEEval(
        size=int(images.shape[-1]),
        images=len(images),
        psnr=float(psnr_from_mse(mse.mean())),
        psnr_mean=float(torch.cat(per_image_psnr).mean()),
        ssim=float(torch.cat(ssims).mean()),
        usage=usage,
        perplexity=perplexity,
        counts=counts,
    )


def load_image_sets(data: str | Path, sizes: tuple[int, ...], split: str,
                    limit: int | None = None) -> dict[int, Tensor]:
    """uint8 (N, 3, s, s) images of one split of a shard folder, for each size."""
    from train.data.loader import load_images

    return {size: load_images(str(data), size, limit=limit, split=split).images
            for size in sizes}


@dataclass
class VQVAETrainResult(TrainResult):
    evals: list[VQVAEEval] = field(default_factory=list)  # the last held-out evaluation


@dataclass
class VQVAEObjective:
    """Reconstruction batches of uint8 images (N, 3, s, s) keyed by size s; `test` (the same
    layout, or None) gives the held-out PSNR, SSIM and codebook usage."""

    model: VQVAE
    run: VQVAETrainConfig
    train: dict[int, Tensor]
    save_fn: Callable[..., Path]
    test: dict[int, Tensor] | None = None
    task_names: tuple[str, ...] = ()  # one loss group per size: "32px", ...

    def __post_init__(self) -> None:
        self.task_names = tuple(f"{s}px" for s in self.run.sizes)
        self.evals: list[VQVAEEval] = []
        self.eval_step = -1
        self.step = 0
        self._recent: deque[Tensor] = deque(maxlen=50)  # code histograms of recent batches
        self._psnr = 0.0

    def draw(self, step: int, n: int, g: torch.Generator) -> list[Tensor]:
        sizes = self.run.sizes
        size = sizes[step % len(sizes)]
        images = self.train[size]
        bs = batch_size_at(n, size, sizes)
        x = images[torch.randint(len(images), (bs,), generator=g)]
        if self.run.flip:
            flip = torch.rand(bs, generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        self.step = step + 1
        return list(x)

    def collate(self, samples: Sequence[Tensor]) -> Tensor:
        return torch.stack(list(samples))

    def count(self, samples: Sequence[Tensor]) -> tuple[int, int]:
        cells = (samples[0].shape[-1] // self.model.factor) ** 2 if samples else 0
        return len(samples) * cells, len(samples)  # (codes, images)

    def loss(self, model: nn.Module, batch: Tensor) -> LossSums:
        x = to_model_range(batch)
        out = model(x)
        recon = out.recon.float()
        mse = F.mse_loss(recon, x)
        rec = mse if self.run.loss == "mse" else F.l1_loss(recon, x)
        mean = rec + out.commit_loss.float()
        n, group = len(x), self.run.sizes.index(x.shape[-1])
        sums = torch.zeros(len(self.task_names), device=x.device)
        counts = torch.zeros(len(self.task_names), dtype=torch.long, device=x.device)
        sums[group], counts[group] = mean.detach() * n, n
        self._recent.append(code_histogram(out.codes.cpu(), model.codebook_size))
        self._psnr = float(psnr_from_mse(mse.detach() / 4))  # mse of [-1, 1] images is 4x
        return LossSums(mean * n, sums, counts)

    def step_metrics(self) -> dict[str, float]:
        usage, _ = usage_and_perplexity(torch.stack(list(self._recent)).sum(0))
        return {"psnr": self._psnr, "usage": usage}

    def evaluate(self, model: nn.Module, device: torch.device, precision: str) -> dict[str, float]:
        """Held-out PSNR, SSIM and codebook usage per size (reconstructions as saved PNGs)."""
        if not self.test:
            return {}
        self.evals = [
            evaluate_vqvae(model, self.test[s][: self.run.eval_images])
            for s in self.run.sizes if s in self.test and len(self.test[s])
        ]
        self.eval_step = self.step
        line = "  ".join(f"{e.size}px psnr {e.psnr:.2f} ssim {e.ssim:.3f} usage {e.usage:.0%}"
                         for e in self.evals)
        tqdm.write(f"step {self.step}: held-out {line}", file=sys.stderr)
        return {f"eval_{e.size}px_{k}": v for e in self.evals for k, v in e.as_dict().items()
                if k not in ("size", "images")}

    def save(self, path: Path, state_dict: dict[str, Tensor], *, step: int, **kwargs: Any) -> Path:
        evals = self.evals if self.eval_step == step else []
        return self.save_fn(path, state_dict, step=step,
                            metrics={f"{e.size}px": e.as_dict() for e in evals}, **kwargs)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x))


def train_vqvae(
    model_config: VQVAEConfig,
    run: VQVAETrainConfig,
    loop: LoopConfig,
    train_images: dict[int, Tensor],
    out_dir: str | Path,
    test_images: dict[int, Tensor] | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> VQVAETrainResult:
    """Train a VQVAE on uint8 images (N, 3, s, s) keyed by size s; checkpoints go to
    `out_dir/step-XXXXXXXX/`. With `resume`, continue from the newest complete checkpoint.
    `on_step(step)` is called after every step (tests send signals from it)."""
    out_dir = Path(out_dir)
    for size in run.sizes:
        if size not in train_images or len(train_images[size]) == 0:
            raise ConfigError.of("sizes", f"{size}: no training images at {size} px")
        if size % model_config.factor:
            raise ConfigError.of("sizes", f"{size} px is not divisible by the VQVAE factor "
                                 f"f={model_config.factor}")
    existing = step_dirs(out_dir)
    if resume and existing:
        path = existing[-1][1]
        check_unchanged(read_meta(path).get("extra", {}).get("train", {}), run, path,
                        RESUME_MAY_CHANGE)
    torch.manual_seed(loop.seed)  # the same initial weights on every process
    model = VQVAE(model_config)
    extra = {**(extra or {}), "train": _jsonable(asdict(run)), "loop": _jsonable(asdict(loop))}

    def save_fn(path, state_dict, *, step, training_state, copy, ema, metrics):
        saved = model
        if ema is not None:  # the averaged weights, in a model of their own for the fingerprint
            saved = VQVAE(model_config)
            saved.load_state_dict(state_dict)
        return save_vqvae(path, saved, step=step, extra={**extra, "eval": metrics},
                          training_state=training_state)

    objective = VQVAEObjective(model=model, run=run, train=train_images, test=test_images,
                               save_fn=save_fn)
    result = run_objective(objective, loop, out_dir, resume=resume, progress=progress,
                           on_step=on_step)
    return VQVAETrainResult(**vars(result), evals=objective.evals)
