"""Speed on one CUDA GPU: matmul peak, DeepSpeed bf16 training, sampling with the KV cache.

    python benchmarks/gpu.py [--json FILE]
    python benchmarks/gpu.py --suite scale [--json FILE] [--budget 420]
    python benchmarks/gpu.py --suite scale --device cpu --dry-run   # every path, tiny, on a CPU

In one run, on the GPU the process sees:
- the bf16 and tf32 peaks of an 8192^3 matmul (CUDA events, median of 10 after warm-up);
- CogLM training through `train.loop.train_loop` on DeepSpeed (ZeRO 2, bf16, one process) and on
  the plain loop under bf16 autocast, for the small and base presets, with tokens/s and model
  FLOP utilisation counted as in `benchmarks/train_speed.py`;
- text-to-image sampling (64 codes per image) with and without the KV cache, small preset.

The LoPAR against raster-AR super-resolution figures come from `benchmarks/sr_speed.py
--device cuda`.

`--suite scale` measures training at GPU sizes, each row through `train.loop.train_loop` on
streamed token shards (`train.streaming`, synthetic 256 px / f=16 data: 16x16 codes of an
8192-code VQVAE, captions of 6-14 tokens, about 320 tokens a sequence with the default task
mix), batches built by data-loader workers: base (~100M) eager, compiled, on DeepSpeed ZeRO-2
(one process) and with activation checkpointing; large (~350M) compiled. Per row: ms/step,
tokens/s, MFU against the bf16 matmul peak of the same run, the share of the step spent
waiting for a batch (`data_wait_s` of metrics.jsonl) and peak GPU memory. Inpainting contexts
are the samples' own codes (no VQVAE in the workers), so the batch cost is the scheduler's
alone. Rows stop being started when `--budget` seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

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

START = time.perf_counter()
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
    records, timed, seconds, tokens = _timed_run(counting, loop, backend, torch.device("cuda"),
                                                 warmup)
    return {"preset": preset, "batch": batch, "backend": backend,
            "params_m": model.num_params() / 1e6, "step_ms": 1e3 * seconds / len(timed),
            "tokens_per_s": tokens / seconds,
            "flops_per_s": sum(counting.flops[warmup:]) / seconds}


def _timed_run(objective: Any, loop: LoopConfig, backend: str, device: torch.device,
               warmup: int) -> tuple[list[dict], list[dict], float, float]:
    """Train `objective` through the real loop on `backend` ("local" or "deepspeed"); (every
    metrics record, the records after `warmup` steps, their seconds, their tokens)."""
    module = LossModule(objective.model, objective.loss)
    if backend == "deepspeed":
        from train.distributed import DeepSpeedBackend

        engine = DeepSpeedBackend(module, loop)
    else:
        engine = LocalBackend(module, loop, device)
    with tempfile.TemporaryDirectory() as out:
        train_loop(objective, loop, out, backend=engine, progress=False)
        records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "tokens_per_s" in r][warmup:]
    seconds = sum(r["step_s"] for r in timed)
    return records, timed, seconds, sum(r["tokens_per_s"] * r["step_s"] for r in timed)


SCALE_ROWS = (  # name, preset, batch, backend, compile, checkpointing
    ("base eager", "base", 128, "local", False, False),
    ("base compiled", "base", 128, "local", True, False),
    ("base ZeRO-2", "base", 128, "deepspeed", False, False),
    ("base compiled, checkpointing", "base", 128, "local", True, True),
    ("large compiled", "large", 64, "local", True, False),
    ("base compiled, batch 256", "base", 256, "local", True, False),
)
SCALE_GRID = 16  # 256 px at f=16
SCALE_CODES = 8192


def synthetic_shards(out: Path, tok: SyntheticTokenizer, n: int, shards: int) -> Path:
    """A token shard folder of `n` random samples (16x16 codes at 256 px, captions of 6-14
    tokens) in `shards` shards, as `cogview encode` writes them."""
    import tarfile

    from train.data.tokens import FORMAT, INFO_FILE, VERSION, write_sample

    g = torch.Generator().manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        with tarfile.open(out / f"train-{k:06d}.tar", "w") as tar:
            for i in range(k, n, shards):
                codes = torch.randint(0, tok.num_image_codes, (SCALE_GRID, SCALE_GRID),
                                      generator=g)
                length = int(torch.randint(6, 15, (1,), generator=g))
                ids = torch.randint(tok.text_range.start, tok.text_range.stop, (length,),
                                    generator=g).tolist()
                write_sample(tar, f"s{i:07d}", {256: codes.numpy()}, ids, "", None)
    info = {"format": FORMAT, "version": VERSION, "counts": {"train": n, "test": 0},
            "sizes": [256], "grids": {"256": [SCALE_GRID, SCALE_GRID]},
            "codebook_size": tok.num_image_codes}
    (out / INFO_FILE).write_text(json.dumps(info))
    return out


def scale_rate(data: Path, tok: SyntheticTokenizer, preset: str, batch: int, backend: str,
               compiled: bool, checkpointing: bool, steps: int, warmup: int, workers: int,
               device: torch.device, overrides: dict) -> dict:
    """One row of the scale suite: `steps` timed training steps after `warmup`."""
    from train.data.stream import StreamConfig
    from train.streaming import StreamCogLMObjective

    torch.manual_seed(0)
    model = CogLM(coglm_config(preset, tok.vocab_size, **overrides))
    sched = MaskingScheduler(tok, schedule=TaskSchedule.parse(MIX), text_dropout=0.1)
    objective = StreamCogLMObjective(
        model=model, tokenizer=tok, train=json.loads((data / "info.json").read_text()),
        scheduler=sched, image_size=256, save_fn=lambda path, *a, **k: path,
        loss_config=LossConfig(), data=str(data),
        stream_config=StreamConfig(stream=True, workers=workers, shuffle_buffer=512))
    counting = Counting(objective, grouped=True)
    precision = "bf16" if device.type == "cuda" else "auto"
    loop = LoopConfig(steps=warmup + steps, batch_size=batch, warmup=1, precision=precision,
                      save_every=10**9, eval_every=0, compile=compiled,
                      checkpointing=checkpointing,
                      deepspeed=str(DS_CONFIG) if backend == "deepspeed" else None)
    loop = loop.resolved(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    records, timed, seconds, tokens = _timed_run(counting, loop, backend, device, warmup)
    return {"preset": preset, "batch": batch, "backend": backend, "compile": compiled,
            "checkpointing": checkpointing, "precision": loop.precision,
            "params_m": model.num_params() / 1e6, "step_ms": 1e3 * seconds / len(timed),
            "tokens_per_s": tokens / seconds,
            "tokens_per_sample": tokens / (batch * len(timed)),
            "flops_per_s": sum(counting.flops[warmup:]) / seconds,
            "data_wait_share": sum(r["data_wait_s"] for r in timed) / seconds,
            "first_steps_s": [round(r["step_s"], 3) for r in records[:warmup]],
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else None}


def scale_suite(args: argparse.Namespace, report: dict) -> None:
    """Training at GPU sizes (see the module docstring); rows go into report["scale"]."""
    device = torch.device(args.device)
    started = time.perf_counter()
    tok = SyntheticTokenizer(image_codes=SCALE_CODES)
    steps, warmup, overrides = args.steps, args.scale_warmup, {}
    rows = SCALE_ROWS
    if args.dry_run:  # every code path at tiny sizes: the tiny preset, two steps a row
        rows = tuple((name, "tiny", 8, backend, c, ck)
                     for name, _, _, backend, c, ck in SCALE_ROWS[:5])
        steps, warmup, overrides = 2, 2, {"max_seq_len": 640}
    if device.type == "cuda":
        peak = report.get("peak", {}).get("bf16") or matmul_peaks()["bf16"]
    else:
        from train_speed import matmul_peak

        peak = matmul_peak(torch.bfloat16, n=1024)
    report["scale_peak_bf16"] = peak
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_shards(Path(tmp) / "tokens", tok, n=64 if args.dry_run else 16384,
                                shards=8)
        print(f"synthetic shards: {time.perf_counter() - started:.0f} s", flush=True)
        for name, preset, batch, backend, compiled, checkpointing in rows:
            if time.perf_counter() - started > args.budget:
                print(f"{name}: skipped (budget of {args.budget} s spent)", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                r = scale_rate(data, tok, preset, batch, backend, compiled, checkpointing,
                               steps, warmup, args.workers, device, overrides)
            except Exception as e:  # one failed row must not lose the others
                print(f"{name}: failed: {e!r}", flush=True)
                results.append({"name": name, "error": repr(e)})
                continue
            r.update(name=name, mfu_bf16=r["flops_per_s"] / peak,
                     row_s=time.perf_counter() - t0)
            results.append(r)
            print(f"{name:<30} {r['params_m']:6.1f}M batch {batch:4d}: {r['step_ms']:8.1f} ms/step"
                  f" {r['tokens_per_s']:10.0f} tokens/s ({r['tokens_per_sample']:.0f}/sample) "
                  f"MFU {r['mfu_bf16']:6.1%}  waiting for data {r['data_wait_share']:5.1%}  "
                  f"peak {r['peak_gb'] or 0:.1f} GB  ({r['row_s']:.0f} s)", flush=True)
            report["scale"] = results
            if args.json:  # after every row: a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps(report, indent=1))
    report["scale"] = results


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
    p.add_argument("--suite", choices=("speed", "scale"), default="speed",
                   help="speed: the rows below; scale: training at GPU sizes (see above)")
    p.add_argument("--device", default="cuda", help="scale suite: cuda, or cpu with --dry-run")
    p.add_argument("--dry-run", action="store_true",
                   help="scale suite: the tiny preset, two steps a row (checks every path)")
    p.add_argument("--budget", type=float, default=420,
                   help="scale suite: start no row after this many seconds")
    p.add_argument("--scale-warmup", type=int, default=12,
                   help="scale suite: untimed steps a row (compilation, first batches)")
    p.add_argument("--workers", type=int, default=6,
                   help="scale suite: data-loader workers building the batches")
    args = p.parse_args()
    if args.suite == "scale":
        if args.device != "cuda" and not args.dry_run:
            raise SystemExit("error: --device cpu runs only with --dry-run")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device; use --device cpu --dry-run")
        report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                  "torch": torch.__version__, "suite": "scale", "dry_run": args.dry_run}
        scale_suite(args, report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"done in {time.perf_counter() - START:.0f} s")
        return
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
