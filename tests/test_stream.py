"""Streamed token shards: the shuffle and fast-forward, coverage per epoch, the split over
processes (two gloo processes), bounded memory, and resume equality of `cogview train --stream`."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train_lm import make_inputs

from cogview.bench import shapes
from cogview.checkpoint import load_checkpoint
from cogview.cli import main
from cogview.errors import UserError
from train.data.stream import ShardGroup, StreamConfig, iter_shard, plan_layout

REPO = Path(__file__).resolve().parents[1]


def reshard(data: Path, shards: int) -> None:
    """Split the train shard of a token folder into `shards` shards of (nearly) equal size."""
    source = data / "train-000000.tar"
    samples = [raw for _, raw in iter_shard(source)]
    source.unlink()
    for k in range(shards):
        with tarfile.open(data / f"train-{k:06d}.tar", "w") as tar:
            for key, parts in samples[k::shards]:
                for ext, body in parts.items():
                    member = tarfile.TarInfo(f"{key}.{ext}")
                    member.size = len(body)
                    member.mtime = 0
                    tar.addfile(member, io.BytesIO(body))


def make_stream_inputs(root: Path, shards: int = 4, n_train: int = 48) -> dict[str, str]:
    """make_inputs (a tokenizer, a tiny VQVAE, token shards) with the train split in `shards`."""
    inputs = make_inputs(root, n_train=n_train)
    reshard(Path(inputs["data"]), shards)
    return inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_stream_inputs(tmp_path_factory.mktemp("stream_inputs"))


def _keys(group: ShardGroup, start: int, n: int) -> list[str]:
    it = group.samples(start)
    return [next(it)[0] for _ in range(n)]


def test_each_epoch_covers_the_group_once_and_fast_forward_matches_reading(inputs):
    paths = sorted(Path(inputs["data"]).glob("train-*.tar"))
    for buffer in (1, 5, 1000):
        layout = plan_layout(paths, batch=4, world=1, seed=3,
                             cfg=StreamConfig(stream=True, streams=2, shuffle_buffer=buffer))
        group = layout.groups[0]
        n = group.size
        assert n == 24 and [p.name for p in group.paths] == ["train-000000.tar",
                                                               "train-000002.tar"]
        keys = _keys(group, 0, 3 * n)
        epochs = [keys[i * n : (i + 1) * n] for i in range(3)]
        everything = sorted(k for p in group.paths for _, (k, _) in iter_shard(p))
        assert all(sorted(e) == everything for e in epochs)  # once per epoch
        if buffer > 1:
            assert epochs[0] != epochs[1]  # reshuffled every epoch
        for start in (1, 7, n - 3, n, n + 20, 2 * n + 1):  # fast-forward, within and across
            assert _keys(group, start, 10) == keys[start : start + 10], (buffer, start)


def test_two_processes_read_disjoint_shards_and_cover_every_sample(inputs, tmp_path):
    """Two gloo processes (torchrun): each reads only its shard groups; per step their parts
    make the global batch of one process; over one epoch every sample comes once."""
    out = tmp_path / "ranks.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(Path(__file__).with_name("stream_ranks.py")), inputs["data"], str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    ranks = got["ranks"]
    assert not set(ranks[0]["shards"]) & set(ranks[1]["shards"])
    assert sorted(ranks[0]["shards"] + ranks[1]["shards"]) == sorted(
        p.name for p in Path(inputs["data"]).glob("train-*.tar"))
    # one epoch: 48 samples, batch 8 -> 6 steps
    seen = [k for r in ranks for step in r["steps"] for k in step]
    assert len(seen) == 48 and len(set(seen)) == 48
    # per step, rank 0's part then rank 1's is the batch of a single process
    one = got["one_process"]
    assert [a + b for a, b in zip(ranks[0]["steps"], ranks[1]["steps"], strict=True)] == one


def _train(inputs: dict[str, str], out: Path, *extra: str) -> int:
    args = ["train", *(f"--{k}={v}" for k, v in inputs.items()), "--preset", "tiny",
            "--out", str(out), "--batch-size", "4", "--lr", "3e-3", "--warmup", "2",
            "--eval-every", "0", "--eval-samples", "4", "--precision", "fp32",
            "--no-progress", "--tasks", "t2i=0.5,cap=0.25,inp=0.25", "--stream",
            "--shuffle-buffer", "8", *extra]
    return main(args)


def _lm_run(inputs: dict[str, str], out: Path, workers: int, buffer: int = 8, steps: int = 8):
    from train.config import LoopConfig
    from train.lm import CogLMTrainConfig

    run = CogLMTrainConfig(**inputs, out=str(out), preset="tiny", eval_samples=4,
                           tasks="t2i=0.5,cap=0.25,inp=0.25")
    loop = LoopConfig(steps=steps, batch_size=4, lr=3e-3, warmup=2, precision="fp32",
                      save_every=3, eval_every=0)
    return run, loop, StreamConfig(stream=True, shuffle_buffer=buffer, workers=workers)


def test_stream_resume_equals_uninterrupted_run(inputs, tmp_path):
    """8 steps straight with the batches built in the training process, against a run with a
    worker process building them, stopped at step 5 (SIGINT) and resumed."""
    from train.lm import train_coglm

    run, loop, stream = _lm_run(inputs, tmp_path / "whole", workers=0)
    whole = train_coglm(run, loop, progress=False, stream=stream)

    def interrupt(step: int) -> None:
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    run, loop, stream = _lm_run(inputs, tmp_path / "part", workers=1)
    part = train_coglm(run, loop, progress=False, stream=stream, on_step=interrupt)
    assert part.step == 5 and part.interrupted == "SIGINT"
    rest = train_coglm(run, loop, progress=False, stream=stream, resume=True)
    assert part.losses + rest.losses == whole.losses
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "part")
    assert a.step == b.step == 8
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    state = torch.load(tmp_path / "part/step-00000005/training_state.pt", weights_only=True)
    assert state["data"]["streams"] == 4 and state["data"]["position"][0] == [0, 5]
    records = [json.loads(x) for x in (tmp_path / "whole/metrics.jsonl").read_text().splitlines()]
    assert all("data_wait_s" in r for r in records if "loss" in r)
    # the stream's settings are part of the run
    run, loop, stream = _lm_run(inputs, tmp_path / "part", workers=1, buffer=9, steps=9)
    with pytest.raises(UserError, match="other buffer"):
        train_coglm(run, loop, progress=False, stream=stream, resume=True)
    with pytest.raises(UserError, match="trained on streamed data"):
        train_coglm(run, loop, progress=False, resume=True)  # without the stream


def test_stream_errors_name_the_flag(inputs, tmp_path, capsys):
    assert _train(inputs, tmp_path / "a", "--steps", "1", "--streams", "3") == 2
    assert "--batch-size 4 does not split into 3" in capsys.readouterr().err
    assert _train(inputs, tmp_path / "b", "--steps", "1", "--streams", "8",
                  "--batch-size", "8") == 2
    assert "--streams 8 exceeds the 4 train shard(s)" in capsys.readouterr().err
    assert _train(inputs, tmp_path / "c", "--steps", "1", "--shuffle-buffer", "0") == 2
    assert "--shuffle-buffer must be at least 1" in capsys.readouterr().err


def test_sr_stream_resume_equals_uninterrupted_run(tmp_path):
    from test_superres import make_sr_inputs

    from train.config import LoopConfig
    from train.sr import SRTrainConfig, train_sr

    inputs = make_sr_inputs(tmp_path / "in")
    reshard(Path(inputs["data"]), 2)
    loop = LoopConfig(steps=6, batch_size=4, lr=3e-3, warmup=2, precision="fp32",
                      save_every=6, eval_every=0)
    stream = StreamConfig(stream=True, shuffle_buffer=4, workers=0)

    def run(out: str) -> SRTrainConfig:
        return SRTrainConfig(**inputs, out=str(tmp_path / out), preset="tiny", eval_samples=4)

    whole = train_sr(run("whole"), loop, progress=False, stream=stream)

    def interrupt(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    part = train_sr(run("part"), loop, progress=False, stream=stream, on_step=interrupt)
    rest = train_sr(run("part"), loop, progress=False, stream=stream, resume=True)
    assert part.step == 4 and part.losses + rest.losses == whole.losses
    a, b = (load_checkpoint(tmp_path / r, kind="sr").state_dict for r in ("whole", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def make_shapes_stream_inputs(root: Path, shards: int = 2, n_train: int = 32) -> dict[str, str]:
    """make_stream_inputs with one-object shapes scenes: their captions (a tokenizer of 40 text
    tokens trained on them) and attributes, so that prompts can be worded anew."""
    import numpy as np

    from tokenizer import UnifiedTokenizer
    from train.data.tokens import INFO_FILE, write_sample

    inputs = make_inputs(root, n_train=n_train)
    data = Path(inputs["data"])
    rng = np.random.default_rng(0)
    scenes = [shapes.sample_scene(rng, 1) for _ in range(n_train + 8)]
    captions = [shapes.caption(s, rng) for s in scenes]
    tok = UnifiedTokenizer.train(captions * 4, vocab_size=600, image_codes=64, max_text_len=40)
    tok.save(inputs["tokenizer"])
    g = torch.Generator().manual_seed(0)
    for split, lo, hi in (("train", 0, n_train), ("test", n_train, n_train + 8)):
        with tarfile.open(data / f"{split}-000000.tar", "w") as tar:
            for i in range(lo, hi):
                codes = torch.randint(1, 64, (8, 8), generator=g).numpy()
                write_sample(tar, f"{split}{i:05d}", {32: codes}, tok.encode_text(captions[i]),
                             captions[i], shapes.scene_to_json(scenes[i]))
    info = json.loads((data / INFO_FILE).read_text())
    info.update(tokenizer_fingerprint=tok.fingerprint, tokenizer_layout=tok.layout(),
                source_info={"source": "shapes"})
    (data / INFO_FILE).write_text(json.dumps(info))
    reshard(data, shards)
    return inputs


def test_stream_with_encoder_rephrase_and_contrastive_head_resumes_exactly(tmp_path):
    """The frozen text encoder, caption augmentation and the contrastive head with hard
    negatives over streamed shards: batches built by a worker process (stopped at step 4,
    resumed) give the weights of batches built in the training process; prompts are worded
    anew in the stream, and the contrastive loss is logged."""
    pytest.importorskip("transformers")
    from test_text_encoder import make_encoder

    from train.lm import train_coglm

    inputs = make_shapes_stream_inputs(tmp_path / "in")
    encoder = make_encoder(tmp_path / "encoder", ["a small red circle at the top left"] * 8)
    extra = dict(text_encoder=str(encoder), rephrase=0.5, rephrase_frames=0.5,
                 contrastive_weight=0.1, hard_negatives=0.5, tasks="t2i=0.6,cap=0.4")

    def runs(out: str, workers: int):
        run, loop, stream = _lm_run(inputs, tmp_path / out, workers=workers, steps=6)
        return dataclasses.replace(run, **extra), loop, stream

    whole = train_coglm(*runs("whole", 0)[:2], progress=False, stream=runs("whole", 0)[2])

    def interrupt(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    run, loop, stream = runs("part", 1)
    part = train_coglm(run, loop, progress=False, stream=stream, on_step=interrupt)
    rest = train_coglm(run, loop, progress=False, stream=stream, resume=True)
    assert part.step == 4 and part.losses + rest.losses == whole.losses
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "part")
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert any(k.startswith("contrastive.") for k in a.state_dict)
    records = [json.loads(x) for x in (tmp_path / "whole/metrics.jsonl").read_text().splitlines()]
    assert all("loss_con" in r for r in records if "loss" in r)


def _shapes_stream_objective(tmp_path: Path, **flags: Any) -> Any:
    """The objective of a one-step run on shapes stream shards with the run's `flags`."""
    from train.lm import train_coglm
    from train.streaming import StreamCogLMObjective

    inputs = make_shapes_stream_inputs(tmp_path / "in")
    seen: dict[str, StreamCogLMObjective] = {}
    real = StreamCogLMObjective.__post_init__

    def grab(self):
        real(self)
        seen["objective"] = self

    run, loop, stream = _lm_run(inputs, tmp_path / "run", workers=0, steps=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StreamCogLMObjective, "__post_init__", grab)
        train_coglm(dataclasses.replace(run, **flags), loop, progress=False, stream=stream)
    return seen["objective"]


