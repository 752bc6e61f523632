"""Every Python block of the README runs, in a fresh folder, with the shipped models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cogview.defaults import default_model_path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert BLOCKS


@pytest.mark.skipif(default_model_path("coglm") is None, reason="no shipped models")
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})
