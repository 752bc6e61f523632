"""Crash safety: a run killed with SIGKILL resumes to the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from test_train_lm import make_inputs

from cogview.checkpoint import load_checkpoint, step_dirs

STEPS = 8


def _command(inputs: dict[str, str], out: Path, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "cogview", "train", "--data", inputs["data"],
           "--tokenizer", inputs["tokenizer"], "--vqvae", inputs["vqvae"], "--preset", "tiny",
           "--out", str(out), "--steps", str(STEPS), "--batch-size", "4", "--lr", "3e-3",
           "--warmup", "2", "--precision", "fp32", "--save-every", "1", "--eval-every", "0",
           "--eval-samples", "4", "--tasks", "t2i=0.5,cap=0.25,inp=0.25", "--no-progress"]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path):
    inputs = make_inputs(tmp_path / "inputs")
    subprocess.run(_command(inputs, tmp_path / "whole"), env=_env(), check=True,
                   capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(inputs, killed), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(s >= 3 for s, _ in step_dirs(killed)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no handler runs: whatever was being written is cut off
    proc.wait()
    reached = step_dirs(killed)[-1][0]
    assert 3 <= reached < STEPS, "the run should have been killed mid-way"

    subprocess.run(_command(inputs, killed, resume=True), env=_env(), check=True,
                   capture_output=True)
    whole = load_checkpoint(tmp_path / "whole")
    resumed = load_checkpoint(killed)
    assert whole.step == resumed.step == STEPS
    assert whole.state_dict.keys() == resumed.state_dict.keys()
    for name, tensor in whole.state_dict.items():
        assert torch.equal(tensor, resumed.state_dict[name]), name
