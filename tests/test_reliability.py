"""Crash safety: a run killed with SIGKILL resumes to the weights of an uninterrupted run, for
every trainer (VQVAE, CogLM, SR, classifier), for CogLM under DeepSpeed with two processes,
for CogLM on streamed shards with two processes (one process: tests/test_stream.py), and for
CogLM reading its prompts with a frozen text encoder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_stream import make_stream_inputs
from test_superres import make_sr_inputs
from test_train_lm import make_inputs

from cogview.checkpoint import load_checkpoint, step_dirs

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
LM_FLAGS = ["--preset", "tiny", "--steps", str(STEPS), "--batch-size", "4", "--lr", "3e-3",
            "--warmup", "2", "--save-every", "1", "--eval-every", "0", "--eval-samples", "4",
            "--no-progress"]


def _lm(root: Path) -> list[str]:
    inputs = make_inputs(root)
    return ["train", *(f"--{k}={v}" for k, v in inputs.items()), *LM_FLAGS,
            "--precision", "fp32", "--tasks", "t2i=0.5,cap=0.25,inp=0.25"]


def _lm_encoder(root: Path) -> list[str]:
    pytest.importorskip("transformers")
    from test_text_encoder import CAPTIONS, make_encoder

    return [*_lm(root), "--text-encoder", str(make_encoder(root / "encoder", CAPTIONS * 4))]


def _sr(root: Path) -> list[str]:
    inputs = make_sr_inputs(root)
    return ["train-sr", *(f"--{k}={v}" for k, v in inputs.items()), *LM_FLAGS,
            "--precision", "fp32"]


def _vqvae(root: Path) -> list[str]:
    from cogview.cli import main

    assert main(["data", "shapes", "--out", str(root / "shapes"), "--n", "24", "--size", "32",
                 "--test-fraction", "0.2", "--seed", "1"]) == 0
    return ["train-vqvae", "--data", str(root / "shapes"), "--preset", "tiny",
            "--steps", str(STEPS), "--batch-size", "4", "--sizes", "32", "--warmup", "2",
            "--save-every", "1", "--eval-every", "0", "--precision", "fp32", "--no-progress"]


def _classifier(root: Path) -> list[str]:
    from train.data.sources import FASHION_DIR, build_fashion

    if not Path(FASHION_DIR).is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    build_fashion(root / "fashion", n=120, progress=False)
    return ["train-classifier", "--data", str(root / "fashion"), "--preset", "tiny",
            "--steps", str(STEPS), "--batch-size", "8", "--warmup", "2", "--save-every", "1",
            "--no-progress", "--threads", "1"]


def _lm_deepspeed(root: Path) -> list[str]:
    return [*_lm(root), "--deepspeed", str(REPO / "ds_config.json")]


def _lm_stream_deepspeed(root: Path) -> list[str]:
    """Streamed shards on two processes (one process with a worker: test_stream.py)."""
    inputs = make_stream_inputs(root)
    return ["train", *(f"--{k}={v}" for k, v in inputs.items()), *LM_FLAGS,
            "--tasks", "t2i=0.5,cap=0.25,inp=0.25", "--stream", "--shuffle-buffer", "8",
            "--workers", "0", "--deepspeed", str(REPO / "ds_config.json")]


def _launch(argv: list[str], out: Path, resume: bool, processes: int) -> subprocess.Popen:
    launcher = [sys.executable, "-m", "cogview"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(processes), "-m", "cogview"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(REPO)}
    cmd = [*launcher, *argv, "--out", str(out), *(["--resume"] if resume else [])]
    return subprocess.Popen(cmd, env=env, cwd=out.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (torchrun starts its workers in
    sessions of their own, so a process group does not reach them)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(parents.get(tree[-1], []))
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]


@pytest.mark.parametrize(("build", "kind", "processes"), [
    pytest.param(_lm, "coglm", 1, id="coglm"),
    pytest.param(_vqvae, "vqvae", 1, id="vqvae"),
    pytest.param(_sr, "sr", 1, id="sr"),
    pytest.param(_classifier, "classifier", 1, id="classifier"),
    pytest.param(_lm_deepspeed, "coglm", 2, id="coglm-deepspeed-2proc"),
    pytest.param(_lm_stream_deepspeed, "coglm", 2, id="coglm-stream-deepspeed-2proc"),
    pytest.param(_lm_encoder, "coglm", 1, id="coglm-text-encoder"),
])
def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path, build, kind, processes):
    argv = build(tmp_path / "inputs")
    _finish(_launch(argv, tmp_path / "whole", resume=False, processes=processes))

    killed = tmp_path / "killed"
    proc = _launch(argv, killed, resume=False, processes=processes)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(s >= 3 for s, _ in step_dirs(killed)):
        time.sleep(0.05)
    _kill_tree(proc.pid)  # no handler runs: whatever was being written is cut off
    proc.communicate()
    reached = step_dirs(killed)[-1][0]
    assert 3 <= reached < STEPS, "the run should have been killed mid-way"

    _finish(_launch(argv, killed, resume=True, processes=processes))
    whole = load_checkpoint(tmp_path / "whole", kind=kind)
    resumed = load_checkpoint(killed, kind=kind)
    assert whole.step == resumed.step == STEPS
    assert whole.state_dict.keys() == resumed.state_dict.keys()
    for name, tensor in whole.state_dict.items():
        assert torch.equal(tensor, resumed.state_dict[name]), name
