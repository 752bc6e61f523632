"""This project's CogLM against dalle-pytorch and x-transformers at one shape, in one run.

    python benchmarks/peers.py [--batch 32] [--gen-batch 32] [--rounds 5] [--json FILE]

The shape is the `small` preset: dim 256, 6 layers, 8 heads, 32 text + 64 image tokens (an
8x8 code grid of 512 codes). Measured, on the same batch for every model:
- training step: forward, loss, backward and an AdamW step (ms and tokens/s);
- generation: 64 image codes per prompt after a 32-token text prompt, each model with its own
  KV cache (images/s). dalle-pytorch's `generate_images` drops its cache when
  `cond_scale == 1`, so its own cached `forward(..., cache=...)` is driven by a copy of that
  loop without the VAE decode, and that loop is also timed as shipped; x-transformers runs
  `AutoregressiveWrapper.generate` with `cache_kv=True`; ours runs
  `cogview.sampling.generate_images`;
- the FLOPs of each (torch's FlopCounterMode, attention included), so that a time can be read
  as a FLOP rate against the matmul peak measured in the same run.
Contenders run in turns (round robin) and the median of the rounds is reported, so a busy
neighbour on a shared CPU slows every contender alike. Each row is compared with ours at the
same precision: fp32, and, where the CPU has AVX-512 bf16 (or AMX), bf16 (training under
autocast, generation with bf16 weights) for ours and dalle-pytorch.

The peers are installed into `benchmarks/.venv-peers` (CPU torch first, then the peers) and
the script re-executes itself there; this project is imported from the source tree by path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv-peers"
TORCH_PIN = "torch==2.13.0"
# dalle-pytorch's own requirements include packages that no longer build (youtokentome needs
# Cython at build time) and ones it never imports for a DALLE forward (transformers,
# torchvision, DALL-E, taming-transformers); it is installed without them and given what its
# modules import. pkg_resources went away in setuptools 81.
DALLE_IMPORTS = (
    "axial-positional-embedding",
    "rotary-embedding-torch",
    "omegaconf",
    "pyyaml",
    "requests",
    "pillow",
    "tqdm",
    "packaging",
    "setuptools<81",
)
PROJECT_IMPORTS = ("einops", "numpy", "tokenizers")
STAMP = VENV / ".installed"

SHAPE = dict(dim=256, depth=6, heads=8, text_len=32, grid=8, codes=512)


# ---------------------------------------------------------------------------------------------
# environment


def in_peer_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_peer_venv() -> None:
    """Create the peers' venv once, then re-run this script inside it (never returns there)."""
    if in_peer_venv():
        return
    py = VENV / "bin" / "python"
    if not STAMP.is_file():
        print(f"installing peers into {VENV} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        # the venv ignores itself, so nothing has to be added to the repository's .gitignore
        (VENV / ".gitignore").write_text("*\n")
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, TORCH_PIN], check=True)
        subprocess.run([*pip, "x-transformers", *DALLE_IMPORTS, *PROJECT_IMPORTS], check=True)
        subprocess.run([*pip, "--no-deps", "dalle-pytorch"], check=True)
        STAMP.write_text("ok\n")
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])


def import_dalle():
    """dalle_pytorch imports taming's VQGAN at module level, for a VAE we do not use: give it
    an empty stand-in package first."""
    if "taming" not in sys.modules:
        names = ("taming", "taming.models", "taming.models.vqgan")
        for name in names:
            sys.modules[name] = types.ModuleType(name)
        vqgan = sys.modules["taming.models.vqgan"]
        vqgan.VQModel = vqgan.GumbelVQ = type("Unavailable", (), {})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import dalle_pytorch
    return dalle_pytorch


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# contenders: each gives a training step and a generation call on shared data


def adamw(params):
    """One optimizer for every contender: torch's fused AdamW (the one this project's trainer
    uses; the per-tensor version spends most of a small model's step in tiny kernels)."""
    import torch

    return torch.optim.AdamW(params, lr=1e-4, fused=True)


