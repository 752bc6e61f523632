"""`cogview generate`, `cogview inpaint` and `cogview caption`: thin callers of `CogView`.

The commands read files, turn flags into keyword arguments of `cogview.api.CogView`, write
PNGs and print notes; the sampling itself lives in the library.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cogview.cli.superres import add_sr_flags
from cogview.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from cogview.api import CogView

MAX_SLUG = 60
SAMPLING_FLAGS = {  # SamplingConfig field -> argparse dest
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "batch_size": "batch_size",
    "cfg_scale": "cfg",
    "cluster": "cluster",
    "n_clusters": "n_clusters",
    "top_clusters": "top_clusters",
    "text_attention_bias": "text_attention_bias",
}


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# shared flags


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="DIR",
        help="CogLM checkpoint folder (or training run: its newest step), or a shipped model "
        "by name: shapes, fashion; default: shapes",
    )
    p.add_argument("--device", default="cpu", metavar="DEV", help="torch device (default: cpu)")
    p.add_argument("--seed", type=int, metavar="S", default=0, help="random seed (default: 0)")
    add_dtype_flag(p)


def add_dtype_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="transformer precision (bfloat16: faster on CPUs with AVX-512 bf16 and on GPUs)",
    )


def _add_sampling_flags(p: argparse.ArgumentParser, images: bool = True) -> None:
    """Sampling flags. They default to None: a flag not given takes the model folder's
    sampling.json value, else SamplingConfig's default (`CogView.sampling_config`)."""
    g = p.add_argument_group(
        "sampling (a flag not given takes the model's sampling.json value, else the default)"
    )
    g.add_argument("--temperature", type=float, metavar="T", help="0 = greedy (default: 1)")
    g.add_argument("--top-k", type=int, metavar="K", help="keep the k likeliest ids; 0 = off")
    g.add_argument("--top-p", type=float, metavar="P", help="nucleus mass; 1 = off")
    g.add_argument("--batch-size", type=int, metavar="B",
                   help="samples per forward pass (default: 32)")
    if not images:
        return
    g.add_argument("--cfg", type=float, metavar="SCALE",
                   help="classifier-free guidance scale; 1 = off")
    g.add_argument("--cluster", action=argparse.BooleanOptionalAction,
                   help="CogView2 cluster sampling over codebook clusters")
    g.add_argument("--n-clusters", type=int, metavar="C",
                   help="k-means clusters of the codebook (default: 32)")
    g.add_argument("--top-clusters", type=int, metavar="C",
                   help="clusters to draw from per step (default: 4)")
    g.add_argument("--text-attention-bias", type=float, metavar="B",
                   help="added to image tokens' attention towards text (CogView2); 0 = off")


def sampling_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The SamplingConfig fields given on the command line."""
    given = {field: getattr(args, dest, None) for field, dest in SAMPLING_FLAGS.items()}
    return {k: v for k, v in given.items() if v is not None}


def load_model(args: argparse.Namespace, model: str | None = None) -> CogView:
    """`CogView` of `model` (default: --model) on --device, its transformer in --dtype, with
    the SR model of --sr when the command has it."""
    from cogview.api import CogView

    pipe = CogView.from_pretrained(model or args.model, device=args.device, dtype=args.dtype)
    sr = getattr(args, "sr", None)
    if sr is not None:
        from cogview.cli.superres import SHIPPED_SR
        from cogview.superres import lopar_schedule

        try:
            pipe.load_sr(None if sr == SHIPPED_SR else sr)
        except UserError as e:
            raise UserError(f"--sr {e}") from None
        if args.sr_steps is not None:
            lopar_schedule(pipe.sr.model.config.num_orders, args.sr_steps, flag="--sr-steps")
    return pipe


def _sr_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(superres=args.sr is not None, sr_steps=args.sr_steps,
                sr_temperature=args.sr_temperature)


def _progress(total: int, what: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=what, file=sys.stderr, dynamic_ncols=True)


def _out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"-o {out}: cannot create folder ({e.strerror})") from None
    return out


def _save_png(array: np.ndarray, path: Path) -> Path:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def slug(text: str) -> str:
    """A file-name stem for a prompt: lower-case words joined by '-'."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:MAX_SLUG].rstrip("-")
    return s or "unconditional"


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def _check_rerank(args: argparse.Namespace) -> None:
    if args.rerank is not None and args.rerank != 0 and args.rerank < args.n:
        raise UserError(f"--rerank {args.rerank}: needs at least -n ({args.n}) candidates "
                        "(0 turns reranking off)")


def _rerank_kwargs(args: argparse.Namespace, pipe: CogView) -> tuple[dict[str, Any], int]:
    """CogView keyword arguments of --rerank, and the candidates drawn per prompt: `--rerank
    N` draws N and keeps the n best; without it, the model's sampling.json may make each
    image the best of its own group of R."""
    if args.rerank:
        return {"candidates": args.rerank}, args.rerank
    group = pipe.rerank_default if args.rerank is None else 1
    return {"rerank": group}, args.n * group


