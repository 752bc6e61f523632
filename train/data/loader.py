"""Reading webdataset shards: listing, a fault-tolerant sample iterator, streaming batches, and
whole small data sets in memory.

Damaged data never stops an epoch. webdataset 1.0 reads tars with `tarfile` in stream mode,
which ends a shard silently at a corrupt member header (every later sample of the shard is lost,
and no handler is called) and also at a shard cut off inside a member. So shards are read here
by a small tar reader of our own: a corrupt header is counted and skipped by scanning on to the
next valid header, a cut-off member is counted, and the samples around either are read as usual.
Samples without an image or caption, and images that do not decode, are skipped and counted;
each kind of problem logs one warning line (its first occurrence), and a summary line follows
at the end. The counts are in `SkipStats`.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import logging
import os
import random
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cogview.errors import UserError
from train.data.shards import IMAGE_EXTENSIONS, read_info

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger("cogview.data")

_BLOCK = tarfile.BLOCKSIZE  # 512: tar headers and data are aligned to blocks

# what SkipStats counts; "skip" kinds drop a sample, "note" kinds keep it (or are about shards)
SKIP_KINDS = {
    "no_image": "sample has no image member",
    "no_caption": "sample has no .txt caption",
    "bad_image": "image does not decode",
}
NOTE_KINDS = {
    "corrupt_header": "corrupt tar header, skipped to the next valid one",
    "truncated": "shard ends inside a member",
    "unreadable_shard": "shard cannot be opened",
    "bad_caption_encoding": "caption is not UTF-8, decoded with replacement characters",
    "bad_json": "attribute .json does not parse, kept the sample with empty metadata",
}


@dataclass
class SkipStats:
    """Counts of damaged data met while reading, by kind (see SKIP_KINDS and NOTE_KINDS)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # first message of each kind
    log_first: bool = True  # log a warning line at the first occurrence of each kind
    _sent: Counter = field(default_factory=Counter, repr=False)

    def add(self, kind: str, where: str) -> None:
        self.counts[kind] += 1
        if kind not in self.examples:
            self.examples[kind] = where
            if self.log_first:
                log.warning("%s: %s (further ones are only counted)", where, _describe(kind))

    @property
    def skipped(self) -> int:
        """Samples dropped."""
        return sum(self.counts[k] for k in SKIP_KINDS)

    def summary(self) -> str:
        parts = [f"{n} {kind}" for kind, n in sorted(self.counts.items()) if n]
        return f"skipped {self.skipped} samples" + (f" ({', '.join(parts)})" if parts else "")

    def take_delta(self) -> dict[str, tuple[int, str]]:
        """Counts since the previous call, with each kind's first message (for worker -> main)."""
        delta = {k: (n - self._sent[k], self.examples[k]) for k, n in self.counts.items()}
        self._sent = Counter(self.counts)
        return {k: v for k, v in delta.items() if v[0]}

    def merge(self, delta: dict[str, tuple[int, str]]) -> None:
        for kind, (n, where) in delta.items():
            self.add(kind, where)
            self.counts[kind] += n - 1

    def log_summary(self) -> None:
        if self.counts:
            log.warning("%s", self.summary())


def _describe(kind: str) -> str:
    return SKIP_KINDS.get(kind) or NOTE_KINDS.get(kind) or kind


@dataclass(frozen=True)
class Sample:
    key: str
    image: Image.Image | None  # RGB, or None when not decoded
    caption: str
    meta: dict[str, Any]
    url: str = ""  # the shard it came from
    image_bytes: bytes | None = None  # the encoded image file, as stored
    target: str | None = None  # the captioning target (`.target.txt`), when not the caption


# ----------------------------------------------------------------------------- listing