def median_times(
    fns: dict[str, Callable[[], None]], rounds: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Seconds per call of each function, wall clock and CPU time of this process: warm-up,
    then `rounds` turns of all, median of each. On a shared machine the CPU time is the
    steadier figure: the wall clock also counts time other jobs held the cores."""
    for k, fn in fns.items():
        for _ in range(warmup):
            t0 = time.perf_counter()
            fn()
            log(f"  warm-up {k}: {time.perf_counter() - t0:.3f} s")
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
        log(
            f"  round {r + 1}/{rounds} wall/cpu s: "
            + ", ".join(f"{wall[k][-1]:.2f}/{cpu[k][-1]:.2f}" for k in fns)
        )
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k])} for k in fns}


def build_ours(text_vocab: int):
    """A tokenizer with `text_vocab`-ish text ids and the small CogLM."""
    import random

    sys.path.insert(0, str(ROOT))
    from cogview.model import CogLM, coglm_config
    from tokenizer import UnifiedTokenizer

    # a text vocabulary learnt from generated word soup: only its size matters here
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(3000)]
    captions = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(4000)]
    tok = UnifiedTokenizer.train(
        captions,
        vocab_size=text_vocab,
        image_codes=SHAPE["codes"],
        max_text_len=SHAPE["text_len"],
    )
    config = coglm_config("small", tok.vocab_size)
    assert (config.dim, config.n_layers, config.n_heads) == (
        SHAPE["dim"],
        SHAPE["depth"],
        SHAPE["heads"],
    )
    return tok, CogLM(config)


def bf16_autocast(fn: Callable[[], None]) -> Callable[[], None]:
    """`fn` under CPU bf16 autocast: how a training step runs in bf16 mixed precision."""
    import torch

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fn()

    return run


def in_bf16(model):
    """A copy of `model` with bf16 weights: how a model generates in bf16 (autocast in a decode
    step costs more casts than its one-token matmuls save)."""
    import copy

    import torch

    return copy.deepcopy(model).to(torch.bfloat16)


def make_ours(tok, model, text, codes):

    from cogview import masks
    from cogview.losses import lm_loss

    seqs = [masks.text_to_image(tok, t.tolist(), c) for t, c in zip(text, codes, strict=True)]
    batch = masks.collate(seqs, tok.pad_id)
    opt = adamw(model.parameters())

    def train_step() -> None:
        model.train()
        loss = lm_loss(model, batch).mean()  # the trainer's loss: logits at targets only
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return train_step


def ours_generate(tok, model, gen_text):
    import torch

    from cogview.sampling import SamplingConfig, generate_images

    grid = (SHAPE["grid"], SHAPE["grid"])
    prompts = [t.tolist() for t in gen_text]
    config = SamplingConfig(batch_size=len(prompts))
    gen = torch.Generator().manual_seed(0)

    def generate() -> None:
        model.eval()
        out = generate_images(model, tok, prompts, grid, config, gen)
        assert out.shape == (len(prompts), *grid)

    return generate


def make_dalle(dalle_pytorch, text_tokens, text, codes, plain: bool):
    """DALLE at the shape; `plain` turns off its token shift and rotary embeddings (defaults on)
    so that the block matches a plain pre-LN transformer like ours."""
    vae = dalle_pytorch.DiscreteVAE(
        image_size=SHAPE["grid"] * 4,
        num_layers=2,  # f = 4: 32 px -> 8x8 codes
        num_tokens=SHAPE["codes"],
        codebook_dim=64,
        hidden_dim=16,
    )
    extra = dict(shift_tokens=False, rotary_emb=False) if plain else {}
    model = dalle_pytorch.DALLE(
        dim=SHAPE["dim"],
        vae=vae,
        num_text_tokens=text_tokens,
        text_seq_len=SHAPE["text_len"],
        depth=SHAPE["depth"],
        heads=SHAPE["heads"],
        dim_head=SHAPE["dim"] // SHAPE["heads"],
        **extra,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params)
    flat_codes = codes.flatten(1)
    text = text.clamp(min=1)  # dalle-pytorch reserves id 0 of the text for padding

    def train_step() -> None:
        model.train()
        loss = model(text, flat_codes, return_loss=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, train_step


def dalle_generate(model, gen_text, shipped: bool = False):
    """64 codes per prompt by DALLE.generate_images' loop without the VAE decode.

    `shipped=False` drives its cached `forward(..., cache=...)` directly: what
    generate_images would do if the cache reached the model. `shipped=True` goes through
    `forward_with_cond_scale` as generate_images(use_cache=True) does; at cond_scale 1 that
    does not pass the cache on, so every step runs the whole sequence again.
    """
    import torch
    from dalle_pytorch.dalle_pytorch import gumbel_sample, top_k

    gen_text = gen_text.clamp(min=1)
    n_text, total = model.text_seq_len, model.text_seq_len + model.image_seq_len
    forward = model.forward_with_cond_scale if shipped else model

    @torch.no_grad()
    def generate() -> None:
        model.eval()
        out, cache = gen_text, {}
        for _ in range(n_text, total):
            logits = forward(out[:, :n_text], out[:, n_text:], cache=cache)[:, -1, :]
            sample = gumbel_sample(top_k(logits, thres=0.5), temperature=1.0, dim=-1)
            out = torch.cat((out, (sample - model.num_text_tokens)[:, None]), dim=-1)
        assert out.shape[1] == total

    return generate


def make_xtransformers(vocab, text, codes, gen_text):
    import torch
    from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper

    n_text, n_image = SHAPE["text_len"], SHAPE["grid"] ** 2
    net = TransformerWrapper(
        num_tokens=vocab,
        max_seq_len=n_text + n_image,
        attn_layers=Decoder(dim=SHAPE["dim"], depth=SHAPE["depth"], heads=SHAPE["heads"]),
    )
    model = AutoregressiveWrapper(net)
    opt = adamw(model.parameters())
    # one stream: text ids, then image codes offset past the text ids
    seq = torch.cat([text, codes.flatten(1) + (vocab - SHAPE["codes"])], dim=1)

    def train_step() -> None:
        model.train()
        loss = model(seq)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def generate() -> None:
        model.eval()
        out = model.generate(gen_text, n_image, cache_kv=True)
        assert out.shape[1] == n_image

    return model, train_step, generate


# ---------------------------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    precision: str  # fp32, or bf16: training under autocast, generation with bf16 weights
    model: Any
    train: Callable[[], None] | None
    generate: Callable[[], None]

    @property
    def key(self) -> str:
        return f"{self.name}|{self.precision}"


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(fn: Callable[[], None]) -> float:
    """FLOPs of one call as torch's FlopCounterMode counts them (matmuls and attention).
    Attention goes through the math backend here, so that every model's is counted."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return float(counter.get_total_flops())


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    dalle_pytorch = import_dalle()

    tok, ours = build_ours(args.text_vocab)
    vocab = tok.vocab_size
    text_tokens = vocab - SHAPE["codes"]  # specials + text: the peers' text vocabulary
    b, gb, n_text, g = args.batch, args.gen_batch, SHAPE["text_len"], SHAPE["grid"]
    text_lo, text_hi = tok.text_range.start, tok.text_range.stop
    text = torch.randint(text_lo, text_hi, (b, n_text))
    codes = torch.randint(0, SHAPE["codes"], (b, g, g))
    gen_text = torch.randint(text_lo, text_hi, (gb, n_text))
    from sample_speed import matmul_peak  # imports cogview: on the path since build_ours

    from cogview.devices import cpu_has_bf16

    bf16 = cpu_has_bf16() and not args.no_bf16
    ours_train = make_ours(tok, ours, text, codes)
    dalle, dalle_train = make_dalle(dalle_pytorch, text_tokens, text, codes, plain=False)
    plain, plain_train = make_dalle(dalle_pytorch, text_tokens, text, codes, plain=True)
    xt, xt_train, xt_gen = make_xtransformers(vocab, text, codes, gen_text)
    ours_name, dalle_name = "cogview (ours)", "dalle-pytorch (defaults, its cache)"
    contenders = [
        Contender(ours_name, "fp32", ours, ours_train, ours_generate(tok, ours, gen_text)),
        Contender(dalle_name, "fp32", dalle, dalle_train, dalle_generate(dalle, gen_text)),
        Contender(
            "dalle-pytorch (defaults, generate_images as shipped)",
            "fp32",
            dalle,
            None,
            dalle_generate(dalle, gen_text, shipped=True),
        ),
        Contender(
            "dalle-pytorch (no shift, no rotary, its cache)",
            "fp32",
            plain,
            plain_train,
            dalle_generate(plain, gen_text),
        ),
        Contender("x-transformers", "fp32", xt, xt_train, xt_gen),
    ]
    if bf16:
        contenders += [
            Contender(
                ours_name,
                "bf16",
                ours,
                bf16_autocast(ours_train),
                ours_generate(tok, in_bf16(ours), gen_text),
            ),
            Contender(
                dalle_name,
                "bf16",
                dalle,
                bf16_autocast(dalle_train),
                dalle_generate(in_bf16(dalle), gen_text),
            ),
        ]
    log("counting FLOPs ...")
    flops: dict[str, dict[str, float | None]] = {}
    for c in contenders:
        if c.precision == "fp32":  # the same arithmetic in bf16
            flops[c.name] = {
                "train": count_flops(c.train) if c.train else None,
                "gen": count_flops(c.generate),
            }
    log("measuring the matmul peak ...")
    peak = {"fp32": matmul_peak(torch.float32)}
    if bf16:
        peak["bf16"] = matmul_peak(torch.bfloat16)
    log(f"timing training steps ({args.rounds} rounds) ...")
    train = median_times({c.key: c.train for c in contenders if c.train}, args.rounds)
    log(f"timing generation ({args.rounds} rounds) ...")
    gen = median_times({c.key: c.generate for c in contenders}, args.rounds)

    tokens_per_step = b * (n_text + g * g)
    rows = []
    for c in contenders:
        k, f = c.key, flops[c.name]
        # > 1: ours at the same precision is that many times faster than this row
        base = f"{ours_name}|{c.precision}"
        base_train, base_gen = train[base], gen[base]
        row = dict(
            model=c.name,
            precision=c.precision,
            params=n_params(c.model),
            train_gflop=f["train"] / 1e9 if f["train"] else None,
            gen_gflop=f["gen"] / 1e9,
        )
        step = train.get(k)
        for clock in ("wall", "cpu"):
            row[f"train_step_ms_{clock}"] = step[clock] * 1e3 if step else None
            row[f"train_tokens_per_s_{clock}"] = tokens_per_step / step[clock] if step else None
            row[f"train_gflop_per_s_{clock}"] = (
                f["train"] / step[clock] / 1e9 if step and f["train"] else None
            )
            row[f"gen_images_per_s_{clock}"] = gb / gen[k][clock]
            row[f"gen_gflop_per_s_{clock}"] = f["gen"] / gen[k][clock] / 1e9
            row[f"ours_train_speedup_{clock}"] = step[clock] / base_train[clock] if step else None
            row[f"ours_gen_speedup_{clock}"] = gen[k][clock] / base_gen[clock]
        rows.append(row)
    from importlib.metadata import version

    versions = {k: version(k) for k in ("torch", "dalle-pytorch", "x-transformers")}
    return dict(
        shape={**SHAPE, "vocab": vocab, "batch": b, "gen_batch": gb},
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        bf16=bf16,
        rounds=args.rounds,
        versions=versions,
        matmul_peak_gflop_per_s={k: {c: v[c] / 1e9 for c in v} for k, v in peak.items()},
        rows=rows,
    )


def markdown(report: dict) -> str:
    s = report["shape"]
    lines = [
        f"dim {s['dim']}, {s['depth']} layers, {s['heads']} heads, {s['text_len']} text + "
        f"{s['grid'] ** 2} image tokens, vocab {s['vocab']}; train batch {s['batch']}, "
        f"generation batch {s['gen_batch']}; {report['threads']} thread(s); median of "
        f"{report['rounds']} rounds; times are CPU time of the process (wall clock in the "
        "JSON); ratios compare ours with the row at the same precision",
        "",
        "| model | precision | params | train GFLOP | train step ms | train GFLOP/s "
        "| gen GFLOP | gen img/s | gen GFLOP/s | ours faster: train | ours faster: gen |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(value, spec: str, suffix: str = "") -> str:
        return "-" if value is None else f"{value:{spec}}{suffix}"

    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['params'] / 1e6:.2f}M "
            f"| {fmt(r['train_gflop'], '.1f')} | {fmt(r['train_step_ms_cpu'], '.0f')} "
            f"| {fmt(r['train_gflop_per_s_cpu'], '.0f')} | {r['gen_gflop']:.1f} "
            f"| {r['gen_images_per_s_cpu']:.1f} | {r['gen_gflop_per_s_cpu']:.0f} "
            f"| {fmt(r['ours_train_speedup_cpu'], '.2f', 'x')} "
            f"| {fmt(r['ours_gen_speedup_cpu'], '.2f', 'x')} |"
        )
    peaks = ", ".join(
        f"{k} {v['cpu']:.0f} GFLOP/s" for k, v in report["matmul_peak_gflop_per_s"].items()
    )
    lines += ["", f"Matmul peak of the same run (1024^3, best per CPU second): {peaks}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="training batch (sequences)")
    parser.add_argument("--gen-batch", type=int, default=32, help="images generated per call")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1; 0 = torch default)"
    )
    parser.add_argument("--text-vocab", type=int, default=1024, help="text BPE size asked for")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 rows")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "out" / "benchmarks" / "peers.json", help="report file"
    )
    args = parser.parse_args()
    ensure_peer_venv()
    report = run(args)
    print(markdown(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
