"""CogLM and SR objectives over streamed token shards (`--stream`, `train.data.stream`).

They train as the in-memory objectives do (same loss, evaluation, checkpoints) but hold no
train data: each process reads only its shard groups, data-loader workers decode the samples
and build the task sequences, and the loop gets this process's part of the global batch
(`draw_rank`). The data position is part of every checkpoint (`data_state`); a resumed run
fast-forwards the stream to it and ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from cogview.errors import ConfigError, UserError
from cogview.masks import TaskBatch, TaskSequence
from train.data.stream import RankStream, RawSample, StreamConfig, StreamLayout, plan_layout
from train.data.tokens import INFO_FILE, _load_npy
from train.lm import CogLMObjective, check_ids, sample_regions
from train.sr import SRObjective


class PinnedBatch:
    """A collated batch whose `.to(cuda)` copies from pinned memory without blocking."""

    def __init__(self, batch: TaskBatch) -> None:
        self.batch = batch

    def to(self, device: torch.device | str) -> TaskBatch:
        device = torch.device(device)
        if device.type != "cuda":
            return self.batch.to(device)
        moved = {}
        for f in fields(self.batch):
            v = getattr(self.batch, f.name)
            moved[f.name] = None if v is None else v.pin_memory().to(device, non_blocking=True)
        return TaskBatch(**moved)


def _array(parts: dict[str, bytes], ext: str, key: str) -> Any:
    try:
        return _load_npy(parts[ext])
    except KeyError:
        raise UserError(f"token shards: sample {key!r} lacks {ext}") from None
    except ValueError as e:
        raise UserError(f"token shards: sample {key!r} is corrupt ({e})") from e


@dataclass
class CogLMSample:
    key: str
    text_ids: list[int]
    codes: torch.Tensor  # (h, w)
    target_ids: list[int]
    regions: list[Any]
    caption: str | None = None  # the caption string (read with a text encoder)
    meta: dict[str, Any] | None = None  # the attributes (read for caption augmentation)


@dataclass
class _Streamed:
    """What both streamed objectives share: the layout, this process's stream, the state."""

    data: str = ""  # the token shard folder
    stream_config: StreamConfig = field(default_factory=lambda: StreamConfig(stream=True))
    seed: int = 0

    def _setup_stream(self) -> None:
        self._layout: StreamLayout | None = None
        self._stream: RankStream | None = None
        self._steps_drawn = 0
        self._saved_state: dict[str, Any] | None = None
        self.paths = sorted(Path(self.data).glob("train-*.tar"))
        if not self.paths:
            raise UserError(f"{self.data}: no train-*.tar token shards")

    def _known_sizes(self) -> list[int] | None:
        """Samples per train shard from info.json (`cogview encode` writes them), when it
        lists exactly the shards present; else None (they are counted from the headers)."""
        info = json.loads((Path(self.data) / INFO_FILE).read_text())
        names = info.get("shards", {}).get("train")
        counts = info.get("shard_counts", {}).get("train")
        if (not names or not counts or len(names) != len(counts)
                or sorted(names) != [p.name for p in self.paths]):
            return None
        by_name = dict(zip(names, counts, strict=True))
        return [int(by_name[p.name]) for p in self.paths]

    def draw_rank(self, step: int, n: int, rank: int, world: int, g: torch.Generator
                  ) -> list[Any]:
        """This process's samples of step `step`'s global batch of `n` (the loop's hook for
        objectives whose processes read different data). `g` is not used: the stream's
        randomness is seeded from the run's seed, the step and the shard group."""
        if self._stream is None or self._layout is None or self._layout.batch != n:
            self._layout = plan_layout(self.paths, n, world, self.stream_config, self.seed,
                                       sizes=self._known_sizes())
            if self._saved_state is not None:
                self._layout.check_state(self._saved_state, "the checkpoint")
            self._stream = RankStream(self._layout, rank, world, self.decode, self.build,
                                      self.seed, workers=self.stream_config.workers)
        if self._saved_state is not None:
            if self._saved_state.get("position") != self._layout.state(step)["position"]:
                raise UserError("resume: the checkpoint's data position does not follow from "
                                f"its step {step}; the token shards changed")
            self._saved_state = None
        samples = self._stream.part(step)
        self._steps_drawn = step + 1
        return samples

    def draw(self, step: int, n: int, g: torch.Generator) -> list[Any]:
        return self.draw_rank(step, n, 0, 1, g)

    def data_state(self) -> dict[str, Any]:
        """The data position after the last step drawn (saved in every checkpoint)."""
        if self._layout is None:
            return {}
        return self._layout.state(self._steps_drawn)

    def load_data_state(self, state: dict[str, Any]) -> None:
        """Check a checkpoint's data position when the stream is laid out (at the next draw)."""
        if not state:
            raise UserError("resume: the checkpoint was trained without --stream; resume it "
                            "the same way")
        self._saved_state = state


