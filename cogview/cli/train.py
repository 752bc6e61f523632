"""`cogview train`: train a CogLM on token shards, on one process or data-parallel (DeepSpeed).

Flags are made from the config dataclasses (`train.lm.CogLMTrainConfig`, `train.config.
LoopConfig`), so their defaults and help live in one place; `add_loop_flags` and `loop_config`
serve every trainer, each with its own `LoopConfig` defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    from cogview.cli.flags import add_flags
    from train.lm import LOOP_DEFAULTS, CogLMTrainConfig

    p = subparsers.add_parser(
        "train",
        help="train a CogLM (text-to-image, captioning, inpainting) on token shards",
        description=(
            "Train a CogLM on pre-tokenized shards (made by `cogview encode`). Checkpoints go "
            "to OUT/step-XXXXXXXX/ (self-contained: config, weights, tokenizer, VQVAE), the "
            "metrics to OUT/metrics.jsonl. Data-parallel: run the same command under "
            "`torchrun --nproc_per_node N -m cogview train ... --deepspeed ds_config.json` "
            "or `deepspeed --num_gpus N --no_local_rank --module cogview train ...`."
        ),
        allow_abbrev=False,
    )
    add_flags(p, CogLMTrainConfig, show_defaults=True)
    add_stream_flags(p)
    add_loop_flags(p, LOOP_DEFAULTS)
    p.set_defaults(func=run_train)


def add_stream_flags(p: argparse.ArgumentParser) -> None:
    """--stream and its settings (train.data.stream.StreamConfig)."""
    from cogview.cli.flags import add_flags
    from train.data.stream import StreamConfig

    add_flags(p.add_argument_group("streaming"), StreamConfig, show_defaults=True)


def add_loop_flags(p: argparse.ArgumentParser, defaults: Any,
                   keep: Callable[[Any], bool] = lambda f: True) -> None:
    """Flags of the shared training loop (optimizer, schedule, checkpoints, DeepSpeed), with
    the trainer's `defaults` (a LoopConfig), plus --resume and --no-progress; `keep` picks
    the fields that the trainer offers."""
    from cogview.cli.flags import add_flags
    from train.config import LoopConfig

    g = p.add_argument_group("training loop")
    add_flags(g, LoopConfig, keep=keep, defaults=defaults)
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def loop_config(args: argparse.Namespace, defaults: Any) -> Any:
    """The loop's settings: flags given over `defaults`; with --deepspeed the batch may come
    from its config. A bad value is told by its flag."""
    from cogview.cli.flags import from_flags
    from train.config import LoopConfig

    values = {}
    if getattr(args, "deepspeed", None):
        from train.distributed import read_ds_config, resolve_batch, world_from_env

        _, world, _ = world_from_env()
        batch, accum = resolve_batch(read_ds_config(args.deepspeed), args.batch_size,
                                     args.grad_accum, world)
        values = {"batch_size": batch, "grad_accum": accum}
    return from_flags(LoopConfig, args, defaults, **values)


def report(result: Any) -> int:
    """What a finished (or interrupted) run prints; the exit status."""
    if int(os.environ.get("RANK", "0")) == 0:
        if result.interrupted:
            print(f"interrupted by {result.interrupted} at step {result.step}", file=sys.stderr)
        if result.checkpoint is not None:
            print(f"checkpoint: {result.checkpoint} (step {result.step})")
        if result.metrics_file is not None:
            print(f"metrics: {result.metrics_file} ({len(result.losses)} steps this run)")
    return 130 if result.interrupted else 0


def run_train(args: argparse.Namespace) -> int:
    from cogview.cli.flags import from_flags
    from train.data.stream import StreamConfig
    from train.lm import LOOP_DEFAULTS, CogLMTrainConfig, train_coglm

    loop = loop_config(args, LOOP_DEFAULTS)
    run = from_flags(CogLMTrainConfig, args)
    stream = from_flags(StreamConfig, args)
    return report(train_coglm(run, loop, resume=args.resume, progress=not args.no_progress,
                              stream=stream))
