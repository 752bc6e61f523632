"""`cogview generate`, `cogview inpaint` and `cogview caption`: sampling from a CogLM folder.

The commands parse flags into a `SamplingConfig`, load the model folder with `load_pipeline`
and call `cogview.sampling`; image files, masks and the cluster cache are handled here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cogview.cli.superres import add_sr_flags, load_sr_for, sr_images
from cogview.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cogview.pipeline import Pipeline
    from cogview.sampling import SamplingConfig

CLUSTERS_FILE = "clusters.safetensors"
MAX_SLUG = 60
# cluster assignments of model folders that could not take the cache file, this process
_CLUSTER_MEMO: dict[tuple[str, int, int, str], Any] = {}


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
    sampling.json value, else SamplingConfig's default (see `sampling_config`)."""
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


def sampling_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The SamplingConfig fields given on the command line."""
    given = {field: getattr(args, dest, None) for field, dest in SAMPLING_FLAGS.items()}
    return {k: v for k, v in given.items() if v is not None}


def sampling_config(
    args: argparse.Namespace, model_defaults: dict[str, Any] | None = None
) -> SamplingConfig:
    """SamplingConfig defaults, overridden by the model's sampling.json, then by the flags.
    sampling.json holds image-generation settings: `caption` (no image flags) ignores it."""
    from cogview.sampling import SamplingConfig

    defaults = dict(model_defaults or {}) if hasattr(args, "cfg") else {}
    return SamplingConfig(**{**defaults, **sampling_flags(args)})


def load_model(args: argparse.Namespace, model: str | None = None) -> Pipeline:
    """The pipeline of `model` (default: --model) on --device, its transformer in --dtype."""
    import torch

    from cogview.defaults import model_path_or_default
    from cogview.devices import parse_device
    from cogview.pipeline import load_pipeline

    device = parse_device(args.device)
    path = model_path_or_default(model or args.model, "coglm")
    pipe = load_pipeline(path, device=device)
    if args.dtype != "float32":
        # the transformer only: weights and KV cache in bf16 halve the memory traffic of
        # decoding; the VQVAE and the sampling arithmetic stay in float32
        pipe.model.to(getattr(torch, args.dtype))
    return pipe


def _generator(args: argparse.Namespace, pipe: Pipeline) -> torch.Generator:
    import torch

    device = next(pipe.model.parameters()).device
    return torch.Generator(device=device).manual_seed(args.seed)


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


def encode_prompt(tok, prompt: str) -> list[int]:
    """Text ids of a prompt, with one warning line when it is cut to the model's text length."""
    from tokenizer import TextTruncatedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TextTruncatedWarning)
        ids = tok.encode_text(prompt)
    full = len(tok.encode_text(prompt, truncate=False))
    if full > len(ids):
        short = prompt if len(prompt) <= 40 else prompt[:37] + "..."
        print(
            f"warning: prompt {short!r} has {full} tokens; truncated to the model's "
            f"{tok.max_text_len}",
            file=sys.stderr,
        )
    return ids


