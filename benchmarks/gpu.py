"""Speed on one CUDA GPU: matmul peak, DeepSpeed bf16 training, sampling with the KV cache.

    python benchmarks/gpu.py [--json FILE]

In one run, on the GPU the process sees:
- the bf16 and tf32 peaks of an 8192^3 matmul (CUDA events, median of 10 after warm-up);
- CogLM training through `train.loop.train_loop` on DeepSpeed (ZeRO 2, bf16, one process) and on
  the plain loop under bf16 autocast, for the small and base presets, with tokens/s and model
  FLOP utilisation counted as in `benchmarks/train_speed.py`;
- text-to-image sampling (64 codes per image) with and without the KV cache, small preset.

The LoPAR against raster-AR super-resolution figures come from `benchmarks/sr_speed.py
--device cuda`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from train_speed import Counting, SyntheticTokenizer, synthetic_data  # benchmarks/, beside this

from cogview.losses import LossConfig
from cogview.masks import MaskingScheduler, TaskSchedule
from cogview.model import CogLM, coglm_config
from cogview.sampling import SamplingConfig, generate_images
from train.backends import LocalBackend, LossModule
from train.config import LoopConfig
from train.lm import CogLMObjective
from train.loop import train_loop

GRID = (8, 8)
MIX = "t2i=0.6,cap=0.2,inp=0.2"
DS_CONFIG = Path(__file__).resolve().parent.parent / "ds_config.json"


def cuda_time(fn, reps: int = 10, warmup: int = 3) -> float:
    """Median seconds of `fn()` by CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def matmul_peaks(n: int = 8192) -> dict[str, float]:
    peaks = {}
    for name, dtype in (("bf16", torch.bfloat16), ("tf32", torch.float32)):
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        peaks[name] = 2 * n**3 / cuda_time(lambda a=a, b=b: a @ b)
    torch.backends.cuda.matmul.allow_tf32 = False
    return peaks


def train_rate(preset: str, batch: int, steps: int, backend: str, warmup: int = 5
               ) -> dict[str, float]:
    """tokens/s and useful FLOP/s of `steps` timed training steps (after `warmup`)."""
    tok = SyntheticTokenizer()
    torch.manual_seed(0)
    model = CogLM(coglm_config(preset, tok.vocab_size))
    sched = MaskingScheduler(tok, schedule=TaskSchedule.parse(MIX), text_dropout=0.1)
    objective = CogLMObjective(model=model, tokenizer=tok, train=synthetic_data(tok, 4096),
                               scheduler=sched, image_size=4 * GRID[0],
                               save_fn=lambda path, *a, **k: path, loss_config=LossConfig())
    counting = Counting(objective, grouped=True)
    loop = LoopConfig(steps=warmup + steps, batch_size=batch, warmup=1, precision="bf16",
                      save_every=10**9, eval_every=0,
                      deepspeed=str(DS_CONFIG) if backend == "deepspeed" else None)
    module = LossModule(objective.model, objective.loss)
    if backend == "deepspeed":
        from train.distributed import DeepSpeedBackend

        engine = DeepSpeedBackend(module, loop)
    else:
        engine = LocalBackend(module, loop, torch.device("cuda"))
    with tempfile.TemporaryDirectory() as out:
        train_loop(counting, loop, out, backend=engine, progress=False)
        records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "tokens_per_s" in r][warmup:]
    seconds = sum(r["step_s"] for r in timed)
    tokens = sum(r["tokens_per_s"] * r["step_s"] for r in timed)
    return {"preset": preset, "batch": batch, "backend": backend,
            "params_m": model.num_params() / 1e6, "step_ms": 1e3 * seconds / len(timed),
            "tokens_per_s": tokens / seconds,
            "flops_per_s": sum(counting.flops[warmup:]) / seconds}


def sample_rate(batch: int, use_cache: bool, reps: int = 3) -> dict[str, float]:
    from sample_speed import PROMPT, captions

    from tokenizer import UnifiedTokenizer

    tok = UnifiedTokenizer.train(captions(), vocab_size=512, image_codes=512, max_text_len=32)
    torch.manual_seed(0)
    model = CogLM(coglm_config("small", tok.vocab_size)).eval().cuda()
    text = tok.encode_text(PROMPT)
    cfg = SamplingConfig(batch_size=batch)

    def run() -> None:
        g = torch.Generator(device="cuda").manual_seed(0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            generate_images(model, tok, [text] * batch, GRID, cfg, g, use_cache=use_cache)

    seconds = cuda_time(run, reps=reps, warmup=1)
    return {"batch": batch, "cache": use_cache, "img_per_s": batch / seconds,
            "ms_per_batch": 1e3 * seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed training steps per row")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; this benchmark measures a GPU")
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["peak"] = peaks = matmul_peaks()
    print(f"{report['device']}, torch {torch.__version__}: matmul peak bf16 "
          f"{peaks['bf16'] / 1e12:.0f} TFLOP/s, tf32 {peaks['tf32'] / 1e12:.0f} TFLOP/s",
          flush=True)

    rows = []
    for preset, batch, backend in (
        ("small", 256, "deepspeed"),
        ("small", 256, "local"),
        ("base", 64, "deepspeed"),
        ("base", 256, "deepspeed"),
        ("base", 256, "local"),
    ):
        try:
            r = train_rate(preset, batch, args.steps, backend)
        except Exception as e:  # one failed row must not lose the others
            print(f"train {preset} batch {batch} {backend}: failed: {e!r}", flush=True)
            continue
        r["mfu_bf16"] = r["flops_per_s"] / peaks["bf16"]
        rows.append(r)
        print(f"train {preset:<6} {r['params_m']:6.1f}M batch {batch:4d} {backend:<9}: "
              f"{r['step_ms']:7.1f} ms/step "
              f"{r['tokens_per_s']:10.0f} tokens/s  MFU {r['mfu_bf16']:6.1%}", flush=True)
    report["train"] = rows

    samples = []
    for batch, cache in ((1, True), (32, True), (256, True), (32, False)):
        try:
            r = sample_rate(batch, cache)
        except Exception as e:
            print(f"sample batch {batch} cache {cache}: failed: {e!r}", flush=True)
            continue
        samples.append(r)
        print(f"sample small batch {batch:4d} cache {str(cache):<5}: {r['img_per_s']:9.1f} img/s "
              f"({r['ms_per_batch']:.0f} ms a batch)", flush=True)
    report["sample"] = samples
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"done in {time.process_time():.0f} s of CPU")


if __name__ == "__main__":
    main()
