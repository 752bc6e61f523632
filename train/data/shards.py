"""Writing data sets as webdataset tar shards.

A data set folder `OUT/` holds `train-000000.tar, train-000001.tar, ...` and `test-000000.tar, ...`
(`shard_size` samples per shard) and `OUT/info.json`:
`{"source": ..., "size": ..., "seed": ..., "n_train": N, "n_test": M, "shard_size": K,
"shards": {"train": [...], "test": [...]}, ...source-specific keys}`.
One sample is `<key>.png` (image) + `<key>.txt` (UTF-8 caption) + optionally `<key>.json`
(attributes). Keys hold no dots and are unique within the data set.

Output is deterministic: tar members carry a fixed mtime, owner and mode, JSON has sorted keys,
so the same samples give the same bytes. Shards are written into a temporary folder inside OUT
and moved into place at the end, so a failed run leaves any earlier data set untouched.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cogview.errors import ConfigError

INFO_FILE = "info.json"
SPLITS = ("train", "test")
SHARD_PATTERN = "{split}-%06d.tar"  # a %-pattern, as webdataset.ShardWriter takes
DEFAULT_SHARD_SIZE = 5000
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp")


@dataclass(frozen=True)
class ShardSample:
    key: str  # no dots: webdataset splits member names at the first dot
    image: bytes  # encoded image file
    caption: str
    meta: dict[str, Any] | None = None
    image_ext: str = "png"
    target: str | None = None  # what captioning learns to write, when not the caption itself

    def to_members(self) -> dict[str, Any]:
        if "." in self.key or "/" in self.key or not self.key:
            raise ValueError(f"sample key {self.key!r} must be non-empty, without '.' or '/'")
        members: dict[str, Any] = {
            "__key__": self.key,
            self.image_ext: self.image,
            "txt": self.caption.encode("utf-8"),
        }
        if self.meta is not None:
            members["json"] = json_bytes(self.meta)
        if self.target is not None:
            members["target.txt"] = self.target.encode("utf-8")
        return members


def json_bytes(data: Any) -> bytes:
    """Deterministic UTF-8 JSON (sorted keys, no spaces)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class SplitWriter:
    """Writes one split's samples into `{split}-%06d.tar` shards under a folder.

    The first shard is opened on the first sample, so an empty split writes no file.
    """

    def __init__(self, folder: Path, split: str, shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        if shard_size < 1:
            raise ConfigError.of("shard_size", f"must be at least 1, got {shard_size}")
        self.folder = Path(folder)
        self.split = split
        self.shard_size = shard_size
        self.count = 0
        self._writer = None

    def write(self, sample: ShardSample) -> None:
        if self._writer is None:
            import webdataset as wds

            pattern = str(self.folder / SHARD_PATTERN.format(split=self.split))
            # fixed mtime/owner/mode: identical samples give identical bytes; encoder=False:
            # every member is already bytes, written as is
            self._writer = wds.ShardWriter(
                pattern,
                maxcount=self.shard_size,
                maxsize=float("inf"),
                verbose=0,
                encoder=False,
                mtime=0,
                user="cogview",
                group="cogview",
                mode=0o644,
            )
        self._writer.write(sample.to_members())
        self.count += 1

    def close(self) -> list[str]:
        """Close the last shard; the names of the shards written, in order."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return sorted(p.name for p in self.folder.glob(f"{self.split}-*.tar"))

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError.of("out", f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError.of("out", f"{out}: cannot create folder ({e.strerror})") from None


def write_dataset(
    out: str | Path,
    splits: dict[str, Iterable[ShardSample]],
    info: dict[str, Any],
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    totals: dict[str, int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write every split's samples as shards into `out` and `info.json`; returns the info dict.

    `info` gives the source-specific keys ("source", "size", "seed", ...); this adds "n_<split>",
    "shard_size" and "shards". `totals` (expected counts per split) only sizes the progress bars.
    Old `train-*.tar` / `test-*.tar` shards and info.json in `out` are replaced.
    """
    from tqdm import tqdm

    out = Path(out)
    _prepare_out(out)
    info = dict(info)
    info["shard_size"] = shard_size
    info["shards"] = {}
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=out))
    try:
        for split, samples in splits.items():
            total = (totals or {}).get(split)
            bar = tqdm(
                total=total,
                desc=f"{info.get('source', 'data')} {split}",
                unit="img",
                file=sys.stderr,
                disable=not progress,
                dynamic_ncols=True,
            )
            with bar, SplitWriter(staging, split, shard_size) as writer:
                for sample in samples:
                    writer.write(sample)
                    bar.update(1)
            info[f"n_{split}"] = writer.count
            info["shards"][split] = writer.close()
        # swap in: remove the old shards of these splits, move the new ones, then info.json
        for split in splits:
            for old in out.glob(f"{split}-*.tar"):
                old.unlink()
        for split in splits:
            for name in info["shards"][split]:
                (staging / name).replace(out / name)
        (out / INFO_FILE).write_bytes(
            json.dumps(info, sort_keys=True, indent=2, ensure_ascii=False).encode() + b"\n"
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def read_info(folder: str | Path) -> dict[str, Any] | None:
    """The info.json of a data set folder, or None when it has none (or it is unreadable)."""
    path = Path(folder) / INFO_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
