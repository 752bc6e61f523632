"""Token shards read as a stream: memory bounded whatever the data set's size, split over
processes and data-loader workers, and resumable to the sample.

Layout. The sorted train shards are dealt once into `streams` fixed groups (group j holds
shards j, j + D, j + 2D, ...). Each optimizer step takes `batch / D` samples from every group,
and the global batch is the groups' parts in group order. Process r of R reads only groups
r*D/R .. (r+1)*D/R - 1 (its contiguous slice of the global batch, as the loop expects), and
its data-loader workers split those groups among themselves. So the ranks read disjoint
shards, and with the same `streams` a run on any number of processes sees the same global
batches as a run on one.

Order. Every group runs through its shards epoch after epoch: epoch e reads the group's
shards in an order drawn from (seed, group, e), each shard's samples in file order, through a
shuffle buffer of `buffer` samples seeded the same way that drains at the end of the epoch.
Each sample of the group is seen exactly once per epoch of the group (groups of different
sizes reach their epochs' ends at different steps).

Resume. After k samples a group is at epoch k // size, offset k % size: a pure function of the
step. A resumed stream replays the shuffle on sample numbers only (no file is read, nothing is
decoded) up to that offset, then reads just the samples the buffer holds and goes on from
the shard and sample where the epoch's reading stopped. The per-sample randomness of the
batch builder (task, mask, text dropout) comes from a generator seeded from (seed, step,
group), so a resumed run draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cogview.config import option
from cogview.errors import ConfigError, UserError

RawSample = tuple[str, dict[str, bytes]]  # (key, {extension: bytes}) as in the shard
MAX_AUTO_STREAMS = 8
# salts that keep the seeds of shard orders, shuffles and batch building apart
_ORDER, _SHUFFLE, _BUILD = 1, 2, 3


@dataclass(frozen=True)
class StreamConfig:
    """How `--stream` reads token shards (CogLM and SR trainers)."""

    stream: bool = option(False, "read the train token shards as a stream (memory bounded "
                          "whatever the data set size, shards split over processes and "
                          "workers) instead of holding them in memory")
    streams: int = option(0, "with --stream: shard groups the global batch is drawn from in "
                          "equal parts; the same number gives the same batches on any number "
                          "of processes (0 = the most up to 8 that the shards, the batch and "
                          "the processes allow)")
    shuffle_buffer: int = option(2000, "with --stream: samples in each group's shuffle buffer",
                                 metavar="N")
    workers: int = option(1, "with --stream: data-loader worker processes per training "
                          "process that build the batches (0 = in the training process)")

    def __post_init__(self) -> None:
        if self.streams < 0:
            raise ConfigError.of("streams", "must not be negative")
        if self.shuffle_buffer < 1:
            raise ConfigError.of("shuffle_buffer", "must be at least 1")
        if self.workers < 0:
            raise ConfigError.of("workers", "must not be negative")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: stable across runs and machines)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


# ---------------------------------------------------------------------------------------------
# reading shards sample by sample


def _key_ext(name: str) -> tuple[str, str]:
    """webdataset's convention: the key is the name up to the first dot of its base name."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def iter_shard(path: Path, skip: int = 0, want: set[int] | None = None
               ) -> Iterator[tuple[int, RawSample]]:
    """(index, (key, parts)) of the samples of an uncompressed token shard, in file order,
    read member by member (memory: one sample). The first `skip` samples and, with `want`,
    every sample not in it are passed over without reading their bytes."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: unreadable token shard ({e})") from e
    last = max(want, default=-1) if want is not None else None
    with f:
        index, key, parts = -1, None, {}
        while True:
            header = f.read(tarfile.BLOCKSIZE)
            if len(header) < tarfile.BLOCKSIZE or not header.strip(b"\0"):
                break
            kind = header[156:157]
            try:
                size = int(header[124:136].rstrip(b"\0 ").decode("ascii") or "0", 8)
            except ValueError:
                raise UserError(f"{path}: damaged tar header; not a token shard") from None
            padded = -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if kind not in (b"0", b"\0"):
                if kind in (b"x", b"g", b"L", b"K"):
                    raise UserError(f"{path}: tar with extended headers; --stream reads shards "
                                    "written by `cogview encode`")
                f.seek(padded, 1)
                continue
            name = header[0:100].split(b"\0", 1)[0]
            prefix = header[345:500].split(b"\0", 1)[0]
            full = ((prefix + b"/" + name) if prefix else name).decode("utf-8")
            k, ext = _key_ext(full)
            if k != key:
                if key is not None and parts:
                    yield index, (key, parts)
                index, key, parts = index + 1, k, {}
                if last is not None and index > last:
                    return  # every wanted sample was read
            if index < skip or (want is not None and index not in want):
                f.seek(padded, 1)
                continue
            data = f.read(padded)[:size]
            if len(data) < size:
                raise UserError(f"{path}: truncated token shard")
            parts[ext] = data
        if key is not None and parts:
            yield index, (key, parts)


def count_samples(path: Path) -> int:
    """Samples in a token shard, from its headers alone (no member is read)."""
    keys, last = 0, None
    with open(path, "rb") as f:
        while True:
            header = f.read(tarfile.BLOCKSIZE)
            if len(header) < tarfile.BLOCKSIZE or not header.strip(b"\0"):
                return keys
            size = int(header[124:136].rstrip(b"\0 ").decode("ascii") or "0", 8)
            if header[156:157] in (b"0", b"\0"):
                name = header[0:100].split(b"\0", 1)[0]
                prefix = header[345:500].split(b"\0", 1)[0]
                k = _key_ext(((prefix + b"/" + name) if prefix else name).decode("utf-8"))[0]
                if k != last:
                    keys, last = keys + 1, k
            f.seek(-(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, 1)


# ---------------------------------------------------------------------------------------------
# one group of shards: epochs, shuffle buffer, fast-forward


@dataclass
class ShardGroup:
    """Shards read one after another, epoch after epoch, through a shuffle buffer."""

    index: int
    paths: list[Path]
    sizes: list[int]  # samples per shard
    seed: int
    buffer: int

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def order(self, epoch: int) -> list[int]:
        """Shard indices in the order epoch `epoch` reads them."""
        order = list(range(len(self.paths)))
        random.Random(derive_seed(self.seed, _ORDER, self.index, epoch)).shuffle(order)
        return order

    def position(self, consumed: int) -> tuple[int, int]:
        """(epoch, offset in the epoch) after `consumed` samples."""
        return divmod(consumed, self.size)

    def samples(self, start: int = 0) -> Iterator[RawSample]:
        """Every sample from the `start`-th on (counted from the first epoch), endlessly."""
        if self.size == 0:
            raise UserError(f"token shards {', '.join(p.name for p in self.paths)} hold no "
                            "samples")
        epoch, offset = self.position(start)
        while True:
            yield from self._epoch(epoch, offset)
            epoch, offset = epoch + 1, 0

    def _locate(self, order: list[int]) -> Callable[[int], tuple[int, int]]:
        """Sample number in the epoch -> (shard index, sample index in the shard)."""
        ends = np.cumsum([self.sizes[s] for s in order])

        def locate(t: int) -> tuple[int, int]:
            p = int(np.searchsorted(ends, t, side="right"))
            return order[p], t - (int(ends[p - 1]) if p else 0)

        return locate

    def _epoch(self, epoch: int, offset: int) -> Iterator[RawSample]:
        order, n = self.order(epoch), self.size
        locate = self._locate(order)
        rng = random.Random(derive_seed(self.seed, _SHUFFLE, self.index, epoch))
        size = min(self.buffer, n)
        steady = n - size  # emissions while the buffer is full; then it drains
        # fast-forward on sample numbers: the same random calls as reading, no file touched
        buf = list(range(size))
        fed = size
        for _ in range(min(offset, steady)):
            buf[rng.randrange(size)] = fed
            fed += 1
        payload = self._fetch(buf, locate)
        reader = self._read(order, fed)
        for _ in range(min(offset, steady), steady):
            t, sample = next(reader)
            i = rng.randrange(size)
            out, buf[i] = buf[i], t
            payload[t] = sample
            yield payload.pop(out)
        rng.shuffle(buf)
        for t in buf[max(0, offset - steady) :]:
            yield payload.pop(t)

    def _fetch(self, ids: Sequence[int], locate: Callable[[int], tuple[int, int]]
               ) -> dict[int, RawSample]:
        """The samples with these epoch numbers, reading only them."""
        wanted: dict[int, dict[int, int]] = {}
        for t in ids:
            shard, i = locate(t)
            wanted.setdefault(shard, {})[i] = t
        out = {}
        for shard, members in wanted.items():
            for i, sample in iter_shard(self.paths[shard], want=set(members)):
                out[members[i]] = sample
            missing = set(members.values()) - set(out)
            if missing:
                raise UserError(f"{self.paths[shard]}: fewer samples than when the run began")
        return out

    def _read(self, order: list[int], start: int) -> Iterator[tuple[int, RawSample]]:
        """(epoch number, sample) from epoch number `start` on, shard after shard."""
        t = 0
        for shard in order:
            n = self.sizes[shard]
            if t + n <= start:
                t += n
                continue
            skip = max(0, start - t)
            got = 0
            for i, sample in iter_shard(self.paths[shard], skip=skip):
                yield t + i, sample
                got += 1
            if got != n - skip:
                raise UserError(f"{self.paths[shard]}: {skip + got} samples, {n} when the run "
                                "began")
            t += n


# ---------------------------------------------------------------------------------------------
# the layout over processes and workers


@dataclass
class StreamLayout:
    """The train shards dealt into groups, and which groups each process reads."""

    groups: list[ShardGroup]
    batch: int  # global batch

    @property
    def per_group(self) -> int:
        return self.batch // len(self.groups)

    def local(self, rank: int, world: int) -> list[int]:
        """Groups process `rank` of `world` reads: its contiguous part of the global batch."""
        n = len(self.groups) // world
        return list(range(rank * n, (rank + 1) * n))

    def state(self, step: int) -> dict[str, Any]:
        """The data position after `step` steps, and what the position depends on."""
        return {
            "streams": len(self.groups),
            "buffer": self.groups[0].buffer,
            "seed": self.groups[0].seed,
            "shards": [[p.name for p in g.paths] for g in self.groups],
            "sizes": [g.sizes for g in self.groups],
            # (epoch, offset) of every group: what the next step reads first
            "position": [list(g.position(step * self.per_group)) for g in self.groups],
        }

    def check_state(self, state: dict[str, Any], where: str) -> None:
        """UserError when a checkpoint's data stream was laid out otherwise than this one."""
        mine = self.state(0)
        changed = [k for k in ("streams", "buffer", "seed", "shards", "sizes")
                   if k in state and state[k] != mine[k]]
        if changed:
            raise UserError(f"resume: {where} streamed its data with other {', '.join(changed)}"
                            "; resume with the same token shards and stream settings")