def list_shards(path: str | os.PathLike, split: str = "train") -> list[str]:
    """Shard files for `path`: a data set folder (its `{split}-*.tar`), one .tar file, a glob
    (`data/*.tar`) or a brace pattern (`data/train-{000000..000003}.tar`)."""
    text = os.fspath(path)
    if os.path.isdir(text):
        found = sorted(glob.glob(os.path.join(glob.escape(text), f"{split}-*.tar")))
        if not found:
            raise UserError(f"{text}: no {split}-*.tar shards in this folder")
        return found
    if "{" in text and "}" in text:
        import braceexpand

        expanded = list(braceexpand.braceexpand(text))
        missing = [p for p in expanded if not os.path.isfile(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"{text}: shard {missing[0]} does not exist{more}")
        return expanded
    if any(c in text for c in "*?["):
        found = sorted(p for p in glob.glob(text) if os.path.isfile(p))
        if not found:
            raise UserError(f"{text}: no files match")
        return found
    if os.path.isfile(text):
        if not text.endswith(".tar"):
            raise UserError(f"{text}: not a .tar shard or a data set folder")
        return [text]
    raise UserError(f"{text}: no such file or folder")


def _resolve(shards: str | os.PathLike | Sequence[str], split: str) -> list[str]:
    if isinstance(shards, (str, os.PathLike)):
        return list_shards(shards, split)
    out = [os.fspath(s) for s in shards]
    if not out:
        raise UserError("no shards given")
    return out


# ----------------------------------------------------------------------------- tar reading


def _tar_members(path: str, stats: SkipStats) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every regular file in a tar, surviving damage (see top)."""
    try:
        f = open(path, "rb")
    except OSError as e:
        stats.add("unreadable_shard", f"{path} ({e.strerror})")
        return
    with f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        long_name: str | None = None  # from a GNU long-name or pax header, for the next member
        in_damage = False  # inside a run of blocks after a corrupt header
        while offset + _BLOCK <= size:
            f.seek(offset)
            header = f.read(_BLOCK)
            if header.count(0) == _BLOCK:  # end-of-archive padding
                offset += _BLOCK
                continue
            try:
                info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            except tarfile.HeaderError:
                if not in_damage:
                    stats.add("corrupt_header", f"{path} at byte {offset}")
                    in_damage = True
                offset += _BLOCK
                continue
            in_damage = False
            start, end = offset + _BLOCK, offset + _BLOCK + info.size
            if end > size:
                stats.add("truncated", f"{path}: {long_name or info.name}")
                return
            offset = start + -(-info.size // _BLOCK) * _BLOCK
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE):
                f.seek(start)
                extended = f.read(info.size)
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = extended.rstrip(b"\0").decode("utf-8", "surrogateescape")
                elif info.type == tarfile.XHDTYPE:
                    long_name = _pax_path(extended) or long_name
                continue
            name, long_name = long_name or info.name, None
            if not info.isreg():
                continue
            f.seek(start)
            yield name, f.read(info.size)
        f.seek(offset)
        if any(f.read()):  # less than a block left, and not padding: a cut-off header
            stats.add("truncated", f"{path}: partial header at byte {offset}")


def _pax_path(data: bytes) -> str | None:
    """The "path" record of a pax extended header ("<len> path=<name>\\n" records)."""
    for line in data.split(b"\n"):
        _, _, record = line.partition(b" ")
        key, eq, value = record.partition(b"=")
        if eq and key == b"path":
            return value.decode("utf-8", "surrogateescape")
    return None


def _split_name(name: str) -> tuple[str, str]:
    """'dir/key.ext.more' -> ('dir/key', 'ext.more'), as webdataset groups members."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _raw_samples(path: str, stats: SkipStats) -> Iterator[dict[str, Any]]:
    """Consecutive members with one key, grouped: {"__key__", "__url__", ext: bytes, ...}."""
    current: dict[str, Any] | None = None
    for name, data in _tar_members(path, stats):
        key, ext = _split_name(name)
        if not ext:
            continue
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": path}
        current.setdefault(ext, data)  # a repeated member name keeps the first copy
    if current is not None:
        yield current


def _image_ext(raw: dict[str, Any]) -> str | None:
    return next((e for e in IMAGE_EXTENSIONS if e in raw), None)


def _check(raw: dict[str, Any], stats: SkipStats) -> bool:
    """Whether a raw sample has an image and a caption (counting what it lacks)."""
    where = f"{raw['__url__']}: {raw['__key__']}"
    if _image_ext(raw) is None:
        stats.add("no_image", where)
        return False
    if "txt" not in raw:
        stats.add("no_caption", where)
        return False
    return True


def _decode(raw: dict[str, Any], stats: SkipStats, decode_images: bool) -> Sample | None:
    """A checked raw sample -> Sample; None (counted) when its image does not decode."""
    where = f"{raw['__url__']}: {raw['__key__']}"
    ext = _image_ext(raw)
    assert ext is not None
    image = None
    if decode_images:
        image = _decode_image(raw[ext])
        if image is None:
            stats.add("bad_image", where)
            return None
    try:
        caption = raw["txt"].decode("utf-8")
    except UnicodeDecodeError:
        stats.add("bad_caption_encoding", where)
        caption = raw["txt"].decode("utf-8", errors="replace")
    target = None
    if "target.txt" in raw:
        target = raw["target.txt"].decode("utf-8", errors="replace").strip() or None
    meta: dict[str, Any] = {}
    if "json" in raw:
        try:
            parsed = json.loads(raw["json"].decode("utf-8"))
            meta = parsed if isinstance(parsed, dict) else {"value": parsed}
        except (UnicodeDecodeError, ValueError):
            stats.add("bad_json", where)
    return Sample(raw["__key__"], image, caption.strip(), meta, raw["__url__"], raw[ext], target)


def _decode_image(data: bytes) -> Image.Image | None:
    from PIL import Image

    from cogview.images import to_rgb

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb(image, "image")
    except (OSError, SyntaxError, ValueError, EOFError, UserError, Image.DecompressionBombError):
        return None


def _shuffled(items: Iterator[Any], rng: random.Random, bufsize: int) -> Iterator[Any]:
    """A buffer shuffle: keep `bufsize` items, emit a random one as each new one arrives."""
    buf: list[Any] = []
    for item in items:
        buf.append(item)
        if len(buf) >= bufsize:
            k = rng.randrange(len(buf))
            buf[k], buf[-1] = buf[-1], buf[k]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


class SampleIterator:
    """Iterator over Samples; `stats` holds the skip counts so far (see `iter_samples`)."""

    def __init__(
        self, shards: list[str], decode_images: bool, shuffle: bool, seed: int, bufsize: int
    ) -> None:
        self.shards = shards
        self.stats = SkipStats()
        self._it = self._run(decode_images, shuffle, seed, bufsize)

    def _run(self, decode_images: bool, shuffle: bool, seed: int, bufsize: int):
        order = list(self.shards)
        rng = random.Random(seed)
        if shuffle:
            rng.shuffle(order)
        raws = (raw for path in order for raw in _raw_samples(path, self.stats))
        checked = (raw for raw in raws if _check(raw, self.stats))
        if shuffle:
            checked = _shuffled(checked, rng, bufsize)
        for raw in checked:
            sample = _decode(raw, self.stats, decode_images)
            if sample is not None:
                yield sample
        self.stats.log_summary()

    def __iter__(self) -> SampleIterator:
        return self

    def __next__(self) -> Sample:
        return next(self._it)


def iter_samples(
    shards: str | os.PathLike | Sequence[str],
    *,
    decode_images: bool = True,
    shuffle: bool = False,
    seed: int = 0,
    split: str = "train",
    bufsize: int = 1000,
) -> SampleIterator:
    """Every readable sample of the shards, once, in order (or shuffled: shard order and a
    `bufsize` buffer, from `seed`). Damaged data is skipped and counted in `.stats`."""
    return SampleIterator(_resolve(shards, split), decode_images, shuffle, seed, bufsize)


# ----------------------------------------------------------------------------- streaming batches


def _worker() -> tuple[int, int]:
    """(worker id, number of workers) inside a DataLoader worker; (0, 1) outside."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


@dataclass
class _Stream:
    """The per-worker sample stream: shards over epochs, split between workers, shuffled."""

    shards: list[str]
    size: int
    seed: int
    epochs: int | None
    shuffle: bool
    bufsize: int
    stats: SkipStats

    def raw(self) -> Iterator[dict[str, Any]]:
        worker, n_workers = _worker()
        # enough shards: each worker reads its own; otherwise every worker reads every shard
        # and keeps every n-th sample (and only worker 0 counts shard-level damage)
        by_shard = len(self.shards) >= n_workers
        quiet = SkipStats(log_first=False)
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            order = list(self.shards)
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            if by_shard:
                order = order[worker::n_workers]
            index = 0
            for path in order:
                stats = self.stats if by_shard or worker == 0 else quiet
                for raw in _raw_samples(path, stats):
                    mine = by_shard or index % n_workers == worker
                    index += 1
                    if mine and _check(raw, self.stats):
                        yield raw
            epoch += 1

    def __call__(self) -> Iterator[Sample]:
        import webdataset as wds

        worker, _ = _worker()
        raws: Iterator[dict[str, Any]] = self.raw()
        if self.shuffle:
            # a different buffer order in each worker, the same for a seed
            worker_seed = self.seed * 7919 + worker
            raws = wds.shuffle(self.bufsize, min(self.bufsize, 100), seed=worker_seed)(raws)
        for raw in raws:
            sample = _decode(raw, self.stats, decode_images=True)
            if sample is not None:
                yield sample


def _fit_sample(sample: Sample, size: int) -> tuple[np.ndarray, str, dict[str, Any]]:
    from cogview.images import fit

    return fit(sample.image, size), sample.caption, sample.meta


def _batches(items: Iterator[tuple], batch_size: int, stats: SkipStats) -> Iterator[tuple]:
    """Collate (image (S, S, 3), caption, meta) items into (uint8 (B, 3, S, S), captions, metas,
    skip counts since the previous batch)."""
    import torch

    batch: list[tuple] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield _collate(batch, torch) + (stats.take_delta(),)
            batch = []
    if batch:
        yield _collate(batch, torch) + (stats.take_delta(),)


def _collate(batch: list[tuple], torch: Any) -> tuple:
    images = torch.from_numpy(np.stack([b[0] for b in batch])).permute(0, 3, 1, 2).contiguous()
    return images, [b[1] for b in batch], [b[2] for b in batch]


class ImageBatches:
    """Iterable of (images uint8 (B, 3, S, S), captions, metas); skip counts from every worker
    are gathered in `stats`."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.stats = SkipStats()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str], list[dict[str, Any]]]]:
        for images, captions, metas, delta in self.loader:
            self.stats.merge(delta)
            yield images, list(captions), list(metas)
        self.stats.log_summary()


def image_batches(
    shards: str | os.PathLike | Sequence[str],
    size: int,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    workers: int = 2,
    epochs: int | None = None,
    split: str = "train",
    bufsize: int = 1000,
) -> ImageBatches:
    """Stream batches with webdataset: images resized/cropped to `size` with `cogview.images.fit`.

    `epochs=None` repeats forever (shard order reshuffled each epoch). The last batch of a
    finite stream may be short. With `workers` > 0, decoding runs in DataLoader workers.
    """
    import webdataset as wds

    stats = SkipStats(log_first=False)  # workers report to the main process, which logs
    stream = _Stream(_resolve(shards, split), size, seed, epochs, shuffle, bufsize, stats)
    pipeline = wds.DataPipeline(
        stream,
        wds.map(functools.partial(_fit_sample, size=size)),
        functools.partial(_batches, batch_size=batch_size, stats=stats),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers, shuffle=False)
    return ImageBatches(loader)


# ----------------------------------------------------------------------------- in memory


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    captions: list[str]
    metas: list[dict[str, Any]]
    stats: SkipStats = field(default_factory=SkipStats)
    targets: list[str | None] = field(default_factory=list)  # captioning targets (Sample.target)

    def __len__(self) -> int:
        return len(self.captions)


def _expected_count(shards: list[str]) -> int | None:
    """Samples in these shards according to their folder's info.json, when it says."""
    folders = {os.path.dirname(os.path.abspath(s)) for s in shards}
    if len(folders) != 1:
        return None
    info = read_info(folders.pop())
    if not info or "shards" not in info or "shard_size" not in info:
        return None
    total = 0
    for name in (os.path.basename(s) for s in shards):
        for split, names in info["shards"].items():
            if name in names:
                i, n = names.index(name), info.get(f"n_{split}", 0)
                total += max(0, min(info["shard_size"], n - i * info["shard_size"]))
                break
        else:
            return None
    return total


def load_images(
    shards: str | os.PathLike | Sequence[str],
    size: int,
    *,
    limit: int | None = None,
    split: str = "train",
    progress: bool = True,
) -> ImageSet:
    """Every sample (or the first `limit`) in memory, resized/cropped to `size`."""
    import sys

    import torch
    from tqdm import tqdm

    from cogview.images import fit

    paths = _resolve(shards, split)
    samples = iter_samples(paths, decode_images=True)
    total = _expected_count(paths)
    if limit is not None:
        total = limit if total is None else min(total, limit)
    arrays, captions, metas, targets = [], [], [], []
    bar = tqdm(
        total=total, desc="loading images", unit="img", file=sys.stderr, disable=not progress
    )
    with bar:
        for sample in samples:
            if limit is not None and len(arrays) >= limit:
                break
            arrays.append(fit(sample.image, size))
            captions.append(sample.caption)
            metas.append(sample.meta)
            targets.append(sample.target)
            bar.update(1)
    if arrays:
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    else:
        images = torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return ImageSet(images, captions, metas, samples.stats, targets)


def load_held_out(shards: str | os.PathLike | Sequence[str], size: int, limit: int,
                  split: str = "test", progress: bool = True) -> Any:
    """The first `limit` images of a split at `size` px with their captions, captioning targets
    and attributes, as `cogview.bench.evaluate.HeldOut` (attributes None where a sample has no
    objects)."""
    from cogview.bench.evaluate import HeldOut

    found = load_images(shards, size, limit=limit, split=split, progress=progress)
    attrs = [m if isinstance(m, dict) and m.get("objects") else None for m in found.metas]
    return HeldOut(found.images, found.captions, attrs, found.targets)
