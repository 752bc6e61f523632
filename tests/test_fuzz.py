"""Malformed inputs, from a seeded generator: never an uncaught exception, errors are one line.

Mutations of real PNG and JPEG files (flipped bytes, truncation, inserted junk, random bytes)
go to the image reader, the mask reader and the inpaint/caption commands; arbitrary captions and
prompts go to the tokenizer and the generate command.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_cli_sample import model_dir  # noqa: F401  (fixture)

from cogview.cli import main
from cogview.cli.sample import read_mask_file
from cogview.errors import UserError
from cogview.images import fit, read_image

N_CASES = 40


def _encoded(fmt: str, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


SOURCES = [_encoded("PNG"), _encoded("JPEG"), _encoded("PNG", "L"), _encoded("PNG", "RGBA")]


def mutations(seed: int, n: int = N_CASES):
    """Seeded malformed files: (name, bytes)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        data = bytearray(SOURCES[i % len(SOURCES)])
        kind = i % 5
        if kind == 0:  # flip a few bytes anywhere, header included
            for pos in rng.integers(0, len(data), rng.integers(1, 8)):
                data[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:  # cut off
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 2:  # junk inserted in the middle
            pos = int(rng.integers(0, len(data)))
            data[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif kind == 3:  # random bytes with a real signature
            data = data[:8] + rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        else:  # plain random bytes, sometimes empty
            data = rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
        yield f"case{i}-kind{kind}", bytes(data)


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_line_error(err: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err


def test_image_reader_accepts_or_refuses_in_one_line(tmp_path):
    for name, data in mutations(0):
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        try:
            image = read_image(path)
        except UserError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            continue
        assert fit(image, 16).shape == (16, 16, 3)


def test_mask_reader_accepts_or_refuses_in_one_line(tmp_path):
    for name, data in mutations(1):
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        try:
            mask = read_mask_file(str(path))
        except UserError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            continue
        assert mask.dtype == bool and mask.ndim == 2


def test_inpaint_and_caption_commands_on_malformed_files(model_dir, tmp_path, capsys):  # noqa: F811
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(good)
    for i, (name, data) in enumerate(mutations(2, n=15)):
        bad = tmp_path / f"{name}.png"
        bad.write_bytes(data)
        image, mask = (bad, good) if i % 2 else (good, bad)
        rc, _, err = run(capsys, "inpaint", "--model", model_dir, "--image", image,
                         "--mask", mask, "--prompt", "a red circle", "-n", "1",
                         "-o", tmp_path / f"out{i}")
        assert rc in (0, 2), err
        if rc == 2:
            _one_line_error(err)
        rc, _, err = run(capsys, "caption", "--model", model_dir, bad, "-n", "1")
        assert rc in (0, 2), err
        if rc == 2:
            _one_line_error(err)


@pytest.mark.parametrize("seed", range(3))
def test_generate_with_arbitrary_prompts(model_dir, tmp_path, capsys, seed):  # noqa: F811
    rng = np.random.default_rng(seed)
    alphabet = [chr(c) for c in (*range(1, 0x80), 0xE9, 0x4E2D, 0x1F600, 0x200D, 0x0301)]
    prompt = "".join(rng.choice(alphabet, int(rng.integers(0, 80))))
    rc, out, err = run(capsys, "generate", prompt, "--model", model_dir, "-n", "1",
                       "-o", tmp_path / "gen")
    assert rc == 0, err
    assert "Traceback" not in err and "wrote" in out
