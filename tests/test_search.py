"""`cogview index` and `cogview search` (cogview.retrieval) on tiny random-weight models: an
image finds itself, scores are the contrastive embeddings' dot products, the contact sheet
holds the hits, and bad input is one line with exit status 2."""

from __future__ import annotations

import json
import shlex
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from cogview.api import CogView
from cogview.cli import main
from cogview.contrastive import embed_images, embed_texts
from cogview.images import read_image
from cogview.model import CogLM, coglm_config
from cogview.pipeline import COGLM_KIND, bundle_extra, save_bundled
from cogview.pretrained import save_vqvae
from cogview.retrieval import (
    build_index,
    load_index,
    read_source,
    save_index,
    search,
)
from tokenizer import UnifiedTokenizer
from vqvae import fingerprint
from vqvae.model import VQVAE, VQVAEConfig

SIZE, GRID = 16, (4, 4)
CAPTIONS = ["a red circle", "a blue square at the top", "two green triangles", "a red square",
            "a blue circle", "three yellow stars"]


def _picture(i: int) -> np.ndarray:
    """A distinct 16 px picture per i: a coloured block on a background of another colour."""
    rng = np.random.default_rng(i)
    img = np.full((SIZE, SIZE, 3), rng.integers(0, 256, 3), np.uint8)
    r, c = rng.integers(0, SIZE - 6, 2)
    img[r : r + 6, c : c + 6] = rng.integers(0, 256, 3)
    return img