def _group_note(group: int, what: str) -> str:
    return (f"each {what} the best of {group} by log p(prompt | image) (the model's "
            "sampling.json; --rerank 0 turns it off)")


# ---------------------------------------------------------------------------------------------
# generate


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--prompts {p}: no such file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--prompts {p}: cannot read ({e.__class__.__name__})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"--prompts {p}: no prompts (one per line)")
    return prompts


def run_generate(args: argparse.Namespace) -> int:
    from cogview.images import save_grid

    if args.prompt is not None and args.prompts:
        raise UserError("give a PROMPT or --prompts FILE, not both")
    if args.prompt is None and not args.prompts:
        raise UserError('no prompt: give a PROMPT ("" for unconditional) or --prompts FILE')
    if args.n < 1:
        raise UserError(f"-n must be >= 1, got {args.n}")
    _check_rerank(args)
    prompts = read_prompts(args.prompts) if args.prompts else [args.prompt]
    out = _out_dir(args.out)
    pipe = load_model(args)
    pipe.sampling_config(**sampling_flags(args))  # bad values fail before any work
    rerank, per_prompt = _rerank_kwargs(args, pipe)
    stems: list[str] = []
    for prompt in prompts:
        if not prompt.strip():
            note("empty prompt: sampling unconditionally")
        stem, k = slug(prompt), 2
        while stem in stems:  # two prompts with the same slug
            stem, k = f"{slug(prompt)}-{k}", k + 1
        stems.append(stem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for p in prompts:  # prompt warnings come before the progress bar starts
            pipe.encode_prompt(p)
    _print_warnings(caught)
    bar = _progress(per_prompt * len(prompts), "img")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said above
        results = pipe.generate(prompts, args.n, seed=args.seed, progress=bar.update,
                                **rerank, **_sr_kwargs(args), **sampling_flags(args))
    bar.close()
    written: list[Path] = []
    for stem, result in zip(stems, results, strict=True):
        if result.scores is not None:
            print(f"{stem}: kept {args.n} of {args.rerank} by log p(prompt | image): "
                  + ", ".join(f"{s:.3f}" for s in result.scores.tolist()), file=sys.stderr)
        for i, img in enumerate(result.arrays):
            written.append(_save_png(img, out / f"{stem}-{i}.png"))
        written.append(save_grid(result.arrays, out / f"{stem}-grid.png"))
    if rerank.get("rerank", 1) > 1:
        note(_group_note(rerank["rerank"], "image"))
    for path in written:
        print(path)
    print(f"wrote {len(prompts) * args.n} image(s) and {len(prompts)} grid(s) to {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# inpaint


def read_mask_file(path: str) -> np.ndarray:
    """A painted mask file -> (H, W) bool, True = regenerate (`cogview.api.read_mask`)."""
    from PIL import Image, UnidentifiedImageError

    from cogview.api import read_mask

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--mask {p}: no such file")
    try:
        with Image.open(p) as im:
            im.load()
            return read_mask(im)
    except UnidentifiedImageError:
        raise UserError(f"--mask {p}: not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        why = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise UserError(f"--mask {p}: unreadable image ({why})") from None


def run_inpaint(args: argparse.Namespace) -> int:
    import numpy as np

    from cogview.api import resize_mask
    from cogview.images import read_image, save_grid

    if args.n < 1:
        raise UserError(f"-n must be >= 1, got {args.n}")
    _check_rerank(args)
    image = read_image(args.image)  # RGB, any size
    original = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    height, width = original.shape[:2]
    mask = read_mask_file(args.mask)
    if mask.shape != (height, width):
        note(f"mask is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}: "
             "mask resized to the image")
        mask = resize_mask(mask, (height, width))
    out = _out_dir(args.out)
    pipe = load_model(args)
    pipe.sampling_config(**sampling_flags(args))  # bad values fail before any work
    size = pipe.image_size
    cells = resize_mask(mask, pipe.grid)  # (h, w): what is regenerated
    stem = slug(Path(args.image).stem)
    written: list[Path] = []
    if args.show_mask:
        show = Path(args.show_mask)
        show.parent.mkdir(parents=True, exist_ok=True)
        written.append(_save_png((cells * 255).astype(np.uint8), show))
    if not mask.any():
        note("the mask is all black (nothing to regenerate): writing the original")
        written.append(_save_png(original, out / f"{stem}-0.png"))
        for path in written:
            print(path)
        return 0
    if (height, width) != (size, size):
        note(f"image {width}x{height} resized to the model's {size}x{size}; results are "
             f"composited back at {width}x{height}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.encode_prompt(args.prompt)
    _print_warnings(caught)
    if args.rerank and not args.prompt:
        note("--rerank needs a --prompt to score by: not reranking")
    rerank, total = _rerank_kwargs(args, pipe) if args.prompt else ({"rerank": 1}, args.n)
    bar = _progress(total, "img")
    if mask.all():
        note("the mask is all white: plain generation from the prompt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said above
        result = pipe.inpaint(image, mask, args.prompt, args.n, seed=args.seed,
                              progress=bar.update, **rerank, **_sr_kwargs(args),
                              **sampling_flags(args))
    bar.close()
    if rerank.get("rerank", 1) > 1:
        note(_group_note(rerank["rerank"], "version"))
    for i, img in enumerate(result.arrays):
        written.append(_save_png(img, out / f"{stem}-{i}.png"))
    written.append(save_grid(result.arrays, out / f"{stem}-grid.png"))
    for path in written:
        print(path)
    print(f"wrote {args.n} inpainting(s) of {args.image} ({int(cells.sum())} of {cells.size} "
          f"token cells regenerated) to {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# caption


def run_caption(args: argparse.Namespace) -> int:
    from cogview.images import read_image

    if args.n < 1:
        raise UserError(f"-n must be >= 1, got {args.n}")
    if args.max_len is not None and args.max_len < 1:
        raise UserError(f"--max-len must be >= 1, got {args.max_len}")
    pictures = [read_image(path) for path in args.images]  # every file first: fail early
    pipe = load_model(args)
    pipe.sampling_config(images=False, **sampling_flags(args))  # fail before any work
    g = pipe.generator(args.seed)
    for path, picture in zip(args.images, pictures, strict=True):
        caps = pipe.caption(picture, args.n, max_len=args.max_len, generator=g,
                            **sampling_flags(args))
        if len(args.images) > 1:
            print(f"{path}:")
        for score, text in zip(caps.scores, caps.texts, strict=True):
            print(f"{score:8.3f}  {text}")
    return 0


# ---------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="draw images from a text prompt",
        description="Text-to-image with a CogLM: writes OUT/<prompt>-<i>.png and a grid per "
        "prompt. An empty prompt samples unconditionally.",
    )
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="the text to draw")
    p.add_argument("--prompts", metavar="FILE", help="a file of prompts, one per line")
    p.add_argument("-n", type=int, default=8, help="images per prompt (default: 8)")
    p.add_argument(
        "--rerank",
        type=int,
        metavar="N",
        help="draw N candidates per prompt and keep the n the model scores best by "
        "log p(prompt | image) (CogView self-reranking); 0: off. Default: the model's "
        "sampling.json `rerank` R (each image the best of its own R candidates), else off",
    )
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
    _add_model_flags(p)
    _add_sampling_flags(p)
    add_sr_flags(p)
    p.set_defaults(func=run_generate)

    p = subparsers.add_parser(
        "inpaint",
        help="regenerate the painted part of an image",
        description="Inpainting: white pixels of --mask are regenerated, black ones kept "
        "(thresholded at 50%%; a mask with transparency is read by its alpha). Any image size: "
        "token cells touched by the mask are resampled and the result is composited back at "
        "the original size, leaving every unmasked pixel as it was.",
    )
    p.add_argument("--image", required=True, metavar="IMG", help="the image to change")
    p.add_argument("--mask", required=True, metavar="MASK", help="PNG: white = regenerate")
    p.add_argument("--prompt", default="",
                   help="what goes in the mask, or the caption of the whole edited image")
    p.add_argument("-n", type=int, default=4, help="versions to draw (default: 4)")
    p.add_argument(
        "--rerank",
        type=int,
        metavar="N",
        help="draw N versions and keep the n the model scores best by log p(prompt | image); "
        "0: off. Default: the model's sampling.json `rerank` R (each version the best of its "
        "own R), else off. Not with an empty --prompt",
    )
    p.add_argument(
        "--show-mask", metavar="FILE", help="write the mask at token resolution to FILE (PNG)"
    )
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
    _add_model_flags(p)
    _add_sampling_flags(p)
    add_sr_flags(p)
    p.set_defaults(func=run_inpaint)

    p = subparsers.add_parser(
        "caption",
        help="describe images with the model's captioning mode",
        description="Captions sampled from the CogLM in captioning mode, printed with their "
        "mean log-likelihood per token, best first.",
    )
    p.add_argument("images", nargs="+", metavar="IMG", help="image files")
    p.add_argument("-n", type=int, default=3, help="captions per image (default: 3)")
    p.add_argument("--max-len", type=int, help="most text tokens (default: the model's)")
    _add_model_flags(p)
    _add_sampling_flags(p, images=False)
    p.set_defaults(func=run_caption)
