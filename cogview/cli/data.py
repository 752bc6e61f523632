"""`cogview data ...`: build data sets as webdataset shards, and check existing shards."""

from __future__ import annotations

import argparse
import time
from typing import Any

from cogview.errors import UserError


def _common(p: argparse.ArgumentParser, *, seed: bool = True) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="data set folder to write")
    p.add_argument(
        "--shard-size", type=int, default=5000, metavar="K", help="samples per shard (5000)"
    )
    if seed:
        p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (0)")


def _test_fraction(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.05,
        metavar="F",
        help="fraction for the test split (0.05)",
    )


def _generated(p: argparse.ArgumentParser, *, n: int) -> None:
    """The flags of a generated data set: how many samples, their side, the test split."""
    p.add_argument("--n", type=int, default=n, help=f"samples in all ({n})")
    p.add_argument("--size", type=int, default=64, metavar="PX", help="image side in px (64)")
    _test_fraction(p)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "data",
        help="build data sets as webdataset shards",
        description="Write a data set folder: train-*.tar and test-*.tar shards "
        "(<key>.png + <key>.txt caption [+ <key>.json attributes]) and info.json.",
    )
    sources = parser.add_subparsers(dest="source", metavar="SOURCE")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    p = sources.add_parser(
        "shapes",
        help="rendered compositional shapes scenes with captions and attributes",
        description="Seeded scenes of one or two coloured shapes on a 3x3 grid, with captions "
        "and attribute JSON. The same arguments give byte-identical shards.",
    )
    _common(p)
    _generated(p, n=20000)
    p.add_argument(
        "--two-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="fraction of two-object scenes (0.5; 0 = one object only, 1 = two only)",
    )
    p.add_argument(
        "--positions",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of two-object captions that name each object's position instead of a "
        "relation (0)",
    )
    p.add_argument(
        "--free-order-targets",
        action="store_true",
        help="let captioning learn two-object captions in the order they were written; by "
        "default its target names the objects in reading order (the captions, and so "
        "text-to-image, keep both orders)",
    )
    p.set_defaults(func=run_shapes)

    p = sources.add_parser(
        "fashion",
        help="Fashion-MNIST from Debian's dataset-fashion-mnist package",
        description="Fashion-MNIST (train and test files) as 32 px grayscale PNG with captions "
        "from the class names. Needs `apt-get install dataset-fashion-mnist`.",
    )
    _common(p)
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="training images to take (default all 60000; the test split keeps the proportion)",
    )
    p.set_defaults(func=run_fashion)

    p = sources.add_parser(
        "folder",
        help="a folder of name.png|jpg|jpeg|webp|bmp + name.txt pairs",
        description="Walk SRC (nested) and pair each image with the .txt of the same name. "
        "Images without a caption and unreadable images are skipped and counted.",
    )
    p.add_argument("src", metavar="SRC", help="folder to read")
    _common(p)
    p.add_argument(
        "--size", type=int, default=None, help="resize/crop images to this side (default: keep)"
    )
    _test_fraction(p)
    p.set_defaults(func=run_folder)

    p = sources.add_parser(
        "photos",
        help="random crops of the photos shipped with scikit-image and scikit-learn",
        description="Random square crops of natural photos; whole photos are held out for "
        "the test split. Captions are the photos' names.",
    )
    _common(p)
    _generated(p, n=2000)
    p.set_defaults(func=run_photos)

    p = sources.add_parser(
        "check",
        help="read shards, count samples and damaged data, optionally save a preview grid",
        description="Read every sample of a data set folder, .tar, glob or brace pattern.",
    )
    p.add_argument("path", metavar="PATH", help="data set folder, shard, glob or brace pattern")
    p.add_argument("--split", default="train", help="split of a data set folder (train)")
    p.add_argument("--grid", metavar="FILE", help="save the first --grid-n images as a grid")
    p.add_argument("--grid-n", type=int, default=64, help="images in the grid (64)")
    p.set_defaults(func=run_check)


