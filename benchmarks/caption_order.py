"""Which object a two-object caption names first, and whether its relation is then right.

    .venv/bin/python benchmarks/caption_order.py [--model DIR] [--data data/shapes] [--n 200]

Captions the two-object scenes among the first `--n` held-out images greedily (as `cogview
eval` does) and splits them by the object named first: the one that comes first in reading
order (top to bottom, then left to right: the first the image codes reach) or the other. A
model that states the relation of the reading-order-first object to the other, whichever it
names first, is right on the first group and wrong on most of the second. Captions without a
relation (each object's position instead, or one object only) are counted on their own, with
their all-correct rate.

With `--candidates K` it also asks whether reranking captions would help: for each scene the
greedy caption and K captions sampled at temperature 1, and how often one of them is
all-correct (the oracle), against the one that the model's own caption likelihood picks
(mean log p(caption | image)) and the one that its image likelihood picks (mean log
p(image codes | caption), text-to-image, teacher-forced).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from cogview import masks
from cogview.api import CogView
from cogview.bench import shapes
from cogview.bench.evaluate import caption_score
from cogview.pretrained import encode_images
from cogview.sampling import (
    caption_logprob,
    generate_captions,
    target_logprob,
)
from train.data.loader import load_held_out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="CogLM folder (default: the shipped one)")
    p.add_argument("--data", default="data/shapes", help="shapes shards with a test split")
    p.add_argument("--n", type=int, default=200, help="held-out images to look at")
    p.add_argument("--candidates", type=int, default=0, metavar="K",
                   help="also rerank the greedy caption and K sampled ones (default 0: off)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    pipe = CogView.from_pretrained(args.model)
    tok = pipe.tokenizer
    held = load_held_out(args.data, pipe.image_size, 2 * args.n + 50, "test")
    idx = [i for i in held.with_attributes()[: args.n] if len(held.attributes[i]["objects"]) == 2]
    codes = encode_images(pipe.vqvae, held.images[idx])
    greedy = pipe.sampling_config(temperature=0.0)
    sampled = pipe.sampling_config(temperature=1.0)
    generator = torch.Generator().manual_seed(0)
    counts: Counter[tuple[str, bool]] = Counter()
    picks: Counter[str] = Counter()
    for k, i in enumerate(idx):
        truth = held.attributes[i]
        ids = generate_captions(pipe.model, tok, codes[k], greedy, None)[0]
        text = tok.decode_text(ids)
        stated = shapes.parse_caption(text)
        score = caption_score(truth, stated)
        if args.candidates:
            cands = [ids] + generate_captions(
                pipe.model, tok, codes[k], sampled, generator, n=args.candidates
            )
            right = [caption_score(truth, shapes.parse_caption(tok.decode_text(c)))["all"]
                     for c in cands]
            by_caption = caption_logprob(
                pipe.model, tok, codes[k].expand(len(cands), -1, -1), cands
            )
            by_image = target_logprob(  # mean log p(image codes | caption)
                pipe.model, [masks.text_to_image(tok, c, codes[k]) for c in cands], tok.pad_id
            )
            picks["greedy"] += right[0]
            picks["oracle"] += any(right)
            picks["caption likelihood"] += right[int(by_caption.argmax())]
            picks["image likelihood"] += right[int(by_image.argmax())]
        if stated["relation"] is None:
            counts[("no relation stated", score["all"])] += 1
            continue
        first = min(truth["objects"], key=lambda o: (o["row"], o["col"]))
        named = stated["objects"][0]
        group = (
            "reading-order first named first"
            if (named.get("colour"), named.get("shape")) == (first["colour"], first["shape"])
            else "the other named first"
        )
        counts[(group, score["relation"])] += 1

    rows = {}
    for group in ("reading-order first named first", "the other named first",
                  "no relation stated"):
        right, wrong = counts[(group, True)], counts[(group, False)]
        n = right + wrong
        rows[group] = {"n": n, "right": right / n if n else None}
        pct = f"{100 * right / n:.1f}%" if n else "-"
        what = "all correct" if group.startswith("no relation") else "relation right"
        print(f"{group:34s} {n:4d} captions, {what} {pct}")
    for name, n_right in picks.items():
        print(f"two-object captions all correct, {name}: {100 * n_right / len(idx):.1f}%")
    rows["reranking"] = {name: n_right / len(idx) for name, n_right in picks.items()}
    print(json.dumps({"model": pipe.meta.get("path"), "two_object_images": len(idx), **rows}))


if __name__ == "__main__":
    main()
