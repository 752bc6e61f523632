"""The `cogview` command line.

Each module in `COMMAND_MODULES` registers its own subcommands through `register(subparsers)`;
a subcommand sets `func(args) -> int | None` and imports anything heavy inside that function so
that `cogview --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from cogview.errors import ConfigError, UserError

COMMAND_MODULES = (
    "cogview.cli.data",
    "cogview.cli.tokenizer",
    "cogview.cli.vqvae",
    "cogview.cli.train",
    "cogview.cli.sample",
    "cogview.cli.search",
    "cogview.cli.superres",
    "cogview.cli.evaluate",
    "cogview.cli.export",
    "cogview.cli.serve",
)


def with_threads(
    threads: int | None, fn: Callable[[argparse.Namespace], int], args: argparse.Namespace
) -> int:
    """fn(args) with torch using `threads` CPU threads (None: torch's choice), the caller's
    setting restored after (tests and notebooks call `main` in their own process)."""
    import torch

    if threads is None:
        return fn(args)
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(args)
    finally:
        torch.set_num_threads(before)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cogview",
        description="Token-based text-to-image: data, tokenizers, training, sampling, evaluation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a command group that this install does not have yet
                continue
            raise
        module.register(subparsers)
    return parser


def _take_local_rank(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher puts `--local_rank=N` before the subcommand: make it LOCAL_RANK."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
        elif arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            os.environ.setdefault("LOCAL_RANK", argv[i + 1])
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _take_local_rank(sys.argv[1:] if argv is None else list(argv))
    if not sys.stderr.isatty():
        # progress bars in a log file or CI: a line every 10 s instead of ten a second
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:  # a parameter's error, told by its flag
        flag = f"--{e.field.replace('_', '-')} {e.detail}" if e.field else str(e)
        print(f"error: {flag}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
