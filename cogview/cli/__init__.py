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

from cogview.errors import UserError

COMMAND_MODULES = (
    "cogview.cli.data",
    "cogview.cli.tokenizer",
    "cogview.cli.vqvae",
    "cogview.cli.train",
    "cogview.cli.sample",
    "cogview.cli.superres",
    "cogview.cli.evaluate",
    "cogview.cli.export",
)


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


def main(argv: list[str] | None = None) -> int:
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
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
