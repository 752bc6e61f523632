"""Super-resolution speed (and, with a trained model, quality).

Speed: forward passes and wall time to turn one 8x8 code grid into 16x16 codes with
- direct SR (one parallel pass),
- LoPAR (2w-1 passes),
- a raster-order autoregressive SR baseline of the same model size with a KV cache (one pass
  per code: 256), the way a CogLM decodes an image.
Weights do not change the work a pass does, so the speed runs use freshly initialised models.

    python benchmarks/sr_speed.py --preset small --batch 1,8

Quality (`--model SR_DIR`): PSNR against the true 64 px image on held-out shapes scenes of
the SR output (32 px render -> VQVAE 8x8 codes -> SR -> 16x16 codes -> decoded 64 px) next
to bicubic upsampling of the 32 px VQVAE reconstruction.

    python benchmarks/sr_speed.py --model runs/sr --n 256

Measured on the shared 2-core CPU (--threads 1, batch 1, ms per 16x16 grid): small preset
(0.88M parameters) raster AR 276, LoPAR 85 (3.2x), direct 19 (14.7x); tiny preset raster AR
132, LoPAR 23 (5.7x), direct 4.2 (32x). At batch 8 LoPAR and raster AR cost about the same per
image. A LoPAR pass evaluates all 256 cells, so LoPAR does 7 x 256 cell evaluations where raster
AR does 256 one-token steps: it wins where a step costs the same as a whole pass (small batches,
latency-bound devices), not where the work is compute-bound.
Quality (small preset, 1200 steps of batch 32 on 20k shapes images, tiny VQVAE, 256 scenes):
bicubic 29.2 dB, direct SR 35.1 dB, LoPAR 35.1 dB (argmax), VQVAE ceiling 36.7 dB.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from cogview.masks import grid_cells
from cogview.model import CogLM
from cogview.sampling import SamplingConfig, sample_logits
from cogview.superres import (
    SRConfig,
    SRModel,
    sr_config,
    sr_sequence,
    super_resolve,
)

CAPTIONS = ["a red circle at the top left", "two blue squares", "a large green triangle"]


@torch.no_grad()
def ar_super_resolve(
    model: CogLM,
    tok,
    config: SRConfig,
    lr_codes: Tensor,
    texts: Sequence[Sequence[int]] | None,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Raster-order baseline: prefix `<sr> text <boi> lr <eoi>` prefilled once, then one
    KV-cached step per high-res code; the last prefix position predicts cell (1, 1)."""
    b, p, n = lr_codes.shape[0], config.hr_start, config.hr_size**2
    mask_ids = torch.full((b, n), tok.mask_id, dtype=torch.long, device=lr_codes.device)
    seq = sr_sequence(tok, config, texts, lr_codes, mask_ids)
    cells = grid_cells(config.hr_size, config.hr_size).to(lr_codes.device)  # (N, 2)
    r = tok.image_range
    head = model.head.weight[r.start : r.stop]  # (K, dim)
    cache = model.new_cache(b, config.seq_len)
    next_cell = torch.zeros_like(seq.cell[:, :p])
    next_cell[:, -1] = cells[0]
    h = model.hidden(
        seq.ids[:, :p],
        seq.pos[:, :p],
        seq.cell[:, :p],
        next_cell,
        attn_mask=seq.attn_mask[:, :, :p, :p],
        cache=cache,
    )
    key_valid = seq.attn_mask[:, 0, 0, :p]  # (B, p): the prefix keys that are real tokens
    codes = []
    logits = h[:, -1] @ head.T  # (B, K)
    for i in range(n):
        codes.append(sample_logits(logits, sampling, generator))
        if i == n - 1:
            break
        keys = torch.cat([key_valid, key_valid.new_ones(b, i + 1)], dim=1)  # (B, p + i + 1)
        h = model.hidden(
            tok.codes_to_ids(codes[-1])[:, None],
            torch.full((b, 1), p + i, device=lr_codes.device),
            cells[i].expand(b, 1, 2),
            cells[i + 1].expand(b, 1, 2),
            attn_mask=keys[:, None, None, :],
            cache=cache,
        )
        logits = h[:, -1] @ head.T
    return torch.stack(codes, dim=1).view(b, config.hr_size, config.hr_size)


