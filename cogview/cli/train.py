"""`cogview train`: train a CogLM on token shards, on one process or data-parallel (DeepSpeed)."""

from __future__ import annotations

import argparse
import sys

from cogview.errors import UserError

DEFAULT_TASKS = "t2i=0.6,cap=0.2,inp=0.2"


def register(subparsers: argparse._SubParsersAction) -> None:
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
    add_input_flags(p, data_help="token shard folder (cogview encode --out)",
                    preset_help="model size: tiny, small, medium, base, large, xl")
    p.add_argument("--tasks", default=DEFAULT_TASKS,
                   help=f"task weights over steps, e.g. '0:t2i=1;2000:t2i=0.6,cap=0.2,inp=0.2' "
                   f"(default '{DEFAULT_TASKS}')")
    p.add_argument("--text-dropout", type=float, default=0.1,
                   help="probability of dropping the caption, for guidance (default 0.1)")
    p.add_argument("--image-size", type=int, default=32,
                   help="which code grid of the shards to train on, in pixels (default 32)")
    p.add_argument("--region-masks", type=float, default=0.5, metavar="P",
                   help="inpainting samples whose attributes list regions (objects with captions "
                   "of their own) mask one region with this probability (default 0.5)")
    p.add_argument("--region-prompts", type=float, default=0.5, metavar="P",
                   help="a region mask is prompted with the region's caption with this "
                   "probability, else with the whole caption (default 0.5)")
    p.add_argument("--init-from", metavar="MODEL",
                   help="start from the weights of this CogLM folder or shipped model (same "
                   "preset, tokenizer and VQVAE); optimizer and schedule start afresh")
    add_loop_flags(p)
    p.set_defaults(func=run_train)


def add_input_flags(p: argparse.ArgumentParser, *, data_help: str, preset_help: str) -> None:
    """What a trainer on token shards reads and writes: shards, tokenizer, VQVAE, preset, run."""
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--tokenizer", required=True, help="tokenizer JSON the shards were made with")
    p.add_argument("--vqvae", required=True, help="VQVAE checkpoint folder the codes came from")
    p.add_argument("--preset", default="small", help=preset_help)
    p.add_argument("--out", required=True, help="run folder for checkpoints and metrics")


def add_loop_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the shared training loop (optimizer, schedule, checkpoints, DeepSpeed)."""
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch in samples, over all processes (default 64, or "
                   "train_batch_size of ds_config.json)")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="micro-batches per optimizer step (default 1)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--warmup", type=int, default=100, help="linear warmup steps (default 100)")
    p.add_argument("--min-lr", type=float, default=1e-4,
                   help="learning rate at the end of the cosine decay (default 1e-4)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay (default 0.1)")
    p.add_argument("--clip", type=float, default=1.0,
                   help="max gradient norm, 0 = off (default 1.0)")
    p.add_argument("--loss", choices=("ce", "poly1"), default="ce",
                   help="cross-entropy or PolyLoss poly-1 (default ce)")
    p.add_argument("--poly-eps", type=float, default=1.0, help="poly-1 epsilon (default 1.0)")
    p.add_argument("--ema", type=float, default=None,
                   help="keep an EMA of the weights with this decay (e.g. 0.999) and export it; "
                   "off by default")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: bf16 autocast on CUDA or a CPU with AVX-512 BF16/AMX, else fp32; "
                   "fp16 only with DeepSpeed on CUDA")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint interval (500)")
    p.add_argument("--eval-every", type=int, default=250,
                   help="held-out loss interval on the test split, 0 = at the end only (250)")
    p.add_argument("--eval-samples", type=int, default=256,
                   help="held-out images per task (default 256)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --out")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and batches (default 0)")
    p.add_argument("--deepspeed", default=None, metavar="DS_CONFIG",
                   help="train with DeepSpeed using this config (e.g. ds_config.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _precision(requested: str, deepspeed: bool) -> str:
    import torch

    from train.config import resolve_precision

    cuda = torch.cuda.is_available()
    if requested == "fp16" and not (deepspeed and cuda):
        raise UserError("--precision fp16 needs --deepspeed on a CUDA GPU (loss scaling)")
    if deepspeed and not cuda:
        if requested == "bf16":
            raise UserError("--precision bf16: DeepSpeed on a CPU trains in fp32; drop the flag")
        return "fp32"
    return resolve_precision(requested, torch.device("cuda" if cuda else "cpu"))


def loop_config(args: argparse.Namespace):
    """The shared loop's settings from `add_loop_flags` flags (batch from ds_config.json too);
    a bad value is told by its flag."""
    from cogview.cli.flags import checked
    from train.config import LoopConfig

    batch_size, grad_accum = args.batch_size, args.grad_accum
    if args.deepspeed:
        from train.distributed import read_ds_config, resolve_batch, world_from_env

        _, world, _ = world_from_env()
        batch_size, grad_accum = resolve_batch(
            read_ds_config(args.deepspeed), batch_size, grad_accum, world
        )
    return checked(LoopConfig, lambda: LoopConfig(
        steps=args.steps,
        batch_size=64 if batch_size is None else batch_size,
        grad_accum=1 if grad_accum is None else grad_accum,
        lr=args.lr,
        warmup=args.warmup,
        min_lr=args.min_lr,
        weight_decay=args.weight_decay,
        clip=args.clip,
        ema=args.ema,
        precision=_precision(args.precision, bool(args.deepspeed)),
        save_every=args.save_every,
        eval_every=args.eval_every,
        seed=args.seed,
        deepspeed=args.deepspeed,
    ))


def run_train(args: argparse.Namespace) -> int:
    from train.lm import CogLMTrainConfig, train_coglm

    loop = loop_config(args)
    run = CogLMTrainConfig(
        data=args.data,
        tokenizer=args.tokenizer,
        vqvae=args.vqvae,
        out=args.out,
        preset=args.preset,
        tasks=args.tasks,
        text_dropout=args.text_dropout,
        loss=args.loss,
        poly_eps=args.poly_eps,
        image_size=args.image_size,
        eval_samples=args.eval_samples,
        region_masks=args.region_masks,
        region_prompts=args.region_prompts,
        init_from=args.init_from,
    )
    result = train_coglm(run, loop, resume=args.resume, progress=not args.no_progress)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        if result.interrupted:
            print(f"interrupted by {result.interrupted} at step {result.step}", file=sys.stderr)
        if result.checkpoint is not None:
            print(f"checkpoint: {result.checkpoint} (step {result.step})")
        if result.metrics_file is not None:
            print(f"metrics: {result.metrics_file} ({len(result.losses)} steps this run)")
    return 130 if result.interrupted else 0
