"""Data-parallel training with DeepSpeed: filling ds_config.json, the process group, the engine.

`cogview train ... --deepspeed ds_config.json` under `torchrun --nproc_per_node N -m cogview`
(or the `deepspeed --module cogview` launcher) trains on N processes. The same command without
a launcher runs DeepSpeed on one process.

ds_config.json is the only DeepSpeed config. Values spelled "auto" are filled from the flags:
- train_batch_size <- --batch-size, gradient_accumulation_steps <- --grad-accum,
  train_micro_batch_size_per_gpu <- batch / (processes x accumulation). A number in the config
  is used when the flag is not given, and must agree with the flag when it is.
- gradient_clipping <- --clip; bf16.enabled / fp16.enabled <- --precision (bf16 and fp16 on
  CUDA only: DeepSpeed on a CPU trains in fp32).
- without an "optimizer" section the trainer's fused AdamW (decay on matrices only, --lr,
  --weight-decay) is used; with one, DeepSpeed builds it and "auto" in its params is filled
  from --lr, --weight-decay and the betas. Without a "scheduler" section the trainer sets the
  warmup + cosine learning rate every step; with one, DeepSpeed's scheduler owns the learning
  rate ("auto" in its params: warmup_num_steps <- --warmup, total_num_steps <- --steps,
  warmup_max_lr <- --lr, warmup_min_lr <- 0, cos_min_ratio <- --min-lr / --lr).
Other numbers in the config must agree with the flags they come from.

Checkpoints: every rank writes its ZeRO partitions with the engine; rank 0 writes the plain
folder (config.json, model.safetensors, tokenizer.json, vqvae/) with the engine checkpoint
inside it as `deepspeed/`, so the same folder samples and resumes.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cogview.checkpoint import CheckpointError
from cogview.errors import ConfigError, UserError
from train.backends import DEEPSPEED_DIR, LossModule, make_optimizer, param_groups
from train.config import LoopConfig

AUTO = "auto"
DEFAULT_BATCH_SIZE = 64
ENGINE_TAG = "engine"  # DeepSpeed's checkpoint tag inside a step folder's deepspeed/
QUIET_STEPS_PER_PRINT = 10**9  # the trainer logs; DeepSpeed's own step prints would duplicate
# A DeepSpeed op builds in well under a minute; a build lock this old was left by a killed process
STALE_BUILD_LOCK_S = 600


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as set by torchrun or the deepspeed launcher."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def read_ds_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError.of("deepspeed", f"{path}: no such DeepSpeed config file")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError.of("deepspeed", f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ConfigError.of("deepspeed", f"{path}: must hold a JSON object")
    return config


def _number(config: dict[str, Any], key: str) -> int | None:
    value = config.get(key, AUTO)
    if value == AUTO:
        return None
    if not isinstance(value, int) or value < 1:
        raise UserError(f"ds_config.json: {key} must be a positive integer or \"auto\"")
    return value


def resolve_batch(
    config: dict[str, Any], batch_size: int | None, grad_accum: int | None, world: int
) -> tuple[int, int]:
    """(global batch, accumulation steps) from the flags (None = not given) and the config."""
    cfg_batch = _number(config, "train_batch_size")
    cfg_micro = _number(config, "train_micro_batch_size_per_gpu")
    cfg_accum = _number(config, "gradient_accumulation_steps")
    for name, given, key, number in (
        ("batch_size", batch_size, "train_batch_size", cfg_batch),
        ("grad_accum", grad_accum, "gradient_accumulation_steps", cfg_accum),
    ):
        if given is not None and number is not None and given != number:
            raise ConfigError.of(name, f"{given} but ds_config.json sets {key} {number}; set "
                                 "it to \"auto\" or pass the same value")
    accum = grad_accum or cfg_accum
    if accum is None:
        accum = cfg_batch // (cfg_micro * world) if cfg_batch and cfg_micro else 1
    batch = batch_size or cfg_batch
    if batch is None:
        batch = cfg_micro * accum * world if cfg_micro else DEFAULT_BATCH_SIZE
    if accum < 1 or batch % (world * accum):
        raise ConfigError.of("batch_size", f"{batch} does not split into {world} process(es) x "
                             f"{accum} accumulation step(s); use a multiple of {world * accum}")
    if cfg_micro is not None and cfg_micro != batch // (world * accum):
        raise UserError(
            f"ds_config.json sets train_micro_batch_size_per_gpu {cfg_micro}, but batch {batch} "
            f"over {world} process(es) x {accum} accumulation step(s) gives "
            f"{batch // (world * accum)}; set it to \"auto\""
        )
    return batch, accum


def _fill(section: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Put `value` where the config says "auto"; a number there must agree with it."""
    current = section.get(key, AUTO)
    if current == AUTO:
        section[key] = value
    elif isinstance(value, float) and isinstance(current, (int, float)):
        if abs(current - value) > 1e-12 * max(1.0, abs(value)):
            raise UserError(f"ds_config.json sets {where} {current} but the flags give {value}; "
                            "set it to \"auto\" or pass the same value")
    elif current != value:
        raise UserError(f"ds_config.json sets {where} {current!r} but the flags give {value!r}; "
                        "set it to \"auto\" or pass the same value")


