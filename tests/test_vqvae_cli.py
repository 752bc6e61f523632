"""The VQVAE commands end to end on a tiny model and a tiny shapes data set; token shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cogview.cli import main
from cogview.errors import UserError
from cogview.images import fit, read_image, to_tensor
from cogview.pretrained import load_vqvae
from tokenizer import UnifiedTokenizer
from train.data.loader import iter_samples
from train.data.tokens import check_compatible, load_token_shards, read_info
from vqvae import fingerprint, vqvae_config

CODES = vqvae_config("tiny").codebook_size


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A shapes data set, a tiny VQVAE trained on it for two steps, and a tokenizer."""
    root = tmp_path_factory.mktemp("vqvae-cli")
    data = root / "shapes"
    assert main(["data", "shapes", "--out", str(data), "--n", "20", "--size", "64",
                 "--test-fraction", "0.3", "--seed", "1"]) == 0
    run = root / "run"
    assert main(["train-vqvae", "--data", str(data), "--preset", "tiny", "--out", str(run),
                 "--steps", "2", "--batch-size", "4", "--sizes", "32,64", "--save-every", "1",
                 "--eval-every", "2", "--eval-images", "4", "--warmup", "1"]) == 0
    captions = [s.caption for s in iter_samples(str(data), decode_images=False)]
    tok = UnifiedTokenizer.train(captions * 5, vocab_size=300, image_codes=CODES,
                                 max_text_len=64)
    tok.save(root / "tok.json")
    return root


def test_train_writes_resumable_checkpoints(workdir, capsys):
    run = workdir / "run"
    assert sorted(p.name for p in run.glob("step-*")) == ["step-00000001", "step-00000002"]
    meta = json.loads((run / "step-00000002" / "config.json").read_text())
    assert meta["kind"] == "vqvae" and meta["step"] == 2
    assert set(meta["extra"]["eval"]) == {"32px", "64px"}
    assert meta["extra"]["fingerprint"] == fingerprint(load_vqvae(run))
    # without --resume an existing run is not overwritten
    args = ["train-vqvae", "--data", str(workdir / "shapes"), "--preset", "tiny", "--out",
            str(run), "--steps", "3", "--batch-size", "4", "--sizes", "32,64", "--warmup", "1",
            "--eval-every", "0"]
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tokens(workdir):
    out = workdir / "tokens"
    assert main(["encode", str(workdir / "shapes"), "--vqvae", str(workdir / "run"),
                 "--tokenizer", str(workdir / "tok.json"), "--out", str(out),
                 "--sizes", "32,64", "--batch-size", "5"]) == 0
    return out


def test_encode_shards_round_trip(workdir, tokens):
    out = tokens
    model = load_vqvae(workdir / "run")
    tok = UnifiedTokenizer.load(workdir / "tok.json")
    info = read_info(out)
    assert info["counts"] == {"train": 14, "test": 6}
    from train.data.stream import count_samples

    for split in ("train", "test"):  # what a streamed run reads instead of every header
        assert info["shard_counts"][split] == [count_samples(out / name)
                                               for name in info["shards"][split]]
    assert info["grids"] == {"32": [8, 8], "64": [16, 16]} and info["codebook_size"] == CODES
    assert info["vqvae_fingerprint"] == fingerprint(model)
    assert info["tokenizer_fingerprint"] == tok.fingerprint
    for split in ("train", "test"):
        data = load_token_shards(out, split)
        samples = list(iter_samples(str(workdir / "shapes"), split=split))
        assert data.keys == [s.key for s in samples]
        assert data.captions == [s.caption for s in samples]
        assert data.metas == [s.meta for s in samples]
        assert data.text_ids == tok.encode_texts(data.captions)
        for size in (32, 64):
            x = to_tensor([fit(s.image, size) for s in samples])
            assert data.codes[size].dtype == torch.int64
            assert torch.equal(data.codes[size], model.encode(x))
    check_compatible(info, tok, fingerprint(model))


def test_token_shards_refuse_another_vocabulary(workdir, tokens):
    info = read_info(tokens)
    captions = ["a red circle", "a blue square at the top"] * 20
    other = UnifiedTokenizer.train(captions, vocab_size=270, image_codes=CODES)
    with pytest.raises(UserError, match="another tokenizer"):
        check_compatible(info, other)
    bigger = UnifiedTokenizer.train(captions, vocab_size=270, image_codes=2 * CODES)
    with pytest.raises(UserError, match="image codes"):
        check_compatible(info, bigger)
    tok = UnifiedTokenizer.load(workdir / "tok.json")
    with pytest.raises(UserError, match="another VQVAE"):
        check_compatible(info, tok, vqvae_fingerprint="0" * 16)


