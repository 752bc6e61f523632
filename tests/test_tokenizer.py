"""The unified tokenizer: round trips, id ranges, files, truncation, layout checks."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer import SPECIAL_TOKENS, TASKS, TextTruncatedWarning, TokenizerError, UnifiedTokenizer

COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan")
SHAPES = ("circle", "square", "triangle", "star")
PLACES = ("top left", "top right", "bottom left", "bottom right", "centre")
K = 64


def make_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        f"a {rng.choice(('small', 'large'))} {rng.choice(COLOURS)} {rng.choice(SHAPES)} "
        f"at the {rng.choice(PLACES)}"
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tok() -> UnifiedTokenizer:
    return UnifiedTokenizer.train(make_captions(300), vocab_size=320, image_codes=K)


# ---------------------------------------------------------------- layout of ids


def test_specials_come_first_in_order(tok: UnifiedTokenizer) -> None:
    assert list(tok.specials) == list(SPECIAL_TOKENS)
    assert list(tok.specials.values()) == list(range(len(SPECIAL_TOKENS)))
    named = [tok.pad_id, tok.unk_id, tok.boi_id, tok.eoi_id, tok.bot_id, tok.eot_id, tok.mask_id]
    named += [tok.task_id(t) for t in TASKS]
    assert named == list(range(len(SPECIAL_TOKENS)))
    with pytest.raises(TokenizerError, match="unknown task 'nope'"):
        tok.task_id("nope")


def test_ranges_tile_the_vocabulary(tok: UnifiedTokenizer) -> None:
    assert tok.text_range.start == len(SPECIAL_TOKENS)
    assert tok.image_range.start == tok.text_range.stop
    assert tok.image_range.stop == tok.vocab_size
    assert len(tok.image_range) == tok.num_image_codes == K
    assert 256 < len(tok.text_range) <= 320  # merges were learned, no more than asked


# ---------------------------------------------------------------- text


def test_captions_round_trip_and_merge(tok: UnifiedTokenizer) -> None:
    captions = make_captions(50, seed=1)
    batched = tok.encode_texts(captions)
    for caption, ids in zip(captions, batched, strict=True):
        assert ids == tok.encode_text(caption)
        assert all(i in tok.text_range for i in ids)
        assert tok.decode_text(ids) == caption
        assert len(ids) < len(caption.encode())  # BPE merged something


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_any_unicode_round_trips(tok: UnifiedTokenizer, text: str) -> None:
    ids = tok.encode_text(text, truncate=False)
    assert all(i in tok.text_range for i in ids)
    assert tok.decode_text(ids) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "  leading and trailing  ",
        "a\nb\r\n\t",
        "emoji 🐈‍⬛ 🙂",
        "\x00\x07\x7f",
        "é e\u0301",
    ],
)
def test_edge_strings_round_trip(tok: UnifiedTokenizer, text: str) -> None:
    assert tok.decode_text(tok.encode_text(text, truncate=False)) == text
    assert tok.encode_texts([text], truncate=False) == [tok.encode_text(text, truncate=False)]


def test_special_names_in_text_are_plain_text(tok: UnifiedTokenizer) -> None:
    ids = tok.encode_text("<eoi><pad>")
    assert all(i in tok.text_range for i in ids)


def test_decode_skips_specials_and_image_ids(tok: UnifiedTokenizer) -> None:
    ids = tok.encode_text("a red star")
    mixed = [tok.task_id("cap"), tok.boi_id, *tok.codes_to_ids(np.arange(3)).tolist(), tok.eoi_id]
    mixed += [tok.bot_id, *ids, tok.eot_id, tok.pad_id]
    assert tok.decode_text(mixed) == "a red star"
    assert tok.decode_text(torch.tensor(mixed)) == "a red star"


def test_truncation_warns_once_and_keeps_the_head(tok: UnifiedTokenizer) -> None:
    long = " ".join(make_captions(20, seed=2))
    full = tok.encode_text(long, truncate=False)
    assert len(full) > tok.max_text_len
    with pytest.warns(TextTruncatedWarning) as record:
        cut = tok.encode_text(long)
    assert len(record) == 1
    assert f"{len(full) - tok.max_text_len} tokens cut" in str(record[0].message)
    assert cut == full[: tok.max_text_len]

    with pytest.warns(TextTruncatedWarning) as record:
        batch = tok.encode_texts([long, "a red star", long])
    assert len(record) == 1
    assert "2 of 3 texts" in str(record[0].message)
    assert batch[0] == batch[2] == cut
    assert batch[1] == tok.encode_text("a red star")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.encode_text("a red star")  # short text: no warning
        assert tok.encode_texts([long], truncate=False) == [full]


def test_pieces_are_readable(tok: UnifiedTokenizer) -> None:
    ids = tok.encode_text("a red star 🙂")
    assert "".join(tok.piece(i) for i in ids[:-4]) == "a red star "
    # the emoji is 4 UTF-8 bytes the captions never merged: one piece per byte
    assert [tok.piece(i) for i in ids[-4:]] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    assert tok.piece(tok.boi_id) == "<boi>"
    assert tok.piece(tok.image_range.start + 5) == "<img:5>"
    with pytest.raises(TokenizerError):
        tok.piece(tok.vocab_size)


# ---------------------------------------------------------------- image codes


def test_code_mapping_is_a_bijection_onto_image_range(tok: UnifiedTokenizer) -> None:
    codes = torch.arange(K)
    ids = tok.codes_to_ids(codes)
    assert ids.dtype == torch.int64
    assert ids.tolist() == list(tok.image_range)
    assert set(ids.tolist()).isdisjoint(tok.text_range)
    assert set(ids.tolist()).isdisjoint(tok.specials.values())
    assert torch.equal(tok.ids_to_codes(ids), codes)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_code_mapping_shapes_and_dtypes(tok: UnifiedTokenizer, dtype: torch.dtype) -> None:
    codes = torch.randint(0, K, (2, 3, 4), generator=torch.Generator().manual_seed(0)).to(dtype)
    ids = tok.codes_to_ids(codes)
    assert ids.shape == codes.shape and ids.dtype == torch.int64
    assert torch.equal(tok.ids_to_codes(ids), codes.long())
    arr = codes.numpy()
    assert np.array_equal(tok.codes_to_ids(arr), ids.numpy())
    assert tok.codes_to_ids(arr).dtype == np.int64
    assert tok.codes_to_ids(torch.zeros(0, dtype=dtype)).numel() == 0


@given(code=st.integers(min_value=0, max_value=K - 1))
def test_code_mapping_of_ints(tok: UnifiedTokenizer, code: int) -> None:
    i = tok.codes_to_ids(code)
    assert isinstance(i, int) and i in tok.image_range
    assert tok.ids_to_codes(i) == code


def test_out_of_range_codes_and_ids_raise(tok: UnifiedTokenizer) -> None:
    for bad in (-1, K, torch.tensor([0, K]), np.array([[-1]]), np.array([2**63], np.uint64)):
        with pytest.raises(TokenizerError, match="outside"):
            tok.codes_to_ids(bad)
    for bad in (tok.text_range.stop - 1, tok.vocab_size, torch.tensor([tok.eoi_id])):
        with pytest.raises(TokenizerError, match="outside"):
            tok.ids_to_codes(bad)
    for bad in (torch.tensor([0.0]), np.array([True]), [1, 2], True):
        with pytest.raises(TokenizerError):
            tok.codes_to_ids(bad)


# ---------------------------------------------------------------- files


def test_save_load_keeps_every_id_and_encoding(tok: UnifiedTokenizer, tmp_path) -> None:
    path = tok.save(tmp_path / "sub" / "tokenizer.json")
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "cogview-tokenizer" and doc["version"] == 1
    assert doc["specials"] == list(SPECIAL_TOKENS) and doc["image_codes"] == K
    back = UnifiedTokenizer.load(path)
    assert back.layout() == tok.layout()
    assert back.fingerprint == tok.fingerprint
    texts = make_captions(30, seed=3) + ["", " odd ☃ text\n"]
    assert back.encode_texts(texts) == tok.encode_texts(texts)
    assert [back.piece(i) for i in range(tok.vocab_size)] == [
        tok.piece(i) for i in range(tok.vocab_size)
    ]
    again = UnifiedTokenizer.from_json_str(tok.to_json_str())
    assert again.fingerprint == tok.fingerprint


def _corrupt(tok: UnifiedTokenizer, change) -> str:
    doc = json.loads(tok.to_json_str())
    change(doc)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not a JSON"),
        ("[1, 2]", "not a cogview-tokenizer"),
        ('{"format": "other"}', "not a cogview-tokenizer"),
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.pop("bpe"), "missing field"),
        (lambda d: d.update(specials=["<pad>"]), "specials"),
        (lambda d: d.update(image_codes=0), "image_codes"),
        (lambda d: d.update(max_text_len="32"), "max_text_len"),
        (lambda d: d.update(bpe={"model": 3}), "bpe"),
        (lambda d: d["bpe"].update(normalizer={"type": "Lowercase"}), "normalizer"),
        (lambda d: d["bpe"]["model"]["vocab"].pop("Ġ"), "vocab"),
        (lambda d: d["bpe"]["model"]["vocab"].update({"中": 10**4}), "holes"),
        (
            lambda d: d["bpe"]["model"]["vocab"].update({"中": len(d["bpe"]["model"]["vocab"])}),
            "byte-level",
        ),
        (lambda d: d["bpe"]["pre_tokenizer"].update(add_prefix_space=True), "add_prefix_space"),
    ],
)
def test_bad_files_name_the_file(tok: UnifiedTokenizer, tmp_path, content, match) -> None:
    path = tmp_path / "bad.json"
    text = _corrupt(tok, content) if callable(content) else content
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TokenizerError, match=match) as info:
        UnifiedTokenizer.load(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(TokenizerError, match="not found") as info:
        UnifiedTokenizer.load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- identity


def test_fingerprint_and_check_layout(tok: UnifiedTokenizer) -> None:
    tok.check_layout(tok.layout())
    tok.check_layout(json.loads(json.dumps(tok.layout())))  # as stored in a config.json

    more_codes = UnifiedTokenizer.from_json_str(
        _corrupt(tok, lambda d: d.update(image_codes=K + 1))
    )
    assert more_codes.fingerprint != tok.fingerprint
    with pytest.raises(TokenizerError, match="vocab_size is 3.* there but .* in this"):
        tok.check_layout(more_codes.layout() | {"vocab_size": 3})
    with pytest.raises(TokenizerError, match=f"vocab_size is {tok.vocab_size + 1} there"):
        tok.check_layout(more_codes.layout())

    # same sizes, other captions: only the fingerprint can tell
    other = UnifiedTokenizer.train(
        [c.replace("a ", "one ") for c in make_captions(300, seed=9)], vocab_size=320, image_codes=K
    )
    assert other.layout() | {"fingerprint": None} == tok.layout() | {"fingerprint": None}
    assert other.fingerprint != tok.fingerprint
    with pytest.raises(TokenizerError, match="fingerprint.*different BPE"):
        tok.check_layout(other.layout())

    layout = tok.layout()
    del layout["fingerprint"]
    with pytest.raises(TokenizerError, match="lacks 'fingerprint'"):
        tok.check_layout(layout)


def test_training_is_deterministic() -> None:
    captions = make_captions(200, seed=4)
    a = UnifiedTokenizer.train(captions, vocab_size=300, image_codes=8)
    b = UnifiedTokenizer.train(iter(captions), vocab_size=300, image_codes=8)
    assert a.fingerprint == b.fingerprint


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 100}, "vocab_size"),
        ({"vocab_size": 300.0}, "vocab_size"),
        ({"image_codes": 0}, "image_codes"),
        ({"max_text_len": 0}, "max_text_len"),
        ({"min_frequency": 0}, "min_frequency"),
    ],
)
def test_train_validates_arguments(kwargs: dict, match: str) -> None:
    args = {"vocab_size": 300, "image_codes": 8} | kwargs
    with pytest.raises(TokenizerError, match=match):
        UnifiedTokenizer.train(["a red star"] * 10, **args)


def test_train_rejects_bad_corpora() -> None:
    with pytest.raises(TokenizerError, match="no captions"):
        UnifiedTokenizer.train([], vocab_size=300, image_codes=8)
    with pytest.raises(TokenizerError, match="not one string"):
        UnifiedTokenizer.train("a red star", vocab_size=300, image_codes=8)
    with pytest.raises(TokenizerError, match="caption 1 is a int"):
        UnifiedTokenizer.train(["a", 3], vocab_size=300, image_codes=8)


# ---------------------------------------------------------------- command line


def _write_shards(folder, captions: list[str], per_shard: int = 40) -> None:
    import io

    import webdataset as wds
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format="PNG")
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(captions), per_shard):
        with wds.TarWriter(str(folder / f"train-{start // per_shard:06d}.tar")) as w:
            for i, caption in enumerate(captions[start : start + per_shard], start):
                w.write({"__key__": f"k{i:05d}", "png": buf.getvalue(), "txt": caption.encode()})


def test_cli_train_tokenizer_then_tokenize(tmp_path, capsys) -> None:
    from cogview.cli import main

    captions = make_captions(100, seed=5)
    _write_shards(tmp_path / "data", captions)
    out = tmp_path / "tok" / "tokenizer.json"
    argv = ["train-tokenizer", str(tmp_path / "data"), "--vocab-size", "300"]
    argv += ["--image-codes", "16", "--max-text-len", "8", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "captions: 100 from 3 shard(s)" in printed

    tok = UnifiedTokenizer.load(out)
    want = UnifiedTokenizer.train(captions, vocab_size=300, image_codes=16, max_text_len=8)
    assert tok.fingerprint == want.fingerprint
    assert f"vocab_size {tok.vocab_size}" in printed

    assert main(["tokenize", "a red star", "--tokenizer", str(out)]) == 0
    printed = capsys.readouterr().out
    ids = tok.encode_text("a red star")
    assert f"ids ({len(ids)}): {ids}" in printed
    assert f"pieces: {[tok.piece(i) for i in ids]}" in printed


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["train-tokenizer", "{tmp}/absent", "--vocab-size", "300"], "absent"),
        (["train-tokenizer", "{tmp}/data", "--vocab-size", "30"], "--vocab-size"),
        (["train-tokenizer", "{tmp}/data", "--vocab-size", "300", "--max-text-len", "0"], "--max"),
        (["tokenize", "x", "--tokenizer", "{tmp}/data/train-000000.tar"], "train-000000.tar"),
    ],
)
def test_cli_user_errors(tmp_path, capsys, argv: list[str], match: str) -> None:
    from cogview.cli import main

    _write_shards(tmp_path / "data", make_captions(10))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "train-tokenizer":
        argv += ["--image-codes", "16", "--out", str(tmp_path / "t.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err
    assert not (tmp_path / "t.json").exists()
