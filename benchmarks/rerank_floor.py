"""Choose a model's `rerank_floor`: how often reranking's pick is right, and at what cost in
candidates, when a picture whose best candidate scores below a floor draws more.

For each prompt of a set the model draws `--most` candidates (as `CogView.candidates` does);
each candidate's caption score (mean log p(prompt | image) per token, the better of the prompt
and its restatements), contrastive cosine and detector verdict are kept. Then, for each floor,
the rounds of `CogView.best_of` are replayed on them: the best of the first `--rerank` by the
model's reranker, and while its caption score is below the floor and there is room, the best
of `--rerank` more, up to a most of candidates (`rerank_max`: every multiple of `--rerank`
from two rounds to `--most`). Reported per floor and most: the share of prompts whose pick is
right, and the candidates drawn per prompt on average.

    .venv/bin/python benchmarks/rerank_floor.py --model shapes --set val      # calibration
    .venv/bin/python benchmarks/rerank_floor.py --model shapes --set val-reworded --most 64
    .venv/bin/python benchmarks/rerank_floor.py --model shapes --set paraphrased --json OUT

`--set val` (the default) takes the captions of held-out scenes (`--data`, its train split;
made by `cogview data shapes --out data/shapes-val --n 2000 --seed 7 --test-fraction 0.5`),
worded as in training and scored against what each caption states: a set that is neither the
eval's prompts nor its wordings, on which to choose the floor. `--set val-reworded` takes
the same scenes' captions worded anew as training's caption augmentation words them
(`cogview train --rephrase`, `shapes.rephrase`; none of the paraphrase or unseen wordings),
each scored against what its wording states: the calibration set for reworded prompts.
`template`, `paraphrased` and `unseen` are the two-object sets of
benchmarks/rerank_headroom.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

FLOORS = [round(-1.0 + 0.05 * i, 2) for i in range(17)]  # -1.00 ... -0.20


def val_prompts(data: str, n: int, reworded: bool = False,
                seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """The first `n` captions of the train split of a shapes folder, or with `reworded` each
    worded anew by training's caption augmentation (`shapes.rephrase`, drawn from `seed`),
    with what each states."""
    from cogview.bench import shapes
    from train.data.loader import load_held_out

    held = load_held_out(data, 32, n, split="train", progress=False)
    texts = held.captions
    if reworded:
        rng = np.random.default_rng(seed)
        texts = [(shapes.rephrase(a, rng) if a is not None else None) or c
                 for c, a in zip(held.captions, held.attributes, strict=True)]
    return [(t, shapes.parse_caption(t)) for t in texts]


def prompt_set(which: str, n: int, data: str, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    if which in ("val", "val-reworded"):
        return val_prompts(data, n, reworded=which == "val-reworded", seed=seed)
    sys.path.insert(0, str(Path(__file__).parent))
    from rerank_headroom import two_object_set

    return two_object_set(which, n)[0]


def candidate_scores(pipe: Any, drawn: Any, most: int, by: str) -> Any:
    """Every candidate's score (P * most,) by one reranker, as `CogView.best_of` scores them."""
    from cogview.sampling import best_candidates

    return best_candidates(pipe.model, pipe.tokenizer, drawn.codes, drawn.ids, most,
                           batch_size=drawn.batch_size, restate=pipe.restate, by=by,
                           conditions=drawn.conditions)[1].flatten()


def draw(model: str, prompts: list[tuple[str, dict[str, Any]]], most: int, seed: int,
         chunk: int = 20) -> list[dict[str, Any]]:
    """Per prompt: every candidate's caption score, cosine (NaN without a head) and verdict."""
    import torch
    from tqdm import tqdm

    from cogview.api import CogView
    from cogview.bench import detect
    from cogview.contrastive import has_head

    pipe = CogView.from_pretrained(model)
    rows = []
    for start in tqdm(range(0, len(prompts), chunk), desc="prompts", unit="chunk",
                      file=sys.stderr):
        part = prompts[start:start + chunk]
        drawn = pipe.candidates([p for p, _ in part], most,
                                generator=pipe.generator(seed * 100_000 + start))
        caption = candidate_scores(pipe, drawn, most, "caption")
        cos = (candidate_scores(pipe, drawn, most, "contrastive") if has_head(pipe.model)
               else torch.full_like(caption, float("nan")))
        images = pipe.decode(drawn.codes)
        for j, (prompt, attrs) in enumerate(part):
            own = slice(j * most, (j + 1) * most)
            rows.append({"prompt": prompt, "caption": caption[own].tolist(),
                         "cos": cos[own].tolist(),
                         "right": [bool(detect.score(img, attrs)["all"])
                                   for img in images[own]]})
    return rows


def pick(row: dict[str, Any], n: int, by: str) -> int:
    """The index of reranking's pick among the first `n` candidates of a prompt."""
    import torch

    from cogview.sampling import standardised

    caption, cos = (torch.tensor([row[k][:n]]) for k in ("caption", "cos"))
    score = {"caption": caption, "contrastive": cos,
             "both": standardised(caption) + standardised(cos)}[by]
    return int(score.argmax())


def replay(rows: list[dict[str, Any]], floor: float | None, rerank: int, most: int,
           by: str) -> tuple[float, float]:
    """(share of prompts whose pick is right, mean candidates drawn) with `floor`."""
    right, drawn = [], []
    for row in rows:
        n = rerank
        i = pick(row, n, by)
        while floor is not None and row["caption"][i] < floor and n + rerank <= most:
            n += rerank
            i = pick(row, n, by)
        right.append(row["right"][i])
        drawn.append(n)
    return float(np.mean(right)), float(np.mean(drawn))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapes", help="model folder or shipped name")
    ap.add_argument("--set", dest="which", default="val",
                    choices=("val", "val-reworded", "template", "paraphrased", "unseen"))
    ap.add_argument("--data", default="data/shapes-val", help="shards of --set val")
    ap.add_argument("--n", type=int, default=360, help="prompts (default: 360)")
    ap.add_argument("--rerank", type=int, default=16, help="candidates of the first round")
    ap.add_argument("--most", type=int, default=32, help="most candidates per prompt")
    ap.add_argument("--rerank-by", default="both", choices=("caption", "contrastive", "both"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="write the candidates' scores and the table here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from cogview.errors import UserError

    try:
        prompts = prompt_set(args.which, args.n, args.data, args.seed)
    except UserError as e:  # no shards, or a corrupt one
        sys.exit(f"error: {e}")
    rows = draw(args.model, prompts, args.most, args.seed)
    maxes = list(range(2 * args.rerank, args.most + 1, args.rerank)) or [args.most]
    floors = {"none": None} | {f"{f:.2f}": f for f in FLOORS}
    table = {str(m): {name: replay(rows, f, args.rerank, m, args.rerank_by)
                      for name, f in floors.items()} for m in maxes}
    print(f"{args.model}, {args.which} ({len(rows)} prompts), best of {args.rerank} by "
          f"{args.rerank_by}, up to a most of candidates below the floor: right / candidates")
    print(f"{'floor':>6}" + "".join(f"  {'most ' + str(m):>14}" for m in maxes))
    for name in floors:
        print(f"{name:>6}" + "".join(f"  {100 * table[str(m)][name][0]:5.1f}% "
                                     f"{table[str(m)][name][1]:6.1f}" for m in maxes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "set": args.which, "rerank": args.rerank,
                       "most": args.most, "rerank_by": args.rerank_by, "seed": args.seed,
                       "table": table, "prompts": rows}, f)


if __name__ == "__main__":
    main()