def model_clusters(pipe: Pipeline, n_clusters: int, seed: int = 0) -> torch.Tensor:
    """Cluster of each image code (K,), cached as `clusters.safetensors` in the model folder.

    The file records the cluster count, the seed and the VQVAE fingerprint, so a stale file
    is recomputed; a read-only folder keeps the result in memory for this process.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open, save_file

    from cogview.sampling import codebook_clusters

    folder = Path(pipe.meta["path"])
    fp = str(pipe.meta.get("vqvae_fingerprint", ""))
    key = (str(folder), n_clusters, seed, fp)
    want = {"n_clusters": str(n_clusters), "seed": str(seed), "vqvae_fingerprint": fp}
    if key in _CLUSTER_MEMO:
        return _CLUSTER_MEMO[key]
    path = folder / CLUSTERS_FILE
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if all(meta.get(k) == v for k, v in want.items()):
                clusters = load_file(str(path))["clusters"].long()
                if clusters.numel() == pipe.tokenizer.num_image_codes:
                    return clusters
        except (SafetensorError, OSError, KeyError, ValueError):
            pass  # a damaged cache is recomputed
    clusters = codebook_clusters(pipe.vqvae.codebook(), n_clusters, seed)
    tmp = folder / f".{CLUSTERS_FILE}.tmp-{os.getpid()}"
    try:
        save_file({"clusters": clusters.to(torch.int32)}, str(tmp), metadata=want)
        os.replace(tmp, path)
    except (OSError, SafetensorError):  # a read-only folder: keep it for this process only
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        _CLUSTER_MEMO[key] = clusters
    return clusters


def _decode(pipe: Pipeline, codes: torch.Tensor, batch_size: int) -> np.ndarray:
    """Codes (B, h, w) -> uint8 images (B, H, W, 3)."""
    import numpy as np
    import torch

    from cogview.images import from_tensor

    out = []
    with torch.inference_mode():
        for i in range(0, codes.shape[0], batch_size):
            out.append(from_tensor(pipe.vqvae.decode(codes[i : i + batch_size])))
    return np.concatenate(out)


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


def _check_rerank(args: argparse.Namespace) -> None:
    if args.rerank is not None and args.rerank != 0 and args.rerank < args.n:
        raise UserError(f"--rerank {args.rerank}: needs at least -n ({args.n}) candidates "
                        "(0 turns reranking off)")


def _rerank_counts(args: argparse.Namespace, pipe: Any) -> tuple[int | None, int]:
    """(candidates, group): `--rerank N` draws N candidates and keeps the n best; without it,
    the model's sampling.json may make each image the best of its own group of R."""
    return (args.rerank or None), (pipe.rerank if args.rerank is None else 1)


def _group_note(group: int, what: str) -> str:
    return (f"each {what} the best of {group} by log p(prompt | image) (the model's "
            "sampling.json; --rerank 0 turns it off)")


