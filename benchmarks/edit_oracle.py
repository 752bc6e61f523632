"""Where edits fail: the candidates or their reranking.

For the edits of `cogview eval` (`cogview.bench.evaluate.edit_cases`: one object of a held-out
two-object scene erased, a different one asked for in its place), draw the candidates that
`cogview inpaint` reranks, judge every one with the detector, and report how often the
reranked pick is right, how often any candidate is (what a perfect reranker would give) and
how often a candidate is; then what the wrong picks drew instead, and the rates split by a
few properties of the case.

    python benchmarks/edit_oracle.py --style scene --n 150 --threads 1

`data/shapes` comes from `cogview data shapes --out data/shapes --n 20000 --seed 0`, the eval's
held-out scenes; to choose a setting by this script, use scenes the eval does not score
(`cogview data shapes --out data/shapes-val --n 2000 --seed 7 --test-fraction 0.5`, then
`--data data/shapes-val`).
"""

from __future__ import annotations

import argparse
import collections
import warnings
from typing import Any

import numpy as np
import torch


def _wrong(found: dict[str, Any], new: dict[str, Any], kept: dict[str, Any],
           erased: dict[str, Any]) -> str:
    """What a wrong composite drew in place of the new object."""
    others = [o for o in found.get("objects", [])
              if (o["colour"], o["shape"]) != (kept["colour"], kept["shape"])]
    if not others:
        return "no new object"
    drawn = others[0]

    def whose(key: str) -> str:
        if drawn[key] == kept[key]:
            return f"{key} of the kept object"
        if drawn[key] == erased[key]:
            return f"{key} of the erased object"
        return f"another {key}"

    wrong = [whose(k) for k in ("shape", "colour") if drawn[k] != new[k]]
    if drawn.get("size") != new["size"]:
        wrong.append("size")
    return ", ".join(wrong) or "position or an extra object"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapes", help="CogLM folder (default: the shipped one)")
    ap.add_argument("--data", default="data/shapes", help="held-out shapes shards")
    ap.add_argument("--style", default="scene", choices=("region", "scene", "blob"))
    ap.add_argument("--n", type=int, default=150, help="edits (held-out two-object scenes)")
    ap.add_argument("--candidates", type=int, default=16, help="candidates per edit")
    ap.add_argument("--temperature", type=float, default=None,
                    help="sampling temperature (default: the model's sampling.json)")
    ap.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cogview.api import CogView
    from cogview.bench import detect, shapes
    from cogview.bench.evaluate import edit_cases
    from train.data.loader import load_held_out

    pipe = CogView.from_pretrained(args.model)
    held = load_held_out(args.data, pipe.image_size, 3 * args.n, "test")
    two = [i for i in held.with_attributes() if len(held.attributes[i]["objects"]) == 2]
    cases = edit_cases(held, two[: args.n], int(held.images.shape[-1]), pipe.grid, args.style, 0)
    g = torch.Generator().manual_seed(0)
    sampling = {k: v for k, v in (("temperature", args.temperature), ("cfg_scale", args.cfg))
                if v is not None}
    rows, failures = [], collections.Counter()
    for case in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # over-long prompts are cut to the model's length
            out = pipe.inpaint(case.image, case.pixel_mask, case.prompt, args.candidates,
                               candidates=args.candidates, generator=g, **sampling)  # best first
        found = [detect.detections_to_json(detect.detect(a)) for a in out.arrays]
        right = [bool(shapes.compare(case.expected, f)["all"]) for f in found]
        new, kept = case.expected["objects"]
        if not right[0]:
            failures[_wrong(found[0], new, kept, case.erased)] += 1
        rows.append(({
            "the new object has the kept one's shape": new["shape"] == kept["shape"],
            "the new object has the kept one's colour": new["colour"] == kept["colour"],
            "a small object asked into a large object's mask":
                new["size"] == "small" and case.erased["size"] == "large",
        }, right))

    def rates(sel: list[Any]) -> str:
        pick = np.mean([r[0] for _, r in sel])
        anyone = np.mean([any(r) for _, r in sel])
        each = np.mean([np.mean(r) for _, r in sel])
        return (f"reranked pick {pick:.1%}, any candidate {anyone:.1%}, "
                f"a candidate {each:.1%} (n={len(sel)})")

    how = "".join(f", {k} {v}" for k, v in sampling.items())
    print(f"{args.model}, {args.style} edits, best of {args.candidates}{how}: {rates(rows)}")
    print("wrong picks: " + "; ".join(f"{k} {v}" for k, v in failures.most_common()))
    for prop in rows[0][0]:
        for value in (True, False):
            sel = [r for r in rows if r[0][prop] == value]
            if sel:
                print(f"  {prop}: {'yes' if value else 'no'}: {rates(sel)}")


if __name__ == "__main__":
    main()
