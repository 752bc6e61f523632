"""DeepSpeed: config filling, and a 2-process ZeRO-2 run (torchrun, gloo) equal to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cogview.checkpoint import load_checkpoint
from cogview.errors import UserError
from train.config import LoopConfig
from train.distributed import (
    STALE_BUILD_LOCK_S,
    clear_stale_build_locks,
    fill_ds_config,
    read_ds_config,
    resolve_batch,
)

REPO = Path(__file__).resolve().parents[1]
DS_CONFIG = REPO / "ds_config.json"
CPU = torch.device("cpu")


def _loop(**kw) -> LoopConfig:
    return LoopConfig(**{"batch_size": 8, "grad_accum": 2, "precision": "fp32", **kw})


def test_shipped_config_fills_from_flags():
    ds = fill_ds_config(read_ds_config(DS_CONFIG), _loop(clip=0.5), world=2, device=CPU)
    assert ds["train_batch_size"] == 8
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 2
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]  # fp32 on a CPU
    assert "optimizer" not in ds  # the trainer's AdamW and schedule


def test_batch_numbers_from_config_or_flags():
    assert resolve_batch({}, None, None, world=2) == (64, 1)
    assert resolve_batch({"train_batch_size": 32}, None, None, world=2) == (32, 1)
    assert resolve_batch({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2},
                         None, None, world=2) == (16, 2)
    assert resolve_batch({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4},
                         None, None, world=2) == (32, 4)
    with pytest.raises(UserError, match="^batch_size 16 but ds_config.json"):
        resolve_batch({"train_batch_size": 32}, 16, None, world=2)
    with pytest.raises(UserError, match="does not split into 4 process"):
        resolve_batch({}, 6, 1, world=4)


def test_config_numbers_must_agree_with_flags(tmp_path):
    with pytest.raises(UserError, match="gradient_clipping"):
        fill_ds_config({"gradient_clipping": 0.3}, _loop(clip=1.0), world=1, device=CPU)
    with pytest.raises(UserError, match="CPU trains in fp32"):
        fill_ds_config({"bf16": {"enabled": True}}, _loop(), world=1, device=CPU)
    with pytest.raises(UserError, match="ZeRO stage 3"):
        fill_ds_config({"zero_optimization": {"stage": 3}}, _loop(), world=1, device=CPU)
    ds = fill_ds_config({"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}},
                        _loop(lr=2e-3), world=1, device=CPU)
    assert ds["optimizer"]["params"]["lr"] == 2e-3
    with pytest.raises(UserError, match="no such DeepSpeed config"):
        read_ds_config(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{ not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_ds_config(tmp_path / "bad.json")


def test_stale_build_lock_is_removed_and_a_young_one_kept(tmp_path, monkeypatch, capsys):
    """A lock left by a killed build would hang every later run in torch's FileBaton.wait."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    young = tmp_path / "py311_cpu" / "deepspeed_other" / "lock"
    other = tmp_path / "py311_cpu" / "someone_else" / "lock"  # not DeepSpeed's: not touched
    for lock in (stale, young, other):
        lock.parent.mkdir(parents=True)
        lock.touch()
    old = stale.stat().st_mtime - STALE_BUILD_LOCK_S - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))

    assert clear_stale_build_locks() == [stale]
    assert not stale.exists() and young.exists() and other.exists()
    err = capsys.readouterr().err
    assert f"removed {stale}" in err and f"waiting for {young}" in err


def test_two_process_zero2_matches_one_process(tmp_path):
    """The slow one (~40 s): `torchrun -m cogview train --deepspeed` vs the plain trainer."""
    from test_train_lm import make_inputs

    inputs = make_inputs(tmp_path / "inputs")
    flags = ["--data", inputs["data"], "--tokenizer", inputs["tokenizer"],
             "--vqvae", inputs["vqvae"], "--preset", "tiny", "--steps", "3", "--batch-size", "8",
             "--lr", "3e-3", "--warmup", "1", "--save-every", "3", "--eval-every", "0",
             "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(REPO)}
    ds = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "cogview", "train", *flags, "--out", str(tmp_path / "ds"),
         "--deepspeed", str(DS_CONFIG)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert ds.returncode == 0, ds.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "cogview", "train", *flags, "--out", str(tmp_path / "one"),
         "--precision", "fp32"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert one.returncode == 0, one.stderr[-3000:]

    def losses(run: str) -> list[float]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if "loss" in r]

    assert len(losses("ds")) == 3
    assert losses("ds") == pytest.approx(losses("one"), rel=1e-5)
    a, b = load_checkpoint(tmp_path / "ds").state_dict, load_checkpoint(tmp_path / "one").state_dict
    assert a.keys() == b.keys()
    for k in a:
        # Adam divides by sqrt(v): where a gradient is ~0, summation-order noise moves a weight
        # by a fraction of one step (lr 3e-3), so weights get an absolute tolerance
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-4)
    # the DeepSpeed step folder is also the plain form that sampling reads
    from cogview.pipeline import load_pipeline

    assert load_pipeline(tmp_path / "ds").meta["step"] == 3
    assert (tmp_path / "ds/step-00000003/deepspeed/engine").is_dir()