def fill_ds_config(
    config: dict[str, Any], cfg: LoopConfig, world: int, device: torch.device
) -> dict[str, Any]:
    """A copy of `config` with every "auto" filled from `cfg` (see the module docstring)."""
    ds = copy.deepcopy(config)
    batch, accum = resolve_batch(ds, cfg.batch_size, cfg.grad_accum, world)
    ds["train_batch_size"] = batch
    ds["gradient_accumulation_steps"] = accum
    ds["train_micro_batch_size_per_gpu"] = batch // (world * accum)
    _fill(ds, "gradient_clipping", float(cfg.clip), "gradient_clipping")
    ds.setdefault("steps_per_print", QUIET_STEPS_PER_PRINT)
    ds.setdefault("wall_clock_breakdown", False)

    for kind in ("bf16", "fp16"):
        section = ds.setdefault(kind, {})
        if not isinstance(section, dict):
            raise UserError(f"ds_config.json: {kind} must be an object")
        enabled = section.get("enabled", False)
        if enabled == AUTO:
            enabled = cfg.precision == kind and device.type == "cuda"
        section["enabled"] = bool(enabled)
        if enabled and device.type != "cuda":
            raise UserError(f"ds_config.json enables {kind}, but DeepSpeed on a CPU trains in "
                            "fp32; set it to \"auto\" or false")
    if ds["bf16"]["enabled"] and ds["fp16"]["enabled"]:
        raise UserError("ds_config.json enables both bf16 and fp16; choose one")

    if "optimizer" in ds:
        params = ds["optimizer"].setdefault("params", {})
        _fill(params, "lr", float(cfg.lr), "optimizer.params.lr")
        _fill(params, "weight_decay", float(cfg.weight_decay), "optimizer.params.weight_decay")
        if params.get("betas", AUTO) == AUTO:
            params["betas"] = list(cfg.betas)
    else:
        # the trainer's torch AdamW; ZeRO wraps it (it is not on DeepSpeed's list of tested
        # optimizers, hence the switch)
        ds.setdefault("zero_allow_untested_optimizer", True)
    if "scheduler" in ds:
        params = ds["scheduler"].setdefault("params", {})
        autos = {
            "warmup_num_steps": cfg.warmup,
            "total_num_steps": cfg.steps,
            "warmup_max_lr": cfg.lr,
            "warmup_min_lr": 0.0,
            "cos_min_ratio": cfg.min_lr / cfg.lr,
        }
        for key, value in autos.items():
            if params.get(key) == AUTO:
                params[key] = value
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise UserError(f"ds_config.json: ZeRO stage {stage}; this trainer supports 0, 1 and 2")
    return ds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clear_stale_build_locks(max_age_s: float = STALE_BUILD_LOCK_S) -> list[Path]:
    """Remove DeepSpeed op build locks older than `max_age_s`; the paths removed.

    DeepSpeed compiles its ops with torch's JIT builder, which holds a `lock` file in the op's
    build folder while it builds or loads and waits, without end, while that file exists. A
    process killed in that moment leaves the file behind and every later run hangs on it. A
    young lock may be a build in progress: it is named and left.
    """
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    removed = []
    for lock in sorted(root.glob("*/deepspeed_*/lock")):
        try:
            age = time.time() - lock.stat().st_mtime
            if age > max_age_s:
                lock.unlink()
                removed.append(lock)
                print(f"note: removed {lock}, a build lock left by an interrupted run "
                      f"{age / 60:.0f} min ago", file=sys.stderr)
            else:
                print(f"note: waiting for {lock} (a DeepSpeed op being built by another process; "
                      f"if none is, delete the file)", file=sys.stderr)
        except FileNotFoundError:  # released meanwhile
            continue
    return removed


