"""Token shards without a model: the writer, the fast reader and its fallbacks."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from cogview.errors import UserError
from train.data.tokens import (
    FORMAT,
    INFO_FILE,
    _load_npy,
    _tar_members,
    load_token_shards,
    read_info,
    write_sample,
)


def make_shards(folder, samples_per_split: dict[str, int], long_key: bool = False) -> dict:
    """Token shards of random codes, a captioning target in every third sample; returns
    {split: [(key, codes32, codes64, ids, caption, target or None)]}."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in samples_per_split.items():
        rows = []
        with tarfile.open(folder / f"{split}-000000.tar", "w") as tar:
            for i in range(n):
                key = f"{split}{i:04d}" + ("x" * 120 if long_key and i == 1 else "")
                c32 = rng.integers(0, 512, (8, 8))
                c64 = rng.integers(0, 512, (16, 16))
                ids = rng.integers(0, 900, rng.integers(1, 9)).tolist()
                caption = f"caption {i} ünïcode"
                target = ids[::-1] if i % 3 == 1 else None
                write_sample(tar, key, {32: c32, 64: c64}, ids, caption,
                             {"i": i} if i % 2 else None, target)
                rows.append((key, c32, c64, ids, caption, target))
        written[split] = rows
    info = {"format": FORMAT, "version": 1, "sizes": [32, 64],
            "grids": {"32": [8, 8], "64": [16, 16]}, "codebook_size": 512}
    (folder / INFO_FILE).write_text(json.dumps(info))
    return written


@pytest.mark.parametrize("long_key", [False, True], ids=["plain", "pax-fallback"])
def test_round_trip(tmp_path, long_key):
    written = make_shards(tmp_path / "tok", {"train": 5, "test": 3}, long_key=long_key)
    for split, rows in written.items():
        data = load_token_shards(tmp_path / "tok", split)
        assert data.keys == [r[0] for r in rows]
        assert torch.equal(data.codes[32], torch.from_numpy(np.stack([r[1] for r in rows])))
        assert torch.equal(data.codes[64], torch.from_numpy(np.stack([r[2] for r in rows])))
        assert data.codes[32].dtype == torch.int64
        assert data.text_ids == [r[3] for r in rows]
        assert data.targets == [r[3] if r[5] is None else r[5] for r in rows]
        assert data.captions == [r[4] for r in rows]
        assert data.metas == [{"i": i} if i % 2 else None for i in range(len(rows))]


def test_fast_tar_reader_matches_tarfile(tmp_path):
    make_shards(tmp_path / "tok", {"train": 4}, long_key=True)
    make_shards(tmp_path / "plain", {"train": 4})
    for shard in (tmp_path / "tok" / "train-000000.tar", tmp_path / "plain" / "train-000000.tar"):
        with tarfile.open(shard) as tar:
            expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
        assert list(_tar_members(shard)) == expected


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.uint16).reshape(3, 4),
    np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
    np.zeros(0, np.int32),
    np.array(7, np.int32),
])
def test_npy_reader_matches_numpy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    out = _load_npy(buf.getvalue())
    assert out.dtype == array.dtype and out.shape == array.shape and np.array_equal(out, array)


def test_damaged_shards_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no info.json"):
        read_info(tmp_path)
    make_shards(tmp_path / "tok", {"train": 2})
    with pytest.raises(UserError, match="no test-"):
        load_token_shards(tmp_path / "tok", "test")
    with tarfile.open(tmp_path / "tok" / "train-000001.tar", "w") as tar:
        member = tarfile.TarInfo("lonely.txt")
        member.size = 2
        tar.addfile(member, io.BytesIO(b"hi"))
    with pytest.raises(UserError, match="lacks"):
        load_token_shards(tmp_path / "tok", "train")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / INFO_FILE).write_text(json.dumps({"n_train": 3}))
    with pytest.raises(UserError, match="cogview encode"):
        read_info(tmp_path / "img")