def plan_layout(paths: Sequence[Path], batch: int, world: int, cfg: StreamConfig, seed: int,
                sizes: Sequence[int] | None = None) -> StreamLayout:
    """Deal `paths` (the train shards) into groups for a global batch of `batch` samples on
    `world` processes; ConfigError naming the parameter that does not fit."""
    paths = sorted(Path(p) for p in paths)
    if not paths:
        raise UserError("no train token shards to stream")
    n = cfg.streams
    if n == 0:
        fits = [d for d in range(min(MAX_AUTO_STREAMS, len(paths)), 0, -1)
                if batch % d == 0 and d % world == 0]
        if not fits:
            raise ConfigError.of("streams", (
                f"finds no number of shard groups for {len(paths)} train shard(s), batch "
                f"{batch} and {world} process(es): each process needs a group of its own"
                " and every group an equal part of the batch"))
        n = fits[0]
    if n > len(paths):
        raise ConfigError.of("streams", f"{n} exceeds the {len(paths)} train shard(s)")
    if batch % n:
        raise ConfigError.of("batch_size", f"{batch} does not split into {n} equal parts "
                             "(one per shard group, --streams)")
    if n % world:
        raise ConfigError.of("streams", f"{n} groups do not split over {world} processes")
    if sizes is None:
        sizes = [count_samples(p) for p in paths]
    groups = [ShardGroup(j, list(paths[j::n]), list(sizes[j::n]), seed, cfg.shuffle_buffer)
              for j in range(n)]
    return StreamLayout(groups, batch)