def init_distributed() -> tuple[int, int, int, torch.device]:
    """Set up the process group (gloo on CPU, nccl on CUDA); (rank, world, local rank, device)."""
    if not torch.cuda.is_available():
        # DeepSpeed picks its accelerator at import time; without CUDA it must be told
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # no launcher: DeepSpeed on this process alone
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    rank, world, local_rank = world_from_env()
    if local_rank == 0:  # one process per machine, before any of them takes the lock
        clear_stale_build_locks()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, local_rank, device


class DeepSpeedBackend:
    """The training loop's backend on a DeepSpeed engine (ZeRO stage 0, 1 or 2)."""

    # the engine counts one backward per micro-step (its accumulation boundary logic)
    multi_backward = False

    def __init__(self, module: LossModule, cfg: LoopConfig) -> None:
        self.rank, self.world, _, self.device = init_distributed()
        import deepspeed

        if cfg.deepspeed is None:
            raise ConfigError.of("deepspeed", "no config file given")
        self.cfg = cfg
        self.ds_config = fill_ds_config(read_ds_config(cfg.deepspeed), cfg, self.world,
                                        self.device)
        if self.ds_config["bf16"]["enabled"]:
            self.precision = "bf16"
        elif self.ds_config["fp16"]["enabled"]:
            self.precision = "fp16"
        else:
            self.precision = "fp32"
        self.owns_lr = "scheduler" not in self.ds_config
        module = module.to(self.device)
        if "optimizer" in self.ds_config:
            optimizer, params = None, param_groups(module.model, cfg.weight_decay)
        else:
            optimizer, params = make_optimizer(module.model, cfg), None
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, model_parameters=params, config=self.ds_config
        )
        self.module: LossModule = self.engine.module
        # the loop hands in each micro-batch's share of the global mean; the engine divides
        # by the accumulation steps and averages over processes, so scale those back
        self._scale = float(self.world * self.engine.gradient_accumulation_steps())

    def forward(self, batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.engine(batch)

    def backward(self, loss: Tensor, boundary: bool) -> None:
        self.engine.backward(loss * self._scale)
        if not boundary:
            self.engine.step()  # only counts the micro-step; the update waits for the boundary

    def step(self, lr: float) -> float:
        if self.owns_lr:
            for group in self.engine.optimizer.param_groups:
                group["lr"] = lr
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def all_reduce(self, t: Tensor) -> Tensor:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        torch.distributed.barrier()

    def optimizer_state(self) -> None:
        return None  # inside the engine checkpoint

    def save_engine(self, path: Path) -> Path:
        if self.rank == 0 and path.exists():
            shutil.rmtree(path)
        self.barrier()
        self.engine.save_checkpoint(str(path), tag=ENGINE_TAG, save_latest=False)
        self.barrier()
        return path

    def load(self, step_dir: Path, training_state: dict[str, Any]) -> None:
        engine_dir = step_dir / DEEPSPEED_DIR
        if not (engine_dir / ENGINE_TAG).is_dir():
            raise CheckpointError(f"{step_dir}: no DeepSpeed engine state ({DEEPSPEED_DIR}/); "
                                  "it was written without --deepspeed, resume it that way")
        load_path, _ = self.engine.load_checkpoint(
            str(engine_dir),
            tag=ENGINE_TAG,
            load_module_strict=True,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise CheckpointError(f"{engine_dir}: DeepSpeed could not load its checkpoint")
