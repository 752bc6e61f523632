"""The command line as a whole: every subcommand is listed and documented; missing paths are
one-line errors with exit status 2."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from cogview.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_top_level_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "cogview", "--help"], capture_output=True,
                         text=True, check=True).stdout
    names = _subcommands()
    assert {"data", "train-tokenizer", "train-vqvae", "encode", "train", "generate", "inpaint",
            "caption", "train-sr", "superres", "eval", "export"} <= set(names)
    for name in names:
        assert name in out


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage: cogview" in capsys.readouterr().out


MISSING = [
    "data folder {m} --out {t}/o",
    "train-tokenizer {m} --vocab-size 300 --image-codes 16 --out {t}/tok.json",
    "train-vqvae --data {m} --preset tiny --out {t}/o",
    "eval-vqvae --data {m} --vqvae {m}",
    "encode {m} --vqvae {m}",
    "reconstruct {m} -o {t}/r.png",
    "train --data {m} --tokenizer {m} --vqvae {m} --out {t}/o",
    "caption {m}",
    "inpaint --image {m} --mask {m} -o {t}/o",
    "superres {m} -o {t}/s.png",
    "export {m} {t}/o",
]


@pytest.mark.parametrize("line", MISSING)
def test_missing_input_path_is_one_line_exit_2(line, tmp_path, capsys):
    argv = line.format(m=tmp_path / "missing", t=tmp_path).split()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