# ---------------------------------------------------------------------------------------------
# batches built in worker processes


Builder = Callable[[list[Any], int, torch.Generator], list[Any]]  # (samples, step, g) -> part


@dataclass
class Packed:
    """A list of dataclass items with the tensor fields of all items in one numpy array per
    field: a worker's part crosses to the training process as a few pickled buffers instead of
    one shared-memory segment per tensor (hundreds a step, which cost more than building)."""

    cls: type
    n: int
    arrays: dict[str, tuple[np.ndarray, list[tuple[int, ...]]]]  # field -> (flat, shapes)
    rest: dict[str, list[Any]]  # the other fields, as they are

    @staticmethod
    def of(items: list[Any]) -> Any:
        """`items` packed, or unchanged when they are not dataclasses with tensor fields."""
        if not items or not dataclasses.is_dataclass(items[0]):
            return items
        arrays, rest = {}, {}
        for f in dataclasses.fields(items[0]):
            values = [getattr(x, f.name) for x in items]
            if all(isinstance(v, torch.Tensor) for v in values):
                flat = np.concatenate([v.reshape(-1).numpy() for v in values])
                arrays[f.name] = (flat, [tuple(v.shape) for v in values])
            else:
                rest[f.name] = values
        return Packed(type(items[0]), len(items), arrays, rest)

    def unpack(self) -> list[Any]:
        out: list[dict[str, Any]] = [{} for _ in range(self.n)]
        for name, (flat, shapes) in self.arrays.items():
            t, start = torch.from_numpy(flat), 0
            for i, shape in enumerate(shapes):
                size = math.prod(shape)
                out[i][name] = t[start : start + size].view(shape)
                start += size
        for name, values in self.rest.items():
            for i, v in enumerate(values):
                out[i][name] = v
        return [self.cls(**kw) for kw in out]


