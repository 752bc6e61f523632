"""Model weights in bf16 parts of at most 15 MB (to bring them back from a lent machine), and back.

    python benchmarks/gpu_weights.py split model.safetensors out/NAME   # NAME.0.safetensors, ...
    python benchmarks/gpu_weights.py join out/NAME model.safetensors

Floating-point tensors are stored as bf16; `join` writes them back as bf16, which a model loads
into its float32 parameters (`load_state_dict` casts).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PART_BYTES = 15_000_000


def split(src: Path, prefix: Path) -> list[Path]:
    state = load_file(src)
    parts: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        t = t.to(torch.bfloat16) if t.is_floating_point() else t
        n = t.numel() * t.element_size()
        if parts[-1] and size + n > PART_BYTES:
            parts.append({})
            size = 0
        parts[-1][name] = t.contiguous()
        size += n
    paths = []
    for i, part in enumerate(parts):
        path = prefix.with_name(f"{prefix.name}.{i}.safetensors")
        save_file(part, path)
        paths.append(path)
    print(f"{src} -> {len(paths)} parts: {', '.join(p.name for p in paths)}")
    return paths


def join(prefix: Path, dest: Path) -> None:
    parts = sorted(prefix.parent.glob(f"{prefix.name}.*.safetensors"),
                   key=lambda p: int(p.name[len(prefix.name) + 1 :].split(".")[0]))
    if not parts:
        raise SystemExit(f"error: no {prefix.name}.N.safetensors in {prefix.parent}")
    state: dict[str, torch.Tensor] = {}
    for p in parts:
        state.update(load_file(p))
    save_file(state, dest)
    print(f"{len(parts)} parts -> {dest} ({len(state)} tensors)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("split")
    a.add_argument("src", type=Path)
    a.add_argument("prefix", type=Path)
    b = sub.add_parser("join")
    b.add_argument("prefix", type=Path)
    b.add_argument("dest", type=Path)
    args = p.parse_args()
    if args.cmd == "split":
        split(args.src, args.prefix)
    else:
        join(args.prefix, args.dest)


if __name__ == "__main__":
    main()
