"""Retrieval with a CogLM's contrastive head: an index of images, searched by text or by image.

    from cogview import CogView
    from cogview.retrieval import build_index, read_source, save_index, load_index, search

    pipe = CogView.from_pretrained("runs/dev-con")        # a model with a contrastive head
    index = build_index(pipe, read_source(pipe, "tokens/", split="test"))
    save_index(index, "shapes.index")
    hits = search(pipe, load_index("shapes.index"), "a red circle", k=5).images
    hits.keys, hits.scores, pipe.decode(hits.codes)       # the 5 best, best first

A source is a token shard folder (`cogview encode`), an image data set folder (`cogview data`)
or a folder of image files (a `<name>.txt` next to `<name>.png` is its caption). An index is one
safetensors file:

    image_emb   float32 (N, E)   unit embeddings of the N images (`contrastive.embed_images`)
    codes       int32 (N, h, w)  their codes, so hits are drawn without the source files
    caption_of  int64 (N,)       each image's caption, a row of `text_emb` (-1: none known)
    text_emb    float32 (C, E)   unit embeddings of the C distinct captions (image -> text)

with the metadata "cogview_index": JSON of the format and version, the N keys, the C captions,
the source, the model's folder and its fingerprints (tokenizer, VQVAE, weights):
another model embeds into another space, so an index is searched only with its own model.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cogview.contrastive import embed_images, embed_texts, head_of
from cogview.errors import UserError

if TYPE_CHECKING:
    from cogview.api import CogView

FORMAT = "cogview-index"
VERSION = 1
META_KEY = "cogview_index"
SPLITS = ("train", "test", "all")
Progress = Callable[[int], None]  # called with the number of items each batch finished


class IndexMismatch(UserError):
    """The index was made with another model than the one searching it."""


@dataclass
class Items:
    """What an index is made of: images as codes, with their keys and captions."""

    codes: Tensor  # (N, h, w)
    keys: list[str]  # where each image came from: a sample key or a file path
    captions: list[str | None]  # None: not known
    source: str

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class Index:
    image_emb: Tensor  # float32 (N, E), unit rows
    codes: Tensor  # (N, h, w)
    keys: list[str]
    caption_of: Tensor  # int64 (N,): row of `captions` of each image, -1 for none
    captions: list[str]  # (C,) the distinct captions
    text_emb: Tensor  # float32 (C, E), unit rows
    meta: dict[str, Any]  # source, image_size, grid, model (fingerprints); path once loaded

    def __len__(self) -> int:
        return len(self.keys)

    def caption(self, row: int) -> str | None:
        c = int(self.caption_of[row])
        return self.captions[c] if c >= 0 else None


@dataclass
class ImageHits:
    """The k images of an index nearest to a query, best first."""

    rows: Tensor  # (k,) rows of the index
    scores: Tensor  # (k,) cosine similarity
    keys: list[str]
    captions: list[str | None]
    codes: Tensor  # (k, h, w), for `CogView.decode`


@dataclass
class CaptionHits:
    """The k captions of an index nearest to an image, best first."""

    scores: Tensor  # (k,) cosine similarity
    captions: list[str]


@dataclass
class SearchResult:
    images: ImageHits
    captions: CaptionHits | None  # for an image query only


# ---------------------------------------------------------------------------------------------
# the model an index belongs to


@functools.lru_cache(maxsize=16)
def _file_fingerprint(path: str, size: int, mtime_ns: int) -> str:
    from cogview.text_encoder import file_fingerprint

    return file_fingerprint(path)  # hashed once per file version, not once per search


def model_fingerprint(pipe: CogView) -> dict[str, str]:
    """Fingerprints of the tokenizer, the VQVAE and the weights file of `pipe`'s model."""
    from cogview.checkpoint import WEIGHTS_FILE

    weights = Path(pipe.meta["path"]) / WEIGHTS_FILE
    stat = weights.stat()
    return {"tokenizer": pipe.tokenizer.fingerprint,
            "vqvae": str(pipe.meta["vqvae_fingerprint"]),
            "weights": _file_fingerprint(str(weights), stat.st_size, stat.st_mtime_ns)}


def check_index(index: Index, pipe: CogView) -> None:
    """IndexMismatch unless `index` was made with `pipe`'s model."""
    made, now = index.meta.get("model", {}), model_fingerprint(pipe)
    for part in ("tokenizer", "vqvae", "weights"):
        if made.get(part) != now[part]:
            raise IndexMismatch(f"{index.meta.get('path', 'index')}: made with another model "
                                f"({part} {made.get(part)} vs {now[part]}); index it again "
                                "with this model")


# ---------------------------------------------------------------------------------------------
# sources


