import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from cogview.bench import detect, shapes
from cogview.cli import main
from cogview.errors import UserError
from cogview.images import encode_png
from train.data.loader import image_batches, iter_samples, list_shards, load_images
from train.data.shards import ShardSample, json_bytes, write_dataset
from train.data.sources import FASHION_DIR, TEST_PHOTOS, build_fashion


def png(seed, size=8):
    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "set"
    assert main(["data", "shapes", "--out", str(out), "--n", "60", "--shard-size", "25"]) == 0
    return out


def tar_members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


# ----------------------------------------------------------------------------- writing


def test_shards_round_trip_byte_for_byte(tmp_path):
    samples = [
        ShardSample(f"k{i}", png(i), f"caption {i} ünïcode ✓", {"i": i, "nested": {"a": [1, 2]}})
        for i in range(7)
    ]
    info = write_dataset(
        tmp_path, {"train": iter(samples[:5]), "test": iter(samples[5:])}, {"source": "t"},
        shard_size=2, progress=False,
    )  # fmt: skip
    assert info["n_train"] == 5 and info["n_test"] == 2
    assert info["shards"]["train"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert json.loads((tmp_path / "info.json").read_text()) == info
    read = list(iter_samples(str(tmp_path), decode_images=False))
    read += list(iter_samples(str(tmp_path), decode_images=False, split="test"))
    assert [s.key for s in read] == [s.key for s in samples]
    members = {}
    for shard in sorted(tmp_path.glob("*.tar")):
        members.update(tar_members(shard))
    for want, got in zip(samples, read, strict=True):
        assert got.image_bytes == want.image
        assert got.caption == want.caption and got.meta == want.meta
        assert members[f"{want.key}.png"] == want.image
        assert members[f"{want.key}.txt"] == want.caption.encode("utf-8")
        assert members[f"{want.key}.json"] == json_bytes(want.meta)


def test_shapes_command_is_deterministic(tmp_path, shapes_set):
    again = tmp_path / "again"
    assert main(["data", "shapes", "--out", str(again), "--n", "60", "--shard-size", "25"]) == 0
    names = sorted(p.name for p in shapes_set.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert names == ["info.json", "test-000000.tar", *[f"train-00000{i}.tar" for i in range(3)]]
    for name in names:
        assert (shapes_set / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    assert main(["data", "shapes", "--out", str(other), "--n", "60", "--seed", "1"]) == 0
    assert (other / "test-000000.tar").read_bytes() != (again / "test-000000.tar").read_bytes()
    info = json.loads((shapes_set / "info.json").read_text())
    assert {k: info[k] for k in ("source", "size", "seed", "n_train", "n_test")} == {
        "source": "shapes", "size": 64, "seed": 0, "n_train": 57, "n_test": 3,
    }  # fmt: skip


def test_shapes_samples_are_consistent(shapes_set):
    samples = list(iter_samples(str(shapes_set)))
    assert len(samples) == 57 and len({s.key for s in samples}) == 57
    n_two = 0
    for s in samples:
        assert s.image.size == (64, 64)
        assert shapes.compare(shapes.parse_caption(s.caption), s.meta)["all"], s.caption
        assert detect.score(np.asarray(s.image), s.meta)["all"]
        n_two += len(s.meta["objects"]) == 2
    assert 10 < n_two < 47  # --two-fraction 0.5


def test_shapes_captioning_targets_are_optional_and_leave_the_captions_alone(tmp_path, shapes_set):
    free = tmp_path / "free"
    assert main(["data", "shapes", "--out", str(free), "--n", "60", "--shard-size", "25",
                 "--free-order-targets"]) == 0
    with_targets = list(iter_samples(str(shapes_set)))
    without = list(iter_samples(str(free)))
    assert [s.caption for s in with_targets] == [s.caption for s in without]
    assert all(s.target is None for s in without)
    targets = [s for s in with_targets if s.target is not None]
    assert targets and all(len(s.meta["objects"]) == 2 for s in targets)
    for s in targets:
        assert s.target != s.caption
        assert shapes.compare(shapes.parse_caption(s.target), s.meta)["all"], s.target
    info = json.loads((shapes_set / "info.json").read_text())
    assert info["caption_targets"] == "reading order"
    assert "caption_targets" not in json.loads((free / "info.json").read_text())


def test_iter_samples_shuffle_is_a_seeded_permutation(shapes_set):
    def keys(**kw):
        return [s.key for s in iter_samples(str(shapes_set), decode_images=False, **kw)]

    plain = keys()
    assert plain == sorted(plain)
    mixed = keys(shuffle=True, seed=3, bufsize=10)
    assert mixed == keys(shuffle=True, seed=3, bufsize=10) and mixed != plain
    assert sorted(mixed) == plain and keys(shuffle=True, seed=4, bufsize=10) != mixed
    assert next(iter_samples(str(shapes_set), decode_images=False)).image is None


def test_rewriting_removes_stale_shards(tmp_path):
    out = str(tmp_path)
    assert main(["data", "shapes", "--out", out, "--n", "30", "--shard-size", "10"]) == 0
    assert main(["data", "shapes", "--out", out, "--n", "5", "--test-fraction", "0"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["info.json", "train-000000.tar"]


def test_bad_flags_are_user_errors(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path), "--two-fraction", "2"]) == 2
    assert main(["data", "shapes", "--out", str(tmp_path), "--shard-size", "0"]) == 2
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "--two-fraction" in err and "--shard-size" in err and "missing" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- listing


def test_list_shards_forms(shapes_set):
    folder = str(shapes_set)
    train = list_shards(folder)
    assert [Path(p).name for p in train] == [f"train-00000{i}.tar" for i in range(3)]
    assert [Path(p).name for p in list_shards(folder, "test")] == ["test-000000.tar"]
    assert list_shards(train[1]) == [train[1]]
    assert list_shards(f"{folder}/train-*.tar") == train
    assert list_shards(f"{folder}/train-{{000000..000002}}.tar") == train
    for bad in (f"{folder}/train-{{000000..000009}}.tar", f"{folder}/nothing-*.tar",
                f"{folder}/info.json", f"{folder}/missing.tar"):  # fmt: skip
        with pytest.raises(UserError):
            list_shards(bad)
    with pytest.raises(UserError, match="no val-"):
        list_shards(folder, "val")


# ----------------------------------------------------------------------------- damaged shards


def damaged_shards(tmp_path):
    """A shard of 8 samples with damage at samples 1, 3, 4, 5, 6, 7, then an intact shard."""
    bad, good = tmp_path / "a-000000.tar", tmp_path / "a-000001.tar"
    with wds.TarWriter(str(bad), encoder=False, mtime=0) as w:
        for i in range(8):
            sample = {"__key__": f"s{i}", "png": png(i), "txt": f"caption {i}".encode()}
            sample["json"] = json_bytes({"i": i})
            if i == 3:
                sample["png"] = b"garbage!" + sample["png"][8:]  # not a PNG any more
            if i == 4:
                sample["json"] = b"{not json"
            if i == 5:
                del sample["txt"]
            if i == 6:
                sample["txt"] = "caf\xe9".encode("latin-1")
            w.write(sample)
    with wds.TarWriter(str(good), encoder=False, mtime=0) as w:
        for i in range(8, 11):
            w.write({"__key__": f"s{i}", "png": png(i), "txt": f"caption {i}".encode()})
    data = bytearray(bad.read_bytes())
    with tarfile.open(bad) as tar:
        members = {m.name: m for m in tar.getmembers()}
    # a corrupt header: s1.png's name bytes change, so its checksum no longer matches
    data[members["s1.png"].offset + 5] ^= 0xFF
    # the shard ends in the middle of s7.png
    cut = members["s7.png"].offset_data + 40
    bad.write_bytes(bytes(data[:cut]))
    return [str(bad), str(good)]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_member_names_from_other_tar_writers(tmp_path, fmt):
    path = tmp_path / "other.tar"
    key = "deep/" * 30 + "ключ"  # over 100 bytes: needs a GNU long name or a pax header
    with tarfile.open(path, "w", format=fmt) as tar:
        for ext, data in (("jpg", png(1)), ("txt", b"hello")):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    it = iter_samples(str(path))
    (sample,) = list(it)
    assert sample.key == key and sample.caption == "hello" and sample.image.size == (8, 8)
    assert not it.stats.counts


EXPECTED_COUNTS = {
    "corrupt_header": 1,  # s1.png
    "no_image": 2,  # s1 (its png header is gone), s7 (cut off)
    "bad_image": 1,  # s3
    "bad_json": 1,  # s4: kept with empty metadata
    "no_caption": 1,  # s5
    "bad_caption_encoding": 1,  # s6: kept, decoded with replacement
    "truncated": 1,  # s7.png
}


def test_damaged_members_are_skipped_and_counted(tmp_path, caplog):
    shards = damaged_shards(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cogview.data"):
        it = iter_samples(shards)
        samples = list(it)
    assert [s.key for s in samples] == ["s0", "s2", "s4", "s6", "s8", "s9", "s10"]
    assert dict(it.stats.counts) == EXPECTED_COUNTS
    assert it.stats.skipped == 4
    by_key = {s.key: s for s in samples}
    assert by_key["s4"].meta == {} and by_key["s6"].caption == "caf\ufffd"
    assert by_key["s2"].meta == {"i": 2} and by_key["s2"].image.mode == "RGB"
    # one warning line per kind, then the summary
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(EXPECTED_COUNTS) + 1
    assert lines[-1].startswith("skipped 4 samples")


@pytest.mark.parametrize("workers", [0, 2])
def test_damaged_shards_stream_in_batches(tmp_path, workers):
    shards = damaged_shards(tmp_path)
    batches = image_batches(shards, 16, 3, shuffle=False, workers=workers, epochs=1)
    captions = [c for _, caps, _ in batches for c in caps]
    assert sorted(captions) == sorted(
        ["caption 0", "caption 2", "caption 4", "caf\ufffd", "caption 8", "caption 9", "caption 10"]
    )
    assert dict(batches.stats.counts) == EXPECTED_COUNTS


# ----------------------------------------------------------------------------- loading


def test_image_batches_shapes_order_and_epochs(shapes_set):
    folder = str(shapes_set)
    in_order = [s.caption for s in iter_samples(folder, decode_images=False)]
    batches = list(image_batches(folder, 32, 16, shuffle=False, workers=0, epochs=1))
    assert [len(c) for _, c, _ in batches] == [16, 16, 16, 9]
    images, captions, metas = batches[0]
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8
    assert [c for _, caps, _ in batches for c in caps] == in_order
    assert isinstance(metas[0], dict) and "objects" in metas[0]
    # the resize the loaders use keeps every attribute readable at 32 px
    for image, meta in zip(images, metas, strict=True):
        assert detect.score(image.permute(1, 2, 0).numpy(), meta)["all"]

    def shuffled(workers):
        stream = image_batches(folder, 32, 8, seed=5, workers=workers, epochs=2, bufsize=20)
        return [c for _, caps, _ in stream for c in caps]

    once = shuffled(0)
    assert once == shuffled(0) and once != in_order * 2
    assert sorted(once) == sorted(in_order * 2)
    assert sorted(shuffled(2)) == sorted(in_order * 2)  # workers split the shards

    forever = iter(image_batches(folder, 32, 16, workers=0))  # epochs=None repeats
    assert sum(len(next(forever)[1]) for _ in range(6)) == 96


def test_load_images_in_memory(shapes_set):
    data = load_images(str(shapes_set), 32, progress=False)
    assert data.images.shape == (57, 3, 32, 32) and data.images.dtype == torch.uint8
    assert len(data) == 57 and len(data.metas) == 57
    first = next(iter_samples(str(shapes_set)))
    assert data.captions[0] == first.caption
    limited = load_images(str(shapes_set), 16, limit=10, split="test", progress=False)
    assert limited.images.shape == (3, 3, 16, 16)


# ----------------------------------------------------------------------------- other sources


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion(tmp_path, capsys):
    assert main(["data", "fashion", "--out", str(tmp_path), "--n", "30"]) == 0
    assert "train 30 samples" in capsys.readouterr().out
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["n_train"] == 30 and info["n_test"] == 5 and info["size"] == 32
    members = tar_members(tmp_path / "train-000000.tar")
    image = Image.open(io.BytesIO(members["train-0000000.png"]))
    assert image.mode == "L" and image.size == (32, 32)
    pixels = np.asarray(image)
    assert pixels[:2].max() == 0 and pixels[:, -2:].max() == 0 and pixels.max() > 0
    meta = json.loads(members["train-0000000.json"])
    assert set(meta) == {"label", "class"} and meta["class"] == info["classes"][meta["label"]]
    captions = {s.caption for s in iter_samples(str(tmp_path), decode_images=False)}
    assert len(captions) > 10


def test_fashion_missing_package(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        build_fashion(tmp_path / "out", folder=tmp_path / "nowhere", progress=False)


def test_folder_pairs_and_skips(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(src / "a.png")
    (src / "a.txt").write_text("a red picture\n")
    Image.new("L", (20, 20), 50).save(src / "sub" / "b.JPG")
    (src / "sub" / "b.txt").write_bytes("caf\xe9".encode("latin-1"))
    Image.new("RGB", (9, 9)).save(src / "sub" / "deeper" / "c.webp")
    (src / "sub" / "deeper" / "c.txt").write_text("deep")
    (src / "sub" / "deeper" / "c.target.txt").write_text("deep down\n")
    Image.new("RGB", (9, 9)).save(src / "lonely.png")  # no caption
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    (src / "broken.txt").write_text("never used")
    (src / "readme.md").write_text("ignored")
    out = tmp_path / "out"
    assert main(["data", "folder", str(src), "--out", str(out), "--test-fraction", "0"]) == 0
    printed = capsys.readouterr().out
    assert "train 3 samples" in printed
    assert "1 no caption" in printed and "1 unreadable image" in printed
    assert "1 captions were not UTF-8" in printed
    samples = list(iter_samples(str(out)))
    assert [s.meta["source_path"] for s in samples] == ["a.png", "sub/b.JPG", "sub/deeper/c.webp"]
    assert [s.caption for s in samples] == ["a red picture", "caf\ufffd", "deep"]
    assert [s.target for s in samples] == [None, None, "deep down"]
    assert samples[0].image.size == (40, 30)  # kept as is without --size
    assert main(["data", "folder", str(tmp_path / "nope"), "--out", str(out)]) == 2


def test_photos_hold_out_whole_photos(tmp_path):
    pytest.importorskip("skimage")
    assert main(["data", "photos", "--out", str(tmp_path), "--n", "40", "--size", "16"]) == 0
    train = list(iter_samples(str(tmp_path)))
    test = list(iter_samples(str(tmp_path), split="test"))
    assert len(train) == 38 and len(test) == 2
    assert all(s.meta["photo"] in TEST_PHOTOS for s in test)
    assert not any(s.meta["photo"] in TEST_PHOTOS for s in train)
    assert all(s.caption == s.meta["photo"] and s.image.size == (16, 16) for s in train + test)
