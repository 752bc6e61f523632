"""`cogview index` and `cogview search`: thin callers of `cogview.retrieval`.

The commands check flags, load the model, show progress, print the hits as a table and write
a contact sheet; embedding, indexing and ranking live in the library.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cogview.cli import with_threads
from cogview.cli.common import note, progress_bar
from cogview.errors import UserError

if TYPE_CHECKING:
    from cogview.api import CogView
    from cogview.retrieval import Index, SearchResult

THREADS_HELP = "CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)"


def _load(model: str | None, device: str) -> CogView:
    """The model of --model, refused without a contrastive head."""
    from cogview.api import CogView
    from cogview.contrastive import NoContrastiveHead, head_of

    pipe = CogView.from_pretrained(model, device=device)
    try:
        head_of(pipe.model)
    except NoContrastiveHead as e:
        raise UserError(f"--model {model or pipe.meta['path']}: {e}") from None
    return pipe


# ---------------------------------------------------------------------------------------------
# index


def run_index(args: argparse.Namespace) -> int:
    return with_threads(args.threads, _index, args)


def _index(args: argparse.Namespace) -> int:
    from cogview.retrieval import build_index, image_files, read_source, save_index, source_kind

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"-o {out}: is a folder; give the index file to write")
    kind = source_kind(args.source)
    total = args.limit
    if kind == "files":  # an empty folder fails before the model loads
        total = min(len(image_files(args.source)), args.limit or sys.maxsize)
        if not total:
            raise UserError(f"{args.source}: no images to index")
    pipe = _load(args.model, args.device)
    start = time.perf_counter()
    if kind == "tokens":  # already codes
        items = read_source(pipe, args.source, args.split, args.limit)
    else:
        with progress_bar(total, "img") as bar:
            bar.set_description("encode", refresh=False)
            items = read_source(pipe, args.source, args.split, args.limit, args.batch_size,
                                progress=bar.update)
    with progress_bar(len(items), "img") as bar:
        bar.set_description("embed", refresh=False)
        index = build_index(pipe, items, args.batch_size, progress=bar.update)
    try:
        save_index(index, out)
    except OSError as e:
        raise UserError(f"-o {out}: cannot write ({e.strerror or e})") from None
    seconds = time.perf_counter() - start
    print(f"indexed {len(index)} images and {len(index.captions)} distinct captions of "
          f"{args.source} in {seconds:.1f} s: wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


# ---------------------------------------------------------------------------------------------
# search


def run_search(args: argparse.Namespace) -> int:
    return with_threads(args.threads, _search, args)


def _model_of(index: Index, given: str | None) -> str | None:
    """--model, else the model folder the index was made with when it is still there (its
    fingerprint is checked anyway), else None (the shipped default)."""
    made = index.meta.get("model_path")
    if given is None and made and Path(made).is_dir():
        return made
    return given


def _search(args: argparse.Namespace) -> int:
    from cogview.images import labelled, read_image, save_grid
    from cogview.retrieval import IndexMismatch, load_index, search

    if (args.text is None) == (args.image is None):
        raise UserError('give a query TEXT or --image IMG (one of them)')
    if args.text is not None and not args.text.strip():
        raise UserError("the query TEXT is empty")
    if args.k < 1:
        raise UserError(f"-k must be >= 1, got {args.k}")
    query: Any = args.text if args.image is None else read_image(args.image)
    index = load_index(args.index)
    pipe = _load(_model_of(index, args.model), args.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = search(pipe, index, query, args.k)
        except IndexMismatch as e:
            raise UserError(f"--index {e}") from None
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.k > len(index):
        note(f"the index holds {len(index)} images")
    _print_hits(result)
    if args.out:
        hits = result.images
        labels = [f"#{i + 1} {s:.3f} {c or k}" for i, (s, k, c) in
                  enumerate(zip(hits.scores.tolist(), hits.keys, hits.captions, strict=True))]
        sheet = save_grid(labelled(pipe.decode(hits.codes), labels), args.out)
        print(f"wrote {sheet}")
    return 0


def _print_hits(result: SearchResult) -> None:
    hits = result.images
    width = max(3, *(len(k) for k in hits.keys))
    print(f"{'rank':>4}  {'score':>6}  {'key':<{width}}  caption")
    for i, (score, key, caption) in enumerate(zip(hits.scores.tolist(), hits.keys,
                                                  hits.captions, strict=True)):
        print(f"{i + 1:>4}  {score:6.3f}  {key:<{width}}  {caption or ''}")
    if result.captions is None:
        return
    print()
    if not result.captions.captions:
        print("(the index holds no captions)")
        return
    print(f"{'rank':>4}  {'score':>6}  nearest captions")
    for i, (score, caption) in enumerate(zip(result.captions.scores.tolist(),
                                             result.captions.captions, strict=True)):
        print(f"{i + 1:>4}  {score:6.3f}  {caption}")


# ---------------------------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser, model_help: str) -> None:
    p.add_argument("--model", metavar="DIR", help=model_help)
    p.add_argument("--device", default="cpu", metavar="DEV", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "index",
        help="embed images with a model's contrastive head, for cogview search",
        description="Embed the images of SOURCE and their distinct captions with the CogLM's "
        "contrastive head and write them, with each image's codes, key and caption, to one "
        "index file. SOURCE is a token shard folder (cogview encode; made with the model's "
        "tokenizer and VQVAE), an image data set folder (cogview data) or a folder of image "
        "files (png, jpg, webp, bmp; any depth; NAME.txt next to NAME.png is its caption; an "
        "unreadable file stops the indexing with its name).",
    )
    p.add_argument("source", metavar="SOURCE", help="token shards, image shards or image folder")
    p.add_argument("-o", "--out", required=True, metavar="INDEX", help="index file to write")
    p.add_argument("--split", choices=("train", "test", "all"), default="all",
                   help="which split of a shard folder (default: all, train then test)")
    p.add_argument("--limit", type=int, metavar="N", help="index only the first N images")
    p.add_argument("--batch-size", type=int, default=256, metavar="B",
                   help="images per forward pass (default: 256)")
    _add_common(p, "CogLM folder with a contrastive head (or training run: its newest step), or "
                "a shipped model by name; default: shapes")
    p.set_defaults(func=run_index)

    p = subparsers.add_parser(
        "search",
        help="the images of an index nearest to a text or an image",
        description="Rank the images of an index (cogview index) by the contrastive head's "
        "similarity to a TEXT, or to --image IMG (then also the index's captions). Prints "
        "rank, score, key and caption; -o writes a contact sheet of the hits, drawn from their "
        "stored codes.",
    )
    p.add_argument("text", nargs="?", metavar="TEXT", help="what to look for")
    p.add_argument("--image", metavar="IMG", help="look for images (and captions) like this one")
    p.add_argument("--index", required=True, metavar="INDEX", help="index file of cogview index")
    p.add_argument("-k", type=int, default=5, help="hits to show (default: 5)")
    p.add_argument("-o", "--out", metavar="PNG", help="write a contact sheet of the hits")
    _add_common(p, "the CogLM the index was made with (default: the folder it records, if it "
                "is still there, else shapes)")
    p.set_defaults(func=run_search)
