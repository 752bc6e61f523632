"""`cogview generate`, `cogview inpaint` and `cogview caption`: thin callers of `CogView`.

The commands read files, turn flags into keyword arguments of `cogview.api.CogView`, write
PNGs and print notes; the sampling itself lives in the library.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cogview.cli.common import load_model, note, out_dir, progress_bar, save_png
from cogview.cli.flags import (
    add_model_flags,
    add_sampling_flags,
    check_sampling_flags,
    sampling_flags,
)
from cogview.cli.superres import add_sr_flags
from cogview.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from cogview.api import CogView

MAX_SLUG = 60


def _sr_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(superres=args.sr is not None, sr_steps=args.sr_steps,
                sr_temperature=args.sr_temperature)


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


# what each reranker scores by, as the notes say it
RERANK_WORDS = {
    "caption": "log p(prompt | image)",
    "contrastive": "the contrastive cosine of prompt and image",
    "both": "standardised log p(prompt | image) + contrastive cosine",
}
RERANK_BY_HELP = (
    "how candidates are scored: caption = the model's own log p(prompt | image) (CogView "
    "self-reranking), contrastive = cosine of the prompt's and the image's embeddings by the "
    "contrastive head, both = the two standardised over each prompt's candidates and summed. "
    "Default: the model's sampling.json `rerank_by` (for inpainting, its \"inpaint\" one "
    "first), else caption"
)


RERANK_FLOOR_HELP = (
    "where reranking is unsure, more candidates: an image whose best candidate's caption score "
    "(mean log p(prompt | image) per token) is below SCORE draws R more, until it reaches it "
    "or has --rerank-max. Default: the model's sampling.json `rerank_floor`, else none"
)
RERANK_MAX_HELP = (
    "most candidates an image may have with --rerank-floor (R: no further rounds). Default: "
    "the model's sampling.json `rerank_max`, else 2R"
)


def _rerank_kwargs(args: argparse.Namespace, pipe: CogView, inpainting: bool = False
                   ) -> tuple[dict[str, Any], int]:
    """CogView keyword arguments of --rerank and --rerank-by, and the candidates drawn per
    prompt: `--rerank N` draws N and keeps the n best; without it, the model's sampling.json
    may make each image (each inpainted version) the best of its own group of R."""
    by = {"rerank_by": pipe.reranker(args.rerank_by, inpainting)}
    rounds = {k: v for k in ("rerank_floor", "rerank_max")
              if (v := getattr(args, k, None)) is not None}
    if args.rerank and rounds:
        raise UserError(f"--{next(iter(rounds)).replace('_', '-')} applies to the model's own "
                        "reranking, not to --rerank N")
    if args.rerank:
        return {"candidates": args.rerank, **by}, args.rerank
    default = pipe.inpaint_rerank_default if inpainting else pipe.rerank_default
    group = default if args.rerank is None else 1
    if rounds:
        pipe.rerank_rounds(group, **rounds)  # bad values fail before any work
    return {"rerank": group, **by, **rounds}, args.n * group


def _group_note(group: int, what: str, by: str, rounds: tuple[float | None, int] | None = None
                ) -> str:
    more = ""
    if rounds is not None and rounds[0] is not None and rounds[1] > group:
        more = f", up to {rounds[1]} where its best caption score is below {rounds[0]:g},"
    return (f"each {what} the best of {group}{more} by {RERANK_WORDS[by]} (the model's "
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
    from cogview.api import PromptTruncatedWarning
    from cogview.images import save_grid

    if args.prompt is not None and args.prompts:
        raise UserError("give a PROMPT or --prompts FILE, not both")
    if args.prompt is None and not args.prompts:
        raise UserError('no prompt: give a PROMPT ("" for unconditional) or --prompts FILE')
    if args.n < 1:
        raise UserError(f"-n must be >= 1, got {args.n}")
    _check_rerank(args)
    prompts = read_prompts(args.prompts) if args.prompts else [args.prompt]
    out = out_dir(args.out)
    pipe = load_model(args)
    check_sampling_flags(pipe, args)
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
    bar = progress_bar(per_prompt * len(prompts), "img")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)  # said above
        results = pipe.generate(prompts, args.n, seed=args.seed, progress=bar.update,
                                **rerank, **_sr_kwargs(args), **sampling_flags(args))
    bar.close()
    written: list[Path] = []
    for stem, result in zip(stems, results, strict=True):
        if result.scores is not None:
            print(f"{stem}: kept {args.n} of {args.rerank} by {RERANK_WORDS[rerank['rerank_by']]}"
                  ": " + ", ".join(f"{s:.3f}" for s in result.scores.tolist()), file=sys.stderr)
        for i, img in enumerate(result.arrays):
            written.append(save_png(img, out / f"{stem}-{i}.png"))
        written.append(save_grid(result.arrays, out / f"{stem}-grid.png"))
    if rerank.get("rerank", 1) > 1:
        rounds = pipe.rerank_rounds(rerank["rerank"], rerank.get("rerank_floor"),
                                    rerank.get("rerank_max"))
        note(_group_note(rerank["rerank"], "image", rerank["rerank_by"], rounds))
    for path in written:
        print(path)
    print(f"wrote {len(prompts) * args.n} image(s) and {len(prompts)} grid(s) to {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# inpaint


def read_mask_file(path: str) -> np.ndarray:
    """`images.read_mask`, its errors naming --mask."""
    from cogview.images import read_mask

    try:
        return read_mask(path)
    except UserError as e:
        raise UserError(f"--mask {e}") from None


def run_inpaint(args: argparse.Namespace) -> int:
    import numpy as np

    from cogview.api import PromptTruncatedWarning
    from cogview.images import read_image, resize_mask, save_grid

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
    out = out_dir(args.out)
    pipe = load_model(args)
    check_sampling_flags(pipe, args)
    size = pipe.image_size
    cells = resize_mask(mask, pipe.grid)  # (h, w): what is regenerated
    stem = slug(Path(args.image).stem)
    written: list[Path] = []
    if args.show_mask:
        show = Path(args.show_mask)
        show.parent.mkdir(parents=True, exist_ok=True)
        written.append(save_png((cells * 255).astype(np.uint8), show))
    if not mask.any():
        note("the mask is all black (nothing to regenerate): writing the original")
        written.append(save_png(original, out / f"{stem}-0.png"))
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
    rerank, total = _rerank_kwargs(args, pipe, inpainting=True)
    if not args.prompt:
        rerank, total = {"rerank": 1, "rerank_by": rerank["rerank_by"]}, args.n
    bar = progress_bar(total, "img")
    if mask.all():
        note("the mask is all white: plain generation from the prompt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)  # said above
        result = pipe.inpaint(image, mask, args.prompt, args.n, seed=args.seed,
                              progress=bar.update, **rerank, **_sr_kwargs(args),
                              **sampling_flags(args))
    bar.close()
    if rerank.get("rerank", 1) > 1:
        note(_group_note(rerank["rerank"], "version", rerank["rerank_by"]))
    for i, img in enumerate(result.arrays):
        written.append(save_png(img, out / f"{stem}-{i}.png"))
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
    check_sampling_flags(pipe, args, images=False)
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
    from cogview.sampling import RERANKERS

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
        help="draw N candidates per prompt and keep the n the model scores best (by "
        "--rerank-by; CogView self-reranking); 0: off. Default: the model's "
        "sampling.json `rerank` R (each image the best of its own R candidates), else off",
    )
    p.add_argument("--rerank-by", choices=RERANKERS, help=RERANK_BY_HELP)
    p.add_argument("--rerank-floor", type=float, metavar="SCORE", help=RERANK_FLOOR_HELP)
    p.add_argument("--rerank-max", type=int, metavar="M", help=RERANK_MAX_HELP)
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
    add_model_flags(p)
    add_sampling_flags(p)
    add_sr_flags(p)
    p.set_defaults(func=run_generate)

    p = subparsers.add_parser(
        "inpaint",
        help="regenerate the painted part of an image",
        description="Inpainting: white pixels of --mask are regenerated, black ones kept "
        "(thresholded at 50%%; a mask with transparency is read by its alpha). Any image size: "
        "token cells touched by the mask are resampled and the result is composited back at "
        "the original size, leaving every unmasked pixel as it was. A sampling flag not given "
        "takes the model's sampling.json \"inpaint\" value, else its top-level one.",
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
        help="draw N versions and keep the n the model scores best (by --rerank-by); "
        "0: off. Default: the model's sampling.json `rerank` R (each version the best of its "
        "own R), else off. Not with an empty --prompt",
    )
    p.add_argument("--rerank-by", choices=RERANKERS,
                   help=RERANK_BY_HELP + "; each version scores the better of the whole image "
                   "and the masked region alone")
    p.add_argument(
        "--show-mask", metavar="FILE", help="write the mask at token resolution to FILE (PNG)"
    )
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
    add_model_flags(p)
    add_sampling_flags(p)
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
    add_model_flags(p)
    add_sampling_flags(p, images=False)
    p.set_defaults(func=run_caption)
