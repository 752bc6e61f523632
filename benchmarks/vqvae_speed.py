"""VQVAE encode + decode throughput: images/s at one size and batch size.

    .venv/bin/python benchmarks/vqvae_speed.py [--vqvae DIR | --preset small] [--size 32]
        [--batch 64] [--reps 5] [--threads N] [--precision fp32|bf16] [--json FILE]

Times `encode` (image -> codes), `decode` (codes -> image) and the round trip on random images
(speed does not depend on the pixels), after one warm-up batch, and reports the median of
`--reps` repetitions. The same numbers depend on what else runs on the machine: the load
average at the start and end is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import nullcontext

import torch

from cogview.pretrained import load_vqvae
from vqvae import VQVAE, vqvae_config


def timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vqvae", metavar="DIR", help="checkpoint (default: a random --preset)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_vqvae(args.vqvae) if args.vqvae else VQVAE(vqvae_config(args.preset)).eval()
    x = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16"
                else nullcontext())
    load_before = os.getloadavg()[0]
    with torch.inference_mode(), autocast:
        codes = model.encode(x)  # warm-up; also k-means-initialises an untrained codebook
        model.decode(codes)
        t_enc = timed(lambda: model.encode(x), args.reps)
        t_dec = timed(lambda: model.decode(codes), args.reps)
        t_both = timed(lambda: model.decode(model.encode(x)), args.reps)
    result = {
        "vqvae": args.vqvae or f"preset {args.preset} (random weights)",
        "size": args.size,
        "batch": args.batch,
        "grid": list(codes.shape[1:]),
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "encode_images_per_s": args.batch / t_enc,
        "decode_images_per_s": args.batch / t_dec,
        "encode_decode_images_per_s": args.batch / t_both,
        "load_average": [load_before, os.getloadavg()[0]],
    }
    print(f"{result['vqvae']}: {args.size} px -> {codes.shape[1]}x{codes.shape[2]} codes, "
          f"batch {args.batch}, {result['threads']} threads, {args.precision}")
    print(f"  encode          {result['encode_images_per_s']:8.0f} images/s")
    print(f"  decode          {result['decode_images_per_s']:8.0f} images/s")
    print(f"  encode+decode   {result['encode_decode_images_per_s']:8.0f} images/s")
    print(f"  load average    {load_before:.1f} -> {result['load_average'][1]:.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")


if __name__ == "__main__":
    main()
