"""Training throughput of a CogLM preset on this machine, and its model FLOP utilisation (MFU).

    .venv/bin/python benchmarks/train_speed.py [--preset small] [--batch-size 64] [--steps 8]
    .venv/bin/python benchmarks/train_speed.py --contrastive 0.1   # each run with the head too

The peak is measured in the same run: a large fp32 and bf16 matmul are timed first (best of a
few). Each training configuration then runs the real loop (`train.loop.train_loop`: batch drawing
through the masking scheduler, forward, backward, clipping, fused AdamW) on synthetic token data
of the shapes data set's sizes: 8x8 codes of a 512-code VQVAE, captions of 6-14 tokens from a
1024-token text vocabulary.

MFU counts useful model FLOPs only: per real (non-padding) token 6 N (N = non-embedding
parameters) + 12 L d T (attention, T = the sample's length), and 6 V d per target token for the
output head, which is computed at targets only. Padding and the logits skipped at prefix
positions are not counted. tokens/s counts real tokens.

The machine is shared: the load average before and after each run is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cogview.devices import cpu_has_bf16
from cogview.losses import LossConfig
from cogview.masks import IGNORE, MaskingScheduler, TaskSchedule, TaskSequence
from cogview.model import CogLM, coglm_config
from train.config import LoopConfig
from train.lm import CogLMObjective
from train.loop import train_loop

TEXT_VOCAB = 1024
IMAGE_CODES = 512
GRID = 8
TEXT_LEN = (6, 14)  # caption tokens: the shapes captions have 5-14


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: thread pool, packing buffers
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


class SyntheticTokenizer:
    """The id layout of a UnifiedTokenizer ([specials][text][image codes]) without a BPE."""

    max_text_len = 32

    def __init__(self, text_vocab: int = TEXT_VOCAB, image_codes: int = IMAGE_CODES) -> None:
        from tokenizer import SPECIAL_TOKENS

        self._ids = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
        self.text_range = range(len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + text_vocab)
        self.image_range = range(self.text_range.stop, self.text_range.stop + image_codes)
        self.vocab_size = self.image_range.stop
        self.num_image_codes = image_codes
        self.pad_id = self._special("pad")
        self.boi_id, self.eoi_id = self._special("boi"), self._special("eoi")
        self.bot_id, self.eot_id = self._special("bot"), self._special("eot")
        self.mask_id = self._special("mask")

    def _special(self, word: str) -> int:
        return next(i for name, i in self._ids.items() if word in name)

    def task_id(self, name: str) -> int:
        return self._special(name)

    def codes_to_ids(self, codes: Any) -> Any:
        """Codes (int64 numpy array or tensor) -> ids, as UnifiedTokenizer.codes_to_ids."""
        return codes + self.image_range.start


@dataclass
class Split:
    codes: dict[int, torch.Tensor]
    text_ids: list[list[int]]

    @property
    def targets(self) -> list[list[int]]:  # captioning learns the captions themselves
        return self.text_ids


def synthetic_data(tok: SyntheticTokenizer, n: int = 1024) -> Split:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, IMAGE_CODES, (n, GRID, GRID), generator=g)
    lengths = torch.randint(TEXT_LEN[0], TEXT_LEN[1] + 1, (n,), generator=g).tolist()
    texts = [
        torch.randint(tok.text_range.start, tok.text_range.stop, (k,), generator=g).tolist()
        for k in lengths
    ]
    return Split({4 * GRID: codes}, texts)


def useful_flops(model: CogLM, samples: Sequence[TaskSequence]) -> float:
    c = model.config
    n = model.num_params(embeddings=False)
    total = 0.0
    for s in samples:
        t = s.ids.numel()
        targets = int((s.labels != IGNORE).sum())
        total += t * (6 * n + 12 * c.n_layers * c.dim * t) + targets * 6 * c.vocab_size * c.dim
    return total


class Counting:
    """Wraps an objective; remembers the useful FLOPs of every drawn global batch."""

    def __init__(self, inner: CogLMObjective, grouped: bool) -> None:
        self.inner, self.flops = inner, []
        if not grouped:
            self.groups = lambda samples: [samples]

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name != "draw_rank":
            return attr

        def draw_rank(step: int, n: int, rank: int, world: int, g: torch.Generator) -> Any:
            samples = attr(step, n, rank, world, g)  # this process's part of the batch
            self.flops.append(world * useful_flops(self.inner.model, samples))
            return samples

        return draw_rank

    def draw(self, step: int, n: int, g: torch.Generator) -> list[TaskSequence]:
        samples = self.inner.draw(step, n, g)
        self.flops.append(useful_flops(self.inner.model, samples))
        return samples


def scheduler_ms(tasks: str, n: int = 256, reps: int = 10) -> float:
    """Milliseconds for the masking scheduler to build and pad `n` samples (best of `reps`):
    the host's share of a step, which a GPU step does not hide."""
    tok = SyntheticTokenizer()
    data = synthetic_data(tok, n)
    sched = MaskingScheduler(tok, schedule=TaskSchedule.parse(tasks), text_dropout=0.1)
    g = torch.Generator().manual_seed(0)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        sched.batch(data.text_ids, data.codes[4 * GRID], 0, g)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def run(args: argparse.Namespace, precision: str, tasks: str, grouped: bool,
        contrastive: float = 0.0) -> dict[str, float]:
    """One configuration; with `contrastive` > 0 the model has a contrastive head trained at
    that weight (its views' tokens are not counted in tokens/s: the same work is counted)."""
    from train.lm import contrastive_dim

    tok = SyntheticTokenizer()
    torch.manual_seed(0)
    head = {"contrastive_dim": contrastive_dim(args.preset)} if contrastive else {}
    model = CogLM(coglm_config(args.preset, tok.vocab_size, **head))
    sched = MaskingScheduler(tok, schedule=TaskSchedule.parse(tasks), text_dropout=0.1,
                             pairs=contrastive > 0)
    objective = CogLMObjective(model=model, tokenizer=tok, train=synthetic_data(tok),
                               scheduler=sched, image_size=4 * GRID,
                               save_fn=lambda path, *a, **k: path,
                               loss_config=LossConfig(contrastive_weight=contrastive))
    counting = Counting(objective, grouped)
    steps = args.warmup_steps + args.steps
    loop = LoopConfig(steps=steps, batch_size=args.batch_size, warmup=1, precision=precision,
                      save_every=10**9, eval_every=0, compile=args.compile)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        train_loop(counting, loop, out, progress=False)
        records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "tokens_per_s" in r][args.warmup_steps :]
    flops = counting.flops[args.warmup_steps :]
    seconds = sum(r["step_s"] for r in timed)
    tokens = sum(r["tokens_per_s"] * r["step_s"] for r in timed)
    return {"tokens_per_s": tokens / seconds, "flops_per_s": sum(flops) / seconds,
            "load": max(load, os.getloadavg()[0])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="timed steps per configuration")
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--mix", default="t2i=0.6,cap=0.2,inp=0.2",
                   help="task mix of the second set of runs (the first is t2i only)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the blocks (the loop's --compile); warm-up steps "
                   "then include the compilation")
    p.add_argument("--rows", default="t2i,mixed,by-task",
                   help="which sets of runs: t2i (t2i only), mixed and by-task (the mix, one "
                   "pass per batch or per task)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--contrastive", type=float, default=0.0, metavar="W",
                   help="run each configuration also with a contrastive head at weight W, "
                   "right after the one without (the same load for both)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, CPU bf16 instructions: {cpu_has_bf16()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"masking scheduler ({args.mix}): {scheduler_ms(args.mix):.1f} ms per 256 samples")
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak (2048^3): fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s")
    rows = []
    sets = {"t2i": ("t2i=1", True), "mixed": (args.mix, False), "by-task": (args.mix, True)}
    for tasks, grouped in (sets[name] for name in args.rows.split(",")):
        for precision in args.precisions.split(","):
            for weight in (0.0, args.contrastive) if args.contrastive else (0.0,):
                r = run(args, precision, tasks, grouped, weight)
                name = tasks + (f" +con {weight:g}" if weight else "")
                rows.append((name, "by task" if grouped else "mixed", precision, r,
                             r["flops_per_s"] / peak[precision]))
    print(f"\n{args.preset} preset, batch {args.batch_size}, {args.steps} timed steps"
          f"{', compiled' if args.compile else ''}")
    print(f"{'tasks':<34} {'batches':<8} {'prec':<5} {'tokens/s':>9} {'GFLOP/s':>8} "
          f"{'MFU':>5} {'load':>5}")
    for tasks, how, precision, r, mfu in rows:
        print(f"{tasks:<34} {how:<8} {precision:<5} {r['tokens_per_s']:>9.0f} "
              f"{r['flops_per_s'] / 1e9:>8.1f} {mfu:>5.0%} {r['load']:>5.1f}")


if __name__ == "__main__":
    main()
