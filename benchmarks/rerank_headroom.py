"""Where two-object prompts are lost: in drawing or in reranking.

For each prompt of `cogview eval`'s two-object set (in the training wording, or paraphrased)
the model draws R candidates, as `CogView.generate` does before reranking; the detector scores
every candidate, and each reranker's pick among them:

    .venv/bin/python benchmarks/rerank_headroom.py --model shapes --set paraphrased
    .venv/bin/python benchmarks/rerank_headroom.py --model RUN --set template --json OUT
    .venv/bin/python benchmarks/rerank_headroom.py --model shapes --set unseen
    .venv/bin/python benchmarks/rerank_headroom.py --model shapes --set paraphrased --cfg 1.5

Reported per group of prompts (the paraphrase's template, or the relation asked for), for the
relation and for everything right: the share of candidates right ("drawn"), the share of
prompts with at least one right candidate ("any": what a perfect reranker would keep) and
the share of prompts whose pick is right, by caption, contrastive and both. A reranker below
"drawn" picks worse than chance. "drawn" and "any" are of the first R candidates; the picks
are `CogView.best_of`'s, with the further rounds of the model's `rerank_floor` where it has
one (each pick then among up to `rerank_max`). The candidates are those of `cogview eval`
with the same seed only when the two-object set is drawn first; the shares are of the same
kind.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

# Wordings that no part of the toolkit uses and that chose nothing: written after the shipped
# model's last stage was trained, to check that the paraphrase set of `cogview eval`, whose
# failures guided the grammar and the augmentation wordings, has not become a set the
# toolkit was fitted to (`--set unseen`; the relation words are the domain's).
UNSEEN_TWO = (
    "i would like {d1} {rel} {d2}",
    "could you paint {d1} {rel} {d2}?",
    "there's {d2}; put {d1} {rel} it",
    "{d1} positioned {rel} {d2}",
    "picture {d1} {rel} {d2} on a black background",
    "{d2} appears {inverse} {d1}",
)


def unseen_prompts(n: int) -> list[tuple[str, dict[str, Any], str]]:
    """`shapes.eval_prompts(2, n)`'s requests in the UNSEEN_TWO wordings, taken in turn:
    (prompt, attributes, wording)."""
    from cogview.bench import shapes

    out = []
    for i, (_, a) in enumerate(shapes.eval_prompts(2, n)):
        wording = UNSEEN_TWO[i % len(UNSEEN_TWO)]
        first, second = (shapes.describe_object(o) for o in a["objects"])
        text = wording.format(d1=first, d2=second, rel=shapes.relation_phrase(a["relation"]),
                              inverse=shapes.relation_phrase(
                                  shapes.INVERSE_RELATION[a["relation"]]))
        out.append((text, a, wording))
    return out


def two_object_set(which: str, n: int) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """The `n` two-object prompts of a set ("template", "paraphrased" or "unseen") with the
    attributes each asks for, and each prompt's group for the table (its wording, or in the
    training wording the relation asked for)."""
    from cogview.bench import shapes

    if which == "paraphrased":
        prompts = shapes.paraphrase_prompts(2, n)
        return prompts, [shapes.paraphrase_wording(2, i) for i in range(len(prompts))]
    if which == "unseen":
        worded = unseen_prompts(n)
        return [(p, a) for p, a, _ in worded], [w for _, _, w in worded]
    prompts = shapes.eval_prompts(2, n)
    return prompts, [a["relation"] for _, a in prompts]


def headroom(model: str, which: str, n: int, rerank: int, seed: int,
             rerankers: Sequence[str], cfg: float | None = None) -> dict[str, Any]:
    import torch

    from cogview.api import CogView
    from cogview.bench import detect

    pipe = CogView.from_pretrained(model)
    prompts, groups = two_object_set(which, n)
    drawn = pipe.candidates([p for p, _ in prompts], rerank, generator=pipe.generator(seed),
                            cfg_scale=cfg)  # None: the model's

    def scored(codes: torch.Tensor, attrs: Sequence[dict[str, Any]]) -> list[dict[str, bool]]:
        return [detect.score(img, a) for a, img in zip(attrs, pipe.decode(codes), strict=True)]

    attrs = [a for _, a in prompts]
    every = scored(drawn.codes, [a for a in attrs for _ in range(rerank)])
    picked = {by: scored(pipe.best_of(drawn, rerank, by), attrs) for by in rerankers}
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for group in [*dict.fromkeys(groups), "every prompt"]:  # the table's order
        rows[group]
    for i, group in enumerate(groups):
        own = every[i * rerank:(i + 1) * rerank]
        for key in ("relation", "all"):
            for row in (rows[group], rows["every prompt"]):
                row[f"{key} drawn"].append(sum(c[key] for c in own) / rerank)
                row[f"{key} any"].append(float(any(c[key] for c in own)))
                for by in rerankers:
                    row[f"{key} {by}"].append(float(picked[by][i][key]))
    return {"model": model, "set": which, "n": len(prompts), "rerank": rerank, "seed": seed,
            "cfg": cfg,
            "groups": {g: {k: round(sum(v) / len(v), 4) for k, v in r.items()} | {
                "n": len(next(iter(r.values())))} for g, r in rows.items()}}


def table(report: dict[str, Any]) -> str:
    groups = report["groups"]
    columns = [k for k in next(iter(groups.values())) if k != "n"]
    width = max(len(g) for g in groups)
    guided = f", guidance {report['cfg']:g}" if report.get("cfg") is not None else ""
    lines = [f"{report['model']}, {report['set']}, best of {report['rerank']}{guided}",
             f"{'':{width}}  {'n':>4}  " + "  ".join(f"{c:>{len(c)}}" for c in columns)]
    for g, r in groups.items():
        lines.append(f"{g:{width}}  {r['n']:>4}  " + "  ".join(f"{100 * r[c]:>{len(c) - 1}.1f}%"
                                                             for c in columns))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapes", help="model folder or shipped name")
    ap.add_argument("--set", dest="which", choices=("template", "paraphrased", "unseen"),
                    default="paraphrased", help="the two-object prompts' wording")
    ap.add_argument("--n", type=int, default=240, help="prompts (default: 240)")
    ap.add_argument("--rerank", type=int, default=16, help="candidates per prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rerank-by", default="caption,contrastive,both")
    ap.add_argument("--cfg", type=float, help="guidance scale (default: the model's)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    report = headroom(args.model, args.which, args.n, args.rerank, args.seed,
                      args.rerank_by.split(","), args.cfg)
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
