"""Which torch device to run on, and what the CPU can do."""

from __future__ import annotations

from pathlib import Path

import torch

from cogview.errors import ConfigError


def parse_device(name: str, field: str = "device") -> torch.device:
    """`name` as a torch.device this build can use; a one-line error of parameter `field` if
    not."""
    try:
        device = torch.device(name)
        torch.empty(0, device=device)  # a device this torch build cannot use fails here
    except (RuntimeError, AssertionError) as e:
        why = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise ConfigError.of(field, f"{name}: {why}") from None
    return device


def cpu_has_bf16() -> bool:
    """True where the CPU has native bf16 dot products (AVX-512 BF16 or AMX), so autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
