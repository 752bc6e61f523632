"""Super-resolution training: the LoPAR objective plugged into the language-model loop.

Everything a run needs besides batches (optimizer, schedule, bf16, checkpoints and resume,
signals, metrics, DeepSpeed) comes from `train.loop.train_loop`; this file only says how to draw
SR samples from token shards that hold codes at two sizes (`cogview encode --sizes 32,64`),
how to score them and how to write an SR checkpoint folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cogview.config import option
from cogview.errors import ConfigError, UserError
from cogview.losses import LossConfig, LossSums, lm_loss
from cogview.masks import IGNORE
from cogview.superres import (
    SR_PRESETS,
    SR_TASKS,
    SRConfig,
    SRModel,
    SRSample,
    collate_sr,
    draw_sr_samples,
    sr_config,
    sr_sample,
)
from train.config import LoopConfig
from train.lm import TokenRunConfig, held_out_losses, load_training_inputs
from train.loop import TrainResult, run_objective

EVAL_SEED = 0  # the held-out LoPAR steps: the same at every evaluation
EVAL_BATCH = 64


@dataclass(frozen=True)
class SRTrainConfig(TokenRunConfig):
    """Everything `cogview train-sr` asks for besides the loop."""

    data: str = option(help="token shard folder with codes at two sizes", metavar="DIR")
    preset: str = option("small", "model size: tiny, small", metavar="NAME")
    low_res: int = option(32, "input image size in pixels: the code grid read")
    image_size: int = option(64, "output image size in pixels: the code grid predicted")
    text_len: int = option(8, "caption tokens the model sees, from the start")
    window: int = option(4, "LoPAR window side w: 2w-1 passes at most")
    text_dropout: float = option(0.2, "probability of dropping the caption, so SR works "
                                 "without one")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_preset(list(SR_PRESETS))
        if not 0 <= self.text_dropout <= 1:
            raise ConfigError.of("text_dropout", f"must lie in [0, 1], got {self.text_dropout}")


@dataclass
class SRObjective:
    """LoPAR batches from token data: `lr` (N, l, l) and `hr` (N, h, h) codes of the same
    images, `texts` their caption ids; `test_*` the held-out split (or None)."""

    model: SRModel
    tokenizer: Any
    lr: Tensor
    hr: Tensor
    texts: list[list[int]]
    save_fn: Callable[..., Path]
    text_dropout: float = 0.2
    loss_config: LossConfig = LossConfig()
    test: tuple[Tensor, Tensor, list[list[int]]] | None = None
    eval_samples: int = 256
    task_names: tuple[str, ...] = SR_TASKS

    @property
    def model_config(self) -> SRConfig:
        return self.model.sr

    def __post_init__(self) -> None:
        if len(self.lr) == 0:
            raise UserError("the token shards' train split is empty")
        self._eval_sets: dict[str, list[SRSample]] | None = None

    def draw(self, step: int, n: int, g: torch.Generator) -> list[SRSample]:
        idx = torch.randint(len(self.lr), (n,), generator=g)
        texts = [self.texts[i] for i in idx.tolist()]
        return draw_sr_samples(
            self.tokenizer, self.model.sr, texts, self.lr[idx], self.hr[idx], g,
            self.text_dropout,
        )

    def collate(self, samples: Sequence[SRSample]) -> Any:
        return collate_sr(self.tokenizer, self.model.sr, samples)

    def count(self, samples: Sequence[SRSample]) -> tuple[int, int]:
        targets = sum(int((s.labels != IGNORE).sum()) for s in samples)
        return len(samples) * self.model.sr.seq_len, targets

    def loss(self, model: nn.Module, batch: Any) -> LossSums:
        return lm_loss(model, batch, self.loss_config, len(self.task_names))

    def eval_sets(self) -> dict[str, list[SRSample]]:
        """Held-out samples: `direct` (every cell masked) and `lopar` (a fixed r >= 1 each)."""
        if self._eval_sets is None:
            self._eval_sets = {}
            if self.test is not None and len(self.test[0]):
                lr, hr, texts = (x[: self.eval_samples] for x in self.test)
                config, tok = self.model.sr, self.tokenizer
                g = torch.Generator().manual_seed(EVAL_SEED)
                rs = torch.randint(1, max(config.num_orders, 2), (len(lr),), generator=g)
                rows = list(zip(texts, lr, hr, rs.tolist(), strict=True))
                self._eval_sets = {
                    "direct": [sr_sample(tok, config, t, a, b, 0) for t, a, b, _ in rows],
                    "lopar": [sr_sample(tok, config, t, a, b, r) for t, a, b, r in rows],
                }
        return self._eval_sets

    def evaluate(self, model: nn.Module, device: torch.device, precision: str) -> dict[str, float]:
        return held_out_losses(self, model, device, precision)

    def save(self, path: Path, state_dict: dict[str, Tensor], **kwargs: Any) -> Path:
        return self.save_fn(path, state_dict, **kwargs)


def _grids(data: Any, run: SRTrainConfig, split: str) -> tuple[Tensor, Tensor]:
    missing = [s for s in (run.low_res, run.image_size) if s not in data.codes]
    if missing:
        raise ConfigError.of("data", (
            f"{run.data} ({split}): the token shards hold codes at {sorted(data.codes)} px, SR "
            f"needs {run.low_res} and {run.image_size} (cogview encode --sizes "
            f"{run.low_res},{run.image_size})"))
    lr, hr = data.codes[run.low_res], data.codes[run.image_size]
    if lr.shape[1] != lr.shape[2] or hr.shape[1] != hr.shape[2] or hr.shape[1] < lr.shape[1]:
        raise ConfigError.of("data", (
            f"{run.data} ({split}): SR needs square code grids with the output at least as "
            f"large as the input, got {tuple(lr.shape[1:])} -> {tuple(hr.shape[1:])}"))
    return lr, hr


def train_sr(
    run: SRTrainConfig,
    loop: LoopConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    stream: Any = None,
) -> TrainResult:
    """`cogview train-sr`: load tokenizer, VQVAE and token shards, build the model, run the loop.
    With `stream` (a `train.data.stream.StreamConfig` whose `stream` is set) the train shards
    are read as a stream (`train.streaming`)."""
    from cogview.pipeline import bundle_extra, save_bundled
    from cogview.superres import SR_KIND

    loss_config = LossConfig(run.loss, run.poly_eps)
    streaming = stream is not None and stream.stream
    tok, vq_dir, vq_fp, train, held = load_training_inputs(run.data, run.tokenizer, run.vqvae,
                                                           streaming=streaming)
    lr, hr = _grids(train, run, "train split")
    test = None
    if held is not None:
        test = (*_grids(held, run, "test split"), held.text_ids)

    try:
        config = sr_config(
            run.preset,
            tok.vocab_size,
            lr_size=int(lr.shape[1]),
            hr_size=int(hr.shape[1]),
            text_len=run.text_len,
            window=run.window,
        )
    except ValueError as e:
        raise ConfigError.of("window", f"{run.window} with text_len {run.text_len}: {e}") from e
    torch.manual_seed(loop.seed)  # the same initial weights on every process
    model = SRModel(config)
    train_args = {**asdict(run), **asdict(loop), **(asdict(stream) if streaming else {})}

    def save_fn(path, state_dict, *, step, training_state, copy, ema):
        extra = bundle_extra(tok, vq_fp, train_args=train_args, ema=ema,
                             low_res_size=run.low_res, image_size=run.image_size)
        return save_bundled(path, SR_KIND, config=config, state_dict=state_dict,
                            tokenizer_file=run.tokenizer, vqvae_path=vq_dir, extra=extra,
                            step=step, training_state=training_state, copy=copy)

    common = dict(model=model, tokenizer=tok, lr=lr, hr=hr, save_fn=save_fn,
                  text_dropout=run.text_dropout, loss_config=loss_config, test=test,
                  eval_samples=run.eval_samples)
    if streaming:
        from train.streaming import StreamSRObjective

        objective: Any = StreamSRObjective(texts=[], data=run.data, stream_config=stream,
                                           seed=loop.seed, low_res=run.low_res,
                                           image_size=run.image_size, **common)
    else:
        objective = SRObjective(texts=train.text_ids, **common)
    return run_objective(objective, loop, run.out, resume=resume, progress=progress,
                         on_step=on_step)