def _fits(pipe: CogView, arrays: list[np.ndarray]) -> Tensor:
    """Codes (B, h, w) of pictures already at the model's size."""
    from cogview.images import to_tensor

    with torch.inference_mode():
        return pipe.vqvae.encode(to_tensor(np.stack(arrays)).to(pipe.device)).cpu()


def _encoded(pipe: CogView, pictures: Iterator[tuple[str, Image.Image, str | None]],
             source: str, batch_size: int, progress: Progress | None) -> Items:
    """Items of (key, picture, caption) triples, encoded by the model's VQVAE in batches."""
    from cogview.images import fit

    codes, keys, captions = [], [], []
    while batch := list(itertools.islice(pictures, batch_size)):
        keys += [key for key, _, _ in batch]
        captions += [caption for _, _, caption in batch]
        codes.append(_fits(pipe, [fit(picture, pipe.image_size) for _, picture, _ in batch]))
        if progress:
            progress(len(batch))
    h, w = pipe.grid
    return Items(torch.cat(codes) if codes else torch.zeros(0, h, w, dtype=torch.long), keys,
                 captions, source)


def _splits(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return ("train", "test") if split == "all" else (split,)


def _token_items(pipe: CogView, folder: Path, split: str, limit: int | None) -> Items:
    from train.data.tokens import check_compatible, load_token_shards, read_info

    info = read_info(folder)
    check_compatible(info, pipe.tokenizer, str(pipe.meta["vqvae_fingerprint"]))
    size = pipe.image_size
    if size not in [int(s) for s in info["sizes"]]:
        raise UserError(f"{folder}: holds codes of {', '.join(map(str, info['sizes']))} px "
                        f"images; the model reads {size} px")
    codes, keys, captions = [], [], []
    for part in _splits(split):
        if (limit is not None and len(keys) >= limit) or not any(folder.glob(f"{part}-*.tar")):
            continue
        data = load_token_shards(folder, part)
        codes.append(data.codes[size])
        keys += data.keys
        captions += data.captions
    n = len(keys) if limit is None else min(limit, len(keys))
    h, w = pipe.grid
    all_codes = torch.cat(codes) if codes else torch.zeros(0, h, w, dtype=torch.long)
    return Items(all_codes[:n], keys[:n], list(captions[:n]), str(folder))


def _shard_pictures(folder: Path, split: str, limit: int | None
                    ) -> Iterator[tuple[str, Image.Image, str | None]]:
    from train.data.loader import iter_samples

    n = 0
    for part in _splits(split):
        if not any(folder.glob(f"{part}-*.tar")):
            continue
        for sample in iter_samples(folder, split=part):  # damaged samples: skipped, logged
            if limit is not None and n >= limit:
                return
            n += 1
            yield sample.key, sample.image, sample.caption


def image_files(folder: str | Path) -> list[Path]:
    """The image files under `folder` (any depth), in path order."""
    from train.data.shards import IMAGE_EXTENSIONS

    return sorted(p for p in Path(folder).rglob("*")
                  if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _file_pictures(folder: Path, limit: int | None
                   ) -> Iterator[tuple[str, Image.Image, str | None]]:
    """Every image file: an unreadable one stops the indexing (UserError naming it), so an
    index never silently lacks a file."""
    from cogview.images import read_image

    for path in image_files(folder)[:limit]:
        side = path.with_suffix(".txt")
        caption = side.read_text(encoding="utf-8", errors="replace") if side.is_file() else ""
        yield path.relative_to(folder).as_posix(), read_image(path), caption.strip() or None


def source_kind(source: str | Path) -> str:
    """"tokens" (a token shard folder), "shards" (an image data set folder of `cogview data`)
    or "files" (a folder of image files)."""
    from train.data.tokens import read_info

    folder = Path(source)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    if not any(any(folder.glob(f"{part}-*.tar")) for part in ("train", "test")):
        return "files"
    try:
        read_info(folder)  # only token shards have an info.json of their format
        return "tokens"
    except UserError:
        return "shards"


def read_source(pipe: CogView, source: str | Path, split: str = "all",
                limit: int | None = None, batch_size: int = 256,
                progress: Progress | None = None) -> Items:
    """The images of `source` as codes of `pipe`'s VQVAE at its image size, with their keys and
    captions: the first `limit` of `split` (train, test or all: train then test) of a shard
    folder, or of the image files of a folder. `progress` counts the images encoded (token
    shards are already codes). UserError for a source without images."""
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1, got {limit}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    folder = Path(source)
    kind = source_kind(folder)
    if kind == "tokens":
        items = _token_items(pipe, folder, split, limit)
    elif kind == "shards":
        items = _encoded(pipe, _shard_pictures(folder, split, limit), str(folder), batch_size,
                         progress)
    else:
        items = _encoded(pipe, _file_pictures(folder, limit), str(folder), batch_size, progress)
    if not len(items):
        raise UserError(f"{folder}: no images to index")
    return items


# ---------------------------------------------------------------------------------------------
# building, saving, loading


def build_index(pipe: CogView, items: Items, batch_size: int = 256,
                progress: Progress | None = None) -> Index:
    """Embed the images of `items` and their distinct captions with `pipe`'s contrastive head
    (NoContrastiveHead for a model without one); `progress` counts the images embedded."""
    model, tok = pipe.model, pipe.tokenizer
    head_of(model)
    if not len(items):
        raise UserError(f"{items.source}: no images to index")
    image_emb = []
    for i in range(0, len(items), batch_size):
        chunk = items.codes[i : i + batch_size]
        image_emb.append(embed_images(model, tok, chunk, batch_size).cpu())
        if progress:
            progress(len(chunk))
    # empty captions have nothing to embed: their images have no caption
    captions = list(dict.fromkeys(c for c in items.captions if c and c.strip()))
    row = {c: i for i, c in enumerate(captions)}
    caption_of = torch.tensor([row.get(c, -1) if c else -1 for c in items.captions])
    text_emb = (pipe.embed_texts(captions, batch_size).cpu()
                if captions else torch.zeros(0, image_emb[0].shape[1]))
    meta = {"source": items.source, "image_size": pipe.image_size, "grid": list(pipe.grid),
            "model": model_fingerprint(pipe), "model_path": str(pipe.meta["path"])}
    return Index(torch.cat(image_emb), items.codes.clone(), list(items.keys), caption_of,
                 captions, text_emb, meta)


def save_index(index: Index, path: str | Path) -> Path:
    """Write `index` as one safetensors file, atomically."""
    from safetensors.torch import save_file

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"image_emb": index.image_emb.float().contiguous(),
               "codes": index.codes.to(torch.int32).contiguous(),
               "caption_of": index.caption_of.long().contiguous(),
               "text_emb": index.text_emb.float().contiguous()}
    about = {k: v for k, v in index.meta.items() if k != "path"}
    meta = {"format": FORMAT, "version": VERSION, **about, "keys": index.keys,
            "captions": index.captions}
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)})
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def load_index(path: str | Path) -> Index:
    """An index written by `save_index`; UserError (one line) for a missing or corrupt file."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such index file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
            t = {name: f.get_tensor(name) for name in f.keys()}
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"format {meta.get('format')} {meta.get('version')}")
        keys, captions = list(meta.pop("keys")), list(meta.pop("captions"))
        index = Index(t["image_emb"], t["codes"].long(), keys, t["caption_of"], captions,
                      t["text_emb"], {**meta, "path": str(p)})
        n, c = len(keys), len(captions)
        if (index.image_emb.shape[0], index.codes.shape[0], index.caption_of.shape[0]) != \
                (n, n, n) or index.text_emb.shape[0] != c or bool((index.caption_of >= c).any()):
            raise ValueError("its parts disagree in length")
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, AttributeError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{p}: not a readable cogview index ({why})") from None
    return index


# ---------------------------------------------------------------------------------------------
# searching


def embed_query(pipe: CogView, query: str | Image.Image | np.ndarray) -> Tensor:
    """The unit embedding (E,) of a text or a picture (brought to the model's size)."""
    if isinstance(query, str):
        if not query.strip():
            raise UserError("the query text is empty")
        cond = pipe.conditions([query], [pipe.encode_prompt(query)])
        try:
            return embed_texts(pipe.model, pipe.tokenizer, cond)[0].cpu()
        except ValueError as e:  # no text ids to pool
            raise UserError(f"the query text has no embedding ({e})") from None
    codes = pipe.encode(query)  # (h, w)
    return embed_images(pipe.model, pipe.tokenizer, codes[None])[0].cpu()


def search(pipe: CogView, index: Index, query: str | Image.Image | np.ndarray, k: int = 5
           ) -> SearchResult:
    """The k images of `index` nearest to a text or a picture by cosine similarity, best
    first; for a picture also its k nearest captions. IndexMismatch for an index made with
    another model; fewer than k hits when the index holds fewer."""
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    check_index(index, pipe)
    q = embed_query(pipe, query)  # (E,)
    scores, rows = (index.image_emb @ q).topk(min(k, len(index)))  # (k,)
    images = ImageHits(rows, scores, [index.keys[r] for r in rows.tolist()],
                       [index.caption(r) for r in rows.tolist()], index.codes[rows])
    if isinstance(query, str):
        return SearchResult(images, None)
    scores, rows = (index.text_emb @ q).topk(min(k, len(index.captions)))
    return SearchResult(images, CaptionHits(scores, [index.captions[r] for r in rows.tolist()]))