def _unpack(part: Any) -> list[Any]:
    return part.unpack() if isinstance(part, Packed) else part


@dataclass
class _Parts(IterableDataset):
    """For every step from `start`: {group: built part} of this worker's share of `groups`."""

    layout: StreamLayout
    groups: list[int]
    start: int
    decode: Callable[[RawSample], Any]
    build: Builder
    seed: int

    def __iter__(self) -> Iterator[tuple[int, dict[int, list[Any]]]]:
        info = get_worker_info()
        w, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.groups[w::n_workers]
        per = self.layout.per_group
        readers = {j: self.layout.groups[j].samples(self.start * per) for j in mine}
        step = self.start
        while True:
            part = {}
            for j in mine:
                samples = [self.decode(next(readers[j])) for _ in range(per)]
                g = torch.Generator().manual_seed(derive_seed(self.seed, _BUILD, step, j))
                part[j] = Packed.of(self.build(samples, step, g))
            yield step, part
            step += 1


@dataclass
class RankStream:
    """This process's part of every global batch, built by `workers` processes (or here)."""

    layout: StreamLayout
    rank: int
    world: int
    decode: Callable[[RawSample], Any]
    build: Builder
    seed: int
    workers: int = 1
    wait_s: float = 0.0  # time the last `part` waited for its batch
    _it: Iterator[Any] | None = field(default=None, repr=False)
    _next: int = -1
    _n_workers: int = 1

    def part(self, step: int) -> list[Any]:
        """This process's samples of step `step`, in group order."""
        t0 = time.perf_counter()
        if self._it is None or step != self._next:
            self._start(step)
        parts: dict[int, list[Any]] = {}
        for _ in range(self._n_workers):
            at, got = next(self._it)
            if at != step:
                raise RuntimeError(f"data stream out of step: {at} for {step}")
            parts.update(got)
        self._next = step + 1
        self.wait_s = time.perf_counter() - t0
        return [x for j in sorted(parts) for x in _unpack(parts[j])]

    def _start(self, step: int) -> None:
        local = self.layout.local(self.rank, self.world)
        data = _Parts(self.layout, local, step, self.decode, self.build, self.seed)
        n = min(self.workers, len(local))
        if n == 0:
            self._it, self._n_workers = iter(data), 1
        else:
            loader = DataLoader(data, batch_size=None, num_workers=n, prefetch_factor=2,
                                collate_fn=lambda x: x)
            self._it, self._n_workers = iter(loader), n