def _timed(fn: Callable[[], object], reps: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _count_passes(model: CogLM, fn: Callable[[], object]) -> int:
    calls = []
    handle = model.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        fn()
    finally:
        handle.remove()
    return len(calls)


def _runs(sr, ar, tok, config, lr, texts, sampling, g) -> dict[str, Callable[[], object]]:
    return {
        "raster AR (KV cache)": lambda: ar_super_resolve(ar, tok, config, lr, texts, sampling, g),
        "LoPAR": lambda: super_resolve(sr, tok, lr, texts, sampling=sampling, generator=g),
        "direct": lambda: super_resolve(
            sr, tok, lr, texts, steps=1, sampling=sampling, generator=g
        ),
    }


def speed(args: argparse.Namespace) -> None:
    from tokenizer import UnifiedTokenizer

    device = torch.device(args.device)
    tok = UnifiedTokenizer.train(CAPTIONS * 10, vocab_size=280, image_codes=args.codes)
    config = sr_config(args.preset, tok.vocab_size)
    torch.manual_seed(0)
    sr = SRModel(config).to(device).eval()
    ar = CogLM(config.lm).to(device).eval()  # same size, raster order
    sampling = SamplingConfig(temperature=1.0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(
        f"device {device}, preset {args.preset} ({sr.num_params() / 1e6:.2f}M params), "
        f"{config.lr_size}x{config.lr_size} -> {config.hr_size}x{config.hr_size} codes, "
        f"window {config.window}, torch threads {torch.get_num_threads()}"
    )
    print("| batch | method | forward passes | ms per batch | ms per image | vs raster AR |")
    print("|---|---|---|---|---|---|")
    for b in args.batch:
        g = torch.Generator(device).manual_seed(0)
        lr = torch.randint(0, args.codes, (b, config.lr_size, config.lr_size), device=device)
        texts = [tok.encode_text(CAPTIONS[i % len(CAPTIONS)]) for i in range(b)]
        runs = _runs(sr, ar, tok, config, lr, texts, sampling, g)
        ar_time = None
        for name, fn in runs.items():
            model = ar if name.startswith("raster") else sr
            passes = _count_passes(model, fn)
            seconds = _timed(fn, args.reps, sync)
            ar_time = ar_time or seconds
            print(
                f"| {b} | {name} | {passes} | {seconds * 1e3:.1f} | {seconds * 1e3 / b:.2f} "
                f"| {ar_time / seconds:.1f}x |"
            )


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 images (B, H, W, 3)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


@torch.no_grad()
def quality(args: argparse.Namespace) -> None:
    """PSNR against the true 64 px render of held-out shapes scenes."""
    from PIL import Image

    from cogview.bench import shapes
    from cogview.images import fit, from_tensor, to_tensor
    from cogview.superres import load_sr

    device = torch.device(args.device)
    sr = load_sr(args.model, device=device)
    vq, tok = sr.vqvae, sr.tokenizer
    rng = np.random.default_rng(args.seed)
    truth, captions = [], []
    for _ in range(args.n):
        scene = shapes.sample_scene(rng, 1 + int(rng.integers(2)))
        truth.append(shapes.render(scene, sr.image_size))
        captions.append(shapes.caption(scene, rng))
    truth = np.stack(truth)  # (n, 64, 64, 3)
    # the low-res input as the token shards make it: the 64 px image shrunk by a box filter
    low = np.stack([fit(t, sr.low_res_size) for t in truth])
    lr_codes = torch.cat([vq.encode(to_tensor(low[i : i + 64]).to(device))
                          for i in range(0, args.n, 64)])
    texts = tok.encode_texts(captions)
    recon32 = from_tensor(torch.cat([vq.decode(lr_codes[i : i + 64])
                                     for i in range(0, args.n, 64)]))
    size = (sr.image_size, sr.image_size)
    bicubic = np.stack([np.asarray(Image.fromarray(r).resize(size, Image.Resampling.BICUBIC))
                        for r in recon32])
    ceiling = from_tensor(torch.cat([
        vq.decode(vq.encode(to_tensor(truth[i : i + 64]).to(device)))
        for i in range(0, args.n, 64)
    ]))
    rows = {
        "bicubic upsampling of the 32 px VQVAE reconstruction": bicubic,
    }
    w = sr.model.sr.num_orders
    runs = [
        ("SR direct (1 pass), argmax", 1, 0.0, True),
        ("SR direct (1 pass), argmax, no caption", 1, 0.0, False),
        (f"SR LoPAR ({w} passes), argmax", w, 0.0, True),
        (f"SR LoPAR ({w} passes), argmax, no caption", w, 0.0, False),
        (f"SR LoPAR ({w} passes), sampled T=1", w, 1.0, True),
    ]
    for name, steps, temperature, with_text in runs:
        g = torch.Generator(device).manual_seed(0)
        sampling = SamplingConfig(temperature=temperature, batch_size=64)
        out = super_resolve(sr.model, tok, lr_codes, texts if with_text else None, steps=steps,
                            sampling=sampling, generator=g)
        rows[name] = from_tensor(torch.cat([vq.decode(out.codes[i : i + 64])
                                            for i in range(0, args.n, 64)]))
    rows["(ceiling) VQVAE reconstruction of the true 64 px image"] = ceiling
    print(f"\nSR model {sr.meta['path']} (step {sr.meta['step']}), {args.n} held-out shapes "
          f"scenes (seed {args.seed}), PSNR against the true {size[0]} px render")
    print("| output | PSNR dB (mean of images) | vs bicubic | images above bicubic |")
    print("|---|---|---|---|")
    base = _psnr(bicubic, truth)
    for name, images in rows.items():
        p = _psnr(images, truth)
        above = (p > base).mean() * 100
        print(f"| {name} | {p.mean():.2f} | {p.mean() - base.mean():+.2f} | {above:.0f}% |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--codes", type=int, default=512, help="codebook size (speed runs)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--model", help="trained SR checkpoint folder: measure quality too")
    parser.add_argument("--no-speed", action="store_true", help="quality only")
    parser.add_argument("--n", type=int, default=256, help="held-out scenes for quality")
    parser.add_argument("--seed", type=int, default=10_000_019, help="held-out scene seed")
    args = parser.parse_args(argv)
    args.batch = [int(x) for x in args.batch.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_speed:
        speed(args)
    if args.model:
        quality(args)


if __name__ == "__main__":
    main()