def _report(info: dict[str, Any], out: str, seconds: float) -> None:
    total = sum(info.get(f"n_{s}", 0) for s in info["shards"])
    parts = []
    for split, names in info["shards"].items():
        parts.append(f"{split} {info[f'n_{split}']} samples in {len(names)} shards")
    print(f"wrote {out}: {', '.join(parts)}, info.json")
    print(f"{total} samples in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} samples/s)")


def _positive(value: int, flag: str) -> None:
    if value < 1:
        raise UserError(f"{flag} must be at least 1, got {value}")


def run_shapes(args: argparse.Namespace) -> int:
    from train.data.sources import build_shapes

    _positive(args.shard_size, "--shard-size")
    start = time.perf_counter()
    info = build_shapes(
        args.out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        shard_size=args.shard_size,
        test_fraction=args.test_fraction,
        two_fraction=args.two_fraction,
        positions=args.positions,
        reading_order_targets=not args.free_order_targets,
    )
    _report(info, args.out, time.perf_counter() - start)
    return 0


def run_fashion(args: argparse.Namespace) -> int:
    from train.data.sources import build_fashion

    _positive(args.shard_size, "--shard-size")
    start = time.perf_counter()
    info = build_fashion(args.out, n=args.n, seed=args.seed, shard_size=args.shard_size)
    _report(info, args.out, time.perf_counter() - start)
    return 0


def run_folder(args: argparse.Namespace) -> int:
    from train.data.sources import build_folder

    _positive(args.shard_size, "--shard-size")
    start = time.perf_counter()
    info, report = build_folder(
        args.src,
        args.out,
        size=args.size,
        seed=args.seed,
        shard_size=args.shard_size,
        test_fraction=args.test_fraction,
    )
    _report(info, args.out, time.perf_counter() - start)
    skipped = sum(report.skipped.values())
    details = ", ".join(
        f"{n} {reason} (e.g. {report.examples[reason]})" for reason, n in report.skipped.items()
    )
    print(f"skipped {skipped} files" + (f": {details}" if details else ""))
    if report.replaced_captions:
        print(
            f"{report.replaced_captions} captions were not UTF-8 and were decoded with "
            "replacement characters"
        )
    return 0


def run_photos(args: argparse.Namespace) -> int:
    from train.data.sources import build_photos

    _positive(args.shard_size, "--shard-size")
    start = time.perf_counter()
    info = build_photos(
        args.out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        shard_size=args.shard_size,
        test_fraction=args.test_fraction,
    )
    _report(info, args.out, time.perf_counter() - start)
    print(f"train photos: {', '.join(info['photos']['train'])}")
    print(f"test photos: {', '.join(info['photos']['test']) or '(none installed)'}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    import sys
    from collections import Counter

    import numpy as np
    from tqdm import tqdm

    from cogview.images import fit, save_grid
    from train.data.loader import iter_samples, list_shards

    shards = list_shards(args.path, args.split)
    samples = iter_samples(shards, decode_images=True)
    count, sizes, preview = 0, Counter(), []
    for sample in tqdm(samples, desc="reading", unit="img", file=sys.stderr):
        count += 1
        sizes[sample.image.size] += 1
        if args.grid and len(preview) < args.grid_n:
            preview.append(fit(sample.image, min(sample.image.size)))
    common = ", ".join(f"{w}x{h} px ({n})" for (w, h), n in sizes.most_common(3))
    print(f"{len(shards)} shards, {count} samples" + (f"; image sizes {common}" if common else ""))
    print(samples.stats.summary())
    if args.grid and preview:
        side = min(p.shape[0] for p in preview)
        path = save_grid(np.stack([fit(p, side) for p in preview]), args.grid, nrow=8)
        print(f"wrote {path} ({len(preview)} images)")
    return 0
