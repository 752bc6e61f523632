"""VQVAE commands: train-vqvae, encode, decode, reconstruct, eval-vqvae.

Images of any mode and size are converted to RGB and fitted to the asked size with
`cogview.images.fit`; a size that the VQVAE's downsampling factor f does not divide is rounded
up to the next multiple of f (with a note on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cogview.cli import with_threads
from cogview.cli.flags import add_flags
from cogview.cli.train import add_loop_flags
from cogview.errors import UserError
from train.vqvae import LOOP_DEFAULTS, VQVAETrainConfig


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 32,64, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 32,64, got {text!r}")
    return sizes


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_vqvae_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vqvae", metavar="DIR", default=None,
                   help="VQVAE checkpoint folder or training run (default: the shipped one)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-vqvae", help="train the VQVAE image tokenizer", allow_abbrev=False,
        description="Train a VQVAE on image shards, on a mix of image sizes, with resumable "
                    "checkpoints OUT/step-XXXXXXXX/. Ctrl-C saves a checkpoint before exiting.")
    p.add_argument("--data", required=True, metavar="SHARDS", help="image shard folder")
    p.add_argument("--preset", default="small",
                   help="model preset from vqvae.model.PRESETS (default small; tiny for tests)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder for checkpoints")
    p.add_argument("--limit", type=_positive, default=None, help="use at most N training images")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on a busy "
                        "machine)")
    add_flags(p, VQVAETrainConfig, show_defaults=True)
    # one process: the codebook's running averages are not synchronised across processes here
    add_loop_flags(p, LOOP_DEFAULTS, keep=lambda f: f.name != "deepspeed")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "encode", help="image -> codes, or image shards -> token shards", allow_abbrev=False,
        description="With a shard folder: write pre-tokenized shards (codes per size, caption "
                    "ids) to --out. With an image file: print its code grid or save it (-o).")
    p.add_argument("input", metavar="SHARDS|IMAGE")
    _add_vqvae_flag(p)
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer JSON (shard folders only)")
    p.add_argument("--out", metavar="DIR", help="token shard folder to write (shard folders only)")
    p.add_argument("--sizes", type=_sizes, default=(32, 64),
                   help="image sizes to encode (shard folders; default 32,64)")
    p.add_argument("--batch-size", type=_positive, default=256)
    p.add_argument("--size", type=_positive, default=32, help="image size (image files only)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="save the codes as .npy (image files only)")
    p.set_defaults(func=run_encode)

    p = subparsers.add_parser(
        "decode", help="codes (.npy) -> image", allow_abbrev=False,
        description="Decode a (h, w) or (B, h, w) integer code array into an image (a grid for "
                    "several).")
    p.add_argument("codes", metavar="CODES.npy")
    _add_vqvae_flag(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="image to write (.png)")
    p.set_defaults(func=run_decode)

    p = subparsers.add_parser(
        "reconstruct", help="image -> codes -> image, side by side, with PSNR",
        allow_abbrev=False,
        description="Write the original (fitted to --size) and its reconstruction side by side "
                    "and print the PSNR.")
    p.add_argument("image", metavar="IMAGE")
    _add_vqvae_flag(p)
    p.add_argument("--size", type=_positive, default=32)
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.set_defaults(func=run_reconstruct)

    p = subparsers.add_parser(
        "eval-vqvae", help="held-out PSNR, SSIM and codebook usage", allow_abbrev=False,
        description="Reconstruct a split of an image shard folder and report PSNR (over the set "
                    "and per image), SSIM, codebook usage and perplexity.")
    p.add_argument("--data", required=True, metavar="SHARDS")
    _add_vqvae_flag(p)
    p.add_argument("--size", type=_sizes, default=(32,), help="image size(s), e.g. 32 or 32,64")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=_positive, default=None, help="evaluate at most N images")
    p.add_argument("--batch-size", type=_positive, default=256)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=run_eval)


# ----------------------------------------------------------------------------- helpers


def _load(args: argparse.Namespace):
    from cogview.pretrained import load_vqvae, resolve_vqvae_path

    return load_vqvae(resolve_vqvae_path(args.vqvae), device=args.device)


def _fit_size(size: int, factor: int) -> int:
    fitted = -(-size // factor) * factor
    if fitted != size:
        print(f"note: {size} px is not divisible by the VQVAE factor {factor}; using {fitted} px",
              file=sys.stderr)
    return fitted


def _read(path: str, size: int):
    """uint8 (size, size, 3) array of an image file of any mode and size."""
    from cogview.images import fit, read_image

    if not Path(path).is_file():
        raise UserError(f"{path}: no such image file")
    return fit(read_image(path), size)


def _save_image(array, path: str) -> None:
    from PIL import Image

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
    except (OSError, ValueError) as e:
        raise UserError(f"-o {path}: cannot write image ({e})") from e


def _require_dir(path: str, flag: str) -> None:
    if not Path(path).exists():
        raise UserError(f"{flag} {path}: no such folder")


# ----------------------------------------------------------------------------- commands


def run_train(args: argparse.Namespace) -> int:
    return with_threads(args.threads, _run_train, args)


def _run_train(args: argparse.Namespace) -> int:
    from cogview.cli.flags import from_flags
    from cogview.cli.train import loop_config
    from train.vqvae import load_image_sets, train_vqvae
    from vqvae.model import vqvae_config

    _require_dir(args.data, "--data")
    run = from_flags(VQVAETrainConfig, args)
    loop = loop_config(args, LOOP_DEFAULTS)
    try:
        model_config = vqvae_config(args.preset)
    except ValueError as e:
        raise UserError(f"--preset: {e}") from e
    train = load_image_sets(args.data, run.sizes, "train", limit=args.limit)
    try:
        test = load_image_sets(args.data, run.sizes, "test", limit=run.eval_images)
    except UserError:
        test = None
        print(f"note: {args.data} has no test split; no held-out evaluation", file=sys.stderr)
    counts = ", ".join(f"{len(v)} at {k} px" for k, v in train.items())
    print(f"training images: {counts}", file=sys.stderr)
    result = train_vqvae(model_config, run, loop, train, args.out, test_images=test,
                         resume=args.resume, progress=not args.no_progress,
                         extra={"data": str(args.data), "preset": args.preset})
    if result.checkpoint is not None:
        print(f"wrote {result.checkpoint} (step {result.step}, {result.seconds:.0f} s)")
    for e in result.evals:
        print(f"held-out {e.size} px: PSNR {e.psnr:.2f} dB, SSIM {e.ssim:.4f}, "
              f"codebook usage {e.usage:.1%}, perplexity {e.perplexity:.0f}")
    if result.interrupted:
        print(f"interrupted by {result.interrupted} at step {result.step}", file=sys.stderr)
    return 130 if result.interrupted else 0


def run_encode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    if Path(args.input).is_dir():
        return _encode_shards(args)
    if args.tokenizer or args.out:
        raise UserError(f"{args.input}: --tokenizer and --out are for shard folders; "
                        "for an image file use -o FILE.npy")
    model = _load(args)
    from cogview.images import to_tensor

    size = _fit_size(args.size, model.factor)
    x = to_tensor(_read(args.input, size)[None]).to(args.device)
    codes = model.encode(x)[0].cpu().numpy()
    if args.output:
        dtype = np.uint16 if model.codebook_size <= 2**16 else np.int64
        try:
            np.save(args.output, codes.astype(dtype))
        except OSError as e:
            raise UserError(f"-o {args.output}: cannot write ({e})") from e
        print(f"wrote {args.output}: codes {codes.shape[0]}x{codes.shape[1]} "
              f"(codebook {model.codebook_size})")
    else:
        torch.set_printoptions(linewidth=200)
        width = len(str(model.codebook_size - 1))
        for row in codes:
            print(" ".join(f"{int(c):>{width}d}" for c in row))
    return 0


def _encode_shards(args: argparse.Namespace) -> int:
    from tokenizer import TokenizerError, UnifiedTokenizer
    from train.data.tokens import encode_shards

    if not args.tokenizer or not args.out:
        raise UserError(f"{args.input}: encoding a shard folder needs --tokenizer and --out")
    try:
        tok = UnifiedTokenizer.load(args.tokenizer)
    except TokenizerError as e:
        raise UserError(f"--tokenizer: {e}") from e
    from cogview.pretrained import resolve_vqvae_path

    vqvae_path = resolve_vqvae_path(args.vqvae)
    model = _load(args)
    for size in args.sizes:
        if size % model.factor:
            raise UserError(f"--sizes: {size} is not divisible by the VQVAE factor {model.factor}")
    info = encode_shards(args.input, model, tok, args.out, sizes=args.sizes,
                         batch_size=args.batch_size,
                         sources={"vqvae": str(vqvae_path), "tokenizer": str(args.tokenizer)})
    grids = ", ".join(f"{s} px -> {g[0]}x{g[1]}" for s, g in info["grids"].items())
    for split, names in info["shards"].items():
        if names:
            print(f"wrote {len(names)} {split} shard(s), {info['counts'][split]} samples")
    print(f"wrote {Path(args.out) / 'info.json'} (codes: {grids}; vqvae "
          f"{info['vqvae_fingerprint']}, tokenizer {info['tokenizer_fingerprint']})")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    if not Path(args.codes).is_file():
        raise UserError(f"{args.codes}: no such codes file")
    try:
        codes = np.load(args.codes, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{args.codes}: not a .npy array ({e})") from e
    if codes.ndim == 2:
        codes = codes[None]
    if codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer):
        raise UserError(f"{args.codes}: expected integer codes (h, w) or (B, h, w), got "
                        f"{codes.dtype} {codes.shape}")
    model = _load(args)
    if codes.size and (codes.min() < 0 or codes.max() >= model.codebook_size):
        raise UserError(f"{args.codes}: codes must lie in [0, {model.codebook_size}), got "
                        f"[{codes.min()}, {codes.max()}]")
    from cogview.images import from_tensor, save_grid

    images = model.decode(torch.from_numpy(codes.astype(np.int64)).to(args.device)).cpu()
    if len(images) == 1:
        _save_image(from_tensor(images)[0], args.output)
    else:
        save_grid(images, args.output)
    print(f"wrote {args.output}: {len(images)} image(s) of {images.shape[-1]} px")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    import numpy as np

    from cogview.images import from_tensor, to_tensor
    from vqvae.metrics import psnr, to_unit

    model = _load(args)
    size = _fit_size(args.size, model.factor)
    original = _read(args.image, size)
    x = to_tensor(original[None]).to(args.device)
    recon = from_tensor(model.decode(model.encode(x)).cpu())[0]  # uint8 (H, W, 3)
    _save_image(np.concatenate([original, recon], axis=1), args.output)
    value = float(psnr(to_unit(to_tensor(recon[None])), to_unit(to_tensor(original[None])))[0])
    print(f"wrote {args.output} (original | reconstruction, {size} px); PSNR {value:.2f} dB")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from train.vqvae import evaluate_vqvae, load_image_sets

    _require_dir(args.data, "--data")
    model = _load(args)
    sizes = tuple(_fit_size(s, model.factor) for s in args.size)
    images = load_image_sets(args.data, sizes, args.split, limit=args.limit)
    results = []
    for size in sizes:
        if len(images[size]) == 0:
            raise UserError(f"--data {args.data}: no {args.split} images")
        results.append(evaluate_vqvae(model, images[size], batch_size=args.batch_size,
                                      progress=True))
    header = f"{'size':>6} {'images':>7} {'PSNR':>8} {'PSNR/img':>9} {'SSIM':>7} " \
             f"{'usage':>7} {'perplexity':>10}"
    print(header)
    for e in results:
        print(f"{e.size:>4}px {e.images:>7d} {e.psnr:>8.2f} {e.psnr_mean:>9.2f} {e.ssim:>7.4f} "
              f"{e.usage:>7.1%} {e.perplexity:>10.1f}")
    combined = None
    if len(results) > 1:
        # one codebook serves every size: a code used only at 64 px is not dead
        import torch

        from vqvae.metrics import usage_and_perplexity

        usage, perplexity = usage_and_perplexity(torch.stack([e.counts for e in results]).sum(0))
        combined = {"usage": usage, "perplexity": perplexity}
        print(f"{'all':>6} {sum(e.images for e in results):>7d} {'':>8} {'':>9} {'':>7} "
              f"{usage:>7.1%} {perplexity:>10.1f}")
    if args.json:
        payload = {"data": str(args.data), "split": args.split, "vqvae": str(args.vqvae),
                   "codebook_size": model.codebook_size,
                   "results": [e.as_dict() for e in results], "all_sizes": combined}
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        except OSError as e:
            raise UserError(f"--json {args.json}: cannot write ({e})") from e
        print(f"wrote {args.json}")
    return 0
