"""Text-to-image sampling speed: images/s with and without the KV cache, against a matmul peak.

    .venv/bin/python benchmarks/sample_speed.py [--batches 1 8 32] [--threads 1] [--modes ...]

A CogLM of the `small` preset (random weights: speed does not depend on them) draws 8x8 = 64
codes per image from a short prompt. The script first times a large matmul to get the peak
FLOP/s of this machine in this run (fp32, and bf16 when asked), then times `generate_images`
for every batch size, with the KV cache and with a full forward per step, and prints images/s
next to the rate the model's FLOPs per image would allow at that peak.

Every figure is given per wall-clock second and per CPU second of this process. On a machine
shared with other jobs the wall clock counts the time other processes held the cores; with
one thread the CPU-time figures (rate and peak alike) leave that out.

FLOPs per image count what one image from one prompt needs: the prefix (prefilled once) and
63 decode steps through the transformer (2 FLOPs per weight per token, plus 4 * dim FLOPs per
attended key per layer), and the output head over the 512 image codes for each of the 64 codes.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch

from cogview.model import CogLM, coglm_config
from cogview.sampling import SamplingConfig, generate_images
from tokenizer import UnifiedTokenizer

GRID = (8, 8)
CODES = 512
PROMPT = "a red circle at the top left and a blue square"


def captions() -> list[str]:
    colours = "red green blue yellow purple orange white black".split()
    shapes = "circle square triangle star".split()
    places = "top bottom left right centre".split()
    return [
        f"a {size} {c} {s} at the {p}"
        for c in colours
        for s in shapes
        for p in places
        for size in ("small", "large")
    ]


class Timer:
    """Wall-clock and CPU seconds (this process, all threads) of a block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 12) -> dict[str, float]:
    """Best FLOP/s of an n x n x n matmul per wall and per CPU second (the ceiling)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    wall = cpu = float("inf")
    for _ in range(reps):
        with Timer() as t:
            a @ b
        wall, cpu = min(wall, t.wall), min(cpu, t.cpu)
    return {"wall": 2 * n**3 / wall, "cpu": 2 * n**3 / cpu}


def flops_per_image(model: CogLM, prefix_len: int, codes: int, head_rows: int) -> float:
    """Forward FLOPs to draw one image of `codes` codes after a prefix of `prefix_len` tokens."""
    c = model.config
    hidden = int(c.mlp_ratio * c.dim)
    per_token = 2 * c.n_layers * (4 * c.dim * c.dim + 2 * c.dim * hidden)  # qkv, proj, mlp
    tokens = prefix_len + codes - 1
    # keys attended: every prefix token sees the prefix; decode step k sees prefix_len + k keys
    keys = prefix_len * prefix_len + sum(prefix_len + k + 1 for k in range(codes - 1))
    attention = 4 * c.dim * c.n_layers * keys
    head = 2 * c.dim * head_rows * codes
    return per_token * tokens + attention + head


def time_generate(model, tok, text, batch, use_cache, context, repeats) -> dict[str, float]:
    """Best wall and CPU seconds of one `generate_images` call for `batch` images."""
    cfg = SamplingConfig(batch_size=batch)
    best = {"wall": float("inf"), "cpu": float("inf")}
    with context():
        for _ in range(repeats):
            g = torch.Generator().manual_seed(0)
            with Timer() as t:
                generate_images(model, tok, [text] * batch, GRID, cfg, g, use_cache=use_cache)
            best = {"wall": min(best["wall"], t.wall), "cpu": min(best["cpu"], t.cpu)}
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument(
        "--modes",
        nargs="+",
        default=["fp32", "autocast-bf16"],
        choices=["fp32", "autocast-bf16", "bf16"],
        help="fp32 weights; fp32 weights under bf16 autocast; weights cast to bf16",
    )
    p.add_argument("--repeats", type=int, default=3, help="cached runs per setting (best kept)")
    p.add_argument("--no-uncached", action="store_true", help="skip the full-forward runs")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tok = UnifiedTokenizer.train(captions(), vocab_size=512, image_codes=CODES, max_text_len=32)
    text = tok.encode_text(PROMPT)
    fp32 = CogLM(coglm_config("small", tok.vocab_size)).eval()
    prefix_len = len(text) + 2  # <t2i> text <boi>
    flops = flops_per_image(fp32, prefix_len, GRID[0] * GRID[1], CODES)
    peaks = {"fp32": matmul_peak(torch.float32)}
    if any("bf16" in m for m in args.modes):
        peaks["bf16"] = matmul_peak(torch.bfloat16)
    print(
        f"threads {args.threads}; small CogLM {fp32.num_params() / 1e6:.1f}M params, vocab "
        f"{tok.vocab_size}, prompt {len(text)} tokens, {GRID[0]}x{GRID[1]} codes; "
        f"{flops / 1e9:.3f} GFLOP per image"
    )
    print(
        "matmul peak: "
        + ", ".join(
            f"{k} {v['wall'] / 1e9:.1f} GFLOP/s per wall s, {v['cpu'] / 1e9:.1f} per CPU s"
            for k, v in peaks.items()
        )
    )

    results = []
    for mode in args.modes:
        model = fp32
        if mode == "bf16":
            model = CogLM(fp32.config).eval().to(torch.bfloat16)
            model.load_state_dict(fp32.state_dict())
        peak = peaks["fp32" if mode == "fp32" else "bf16"]

        def context(mode=mode):
            if mode == "autocast-bf16":
                return torch.autocast("cpu", dtype=torch.bfloat16)
            return nullcontext()

        time_generate(model, tok, text, 1, True, context, 1)  # warm up kernels and allocator
        for batch in args.batches:
            row = {"mode": mode, "batch": batch}
            row["cached_s"] = time_generate(model, tok, text, batch, True, context, args.repeats)
            for clock in ("wall", "cpu"):
                rate = batch / row["cached_s"][clock]
                row[f"img_s_{clock}"] = rate
                row[f"bound_img_s_{clock}"] = peak[clock] / flops
                row[f"of_bound_{clock}"] = rate / row[f"bound_img_s_{clock}"]
            line = (
                f"{mode:>13} batch {batch:3d}: cached {row['img_s_wall']:7.1f} img/s "
                f"({1e3 * row['cached_s']['wall'] / batch:6.2f} ms/img) = "
                f"{row['of_bound_wall']:.2f} of peak-bound; per CPU s {row['img_s_cpu']:7.1f} "
                f"= {row['of_bound_cpu']:.2f} of peak-bound"
            )
            if not args.no_uncached:
                row["uncached_s"] = time_generate(model, tok, text, batch, False, context, 1)
                row["uncached_img_s_wall"] = batch / row["uncached_s"]["wall"]
                row["speedup_wall"] = row["uncached_s"]["wall"] / row["cached_s"]["wall"]
                row["speedup_cpu"] = row["uncached_s"]["cpu"] / row["cached_s"]["cpu"]
                line += (
                    f"; uncached {row['uncached_img_s_wall']:6.2f} img/s, cache "
                    f"x{row['speedup_wall']:.1f} (x{row['speedup_cpu']:.1f} CPU)"
                )
            print(line, flush=True)
            results.append(row)
    after = {k: matmul_peak(torch.float32 if k == "fp32" else torch.bfloat16) for k in peaks}
    print(
        "matmul peak again: "
        + ", ".join(f"{k} {v['wall'] / 1e9:.1f} / {v['cpu'] / 1e9:.1f}" for k, v in after.items())
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "threads": args.threads,
                    "flops_per_image": flops,
                    "peak_flops": peaks,
                    "peak_flops_after": after,
                    "results": results,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
