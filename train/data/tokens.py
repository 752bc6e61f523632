"""Pre-tokenized shards: image code grids and caption token ids, ready for language-model training.

A token shard folder mirrors the image shards it was made from: `train-*.tar` and `test-*.tar`
with one sample per key:

    <key>.codes32.npy   uint16 (8, 8)     VQVAE codes of the image at 32 px (one per size asked)
    <key>.codes64.npy   uint16 (16, 16)
    <key>.ids.npy       int32 (T,)        caption ids from UnifiedTokenizer.encode_texts
    <key>.txt           the caption
    <key>.target.npy    int32 (T,)        ids of the captioning target, when the source gives
                                          one (`.target.txt`); else captioning learns the caption
    <key>.json          attributes, passed through when the source has them

and `info.json` with counts, sizes, grid shapes, the codebook size and the fingerprints of the
VQVAE and the tokenizer, so that a language model never trains on codes or ids of another
vocabulary.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from cogview.errors import ConfigError, UserError

INFO_FILE = "info.json"
FORMAT = "cogview-token-shards"
VERSION = 1
SPLITS = ("train", "test")
CODES_EXT = re.compile(r"^codes(\d+)\.npy$")
# webdataset's convention: the key is the member name up to the first dot of its base name
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


@dataclass
class TokenData:
    codes: dict[int, Tensor]  # image size -> LongTensor (N, h, w)
    text_ids: list[list[int]]
    targets: list[list[int]]  # what captioning learns: text_ids[i] unless the source gave one
    captions: list[str]
    metas: list[dict[str, Any] | None]
    keys: list[str]
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.keys)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mode = 0o644
    member.mtime = 0  # the same inputs give byte-identical shards
    tar.addfile(member, io.BytesIO(data))


def write_sample(
    tar: tarfile.TarFile,
    key: str,
    codes: dict[int, np.ndarray],
    ids: list[int],
    caption: str,
    meta: dict[str, Any] | None,
    target_ids: list[int] | None = None,
) -> None:
    """One sample: codes (h, w) per image size, caption ids, caption, attributes and the ids of
    the captioning target when it is not the caption."""
    for size, grid in sorted(codes.items()):
        _add(tar, f"{key}.codes{size}.npy", _npy_bytes(np.asarray(grid, dtype=np.uint16)))
    _add(tar, f"{key}.ids.npy", _npy_bytes(np.asarray(ids, dtype=np.int32)))
    if target_ids is not None:
        _add(tar, f"{key}.target.npy", _npy_bytes(np.asarray(target_ids, dtype=np.int32)))
    _add(tar, f"{key}.txt", caption.encode("utf-8"))
    if meta is not None:
        _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))


def _batches(items: Iterator[Any], n: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _split_shards(data: str | Path, split: str) -> list[str]:
    from train.data.loader import list_shards

    try:
        return list(list_shards(str(data), split=split))
    except UserError:
        if split == "train":
            raise
        return []  # a shard folder without a test split is fine


def encode_shards(
    data: str | Path,
    vqvae: Any,
    tokenizer: Any,
    out: str | Path,
    sizes: tuple[int, ...] = (32,),
    batch_size: int = 256,
    progress: bool = True,
    sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Tokenize every sample of the image shards in `data` into token shards in `out`.

    `vqvae` is a `vqvae.VQVAE` (put in eval mode here), `tokenizer` a
    `tokenizer.UnifiedTokenizer`; `sources` (paths of the VQVAE and tokenizer) goes into
    info.json for the record. Returns the info dict that was written.
    """
    from cogview.images import fit, to_tensor
    from train.data.loader import iter_samples
    from vqvae import fingerprint

    out = Path(out)
    if tokenizer.num_image_codes != vqvae.codebook_size:
        raise ConfigError.of("tokenizer", f"has {tokenizer.num_image_codes} image codes but the "
                             f"VQVAE a codebook of {vqvae.codebook_size}; they must match")
    for size in sizes:
        if size % vqvae.factor:
            raise ConfigError.of("sizes", f"{size} px is not divisible by the VQVAE factor "
                            f"f={vqvae.factor}")
    if (out / INFO_FILE).exists():
        raise ConfigError.of("out", f"{out} already holds token shards; remove it or choose "
                             "another")
    out.mkdir(parents=True, exist_ok=True)
    vqvae.eval()

    source_info = _source_info(data)
    total = None
    if source_info and all(f"n_{split}" in source_info for split in SPLITS):
        total = sum(int(source_info[f"n_{split}"]) for split in SPLITS)
    counts: dict[str, int] = {}
    skipped = 0
    shard_names: dict[str, list[str]] = {}
    shard_counts: dict[str, list[int]] = {}  # samples per shard, in the order of shard_names
    bar = tqdm(total=total, desc="encode", unit="img", file=sys.stderr, disable=not progress)
    for split in SPLITS:
        counts[split] = 0
        shard_names[split] = []
        shard_counts[split] = []
        for shard in _split_shards(data, split):
            name = Path(shard).name
            tmp = out / f".{name}.tmp-{os.getpid()}"
            samples = iter_samples([shard], decode_images=True)
            with tarfile.open(tmp, "w") as tar:
                for batch in _batches(samples, batch_size):
                    codes = {}
                    for size in sizes:
                        x = to_tensor(np.stack([fit(s.image, size) for s in batch]))
                        codes[size] = vqvae.encode(x).cpu().numpy()  # (B, h, w)
                    ids = tokenizer.encode_texts([s.caption for s in batch])
                    has_target = [s for s in batch if s.target is not None]
                    targets = dict(zip((s.key for s in has_target), tokenizer.encode_texts(
                        [s.target for s in has_target]), strict=True))
                    for i, s in enumerate(batch):
                        write_sample(tar, s.key, {k: v[i] for k, v in codes.items()}, ids[i],
                                     s.caption, s.meta or None, targets.get(s.key))
                    counts[split] += len(batch)
                    bar.update(len(batch))
            skipped += samples.stats.skipped
            tmp.replace(out / name)
            shard_names[split].append(name)
            shard_counts[split].append(counts[split] - sum(shard_counts[split]))
    bar.close()
    if counts["train"] + counts["test"] == 0:
        raise UserError(f"{data}: no readable samples to encode")

    f = vqvae.factor
    info = {
        "format": FORMAT,
        "version": VERSION,
        "counts": counts,
        "skipped": skipped,  # damaged source samples that were left out
        "shards": shard_names,
        "shard_counts": shard_counts,
        "sizes": list(sizes),
        "grids": {str(s): [s // f, s // f] for s in sizes},
        "codebook_size": int(vqvae.codebook_size),
        "vqvae_fingerprint": fingerprint(vqvae),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "tokenizer_layout": tokenizer.layout(),
        "source": str(data),
        "source_info": source_info,
        **(sources or {}),
    }
    tmp = out / f".{INFO_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(out / INFO_FILE)
    return info


def _source_info(data: str | Path) -> dict[str, Any] | None:
    """The image data set's own info.json, when it has a readable one."""
    f = Path(data) / INFO_FILE
    try:
        info = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def read_info(path: str | Path) -> dict[str, Any]:
    f = Path(path) / INFO_FILE
    if not Path(path).is_dir():
        raise UserError(f"{path}: no such token shard folder")
    try:
        info = json.loads(f.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no {INFO_FILE}; not a token shard folder "
                        "(make one with `cogview encode`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{f}: unreadable ({e.__class__.__name__})") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UserError(f"{f}: not a token shard folder (image shards need `cogview encode`)")
    return info


class _NotPlainTar(Exception):
    """A member this reader does not parse itself (pax or GNU long-name headers)."""


def _plain_tar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the regular files of an uncompressed ustar archive held in memory.

    Token shards are written by `write_sample` with short names and no extended headers, so
    walking the 512-byte headers directly is safe and several times faster than `tarfile`;
    anything else raises _NotPlainTar and the caller falls back to `tarfile`.
    """
    pos = 0
    while pos + tarfile.BLOCKSIZE <= len(data):
        header = data[pos : pos + tarfile.BLOCKSIZE]
        if not header.strip(b"\0"):
            return  # end-of-archive block
        kind = header[156:157]
        if kind not in (b"0", b"\0", b"5"):
            raise _NotPlainTar(kind)
        try:
            size = int(header[124:136].rstrip(b"\0 ").decode("ascii") or "0", 8)
        except ValueError as e:
            raise _NotPlainTar("size") from e
        name = header[0:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0]
        body = pos + tarfile.BLOCKSIZE
        if body + size > len(data):
            raise _NotPlainTar("truncated")
        if kind != b"5":
            full = (prefix + b"/" + name) if prefix else name
            yield full.decode("utf-8"), data[body : body + size]
        pos = body + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _tar_members(path: Path) -> Iterator[tuple[str, bytes]]:
    data = path.read_bytes()
    try:
        yield from list(_plain_tar_members(data))
        return
    except _NotPlainTar:
        pass
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            fh = tar.extractfile(member) if member.isfile() else None
            if fh is not None:
                yield member.name, fh.read()


@functools.lru_cache(maxsize=256)
def _npy_layout(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran order, data offset) of a .npy file that starts with `header`."""
    buf = io.BytesIO(header)
    version = np.lib.format.read_magic(buf)
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"npy format {version}")
    shape, fortran, dtype = read(buf)
    return dtype, shape, fortran, buf.tell()


def _load_npy(data: bytes) -> np.ndarray:
    """np.load for the small arrays of token shards; equal .npy headers are parsed once."""
    if data[:6] != b"\x93NUMPY" or len(data) < 10 or data[6] not in (1, 2):
        return np.load(io.BytesIO(data), allow_pickle=False)
    end = 10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else \
        12 + int.from_bytes(data[8:12], "little")
    dtype, shape, fortran, offset = _npy_layout(data[:end])
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed")
    array = np.frombuffer(data, dtype=dtype, offset=offset, count=math.prod(shape))
    return array.reshape(shape, order="F" if fortran else "C")


def load_token_shards(path: str | Path, split: str = "train") -> TokenData:
    """All samples of one split of a token shard folder, in memory, in shard and key order."""
    path = Path(path)
    info = read_info(path)
    shards = sorted(path.glob(f"{split}-*.tar"))
    if not shards:
        raise UserError(f"{path}: no {split}-*.tar token shards")
    sizes = [int(s) for s in info["sizes"]]
    samples: dict[str, dict[str, bytes]] = {}
    for shard in shards:
        try:
            for name, data in _tar_members(shard):
                m = _KEY_EXT.match(name)
                if m:
                    samples.setdefault(m.group(1), {})[m.group(2)] = data
        except (tarfile.TarError, OSError) as e:
            raise UserError(f"{shard}: unreadable token shard ({e})") from e

    keys, text_ids, targets, captions, metas = [], [], [], [], []
    grids: dict[int, list[np.ndarray]] = {s: [] for s in sizes}
    needed = [f"codes{s}.npy" for s in sizes] + ["ids.npy", "txt"]
    for key, parts in samples.items():
        missing = [n for n in needed if n not in parts]
        if missing:
            raise UserError(f"{path}: sample {key!r} lacks {missing}")
        try:
            for s in sizes:
                grids[s].append(_load_npy(parts[f"codes{s}.npy"]))
            text_ids.append(_load_npy(parts["ids.npy"]).tolist())
            target = parts.get("target.npy")
            targets.append(text_ids[-1] if target is None else _load_npy(target).tolist())
            captions.append(parts["txt"].decode("utf-8"))
            metas.append(json.loads(parts["json"]) if "json" in parts else None)
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise UserError(f"{path}: sample {key!r} is corrupt ({e})") from e
        keys.append(key)
    codes = {}
    for s in sizes:
        grid = tuple(info["grids"][str(s)])
        if any(g.shape != grid for g in grids[s]):
            raise UserError(f"{path}: codes{s} grids are not all {grid}")
        stacked = np.stack(grids[s]) if grids[s] else np.zeros((0, *grid))
        codes[s] = torch.from_numpy(stacked.astype(np.int64))
    return TokenData(codes=codes, text_ids=text_ids, targets=targets, captions=captions,
                     metas=metas, keys=keys, info=info)


def check_compatible(info: dict[str, Any], tokenizer: Any,
                     vqvae_fingerprint: str | None = None) -> None:
    """UserError unless the token shards were made with this tokenizer (and this VQVAE)."""
    source = info.get("source", "token shards")
    if int(info["codebook_size"]) != int(tokenizer.num_image_codes):
        raise UserError(f"token shards hold codes of a {info['codebook_size']}-code VQVAE but "
                        f"the tokenizer has {tokenizer.num_image_codes} image codes; re-run "
                        "`cogview encode` with a matching --vqvae and --tokenizer")
    if info.get("tokenizer_fingerprint") != tokenizer.fingerprint:
        raise UserError(f"token shards (from {source}) were encoded with another tokenizer "
                        f"({info.get('tokenizer_fingerprint')} vs {tokenizer.fingerprint}); "
                        "re-run `cogview encode` with this --tokenizer")
    if vqvae_fingerprint is not None and info.get("vqvae_fingerprint") != vqvae_fingerprint:
        raise UserError(f"token shards (from {source}) hold codes of another VQVAE "
                        f"({info.get('vqvae_fingerprint')} vs {vqvae_fingerprint}); re-run "
                        "`cogview encode` with this --vqvae")
