"""The one training loop of every token model, and what a model plugs into it.

The loop (`train_loop`) owns what every model trains with: AdamW, warmup + cosine learning
rate, gradient accumulation, clipping, an optional EMA, bf16 autocast, atomic checkpoints with
resume, SIGINT/SIGTERM handling, a tqdm bar, `metrics.jsonl` (and TensorBoard when it is
installed), periodic held-out evaluation, and data parallelism through DeepSpeed
(`train.distributed`). What is model-specific lives in an `Objective`: how to draw a global
batch from a seeded generator, collate a micro-batch, compute summed losses, evaluate, and
write a checkpoint folder (`train.lm.CogLMObjective`, `train.sr.SRObjective`).

Batches: every process draws the whole global batch (`batch_size` samples) from the same
seeded `torch.Generator` and keeps its own slice, so a run on N processes sees the same samples
as a run on one. The loss is the mean over every target token of the global batch: each
micro-batch backpropagates its summed loss divided by the global target count, which makes the
gradient independent of how the batch is split. An objective whose processes read different
data (streamed shards, `train.streaming`) hands each process its own slice instead
(`draw_rank`), the token and target counts summed over processes, and keeps its data position
in the checkpoints (`data_state`).
"""

from __future__ import annotations

import contextlib
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
    config_from_dict,
    load_checkpoint,
    load_state_strict,
    load_training_state,
    read_meta,
    step_dir_name,
    step_dirs,
)
from cogview.errors import ConfigError, UserError
from cogview.losses import LossSums
from train.backends import DEEPSPEED_DIR, Backend, LocalBackend, LossModule, prepare_model
from train.config import RESUME_MAY_CHANGE, LoopConfig, lr_at