def test_encode_refuses_a_tokenizer_of_another_codebook(workdir, capsys):
    tok = UnifiedTokenizer.train(["a red circle"] * 50, vocab_size=270, image_codes=CODES + 1)
    tok.save(workdir / "tok-other.json")
    assert main(["encode", str(workdir / "shapes"), "--vqvae", str(workdir / "run"),
                 "--tokenizer", str(workdir / "tok-other.json"), "--out",
                 str(workdir / "tokens-other")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "image codes" in err


def test_image_encode_decode_reconstruct(workdir, capsys):
    # an RGBA image of an odd size: converted and fitted
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70, 4), dtype=np.uint8), "RGBA").save(
        workdir / "in.png")
    codes_file = workdir / "codes.npy"
    assert main(["encode", str(workdir / "in.png"), "--vqvae", str(workdir / "run"),
                 "--size", "32", "-o", str(codes_file)]) == 0
    codes = np.load(codes_file)
    assert codes.shape == (8, 8) and codes.dtype == np.uint16 and codes.max() < CODES
    model = load_vqvae(workdir / "run")
    x = to_tensor(fit(read_image(workdir / "in.png"), 32))
    assert np.array_equal(codes, model.encode(x)[0].numpy())
    capsys.readouterr()

    assert main(["encode", str(workdir / "in.png"), "--vqvae", str(workdir / "run")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert [[int(c) for c in line.split()] for line in printed] == codes.tolist()

    assert main(["decode", str(codes_file), "--vqvae", str(workdir / "run"), "-o",
                 str(workdir / "out.png")]) == 0
    assert Image.open(workdir / "out.png").size == (32, 32)

    assert main(["reconstruct", str(workdir / "in.png"), "--vqvae", str(workdir / "run"),
                 "--size", "30", "-o", str(workdir / "side.png")]) == 0
    captured = capsys.readouterr()
    assert "PSNR" in captured.out and "not divisible" in captured.err
    assert Image.open(workdir / "side.png").size == (64, 32)


def test_eval_vqvae_table_and_json(workdir, capsys):
    out = workdir / "eval.json"
    assert main(["eval-vqvae", "--data", str(workdir / "shapes"), "--vqvae", str(workdir / "run"),
                 "--size", "32,64", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "PSNR" in table and "usage" in table
    payload = json.loads(out.read_text())
    results = payload["results"]
    assert [r["size"] for r in results] == [32, 64] and all(r["images"] == 6 for r in results)
    # the codebook is shared by both sizes: its usage over both is at least that of each
    assert max(r["usage"] for r in results) <= payload["all_sizes"]["usage"] <= 1


@pytest.mark.parametrize("argv, message", [
    (["encode", "missing.png", "--vqvae", "{run}"], "missing.png"),
    (["decode", "missing.npy", "--vqvae", "{run}", "-o", "x.png"], "missing.npy"),
    (["reconstruct", "{root}/bad.png", "--vqvae", "{run}", "-o", "x.png"], "bad.png"),
    (["eval-vqvae", "--data", "nowhere", "--vqvae", "{run}"], "nowhere"),
    (["encode", "{root}/in.png", "--vqvae", "{root}/novqvae"], "novqvae"),
    (["train-vqvae", "--data", "{root}/shapes", "--out", "{root}/r2", "--preset", "huge"],
     "huge"),
    (["encode", "{root}/shapes", "--vqvae", "{run}"], "--tokenizer"),
])
def test_user_errors_are_one_line(workdir, capsys, argv, message):
    (workdir / "bad.png").write_bytes(b"not an image")
    if not (workdir / "in.png").exists():
        Image.new("RGB", (8, 8)).save(workdir / "in.png")
    argv = [a.format(run=workdir / "run", root=workdir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_bad_codes_file(workdir, capsys):
    np.save(workdir / "big.npy", np.full((8, 8), CODES, dtype=np.int64))
    assert main(["decode", str(workdir / "big.npy"), "--vqvae", str(workdir / "run"), "-o",
                 str(workdir / "x.png")]) == 2
    assert "codes must lie" in capsys.readouterr().err