@dataclass
class StreamCogLMObjective(_Streamed, CogLMObjective):
    """CogLMObjective over streamed shards; `train` is the shard folder's info.json."""

    def __post_init__(self) -> None:
        info = self.train
        grid = info.get("grids", {}).get(str(self.image_size))
        if grid is None:
            raise ConfigError.of("image_size", f"{self.image_size}: the token shards hold sizes "
                                 f"{sorted(int(s) for s in info.get('grids', {}))}")
        self.grid = (int(grid[0]), int(grid[1]))
        # streamed captions are not seen up front: as long as the tokenizer allows
        self.check_fits(self.grid, int(self.tokenizer.max_text_len))
        self._eval_sets = None
        self.regions = []
        self._setup_stream()

    def decode(self, raw: RawSample) -> CogLMSample:
        key, parts = raw
        codes = torch.from_numpy(_array(parts, f"codes{self.image_size}.npy", key)
                                 .astype("int64"))
        ids = _array(parts, "ids.npy", key).tolist()
        target = _array(parts, "target.npy", key).tolist() if "target.npy" in parts else ids
        if tuple(codes.shape) != self.grid:
            raise UserError(f"token shards: sample {key!r} has a {tuple(codes.shape)} code grid,"
                            f" info.json says {self.grid}")
        tok = self.tokenizer
        check_ids(tok, [codes], [ids, target], f"sample {key!r}")
        caption = None
        if self.scheduler.encoder is not None:
            if "txt" not in parts:
                raise UserError(f"token shards: sample {key!r} lacks txt (the caption a text "
                                "encoder reads)")
            caption = parts["txt"].decode("utf-8", errors="replace")
        meta: Any = None
        regions: list[Any] = []
        if "json" in parts:
            try:
                meta = json.loads(parts["json"])
            except ValueError as e:
                raise UserError(f"token shards: sample {key!r} is corrupt ({e})") from e
            if not isinstance(meta, dict):
                meta = None
            elif meta.get("regions"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    regions = sample_regions(tok, [meta])[0]
        return CogLMSample(key, ids, codes, target, regions, caption, meta)

    def build(self, samples: list[CogLMSample], step: int, g: torch.Generator
              ) -> list[TaskSequence]:
        """The task sequences of one group's part of a step (in a worker process)."""
        plans = [self.plan(s.text_ids, s.target_ids, s.codes, step, g, meta=s.meta,
                           regions=s.regions, caption=s.caption) for s in samples]
        return self.scheduler.sequences(plans)

    def draw_rank(self, step: int, n: int, rank: int, world: int, g: torch.Generator
                  ) -> list[Any]:
        samples = super().draw_rank(step, n, rank, world, g)
        # The contrastive loss of each micro-batch is weighted by its share of the step's
        # pairs. The other processes' pairs are not counted here: each process weighs its own
        # as if every process had as many, which is exact on one process.
        self._pairs = world * sum(s.pair is not None for s in samples)
        return samples

    def collate(self, samples: Sequence[TaskSequence]) -> Any:
        return PinnedBatch(CogLMObjective.collate(self, samples))


@dataclass
class SRSampleCodes:
    key: str
    text_ids: list[int]
    lr: torch.Tensor  # (l, l)
    hr: torch.Tensor  # (h, h)


@dataclass
class StreamSRObjective(_Streamed, SRObjective):
    """SRObjective over streamed shards; `lr` and `hr` are only the grids' sizes in pixels
    (as (low_res, image_size) tensors are not held)."""

    low_res: int = 32
    image_size: int = 64

    def __post_init__(self) -> None:
        self._eval_sets = None
        self._setup_stream()

    def decode(self, raw: RawSample) -> SRSampleCodes:
        key, parts = raw
        lr = torch.from_numpy(_array(parts, f"codes{self.low_res}.npy", key).astype("int64"))
        hr = torch.from_numpy(_array(parts, f"codes{self.image_size}.npy", key).astype("int64"))
        check_ids(self.tokenizer, [lr, hr], [], f"sample {key!r}")
        return SRSampleCodes(key, _array(parts, "ids.npy", key).tolist(), lr, hr)

    def build(self, samples: list[SRSampleCodes], step: int, g: torch.Generator) -> list[Any]:
        from cogview.superres import draw_sr_samples

        return draw_sr_samples(self.tokenizer, self.model.sr, [s.text_ids for s in samples],
                               torch.stack([s.lr for s in samples]),
                               torch.stack([s.hr for s in samples]), g, self.text_dropout)

    def collate(self, samples: Sequence[Any]) -> Any:
        return PinnedBatch(SRObjective.collate(self, samples))


@dataclass
class StreamedData:
    """What a trainer knows up front of a streamed split: its info.json, and each image
    size's code grid as an empty (0, h, w) tensor (the samples come later)."""

    info: dict[str, Any]

    @property
    def codes(self) -> dict[int, torch.Tensor]:
        return {int(s): torch.zeros((0, *(int(x) for x in grid)), dtype=torch.long)
                for s, grid in self.info.get("grids", {}).items()}

