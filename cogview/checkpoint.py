"""Checkpoint folders: `config.json` + `model.safetensors` (+ `training_state.pt` while training).

A checkpoint describes itself: `config.json` holds the kind of model, its dataclass config and
the step, so a model is rebuilt from the folder alone. Loading never unpickles code: weights come
from safetensors, configs from JSON, optimizer and RNG state from `torch.load(weights_only=True)`.
Folders are written under a temporary name and renamed, so a killed process never leaves a
half-written checkpoint under a real name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cogview.errors import UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINING_STATE_FILE = "training_state.pt"
FORMAT_VERSION = 1
STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(UserError):
    """A checkpoint folder that is missing, incomplete, corrupt or of the wrong kind."""


@dataclass
class Checkpoint:
    path: Path
    kind: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    step: int
    extra: dict[str, Any]


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type, data: dict[str, Any], source: str = "config") -> Any:
    """Build dataclass `cls` from `data`, refusing keys it does not know (strict, no sniffing)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CheckpointError(f"{source}: unknown {cls.__name__} fields {unknown}")
    # JSON turns tuples into lists; give tuple-typed fields their tuples back
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid {cls.__name__}: {e}") from e


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_dir(path: str | Path, write: Any) -> Path:
    """Call `write(tmp_dir)` to fill a temporary folder, then rename it to `path` in one step.
    If `write` raises, the temporary folder is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(tmp)
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    tmp.rename(path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def save_checkpoint(
    path: str | Path,
    *,
    kind: str,
    config: Any,
    state_dict: dict[str, torch.Tensor],
    step: int = 0,
    extra: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
    copy: dict[str, str | Path] | None = None,
) -> Path:
    """Write a checkpoint folder atomically.

    `extra` is JSON that travels in config.json (a tokenizer layout, training arguments);
    `training_state` (optimizer, scheduler, RNG) is saved with torch.save and read back with
    `weights_only=True`; `copy` maps names inside the folder to files or folders copied in (a
    tokenizer.json, the VQVAE the model's codes come from) so that the folder stands alone.
    """

    def write(tmp: Path) -> None:
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "step": int(step),
            "config": config_to_dict(config),
            "extra": extra or {},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        tensors, storages = {}, set()
        for k, v in state_dict.items():
            t = v.detach().contiguous().cpu()
            ptr = t.untyped_storage().data_ptr()
            # safetensors refuses tensors that share memory (a tied output head and embedding
            # give two names to one tensor): store the second name as its own copy
            tensors[k] = t.clone() if ptr in storages else t
            storages.add(ptr)
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        if training_state is not None:
            torch.save(training_state, tmp / TRAINING_STATE_FILE)
        for name, src in (copy or {}).items():
            src = Path(src)
            if src.is_dir():
                shutil.copytree(src, tmp / name, ignore=shutil.ignore_patterns(TRAINING_STATE_FILE))
            else:
                shutil.copyfile(src, tmp / name)

    return atomic_write_dir(path, write)


def step_dirs(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete `step-N` checkpoints under `out_dir`, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for p in out_dir.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest complete `step-N` folder of a training run."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    if (path / CONFIG_FILE).is_file():
        return path
    steps = step_dirs(path)
    if not steps:
        raise CheckpointError(
            f"{path}: not a checkpoint (no {CONFIG_FILE}) and no step-N checkpoints"
        )
    return steps[-1][1]


def read_meta(path: str | Path) -> dict[str, Any]:
    path = resolve_checkpoint(path)
    f = path / CONFIG_FILE
    try:
        meta = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: unreadable checkpoint config ({e.__class__.__name__})") from e
    if not isinstance(meta, dict) or not {"kind", "config"} <= set(meta):
        raise CheckpointError(f"{f}: not a cogview checkpoint config")
    return meta


def load_checkpoint(path: str | Path, kind: str | None = None) -> Checkpoint:
    path = resolve_checkpoint(path)
    meta = read_meta(path)
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(f"{path}: a {meta['kind']} checkpoint, expected {kind}")
    f = path / WEIGHTS_FILE
    if not f.is_file():
        raise CheckpointError(f"{f}: missing")
    try:
        state_dict = load_file(str(f))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{f}: corrupt or truncated weights ({e})") from e
    return Checkpoint(
        path=path,
        kind=meta["kind"],
        config=meta["config"],
        state_dict=state_dict,
        step=int(meta.get("step", 0)),
        extra=meta.get("extra", {}),
    )


def load_training_state(path: str | Path) -> dict[str, Any]:
    f = Path(path) / TRAINING_STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"{f}: missing, cannot resume from this checkpoint")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad pickle; none may execute code
        raise CheckpointError(
            f"{f}: corrupt or unsafe training state ({e.__class__.__name__})"
        ) from e


def load_state_strict(
    module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str
) -> None:
    """`load_state_dict(strict=True)` with a one-line error naming the checkpoint."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        why = lines[1].strip() if len(lines) > 1 else lines[0]
        raise CheckpointError(f"{source}: weights do not fit the model ({why})") from e