def test_streamed_prompts_are_worded_anew_and_captioning_keeps_the_caption(tmp_path):
    """The stream's batches with --rephrase 1: every text-to-image prompt a new wording of the
    sample's attributes (by the shapes grammar), every captioning target the data's caption."""
    objective = _shapes_stream_objective(tmp_path, rephrase=1.0, tasks="t2i=0.5,cap=0.5")
    tok = objective.tokenizer
    objective.scheduler.sequences = lambda plans: plans  # build stops at the plans
    decoded = [objective.decode(raw) for path in objective.paths for _, raw in iter_shard(path)]
    plans = objective.build(decoded, 0, torch.Generator().manual_seed(1))
    tasks = {p.task for p in plans}
    assert tasks == {"t2i", "cap"}
    worded = 0
    for sample, plan in zip(decoded, plans, strict=True):
        if plan.task == "cap":
            assert list(plan.text_ids) == sample.text_ids  # learns the data's caption
            continue
        obj = sample.meta["objects"][0]
        words = tok.decode_text(plan.text_ids).split()
        assert obj["colour"] in words and obj["shape"] in words
        worded += list(plan.text_ids) != sample.text_ids
    assert worded >= sum(p.task == "t2i" for p in plans) // 2


def test_hard_negatives_are_false_captions_of_text_to_image_samples(tmp_path):
    """With --hard-negatives 1 every text-to-image plan of a shapes stream carries a caption
    that is false of its scene (by the shapes grammar), and the batch scores its image
    against that caption: one negative view per such pair, tied to its row."""
    from cogview.masks import collate

    objective = _shapes_stream_objective(tmp_path, hard_negatives=1.0, contrastive_weight=0.1,
                                         tasks="t2i=0.5,cap=0.5", text_dropout=0.0)
    tok = objective.tokenizer
    decoded = [objective.decode(raw) for path in objective.paths for _, raw in iter_shard(path)]
    g = torch.Generator().manual_seed(1)
    plans = [objective.plan(s.text_ids, s.target_ids, s.codes, 0, g, meta=s.meta)
             for s in decoded]
    t2i = [(s, p) for s, p in zip(decoded, plans, strict=True) if p.task == "t2i"]
    assert t2i and all(p.negative_ids is None for p in plans if p.task != "t2i")
    for sample, plan in t2i:
        negative = tok.decode_text(plan.negative_ids)
        assert negative == plan.negative
        assert not shapes.compare(shapes.parse_caption(negative), sample.meta)["all"]
        assert shapes.compare(shapes.parse_caption(tok.decode_text(plan.text_ids)),
                              sample.meta)["all"]
    batch = collate(objective.scheduler.sequences(plans), tok.pad_id)
    pairs = batch.pairs
    assert pairs.negative_views.ids.shape[0] == len(t2i)
    keys = [hash(tuple(int(i) for i in p.negative_ids)) for _, p in t2i]
    assert pairs.negative_keys.tolist() == keys  # in the order of the pairs


def test_hard_negatives_need_a_contrastive_head():
    from cogview.errors import ConfigError
    from train.lm import CogLMTrainConfig

    with pytest.raises(ConfigError, match="hard_negatives.*--contrastive-weight"):
        CogLMTrainConfig(data="d", tokenizer="t", vqvae="v", out="o", hard_negatives=0.5)


def test_rephrase_frames_need_rewording():
    from cogview.errors import ConfigError
    from train.lm import CogLMTrainConfig

    with pytest.raises(ConfigError, match="rephrase_frames.*--rephrase"):
        CogLMTrainConfig(data="d", tokenizer="t", vqvae="v", out="o", rephrase_frames=0.5)
    with pytest.raises(ConfigError, match="rephrase_frames"):
        CogLMTrainConfig(data="d", tokenizer="t", vqvae="v", out="o", rephrase=0.3,
                         rephrase_frames=1.5)
