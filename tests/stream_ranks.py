"""Run under `torchrun --nproc_per_node 2` by test_stream.py: each process streams its part of
one epoch of a token folder (gloo), and rank 0 writes what every process read, with the
batches one process reads, as JSON.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/stream_ranks.py DATA OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from train.data.stream import RankStream, StreamConfig, plan_layout

BATCH, STEPS = 8, 6  # 48 samples: one epoch


def keys_per_step(layout, rank: int, world: int, workers: int) -> list[list[str]]:
    stream = RankStream(layout, rank, world, decode=lambda raw: raw[0],
                        build=lambda samples, step, g: samples, seed=0, workers=workers)
    return [stream.part(step) for step in range(STEPS)]


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    paths = sorted(data.glob("train-*.tar"))
    cfg = StreamConfig(stream=True, streams=4, shuffle_buffer=4)
    layout = plan_layout(paths, BATCH, world, cfg, seed=0)
    mine = {"shards": sorted(p.name for j in layout.local(rank, world)
                             for p in layout.groups[j].paths),
            "steps": keys_per_step(layout, rank, world, workers=1)}
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        one = keys_per_step(plan_layout(paths, BATCH, 1, cfg, seed=0), 0, 1, workers=0)
        out.write_text(json.dumps({"ranks": gathered, "one_process": one}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