METRICS_FILE = "metrics.jsonl"


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; nothing after the last good checkpoint was saved."""


class Objective(Protocol):
    """The model-specific half of training."""

    model: nn.Module
    task_names: tuple[str, ...]  # names of the loss groups that LossSums counts
    # optional: `model_config`, the config its checkpoints store when not `model.config`

    def draw(self, step: int, n: int, g: torch.Generator) -> list[Any]:
        """The global batch of optimizer step `step` (`n` samples, or another number that the
        processes and accumulation steps divide, e.g. fewer large images), drawn only from
        `g`."""
        ...

    def collate(self, samples: Sequence[Any]) -> Any:
        """A micro-batch for `loss` (with a `.to(device)` method)."""
        ...

    def count(self, samples: Sequence[Any]) -> tuple[int, int]:
        """(tokens, targets) in these samples: for tokens/s and the loss denominator."""
        ...

    # optional: `groups(samples) -> list[list[sample]]` splits a micro-batch into parts of
    # similar length that run as separate forward/backward passes (one-process training only);
    # `step_metrics() -> dict[str, float]` adds figures of the last step (this process's) to
    # the metrics and the progress bar;
    # `draw_rank(step, n, rank, world, g) -> list[sample]` replaces `draw` for objectives whose
    # processes read different data (a streamed data set): only this process's slice of the
    # global batch, the counts summed over processes;
    # `data_state() -> dict` and `load_data_state(state)`: the data position, saved in every
    # checkpoint and handed back on resume

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


@dataclass
class TrainResult:
    step: int
    checkpoint: Path | None  # the last checkpoint written (or resumed from)
    interrupted: str | None = None  # the signal that stopped the run early
    losses: list[float] = field(default_factory=list)  # training loss of every step of this run
    metrics_file: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the last held-out evaluation
    seconds: float = 0.0  # wall time of this run


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_split(n: int, cfg: LoopConfig, world: int) -> int:
    """Samples per micro-batch of a global batch of `n`; ConfigError when it does not split
    evenly."""
    per = world * cfg.grad_accum
    if n % per:
        split = f"split into {world} process(es) x {cfg.grad_accum} accumulation step(s)"
        detail = (f"{n} does not {split}; use a multiple of {per}" if n == cfg.batch_size else
                  f"{cfg.batch_size} gives batches of {n} samples, which do not {split}")
        raise ConfigError(f"batch_size {detail}", field="batch_size", detail=detail)
    return n // per


def check_unchanged(saved: dict[str, Any], config: Any, path: Path,
                    may_change: Sequence[str] = ()) -> None:
    """UserError when a resumed run asks for other settings (fields of dataclass `config`) than
    the ones `saved` with checkpoint `path`, except the fields `may_change`."""
    current = json.loads(json.dumps(asdict(config)))  # as the checkpoint holds them
    changed = [k for k, v in current.items()
               if k not in may_change and k in saved and saved[k] != v]
    if changed:
        raise UserError(f"resume: {path} was trained with other settings of "
                        f"{', '.join(changed)}; resume with the same ones, or start another run")


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
    started = time.perf_counter()
    if backend is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        cfg = cfg.resolved(device)
        backend = LocalBackend(LossModule(objective.model, objective.loss), cfg, device)
    rank, world, device = backend.rank, backend.world, backend.device
    _check_split(cfg.batch_size, cfg, world)
    model = backend.module.model
    prepare_model(model, cfg)
    n_tasks = len(objective.task_names)
    # samples of very different lengths run as separate passes, so that short sequences are
    # not padded to the longest of the micro-batch
    group = getattr(objective, "groups", lambda samples: [samples])
    step_metrics = getattr(objective, "step_metrics", dict)
    draw_rank = getattr(objective, "draw_rank", None)

    # resume -----------------------------------------------------------------------------
    step, g = 0, torch.Generator().manual_seed(cfg.seed)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    last_ckpt: Path | None = None
    existing = [p for _, p in step_dirs(out_dir) if (p / TRAINING_STATE_FILE).is_file()]
    if resume and existing:
        last_ckpt = existing[-1]
        step = _resume(last_ckpt, objective, backend, g, ema, cfg)
    elif existing and not resume:
        raise UserError(f"{out_dir} already holds checkpoints (newest {existing[-1].name}); "
                        "resume the run (--resume), or write to another folder")
    if step >= cfg.steps:
        if rank == 0:
            print(f"{last_ckpt} is already at step {step} >= steps {cfg.steps}",
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
        if hasattr(objective, "data_state"):
            training_state["data"] = objective.data_state()
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
                result.metrics = metrics
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
                if draw_rank is None:
                    samples = objective.draw(step, cfg.batch_size, g)
                    data_wait = time.perf_counter() - t0
                    micro = _check_split(len(samples), cfg, world)
                    n_tokens, n_targets = objective.count(samples)
                    span = micro * cfg.grad_accum
                    mine = samples[rank * span : (rank + 1) * span]
                else:
                    mine = draw_rank(step, cfg.batch_size, rank, world, g)
                    data_wait = time.perf_counter() - t0
                    micro = _check_split(len(mine) * world, cfg, world)
                    counted = torch.tensor(objective.count(mine), dtype=torch.float64)
                    n_tokens, n_targets = (int(x) for x in backend.all_reduce(
                        counted.to(device)).tolist())
                sums = torch.zeros(n_tasks, device=device)
                counts = torch.zeros(n_tasks, device=device)
                for k in range(cfg.grad_accum):
                    chunk = mine[k * micro : (k + 1) * micro]
                    parts = group(chunk) if backend.multi_backward else [chunk]
                    for j, part in enumerate(parts):
                        batch = objective.collate(part).to(device)
                        total, task_sums, task_counts, extra = backend.forward(batch)
                        # this part's share of the mean over the global batch's targets
                        last = k == cfg.grad_accum - 1 and j == len(parts) - 1
                        backend.backward(total / max(n_targets, 1) + extra, boundary=last)
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
                record.update(lr=lr, grad_norm=grad_norm, tokens_per_s=n_tokens / dt, step_s=dt,
                              data_wait_s=data_wait)
                extra = step_metrics()
                record.update(extra)
                log.write(record)
                if bar is not None:
                    bar.update(1)
                    post = {k[5:]: f"{v:.3f}" for k, v in record.items() if k.startswith("loss_")}
                    post.update({k: f"{v:.3g}" for k, v in extra.items()})
                    bar.set_postfix(loss=f"{loss:.3f}", **post, tok_s=f"{n_tokens / dt:.0f}")
                if on_step is not None:
                    on_step(step)

                # before the save, so that a checkpoint may record its evaluation
                if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
                    evaluate(step)
                flag = torch.tensor([1.0 if signals.requested else 0.0], device=device)
                stop = bool(backend.all_reduce(flag) > 0)  # every rank stops at the same step
                if step % cfg.save_every == 0 or step == cfg.steps or stop:
                    last_ckpt = save(step)
                    result.checkpoint = last_ckpt
                if stop:
                    result.interrupted = signals.requested or "signal"
                    break
    finally:
        if bar is not None:
            bar.close()
        log.close()
    result.step = step
    result.seconds = time.perf_counter() - started
    return result


def _diverged(value: float, step: int, last: Path | None, what: str = "loss") -> None:
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    raise TrainingDiverged(
        f"{what} is {value} at step {step + 1}; stopped without saving it ({kept}); "
        "try a lower lr, a smaller clip or fp32 precision"
    )


def _stored_config(like: Any, data: dict[str, Any]) -> Any:
    """config.json's `data` as a config of `like`'s type (None when it does not read as one)."""
    cls = type(like)
    try:
        if hasattr(cls, "from_dict"):
            return cls.from_dict(data, source="config.json")
        return config_from_dict(cls, data, source="config.json")
    except CheckpointError:
        return None


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
    # what the checkpoint stores as the model's config (an SR model: its whole SRConfig), read
    # as the loader reads it, so that a folder written before a field existed (its default)
    # still resumes
    model_config = getattr(objective, "model_config", getattr(model, "config", None))
    if model_config is not None and _stored_config(model_config, meta["config"]) != model_config:
        raise UserError(f"resume: {path} holds a model of another shape than the one asked "
                        "for (check the preset); start another run to train this one")
    if int(state.get("world", 1)) != backend.world:
        raise UserError(f"resume: {path} was written by {state.get('world')} process(es), "
                        f"this run has {backend.world}; resume with the same number")
    check_unchanged(state.get("loop", {}), cfg, path, RESUME_MAY_CHANGE)
    if "model" in state:  # EMA runs keep the trained weights here, the average in safetensors
        load_state_strict(model, state["model"], source=str(path / TRAINING_STATE_FILE))
    else:
        load_state_strict(model, load_checkpoint(path).state_dict, source=str(path))
    backend.load(path, state)
    if (ema is None) != (state.get("ema") is None):
        raise UserError(f"resume: {path} was trained {'with' if state.get('ema') else 'without'}"
                        " an EMA of the weights; resume with the same ema setting")
    if ema is not None:
        ema.shadow = {k: v.float() for k, v in state["ema"].items()}
        ema.updates = int(state.get("ema_updates", 0))
    if hasattr(objective, "load_data_state"):
        objective.load_data_state(state.get("data") or {})
    elif state.get("data"):
        raise UserError(f"resume: {path} was trained on streamed data (stream); resume it the "
                        "same way")
    g.set_state(state["generator"])
    _set_rng_state(state["rng"])
    return int(state["step"])


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
    loop = loop.resolved(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
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
