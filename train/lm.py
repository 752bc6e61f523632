"""Language-model training: a generic loop, and the CogLM objective that makes its batches.

The loop (`train_loop`) owns what every token model trains with: AdamW, warmup + cosine
learning rate, gradient accumulation, clipping, an optional EMA, bf16 autocast, atomic
checkpoints with resume, SIGINT/SIGTERM handling, a tqdm bar, `metrics.jsonl` (and TensorBoard
when it is installed), periodic held-out evaluation, and data parallelism through DeepSpeed
(`train.distributed`). What is model-specific lives in an `Objective`: how to draw a global
batch from a seeded generator, collate a micro-batch, compute summed losses, evaluate, and
write a checkpoint folder. `CogLMObjective` is the one for CogLM; the super-resolution trainer
brings its own.

Batches: every process draws the whole global batch (`batch_size` samples) from the same
seeded `torch.Generator` and keeps its own slice, so a run on N processes sees the same samples
as a run on one. The loss is the mean over every target token of the global batch: each
micro-batch backpropagates its summed loss divided by the global target count, which makes the
gradient independent of how the batch is split.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from cogview.checkpoint import (
    TRAINING_STATE_FILE,
    CheckpointError,
    load_checkpoint,
    load_state_strict,
    load_training_state,
    read_meta,
    step_dir_name,
    step_dirs,
)
from cogview.devices import cpu_has_bf16
from cogview.errors import UserError
from cogview.losses import LossConfig, LossSums, lm_loss
from cogview.masks import (
    IGNORE,
    TASKS,
    MaskingScheduler,
    Region,
    TaskSchedule,
    TaskSequence,
    captioning,
    collate,
    inpainting,
    text_to_image,
)
from cogview.model import CogLM

METRICS_FILE = "metrics.jsonl"
DEEPSPEED_DIR = "deepspeed"  # inside a step folder: the DeepSpeed engine checkpoint
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; nothing after the last good checkpoint was saved."""


# ---------------------------------------------------------------------------------------------
# configuration and schedule


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
        for name in ("steps", "batch_size", "grad_accum", "save_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.warmup < 0 or self.eval_every < 0:
            raise UserError("--warmup and --eval-every must not be negative")
        if not 0 < self.lr or not 0 <= self.min_lr <= self.lr:
            raise UserError("--lr must be positive and --min-lr between 0 and --lr")
        if self.ema is not None and not 0 < self.ema < 1:
            raise UserError(f"--ema must lie in (0, 1), got {self.ema}")
        if self.precision not in PRECISIONS[1:]:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}")


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


# ---------------------------------------------------------------------------------------------
# what a model plugs into the loop