def _model(root, name: str, tok, vq, seed: int, contrastive_dim: int = 16):
    torch.manual_seed(seed)
    model = CogLM(coglm_config("tiny", tok.vocab_size, dim=32, n_layers=1, max_seq_len=64,
                               contrastive_dim=contrastive_dim))
    return save_bundled(root / name, COGLM_KIND, config=model.config,
                        state_dict=model.state_dict(), tokenizer_file=root / "tokenizer.json",
                        vqvae_path=root / "vqvae",
                        extra=bundle_extra(tok, fingerprint(vq), image_size=SIZE, grid=GRID))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three models of one tokenizer and VQVAE (with a head, another with a head, without
    one), a folder of captioned pictures, the same pictures as image shards and as token
    shards."""
    from train.data.shards import ShardSample, write_dataset
    from train.data.tokens import FORMAT, INFO_FILE, VERSION, write_sample

    root = tmp_path_factory.mktemp("search")
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(channels=8, channel_mult=(1, 1, 2), codebook_size=16,
                           codebook_dim=4, kmeans_init=False)).eval()
    save_vqvae(root / "vqvae", vq)
    tok = UnifiedTokenizer.train(CAPTIONS * 4, vocab_size=270, image_codes=16, max_text_len=16)
    tok.save(root / "tokenizer.json")
    paths = {name: _model(root, name, tok, vq, seed, dim)
             for name, seed, dim in (("model", 0, 16), ("other", 1, 16), ("plain", 0, 0))}

    pictures = root / "pictures"
    pictures.mkdir()
    for i, caption in enumerate(CAPTIONS):
        Image.fromarray(_picture(i)).save(pictures / f"p{i}.png")
        if i != 5:  # the last one has no caption
            (pictures / f"p{i}.txt").write_text(caption + "\n")
    samples = [ShardSample(f"s{i}", (pictures / f"p{i}.png").read_bytes(), c)
               for i, c in enumerate(CAPTIONS)]
    write_dataset(root / "shards", {"train": samples[:4], "test": samples[4:]},
                  {"source": "test"}, progress=False)

    pipe = CogView.from_pretrained(paths["model"])
    tokens = root / "tokens"
    tokens.mkdir()
    for split, part in (("train", range(4)), ("test", range(4, 6))):
        with tarfile.open(tokens / f"{split}-000000.tar", "w") as tar:
            for i in part:
                codes = pipe.encode(_picture(i)).numpy()
                write_sample(tar, f"{split}{i}", {SIZE: codes}, tok.encode_text(CAPTIONS[i]),
                             CAPTIONS[i], None)
    info = {"format": FORMAT, "version": VERSION, "counts": {"train": 4, "test": 2},
            "sizes": [SIZE], "grids": {str(SIZE): list(GRID)}, "codebook_size": 16,
            "vqvae_fingerprint": fingerprint(vq), "tokenizer_fingerprint": tok.fingerprint,
            "tokenizer_layout": tok.layout(), "source": "test"}
    (tokens / INFO_FILE).write_text(json.dumps(info))
    foreign = root / "foreign-tokens"
    foreign.mkdir()
    for f in tokens.iterdir():
        (foreign / f.name).write_bytes(f.read_bytes())
    (foreign / INFO_FILE).write_text(json.dumps({**info, "tokenizer_fingerprint": "0" * 16}))
    return {"root": root, "pipe": pipe, "pictures": pictures, "shards": root / "shards",
            "tokens": tokens, "foreign": foreign, **paths}


@pytest.fixture(scope="module")
def index_file(world):
    pipe = world["pipe"]
    return save_index(build_index(pipe, read_source(pipe, world["pictures"])),
                      world["root"] / "pictures.index")


def run(capsys, *argv) -> tuple[int, str, str]:
    args = [a for x in argv for a in (shlex.split(x) if isinstance(x, str) else [str(x)])]
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_an_indexed_image_finds_itself_first(world, index_file):
    pipe, index = world["pipe"], load_index(index_file)
    assert len(index.codes.flatten(1).unique(dim=0)) == len(CAPTIONS)  # distinct codes
    for i in range(len(CAPTIONS)):
        hits = search(pipe, index, read_image(world["pictures"] / f"p{i}.png"), k=3).images
        assert hits.keys[0] == f"p{i}.png"
        assert hits.scores[0] == pytest.approx(1.0, abs=1e-5) and hits.scores[1] < 1 - 1e-4
        assert torch.equal(hits.codes[0], index.codes[i])


def test_scores_are_the_embeddings_dot_products(world, index_file):
    pipe, index = world["pipe"], load_index(index_file)
    codes = torch.stack([pipe.encode(_picture(i)) for i in range(len(CAPTIONS))])
    images = embed_images(pipe.model, pipe.tokenizer, codes)  # (N, E)
    text = embed_texts(pipe.model, pipe.tokenizer, [pipe.encode_prompt("a red circle")])[0]
    expected = images @ text  # (N,)
    hits = search(pipe, index, "a red circle", k=len(CAPTIONS)).images
    assert torch.allclose(hits.scores, expected[hits.rows], atol=1e-5)
    assert hits.rows.tolist() == expected.argsort(descending=True).tolist()
    assert hits.captions[hits.keys.index("p5.png")] is None  # no .txt next to it
    # an image query also ranks the distinct captions it was indexed with
    found = search(pipe, index, _picture(2), k=10)
    assert sorted(found.captions.captions) == sorted(CAPTIONS[:5])
    caps = embed_texts(pipe.model, pipe.tokenizer, pipe.tokenizer.encode_texts(
        found.captions.captions))
    assert torch.allclose(found.captions.scores, caps @ images[2], atol=1e-5)


@pytest.mark.parametrize("source", ["tokens", "shards"])
def test_shard_folders_index_the_same_codes_as_the_pictures(world, source, tmp_path, capsys):
    out = tmp_path / "x.index"
    rc, stdout, err = run(capsys, f"index {world[source]} -o {out} --model {world['model']} "
                                  "--split all --limit 5 --threads 1")
    assert rc == 0, err
    assert "indexed 5 images and 5 distinct captions" in stdout
    index = load_index(out)
    pictures = load_index(world["root"] / "pictures.index")
    assert torch.equal(index.codes, pictures.codes[:5])
    assert torch.allclose(index.image_emb, pictures.image_emb[:5], atol=1e-5)
    assert [index.caption(i) for i in range(5)] == CAPTIONS[:5]
    rc, _, err = run(capsys, f"index {world[source]} -o {out} --model {world['model']} "
                             "--split test")
    assert rc == 0, err
    assert len(load_index(out)) == 2


def test_search_prints_a_table_and_a_contact_sheet_of_k_tiles(world, index_file, tmp_path,
                                                              capsys):
    sheet = tmp_path / "hits.png"
    rc, out, err = run(capsys, f"search 'a red circle' --index {index_file} -k 4 -o {sheet}")
    assert rc == 0, err  # the model: the folder the index records
    rows = out.splitlines()
    assert rows[0].split() == ["rank", "score", "key", "caption"]
    assert [r.split()[0] for r in rows[1:5]] == ["1", "2", "3", "4"]
    pixels = np.asarray(Image.open(sheet).convert("RGB"))
    gray = (pixels == 128).all(axis=(0, 2))  # the padding columns between tiles
    runs = np.flatnonzero(np.diff(np.concatenate([[0], gray.astype(int), [0]])) == 1)
    assert len(runs) == 4 + 1
    rc, out, err = run(capsys, f"search --image {world['pictures']}/p3.png --index "
                               f"{index_file} --model {world['model']} -k 2")
    assert rc == 0, err
    assert out.splitlines()[1].split()[2] == "p3.png" and "nearest captions" in out


def _bad(world, index_file, tmp_path) -> dict[str, str]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.index").write_bytes(b"not an index")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"\x89PNG truncated")
    (tmp_path / "bad.png").write_text("no")
    i, m = index_file, world["model"]
    return {
        "no head": f"index {world['pictures']} -o {tmp_path}/x --model {world['plain']}",
        "no head (search)": f"search 'a red circle' --index {i} --model {world['plain']}",
        "another model": f"search 'a red circle' --index {i} --model {world['other']}",
        "corrupt index": f"search 'a red circle' --index {tmp_path}/corrupt.index",
        "missing index": f"search 'a red circle' --index {tmp_path}/missing.index",
        "empty text": f"search '  ' --index {i}",
        "no query": f"search --index {i}",
        "unreadable image": f"search --image {tmp_path}/bad.png --index {i}",
        "k < 1": f"search 'a red circle' --index {i} -k 0",
        "no images": f"index {tmp_path}/empty -o {tmp_path}/x --model {m}",
        "missing source": f"index {tmp_path}/missing -o {tmp_path}/x --model {m}",
        "unreadable file": f"index {tmp_path}/broken -o {tmp_path}/x --model {m}",
        "foreign tokens": f"index {world['foreign']} -o {tmp_path}/x --model {m}",
        "limit < 1": f"index {world['pictures']} -o {tmp_path}/x --model {m} --limit 0",
    }


WHAT = {"no head": "has no contrastive head; train one with --contrastive-weight",
        "no head (search)": "has no contrastive head", "another model": "another model",
        "corrupt index": "not a readable cogview index", "missing index": "no such index",
        "empty text": "empty", "no query": "TEXT or --image", "unreadable image": "bad.png",
        "k < 1": "-k must be >= 1", "no images": "no images to index",
        "missing source": "no such folder", "unreadable file": "a.png",
        "foreign tokens": "another tokenizer", "limit < 1": "--limit"}


@pytest.mark.parametrize("case", list(WHAT))
def test_bad_input_is_one_line_and_exit_2(case, world, index_file, tmp_path, capsys):
    rc, _, err = run(capsys, _bad(world, index_file, tmp_path)[case])
    lines = [line for line in err.splitlines() if line.strip()]
    # one line, after the progress bar of the indexing it stopped (an unreadable file)
    assert rc == 2 and lines[-1].startswith("error:") and "Traceback" not in err, err
    assert case == "unreadable file" or len(lines) == 1, err
    assert WHAT[case] in lines[-1]
    assert not (tmp_path / "x").exists()
