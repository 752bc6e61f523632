"""What the sampling and evaluation commands share: loading the model of --model (and --sr),
notes, progress bars and output files."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cogview.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from cogview.api import CogView


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def load_model(args: argparse.Namespace, model: str | None = None) -> CogView:
    """`CogView` of `model` (default: --model) on --device, its transformer in --dtype, with
    the SR model of --sr when the command has it."""
    from cogview.api import CogView

    pipe = CogView.from_pretrained(model or args.model, device=args.device, dtype=args.dtype)
    sr = getattr(args, "sr", None)
    if sr is not None:
        from cogview.cli.superres import SHIPPED_SR
        from cogview.superres import lopar_schedule

        try:
            pipe.load_sr(None if sr == SHIPPED_SR else sr)
        except UserError as e:
            raise UserError(f"--sr {e}") from None
        if args.sr_steps is not None:
            lopar_schedule(pipe.sr.model.sr.num_orders, args.sr_steps, field="sr_steps")
    return pipe


def progress_bar(total: int, what: str):
    """A tqdm bar on stderr whose total grows when more comes than it expected (reranking's
    further rounds draw more candidates where it is unsure)."""
    from tqdm import tqdm

    class Bar(tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            if n and self.total is not None and self.n + n > self.total:
                self.total = self.n + n
            return super().update(n)

    return Bar(total=total, unit=what, file=sys.stderr, dynamic_ncols=True)


def out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"-o {out}: cannot create folder ({e.strerror})") from None
    return out


def save_png(array: np.ndarray, path: Path) -> Path:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