class Objective(Protocol):
    """The model-specific half of training."""

    model: nn.Module
    task_names: tuple[str, ...]  # names of the loss groups that LossSums counts

    def draw(self, step: int, n: int, g: torch.Generator) -> list[Any]:
        """`n` samples of the global batch of optimizer step `step`, drawn only from `g`."""
        ...

    def collate(self, samples: Sequence[Any]) -> Any:
        """A micro-batch for `loss` (with a `.to(device)` method)."""
        ...

    def count(self, samples: Sequence[Any]) -> tuple[int, int]:
        """(tokens, targets) in these samples: for tokens/s and the loss denominator."""
        ...

    # optional: `groups(samples) -> list[list[sample]]` splits a micro-batch into parts of
    # similar length that run as separate forward/backward passes (one-process training only)

    def loss(self, model: nn.Module, batch: Any) -> LossSums: ...

    def evaluate(self, model: nn.Module, device: torch.device, precision: str) -> dict[str, float]:
        """Held-out metrics; must not touch the global RNG or the training generator."""
        ...

    def save(
        self,
        path: Path,
        state_dict: dict[str, Tensor],
        *,
        step: int,
        training_state: dict[str, Any],
        copy: dict[str, Path],
        ema: float | None,
    ) -> Path:
        """Write a self-contained checkpoint folder (atomically) and return it."""
        ...


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class LossModule(nn.Module):
    """model + objective loss as one module, so that DeepSpeed's engine runs the forward pass.

    Returns (summed loss, per-task sums, per-task counts) of one micro-batch.
    """

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module, Any], LossSums]) -> None:
        super().__init__()
        self.model = model
        self._loss = loss

    def forward(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        s = self._loss(self.model, batch)
        return s.total, s.task_sums, s.task_counts


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


# ---------------------------------------------------------------------------------------------
# backends: one process, or DeepSpeed (train.distributed.DeepSpeedBackend)


class Backend(Protocol):
    rank: int
    world: int
    device: torch.device
    precision: str
    multi_backward: bool  # may a micro-batch run as several backward passes?
    module: LossModule  # the unwrapped module: .model is the model being trained

    def forward(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]: ...

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

    def forward(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
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


# ---------------------------------------------------------------------------------------------
# EMA, signals, metrics


class EMA:
    """Exponential moving average of the floating-point weights, kept in float32.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates so that the average
    does not remember the random initialisation for thousands of steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().float().clone() for k, v in self._float_state(model).items()}

    @staticmethod
    def _float_state(model: nn.Module) -> dict[str, Tensor]:
        return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = self._float_state(model)
        names = list(self.shadow)
        torch._foreach_lerp_(
            [self.shadow[k] for k in names], [current[k].float() for k in names], 1.0 - d
        )
        self.updates += 1

    def state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """The model's state dict with the averaged weights in place of the trained ones."""
        return {k: self.shadow.get(k, v) for k, v in model.state_dict().items()}

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Temporarily put the averaged weights into `model` (for evaluation)."""
        state = self._float_state(model)
        saved = {k: v.detach().clone() for k, v in state.items()}
        with torch.no_grad():
            for k, v in state.items():
                v.copy_(self.shadow[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in state.items():
                    v.copy_(saved[k])


class StopSignals:
    """SIGINT/SIGTERM ask the loop to save a checkpoint and stop; a second SIGINT aborts.

    A launcher forwards the terminal's Ctrl-C to its workers, which then see it twice within
    milliseconds; only a SIGINT that comes `ABORT_AFTER_S` after the first one aborts.
    """

    ABORT_AFTER_S = 1.0

    def __init__(self) -> None:
        self.requested: str | None = None
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.requested:
            if signum == signal.SIGINT and now - self._first > self.ABORT_AFTER_S:
                raise KeyboardInterrupt
            return
        self.requested, self._first = signal.Signals(signum).name, now

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricsLog:
    """`metrics.jsonl` (one JSON object per line) and TensorBoard scalars when available."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None) -> None:
        self.enabled = enabled
        self.path = out_dir / METRICS_FILE
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            # drop what the interrupted run logged after the checkpoint it resumes from
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    step: int
    checkpoint: Path | None  # the last checkpoint written (or resumed from)
    interrupted: str | None = None  # the signal that stopped the run early
    losses: list[float] = field(default_factory=list)  # training loss of every step of this run
    metrics_file: Path | None = None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_split(cfg: LoopConfig, world: int) -> int:
    """Samples per micro-batch; UserError when the global batch does not split evenly."""
    per = world * cfg.grad_accum
    if cfg.batch_size % per:
        raise UserError(
            f"--batch-size {cfg.batch_size} does not split into {world} process(es) x "
            f"{cfg.grad_accum} accumulation step(s); use a multiple of {per}"
        )
    return cfg.batch_size // per


def train_loop(
    objective: Objective,
    cfg: LoopConfig,
    out_dir: str | Path,
    *,
    backend: Backend | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train `objective.model` for `cfg.steps` optimizer steps; checkpoints go to `out_dir`.

    With `resume`, training continues from the newest complete `step-N` folder in `out_dir`
    and ends with the same weights as an uninterrupted run. `on_step(step)` is called after
    every optimizer step (tests use it to send signals).
    """
    out_dir = Path(out_dir)
    if backend is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        backend = LocalBackend(LossModule(objective.model, objective.loss), cfg, device)
    rank, world, device = backend.rank, backend.world, backend.device
    micro = _check_split(cfg, world)
    model = backend.module.model
    n_tasks = len(objective.task_names)
    # samples of very different lengths run as separate passes, so that short sequences are
    # not padded to the longest of the micro-batch
    group = getattr(objective, "groups", lambda samples: [samples])

    # resume -----------------------------------------------------------------------------
    step, g = 0, torch.Generator().manual_seed(cfg.seed)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    last_ckpt: Path | None = None
    existing = [p for _, p in step_dirs(out_dir) if (p / TRAINING_STATE_FILE).is_file()]
    if resume and existing:
        last_ckpt = existing[-1]
        step = _resume(last_ckpt, objective, backend, g, ema, cfg)
    elif existing and not resume:
        raise UserError(f"--out {out_dir} already holds checkpoints (newest {existing[-1].name});"
                        " pass --resume to continue, or choose another --out")
    if step >= cfg.steps:
        if rank == 0:
            print(f"{last_ckpt} is already at step {step} >= --steps {cfg.steps}",
                  file=sys.stderr)
        return TrainResult(step=step, checkpoint=last_ckpt)

    log = MetricsLog(out_dir, enabled=rank == 0, resume_step=step if resume else None)
    result = TrainResult(step=step, checkpoint=last_ckpt, metrics_file=log.path)

    def save(at: int) -> Path:
        training_state = {
            "step": at,
            "world": world,
            "generator": g.get_state(),
            "rng": _rng_state(),
            "loop": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        }
        opt_state = backend.optimizer_state()
        if opt_state is not None:
            training_state["optimizer"] = opt_state
        if ema is not None:
            training_state["ema"] = ema.shadow
            training_state["ema_updates"] = ema.updates
            training_state["model"] = model.state_dict()  # the trained (not averaged) weights
        path = out_dir / step_dir_name(at)
        engine_tmp = out_dir / f".{step_dir_name(at)}.{DEEPSPEED_DIR}"
        engine_dir = backend.save_engine(engine_tmp)
        if rank == 0:
            weights = ema.state_dict(model) if ema is not None else model.state_dict()
            copy = {DEEPSPEED_DIR: engine_dir} if engine_dir is not None else {}
            objective.save(path, weights, step=at, training_state=training_state, copy=copy,
                           ema=cfg.ema)
            if engine_dir is not None:
                shutil.rmtree(engine_dir, ignore_errors=True)
        backend.barrier()
        return path

    def evaluate(at: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if rank == 0:
            model.eval()
            with ema.applied(model) if ema is not None else contextlib.nullcontext():
                metrics = objective.evaluate(model, device, backend.precision)
            model.train()
            if metrics:
                log.write({"step": at, **metrics})
        backend.barrier()
        return metrics

    bar = None
    if rank == 0 and progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", file=sys.stderr,
                   dynamic_ncols=True)
    model.train()
    try:
        with StopSignals() as signals:
            while step < cfg.steps:
                t0 = time.perf_counter()
                lr = lr_at(step, cfg)
                samples = objective.draw(step, cfg.batch_size, g)
                n_tokens, n_targets = objective.count(samples)
                mine = samples[rank * micro * cfg.grad_accum : (rank + 1) * micro * cfg.grad_accum]
                sums = torch.zeros(n_tasks, device=device)
                counts = torch.zeros(n_tasks, device=device)
                for k in range(cfg.grad_accum):
                    chunk = mine[k * micro : (k + 1) * micro]
                    parts = group(chunk) if backend.multi_backward else [chunk]
                    for j, part in enumerate(parts):
                        batch = objective.collate(part).to(device)
                        total, task_sums, task_counts = backend.forward(batch)
                        # this part's share of the mean over the global batch's targets
                        last = k == cfg.grad_accum - 1 and j == len(parts) - 1
                        backend.backward(total / max(n_targets, 1), boundary=last)
                        sums += task_sums.float()
                        counts += task_counts.float()
                stats = backend.all_reduce(torch.cat([sums, counts]))
                loss = float(stats[:n_tasks].sum() / stats[n_tasks:].sum().clamp(min=1))
                if not math.isfinite(loss):
                    _diverged(loss, step, last_ckpt)
                grad_norm = backend.step(lr)
                if not math.isfinite(grad_norm):
                    _diverged(grad_norm, step, last_ckpt, what="gradient norm")
                step += 1
                if ema is not None:
                    ema.update(model)
                result.losses.append(loss)

                dt = time.perf_counter() - t0
                record: dict[str, Any] = {"step": step, "loss": loss}
                for i, name in enumerate(objective.task_names):
                    if stats[n_tasks + i] > 0:
                        record[f"loss_{name}"] = float(stats[i] / stats[n_tasks + i])
                record.update(lr=lr, grad_norm=grad_norm, tokens_per_s=n_tokens / dt, step_s=dt)
                log.write(record)
                if bar is not None:
                    bar.update(1)
                    post = {k[5:]: f"{v:.3f}" for k, v in record.items() if k.startswith("loss_")}
                    bar.set_postfix(loss=f"{loss:.3f}", **post, tok_s=f"{n_tokens / dt:.0f}")
                if on_step is not None:
                    on_step(step)

                if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                    evaluate(step)
                flag = torch.tensor([1.0 if signals.requested else 0.0], device=device)
                stop = bool(backend.all_reduce(flag) > 0)  # every rank stops at the same step
                if step % cfg.save_every == 0 or step == cfg.steps or stop:
                    last_ckpt = save(step)
                    result.checkpoint = last_ckpt
                if stop:
                    result.interrupted = signals.requested or "signal"
                    break
        if step == cfg.steps:
            evaluate(step)
    finally:
        if bar is not None:
            bar.close()
        log.close()
    result.step = step
    return result


def _diverged(value: float, step: int, last: Path | None, what: str = "loss") -> None:
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    raise TrainingDiverged(
        f"{what} is {value} at step {step + 1}; stopped without saving it ({kept}); "
        "try a lower --lr, a smaller --clip or --precision fp32"
    )


def _resume(
    path: Path,
    objective: Objective,
    backend: Backend,
    g: torch.Generator,
    ema: EMA | None,
    cfg: LoopConfig,
) -> int:
    """Restore everything from checkpoint folder `path`; return its step."""
    state = load_training_state(path)
    meta = read_meta(path)
    model = backend.module.model
    model_config = getattr(model, "config", None)
    # through JSON, as config.json holds it (tuples become lists)
    if model_config is not None and meta["config"] != json.loads(json.dumps(asdict(model_config))):
        raise UserError(f"--resume: {path} holds a model of another shape than the one asked "
                        "for (check --preset); use another --out to start afresh")
    if int(state.get("world", 1)) != backend.world:
        raise UserError(f"--resume: {path} was written by {state.get('world')} process(es), "
                        f"this run has {backend.world}; resume with the same number")
    if "model" in state:  # EMA runs keep the trained weights here, the average in safetensors
        load_state_strict(model, state["model"], source=str(path / TRAINING_STATE_FILE))
    else:
        load_state_strict(model, load_checkpoint(path).state_dict, source=str(path))
    backend.load(path, state)
    if (ema is None) != (state.get("ema") is None):
        raise UserError(f"--resume: {path} was trained {'with' if state.get('ema') else 'without'}"
                        " --ema; pass the same --ema to resume it")
    if ema is not None:
        ema.shadow = {k: v.float() for k, v in state["ema"].items()}
        ema.updates = int(state.get("ema_updates", 0))
    g.set_state(state["generator"])
    _set_rng_state(state["rng"])
    return int(state["step"])


# ---------------------------------------------------------------------------------------------
# CogLM: batches from token data through the masking scheduler

EVAL_SEED = 0  # inpainting masks of the held-out set: the same at every evaluation
EVAL_BATCH = 64


def max_sequence_len(task: str, text_len: int, h: int, w: int) -> int:
    """Model input length (full sequence minus one) of the longest sample of `task`."""
    n = h * w
    full = {
        "t2i": 1 + text_len + 1 + n,  # <t2i> text <boi> codes
        "cap": 2 + n + 2 + text_len + 1,  # <cap> <boi> codes <eoi> <bot> text <eot>
        "inp": 1 + text_len + 1 + n + 1 + n,  # <inp> text <boi> visible <eoi> masked codes
    }[task]
    return full - 1


@dataclass
class CogLMObjective:
    """Text-to-image, captioning and inpainting batches from pre-tokenized data.

    `train` and `test` are `train.data.tokens.TokenData` (or anything with `.codes` (a dict of
    image size -> (N, h, w) codes), `.text_ids`, the captioning `.targets` and `.metas`); the
    test split gives held-out losses. A sample whose attributes list `regions` (each a `box`
    and a `caption`, as `cogview data shapes` writes them) gives inpainting masks over one
    region, prompted with the region's caption or the whole caption (`MaskingScheduler`).
    """

    model: CogLM
    tokenizer: Any
    train: Any
    scheduler: MaskingScheduler
    image_size: int
    save_fn: Callable[..., Path]  # save_coglm with the tokenizer, VQVAE and extra bound
    loss_config: LossConfig = LossConfig()
    test: Any = None
    eval_samples: int = 256
    task_names: tuple[str, ...] = TASKS

    def __post_init__(self) -> None:
        if self.image_size not in self.train.codes:
            raise UserError(f"--image-size {self.image_size}: the token shards hold sizes "
                            f"{sorted(self.train.codes)}")
        self.codes = self.train.codes[self.image_size]  # (N, h, w)
        if len(self.codes) == 0:
            raise UserError("the token shards' train split is empty")
        h, w = self.codes.shape[1:]
        text_len = max((len(t) for t in self.train.text_ids), default=0)
        cfg = self.model.config
        if max(h, w) > cfg.max_grid:
            raise UserError(f"--image-size {self.image_size}: a {h}x{w} code grid exceeds the "
                            f"model's max_grid {cfg.max_grid}")
        for task in self.used_tasks:
            n = max_sequence_len(task, text_len, h, w)
            if n > cfg.max_seq_len:
                raise UserError(f"--tasks: {task} samples need {n} positions, the model has "
                                f"{cfg.max_seq_len}; drop the task or use a smaller --image-size")
        self._eval_sets: dict[str, list[TaskSequence]] | None = None
        self.regions = sample_regions(self.tokenizer, getattr(self.train, "metas", []))

    @property
    def used_tasks(self) -> list[str]:
        """Tasks with a positive weight anywhere in the schedule."""
        points = self.scheduler.schedule.points
        return [t for i, t in enumerate(TASKS) if any(w[i] > 0 for _, w in points)]

    def draw(self, step: int, n: int, g: torch.Generator) -> list[TaskSequence]:
        idx = torch.randint(len(self.codes), (n,), generator=g).tolist()
        data, regions = self.train, self.regions
        plans = [
            self.scheduler.plan(data.text_ids[i], self.codes[i], step, g, data.targets[i],
                                regions[i] if regions else ())
            for i in idx
        ]
        return self.scheduler.sequences(plans)

    def collate(self, samples: Sequence[TaskSequence]) -> Any:
        return collate(samples, self.tokenizer.pad_id)

    def count(self, samples: Sequence[TaskSequence]) -> tuple[int, int]:
        tokens = sum(s.ids.numel() for s in samples)
        targets = sum(int((s.labels != IGNORE).sum()) for s in samples)
        return tokens, targets

    def loss(self, model: nn.Module, batch: Any) -> LossSums:
        return lm_loss(model, batch, self.loss_config, len(self.task_names))

    def groups(self, samples: Sequence[TaskSequence]) -> list[list[TaskSequence]]:
        """One part per task: lengths differ by task (inpainting adds the masked cells), and
        padding a mixed batch to its longest sample cost the small preset 20-37% of its
        tokens/s at batch 32-64 (benchmarks/train_speed.py)."""
        parts: dict[str, list[TaskSequence]] = {}
        for s in samples:
            parts.setdefault(s.task, []).append(s)
        return list(parts.values())

    def eval_sets(self) -> dict[str, list[TaskSequence]]:
        """Fixed held-out sequences per task; `t2i_nocap` is text-to-image without caption."""
        if self._eval_sets is not None:
            return self._eval_sets
        self._eval_sets = {}
        if self.test is None or self.image_size not in self.test.codes:
            return self._eval_sets
        codes = self.test.codes[self.image_size][: self.eval_samples]  # (n, h, w)
        pairs = list(zip(self.test.text_ids[: len(codes)], codes, strict=True))
        targets = self.test.targets[: len(codes)]
        g = torch.Generator().manual_seed(EVAL_SEED)
        tok, used = self.tokenizer, self.used_tasks
        if pairs and "t2i" in used:
            self._eval_sets["t2i"] = [text_to_image(tok, t, c) for t, c in pairs]
            self._eval_sets["t2i_nocap"] = [text_to_image(tok, [], c) for _, c in pairs]
        if pairs and "cap" in used:
            self._eval_sets["cap"] = [
                captioning(tok, t, c) for t, (_, c) in zip(targets, pairs, strict=True)
            ]
        if pairs and "inp" in used:
            masks = [self.scheduler.make_mask(*c.shape, g) for _, c in pairs]
            context = self.scheduler.context
            shown = context(codes, torch.stack(masks)) if context is not None else codes
            self._eval_sets["inp"] = [
                inpainting(tok, t, c, m, s)
                for (t, c), m, s in zip(pairs, masks, shown, strict=True)
            ]
        return self._eval_sets

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device, precision: str) -> dict[str, float]:
        """Held-out cross-entropy per task (CE whatever the training loss, so that runs with
        --loss ce and --loss poly1 compare)."""
        out = {}
        for name, seqs in self.eval_sets().items():
            total, count = 0.0, 0
            for i in range(0, len(seqs), EVAL_BATCH):
                batch = self.collate(seqs[i : i + EVAL_BATCH]).to(device)
                with autocast(device, precision):
                    s = lm_loss(model, batch, LossConfig("ce"), len(self.task_names))
                total += float(s.total)
                count += s.count
            out[f"eval_{name}"] = total / max(count, 1)
        return out

    def save(self, path: Path, state_dict: dict[str, Tensor], **kwargs: Any) -> Path:
        return self.save_fn(path, state_dict, **kwargs)


def sample_regions(tokenizer: Any, metas: Sequence[dict[str, Any] | None]) -> list[list[Region]]:
    """Each sample's regions (from its attributes' `regions`: a `box` x0, y0, x1, y1 in
    fractions of the image side, and a `caption`), with the captions tokenized; [] when no
    sample has any."""
    found = [(i, r) for i, m in enumerate(metas) if m for r in m.get("regions") or ()]
    if not found:
        return []
    try:
        boxes = [tuple(float(v) for v in r["box"]) for _, r in found]
        texts = [str(r["caption"]) for _, r in found]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"token shards: a sample's regions lack a box or caption ({e})") from e
    if any(len(b) != 4 for b in boxes):
        raise UserError("token shards: a region's box is not x0, y0, x1, y1")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long captions are cut to the model's length
        ids = tokenizer.encode_texts(texts)
    out: list[list[Region]] = [[] for _ in metas]
    for (i, _), box, t in zip(found, boxes, ids, strict=True):
        out[i].append(Region(box, tuple(t)))
    return out


def vocab_check(tokenizer: Any, data: Any) -> None:
    """UserError when token ids in `data` do not fit the tokenizer (a corrupt or foreign set)."""
    n = tokenizer.num_image_codes
    for size, codes in data.codes.items():
        if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= n):
            raise UserError(f"token shards: codes at {size} px outside [0, {n}) of the tokenizer")
    text = tokenizer.text_range
    for ids in itertools.chain(data.text_ids, data.targets):
        if ids and (min(ids) < text.start or max(ids) >= text.stop):
            raise UserError("token shards: caption ids outside the tokenizer's text range")


@dataclass(frozen=True)
class CogLMTrainConfig:
    """Everything `cogview train` asks for besides the loop."""

    data: str
    tokenizer: str
    vqvae: str
    out: str
    preset: str = "small"
    tasks: str = "t2i=0.6,cap=0.2,inp=0.2"
    text_dropout: float = 0.1
    loss: str = "ce"
    poly_eps: float = 1.0
    image_size: int = 32
    eval_samples: int = 256
    region_masks: float = 0.5
    region_prompts: float = 0.5
    init_from: str | None = None  # a CogLM folder (or shipped name) whose weights start the run


def load_training_inputs(data: str, tokenizer: str, vqvae: str) -> tuple[Any, Path, str, Any, Any]:
    """Tokenizer, VQVAE folder and fingerprint, and the train (and test, if any) token data.

    The token shards must come from this tokenizer and VQVAE, and hold only ids the tokenizer
    knows: each mismatch is a one-line UserError naming the flag.
    """
    from cogview.checkpoint import resolve_checkpoint
    from cogview.pretrained import load_vqvae
    from tokenizer import TokenizerError, UnifiedTokenizer
    from train.data.tokens import check_compatible, load_token_shards, read_info
    from vqvae.model import fingerprint

    if not Path(data).is_dir():
        raise UserError(f"--data {data}: no such folder")
    try:
        tok = UnifiedTokenizer.load(tokenizer)
    except TokenizerError as e:
        raise UserError(f"--tokenizer: {e}") from e
    vq_dir = resolve_checkpoint(vqvae)
    vq_fp = fingerprint(load_vqvae(vq_dir))
    check_compatible(read_info(data), tok, vq_fp)
    train = load_token_shards(data, "train")
    vocab_check(tok, train)
    test = None
    if any(Path(data).glob("test-*.tar")):
        test = load_token_shards(data, "test")
        vocab_check(tok, test)
    return tok, vq_dir, vq_fp, train, test


def train_coglm(
    run: CogLMTrainConfig,
    loop: LoopConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """`cogview train`: load tokenizer, VQVAE and token shards, build the model, run the loop."""
    from cogview.inpainting import context_from_codes
    from cogview.model import PRESETS, coglm_config
    from cogview.pipeline import coglm_extra, save_coglm
    from cogview.pretrained import load_vqvae

    if run.preset not in PRESETS:
        raise UserError(f"--preset {run.preset!r}; choose from {', '.join(PRESETS)}")
    try:
        schedule = TaskSchedule.parse(run.tasks)
        loss_config = LossConfig(run.loss, run.poly_eps)
    except ValueError as e:
        raise UserError(f"--tasks/--loss: {e}") from e
    if not 0 <= run.text_dropout < 1:
        raise UserError("--text-dropout must lie in [0, 1)")
    for name in ("region_masks", "region_prompts"):
        if not 0 <= getattr(run, name) <= 1:
            raise UserError(f"--{name.replace('_', '-')} must lie in [0, 1]")
    tok, vq_dir, vq_fp, train, test = load_training_inputs(run.data, run.tokenizer, run.vqvae)

    torch.manual_seed(loop.seed)  # the same initial weights on every process
    model = CogLM(coglm_config(run.preset, tok.vocab_size))
    if run.init_from:  # a resumed run then loads its checkpoint's weights over these
        init_weights(model, run.init_from, tok, vq_fp)
    grid = tuple(int(x) for x in train.codes[run.image_size].shape[1:]) if (
        run.image_size in train.codes
    ) else (0, 0)
    train_args = {**asdict(run), **asdict(loop)}

    def save_fn(path, state_dict, *, step, training_state, copy, ema):
        extra = coglm_extra(tok, vq_fp, run.image_size, grid, train_args, ema=ema,
                            domain=(train.info.get("source_info") or {}).get("source"))
        return save_coglm(path, config=model.config, state_dict=state_dict,
                          tokenizer_file=run.tokenizer, vqvae_path=vq_dir, extra=extra,
                          step=step, training_state=training_state, copy=copy)

    vqvae = load_vqvae(vq_dir).eval()  # on the CPU, where batches are built
    scheduler = MaskingScheduler(tok, schedule=schedule, text_dropout=run.text_dropout,
                                 region_masks=run.region_masks, region_prompts=run.region_prompts,
                                 context=functools.partial(context_from_codes, vqvae))
    objective = CogLMObjective(model=model, tokenizer=tok, train=train, test=test,
                               scheduler=scheduler, image_size=run.image_size, save_fn=save_fn,
                               loss_config=loss_config, eval_samples=run.eval_samples)
    if (not objective.regions and run.region_masks > 0 and "inp" in objective.used_tasks
            and int(os.environ.get("RANK", "0")) == 0):
        print("note: no sample of --data lists regions; inpainting masks are random shapes "
              "prompted with the whole caption", file=sys.stderr)
    return run_objective(objective, loop, run.out, resume=resume, progress=progress,
                         on_step=on_step)


def init_weights(model: CogLM, source: str, tokenizer: Any, vqvae_fingerprint: str) -> None:
    """Start `model` from the weights of a CogLM folder (or a shipped model's name) of the
    same shape, vocabulary and VQVAE: a later stage of a recipe. The optimizer, schedule and
    data order start afresh."""
    from cogview.checkpoint import CheckpointError
    from cogview.defaults import model_path_or_default
    from cogview.pipeline import load_pipeline

    try:
        pipe = load_pipeline(model_path_or_default(source, "coglm"))
    except CheckpointError as e:
        raise UserError(f"--init-from: {e}") from e
    if asdict(pipe.model.config) != asdict(model.config):
        raise UserError(f"--init-from {source}: a model of another shape (check --preset)")
    if pipe.tokenizer.fingerprint != tokenizer.fingerprint:
        raise UserError(f"--init-from {source}: trained with another tokenizer than --tokenizer")
    if pipe.meta.get("vqvae_fingerprint") != vqvae_fingerprint:
        raise UserError(f"--init-from {source}: trained on codes of another VQVAE than --vqvae")
    model.load_state_dict(pipe.model.state_dict())


def run_objective(
    objective: Objective,
    loop: LoopConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Pick the backend (DeepSpeed when `loop.deepspeed`, else one process) and train."""
    module = LossModule(objective.model, objective.loss)
    if loop.deepspeed:
        from train.distributed import DeepSpeedBackend

        backend: Backend = DeepSpeedBackend(module, loop)
    else:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("started on several processes (WORLD_SIZE > 1) without --deepspeed; "
                            "add --deepspeed ds_config.json for data-parallel training")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        backend = LocalBackend(module, loop, device)
    return train_loop(objective, loop, out, backend=backend, resume=resume, progress=progress,
                      on_step=on_step)
