"""`cogview train-sr` and `cogview superres`: train and run the super-resolution model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cogview.cli.flags import add_flags, from_flags
from cogview.cli.train import add_loop_flags, add_stream_flags, loop_config, report
from cogview.errors import UserError
from train.lm import LOOP_DEFAULTS
from train.sr import SRTrainConfig

# argmax: on held-out shapes, sampling at T=1 cost ~3 dB PSNR against the argmax output
SR_TEMPERATURE = 0.0
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-sr",
        help="train a super-resolution model (low-res codes -> high-res codes) on token shards",
        description=(
            "Train the super-resolution model on token shards that hold codes of every image at "
            "two sizes (cogview encode --sizes 32,64). Samples follow the LoPAR schedule: a step "
            "r is drawn per sample, the high-res cells of order >= r are masked and predicted, so "
            "one model does direct (one pass) and iterative SR. Checkpoints go to "
            "OUT/step-XXXXXXXX/ (self-contained: config, weights, tokenizer, VQVAE). Training "
            "flags are those of `cogview train`; data-parallel runs use --deepspeed the same way."
        ),
        allow_abbrev=False,
    )
    add_flags(p, SRTrainConfig, show_defaults=True)
    add_stream_flags(p)
    add_loop_flags(p, LOOP_DEFAULTS)
    p.set_defaults(func=run_train_sr)

    p = subparsers.add_parser(
        "superres",
        help="super-resolve an image: 32 px -> codes -> SR -> 64 px",
        description=(
            "Bring IMG to the SR model's input size (resizing it with a note when needed), "
            "encode it with the model's VQVAE, predict the high-resolution codes (--steps LoPAR "
            "passes; 1 = direct SR in one pass) and decode them to an image."
        ),
        allow_abbrev=False,
    )
    p.add_argument("image", metavar="IMG", help="image file to super-resolve")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="image file to write (.png, .jpg, .webp, .bmp)")
    p.add_argument("--model", default=None, metavar="SR_DIR",
                   help="SR checkpoint folder or training run (default: the shipped one)")
    p.add_argument("--steps", type=int, default=None,
                   help="LoPAR passes, 1 = direct SR (default 2w-1, one per order)")
    p.add_argument("--prompt", default=None, help="caption of the image (optional)")
    add_sr_sampling_flags(p)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="torch device (default: cpu)")
    p.set_defaults(func=run_superres)


SHIPPED_SR = ""  # the value of a bare `--sr`


def add_sr_flags(p: argparse.ArgumentParser) -> None:
    """`--sr` for commands that make base-resolution images (generate, inpaint)."""
    g = p.add_argument_group("super-resolution")
    g.add_argument("--sr", metavar="SR_DIR", nargs="?", const=SHIPPED_SR, default=None,
                   help="super-resolve the results (e.g. 32 -> 64 px) with this SR model "
                   "folder; --sr alone: the shipped default SR model")
    g.add_argument("--sr-steps", type=int, metavar="K", default=None,
                   help="LoPAR passes of --sr, 1 = direct (default 2w-1)")
    g.add_argument("--sr-temperature", type=float, metavar="T", default=SR_TEMPERATURE,
                   help=f"--sr sampling temperature, 0 = argmax (default {SR_TEMPERATURE})")


def add_sr_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=SR_TEMPERATURE,
                   help=f"SR sampling temperature, 0 = argmax (default {SR_TEMPERATURE})")
    p.add_argument("--top-k", type=int, default=0, help="SR: keep the k likeliest codes (0 = off)")


def run_train_sr(args: argparse.Namespace) -> int:
    from train.data.stream import StreamConfig
    from train.sr import train_sr

    for flag in ("data", "tokenizer", "vqvae"):
        if not Path(getattr(args, flag)).exists():
            raise UserError(f"--{flag} {getattr(args, flag)}: no such file or folder")
    run = from_flags(SRTrainConfig, args)
    loop = loop_config(args, LOOP_DEFAULTS)
    stream = from_flags(StreamConfig, args)
    return report(train_sr(run, loop, resume=args.resume, progress=not args.no_progress,
                           stream=stream))


def sr_sampling(args: argparse.Namespace):
    """The SamplingConfig of the SR flags (UserError for bad values)."""
    from cogview.sampling import SamplingConfig

    return SamplingConfig(temperature=args.temperature, top_k=args.top_k)


def load_sr_flag(path: str | None, device: str, flag: str = "--sr"):
    """An SRPipeline from `path`, or the shipped default SR model when `path` is None."""
    from cogview.defaults import default_model_path
    from cogview.superres import load_sr

    if path is None:
        path = default_model_path("sr")
        if path is None:
            raise UserError(f"no {flag} given and no shipped default SR model in this install "
                            "(train one with `cogview train-sr`)")
    elif not Path(path).exists():
        raise UserError(f"{flag} {path}: no such SR checkpoint folder")
    return load_sr(path, device=device)


def run_superres(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from cogview.api import superres_image
    from cogview.devices import parse_device
    from cogview.images import read_image

    out = Path(args.output)
    fmt = IMAGE_SUFFIXES.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"-o {out}: unknown image suffix; use one of {', '.join(IMAGE_SUFFIXES)}")
    image = read_image(args.image)
    device = parse_device(args.device)
    sr = load_sr_flag(args.model, device, flag="--model")
    sampling = sr_sampling(args)
    size = sr.low_res_size
    if image.size != (size, size):
        print(f"note: {args.image} is {image.size[0]}x{image.size[1]}; resized to {size}x{size}, "
              "the SR model's input size", file=sys.stderr)
    g = torch.Generator(device).manual_seed(args.seed)
    picture = superres_image(sr, image, args.prompt, steps=args.steps,
                             temperature=sampling.temperature, top_k=sampling.top_k, generator=g)
    _save_image(np.asarray(picture), out, fmt)
    steps = args.steps or sr.model.sr.num_orders
    lr, hr = sr.model.sr.lr_size, sr.model.sr.hr_size
    print(f"wrote {out} ({picture.width}x{picture.height} px from {lr}x{lr} -> {hr}x{hr} "
          f"codes, {steps} pass{'es' if steps > 1 else ''})")
    return 0


def _save_image(array, out: Path, fmt: str) -> None:
    """Write one uint8 (H, W, 3) image atomically."""
    import tempfile

    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(array, "RGB").save(f, format=fmt)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