def run_generate(args: argparse.Namespace) -> int:
    from cogview.images import save_grid
    from cogview.sampling import best_of_groups, generate_images, rerank

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
    config = sampling_config(args, pipe.sampling)
    sr = load_sr_for(args, pipe)
    tok = pipe.tokenizer
    clusters = model_clusters(pipe, config.n_clusters) if config.cluster else None
    g = _generator(args, pipe)

    candidates, group = _rerank_counts(args, pipe)
    per_prompt = candidates or args.n * group
    written: list[Path] = []
    stems: set[str] = set()
    # notes and warnings about the prompts come before the progress bar starts
    jobs = []
    for prompt in prompts:
        if not prompt.strip():
            note("empty prompt: sampling unconditionally")
        stem = slug(prompt)
        k = 2
        while stem in stems:  # two prompts with the same slug
            stem, k = f"{slug(prompt)}-{k}", k + 1
        stems.add(stem)
        jobs.append((stem, encode_prompt(tok, prompt)))
    bar = _progress(per_prompt * len(prompts), "img")
    if candidates:
        results = []
        for stem, ids in jobs:
            best = rerank(
                pipe.model,
                tok,
                ids,
                pipe.grid,
                config,
                g,
                candidates,
                args.n,
                clusters=clusters,
                progress=bar.update,
            )
            results.append(best.codes)
            bar.write(
                f"{stem}: kept {args.n} of {candidates} by log p(prompt | image): "
                + ", ".join(f"{s:.3f}" for s in best.scores.tolist()),
                file=sys.stderr,
            )
    else:
        # every image of every prompt in one stream of batches: prompts of different
        # lengths share a batch (left-padded)
        all_ids = [ids for _, ids in jobs for _ in range(args.n * group)]
        codes = generate_images(
            pipe.model,
            tok,
            all_ids,
            pipe.grid,
            config,
            g,
            clusters=clusters,
            progress=bar.update,
        )
        codes = best_of_groups(pipe.model, tok, codes, all_ids, group, config.batch_size)
        if group > 1:
            bar.write(_group_note(group, "image"), file=sys.stderr)
        results = list(codes.split(args.n))
    for (stem, ids), codes in zip(jobs, results, strict=True):
        if sr is not None:
            images = sr_images(sr, codes, [ids] * len(codes), args, g, config.batch_size)
        else:
            images = _decode(pipe, codes, config.batch_size)
        for i, img in enumerate(images):
            written.append(_save_png(img, out / f"{stem}-{i}.png"))
        written.append(save_grid(images, out / f"{stem}-grid.png"))
    bar.close()
    for path in written:
        print(path)
    n_img = len(prompts) * args.n
    print(f"wrote {n_img} image(s) and {len(prompts)} grid(s) to {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# inpaint


def read_mask(path: str) -> np.ndarray:
    """A painted mask file -> (H, W) bool, True = regenerate.

    White means regenerate and black keep, thresholded at 50% of the gray value; a mask with
    transparent pixels (RGBA, LA, or a palette with transparency) is read by its alpha instead:
    painted (opaque) pixels are regenerated.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--mask {p}: no such file")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            if im.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
                alpha = np.asarray(im.getchannel("A"))
                if alpha.min() < 255:
                    return alpha >= 128
                im = im.convert("RGB")
            if im.mode == "1":
                return np.asarray(im, dtype=bool).copy()
            if im.mode.startswith("I;16") or im.mode in ("I", "F"):
                gray = np.asarray(im, dtype=np.float64)
                top = 65535.0 if gray.max(initial=0) > 255 else 255.0
                return gray >= top / 2
            gray = np.asarray(im.convert("L"), dtype=np.uint8)
            return gray >= 128
    except UnidentifiedImageError:
        raise UserError(f"--mask {p}: not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        why = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise UserError(f"--mask {p}: unreadable image ({why})") from None


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> (h, w) = size bool; a target pixel is set when any source pixel it
    overlaps is set (conservative: nothing the user painted is lost)."""
    import numpy as np

    h, w = size
    src_h, src_w = mask.shape
    rows = _overlaps(src_h, h)
    cols = _overlaps(src_w, w)
    # any over the source rows, then over the source columns, of each target cell
    by_row = np.stack([mask[r0:r1].any(axis=0) for r0, r1 in rows])  # (h, W)
    return np.stack([by_row[:, c0:c1].any(axis=1) for c0, c1 in cols], axis=1)  # (h, w)


def _overlaps(src: int, dst: int) -> list[tuple[int, int]]:
    """For each of `dst` equal intervals of [0, src): the source pixels [a, b) it overlaps."""
    # target i covers [i * src / dst, (i + 1) * src / dst) in source pixels
    return [((i * src) // dst, -((-(i + 1) * src) // dst)) for i in range(dst)]


def cell_mask_of(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Pixel mask (H, W) of any size -> token cells (h, w) to regenerate: a cell is regenerated
    when any pixel of the image area it stands for is masked."""
    return resize_mask(mask, grid)


def run_inpaint(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from cogview.images import read_image, save_grid, to_tensor
    from cogview.inpainting import blank_codes, context_codes
    from cogview.sampling import RegionView, best_of_groups, generate_images, inpaint, keep_best

    if args.n < 1:
        raise UserError(f"-n must be >= 1, got {args.n}")
    _check_rerank(args)
    image = read_image(args.image)  # RGB, any size
    original = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    height, width = original.shape[:2]
    mask = read_mask(args.mask)
    if mask.shape != (height, width):
        note(
            f"mask is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}: "
            "mask resized to the image"
        )
        mask = resize_mask(mask, (height, width))
    out = _out_dir(args.out)
    pipe = load_model(args)
    config = sampling_config(args, pipe.sampling)
    sr = load_sr_for(args, pipe)
    tok = pipe.tokenizer
    size = pipe.image_size
    cells = cell_mask_of(mask, pipe.grid)  # (h, w)
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
        note(
            f"image {width}x{height} resized to the model's {size}x{size}; results are "
            f"composited back at {width}x{height}"
        )
    resample = Image.Resampling.BOX if min(height, width) >= size else Image.Resampling.BICUBIC
    small = np.array(image.resize((size, size), resample=resample), dtype=np.uint8)
    ids = encode_prompt(tok, args.prompt)
    clusters = model_clusters(pipe, config.n_clusters) if config.cluster else None
    g = _generator(args, pipe)
    device = next(pipe.model.parameters()).device
    if args.rerank and not args.prompt:
        note("--rerank needs a --prompt to score by: not reranking")
    candidates, group = _rerank_counts(args, pipe) if args.prompt else (None, 1)
    total = candidates or args.n * group
    bar = _progress(total, "img")
    if mask.all():
        note("the mask is all white: plain generation from the prompt")
        codes = generate_images(
            pipe.model,
            tok,
            [ids] * total,
            pipe.grid,
            config,
            g,
            clusters=clusters,
            progress=bar.update,
        )
    else:
        # the kept cells' codes, from the image with the masked cells blanked: codes of the
        # whole image would carry the erased content into the context (cogview.inpainting)
        src = context_codes(pipe.vqvae, to_tensor(small).to(device),
                            torch.from_numpy(cells)[None].to(device))[0]  # (h, w)
        if tuple(src.shape) != tuple(pipe.grid):
            raise UserError(
                f"--model: its VQVAE gives a {tuple(src.shape)} grid at {size} px, the model "
                f"expects {pipe.grid}"
            )
        codes = inpaint(
            pipe.model,
            tok,
            ids,
            src,
            torch.from_numpy(cells),
            config,
            g,
            total,
            clusters=clusters,
            progress=bar.update,
        )
    bar.close()
    # reranking also scores the region alone: the prompt may name only what goes there
    view = RegionView(torch.from_numpy(cells), blank_codes(pipe.vqvae, size))
    if candidates:
        codes = keep_best(pipe.model, tok, codes, ids, args.n, config.batch_size, view).codes
    elif group > 1:
        codes = best_of_groups(pipe.model, tok, codes, [ids] * total, group, config.batch_size,
                               view)
        note(_group_note(group, "version"))
    if sr is not None:  # (n, sr size, sr size, 3)
        generated = sr_images(sr, codes, [ids] * len(codes), args, g, config.batch_size)
    else:
        generated = _decode(pipe, codes, config.batch_size)  # (n, size, size, 3)
    results = []
    for i, img in enumerate(generated):
        big = np.asarray(
            Image.fromarray(img).resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8
        )
        # only masked pixels change: every other pixel is the original's, bit for bit
        result = np.where(mask[..., None], big, original)
        results.append(result)
        written.append(_save_png(result, out / f"{stem}-{i}.png"))
    written.append(save_grid(np.stack(results), out / f"{stem}-grid.png"))
    for path in written:
        print(path)
    print(
        f"wrote {args.n} inpainting(s) of {args.image} ({int(cells.sum())} of {cells.size} "
        f"token cells regenerated) to {out}"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# caption


def run_caption(args: argparse.Namespace) -> int:
    import torch

    from cogview.images import fit, read_image, to_tensor
    from cogview.sampling import caption_logprob, generate_captions

    if args.n < 1:
        raise UserError(f"-n must be >= 1, got {args.n}")
    if args.max_len is not None and args.max_len < 1:
        raise UserError(f"--max-len must be >= 1, got {args.max_len}")
    config = sampling_config(args)
    pictures = [read_image(path) for path in args.images]  # every file first: fail early
    pipe = load_model(args)
    tok = pipe.tokenizer
    device = next(pipe.model.parameters()).device
    g = _generator(args, pipe)
    for path, picture in zip(args.images, pictures, strict=True):
        pixels = fit(picture, pipe.image_size)
        with torch.inference_mode():
            codes = pipe.vqvae.encode(to_tensor(pixels).to(device))[0]
        caps = generate_captions(pipe.model, tok, codes, config, g, args.n, args.max_len)
        scores = caption_logprob(pipe.model, tok, codes.expand(len(caps), -1, -1), caps)
        if len(args.images) > 1:
            print(f"{path}:")
        for score, ids in sorted(zip(scores.tolist(), caps, strict=True), key=lambda x: -x[0]):
            print(f"{score:8.3f}  {tok.decode_text(ids)}")
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
    p.add_argument("--prompt", default="", help="what the regenerated part shows")
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
