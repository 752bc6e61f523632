"""Token shards as one compressed file, to carry a data set to another machine, and back.

    python benchmarks/token_pack.py pack runs/big/tokens big.npz [--sizes 32] [--limit N]
    python benchmarks/token_pack.py unpack big.npz runs/big/tokens

A token shard folder spends ~4 KB of tar headers and padding on every sample; the packed file
holds the code grids, caption ids, captions and attributes of each split in compressed arrays
(~100 bytes a sample) and the folder's info.json. Unpacking writes the same samples under the
same keys through `train.data.tokens.write_sample`, so the shards load as the originals did.
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import numpy as np

from train.data.tokens import INFO_FILE, load_token_shards, read_info, write_sample

SHARD_SIZE = 20_000


def pack(src: Path, dest: Path, sizes: list[int] | None, limit: int | None) -> None:
    info = read_info(src)
    sizes = sizes or [int(s) for s in info["sizes"]]
    arrays: dict[str, np.ndarray] = {}
    counts = {}
    for split in ("train", "test"):
        data = load_token_shards(src, split)
        n = min(len(data.keys), limit) if limit and split == "train" else len(data.keys)
        counts[split] = n
        for s in sizes:
            arrays[f"{split}.codes{s}"] = data.codes[s][:n].numpy().astype(np.uint16)
        ids = data.text_ids[:n]
        arrays[f"{split}.ids"] = np.concatenate([np.asarray(x, np.int32) for x in ids])
        arrays[f"{split}.lengths"] = np.asarray([len(x) for x in ids], np.int32)
        arrays[f"{split}.keys"] = np.asarray(data.keys[:n])
        arrays[f"{split}.captions"] = np.asarray(data.captions[:n])
        arrays[f"{split}.metas"] = np.asarray([json.dumps(m) for m in data.metas[:n]])
    info = {**info, "sizes": sizes, "counts": counts,
            "grids": {str(s): info["grids"][str(s)] for s in sizes}}
    arrays["info"] = np.asarray(json.dumps(info))
    np.savez_compressed(dest, **arrays)
    print(f"{dest}: {sum(counts.values())} samples, {dest.stat().st_size / 1e6:.1f} MB")


def unpack(src: Path, dest: Path) -> None:
    z = np.load(src)
    info = json.loads(str(z["info"]))
    dest.mkdir(parents=True, exist_ok=True)
    shards: dict[str, list[str]] = {}
    for split in ("train", "test"):
        ends = np.cumsum(z[f"{split}.lengths"])
        ids = np.split(z[f"{split}.ids"], ends[:-1]) if len(ends) else []
        keys, captions, metas = z[f"{split}.keys"], z[f"{split}.captions"], z[f"{split}.metas"]
        codes = {int(s): z[f"{split}.codes{s}"] for s in info["sizes"]}
        shards[split] = []
        for start in range(0, len(keys), SHARD_SIZE):
            name = f"{split}-{start // SHARD_SIZE:06d}.tar"
            shards[split].append(name)
            with tarfile.open(dest / name, "w") as tar:
                for i in range(start, min(start + SHARD_SIZE, len(keys))):
                    write_sample(tar, str(keys[i]), {s: c[i] for s, c in codes.items()},
                                 ids[i].tolist(), str(captions[i]), json.loads(str(metas[i])))
    (dest / INFO_FILE).write_text(json.dumps({**info, "shards": shards}, indent=1))
    print(f"{dest}: {', '.join(f'{k} {len(v)} shards' for k, v in shards.items())}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="token shard folder -> .npz")
    a.add_argument("src", type=Path)
    a.add_argument("dest", type=Path)
    a.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                   help="image sizes to keep (default: all)")
    a.add_argument("--limit", type=int, help="training samples to keep (default: all)")
    b = sub.add_parser("unpack", help=".npz -> token shard folder")
    b.add_argument("src", type=Path)
    b.add_argument("dest", type=Path)
    args = p.parse_args()
    if args.cmd == "pack":
        pack(args.src, args.dest, args.sizes, args.limit)
    else:
        unpack(args.src, args.dest)


if __name__ == "__main__":
    main()
