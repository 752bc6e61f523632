"""Text-to-image accuracy of one CogLM under several sampling settings, side by side.

    .venv/bin/python benchmarks/sampling_quality.py [--model DIR] [--n-prompts 240] [--threads 1]

Every setting draws one image for each of the evaluation's fixed prompts (one object, and two
objects with a relation; `cogview.bench.shapes.eval_prompts`) from the same seed, and the project's
detector scores colour, shape, size, position (and relation) against the prompt, as
`cogview eval` does. Settings (each one a `cogview generate` flag set):

- plain sampling (temperature 1), lower temperatures, top-k;
- classifier-free guidance at scales 1.5 and 3;
- cluster sampling (CogView2);
- self-reranking: the best of 4 (or 16) candidates by the model's own log p(prompt | image).

The table goes to stdout as markdown, the full reports to --json. Settings given in the
model's sampling.json are not applied: each row states every value it uses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from cogview.api import CogView
from cogview.bench.evaluate import EvalConfig, run_eval
from cogview.sampling import SamplingConfig

# name -> (SamplingConfig fields, candidates per image for self-reranking)
SETTINGS: dict[str, tuple[dict[str, Any], int]] = {
    "T=1": ({}, 1),
    "T=0.7": ({"temperature": 0.7}, 1),
    "T=0.4": ({"temperature": 0.4}, 1),
    "top-k 20": ({"top_k": 20}, 1),
    "cfg 1.5": ({"cfg_scale": 1.5}, 1),
    "cfg 3": ({"cfg_scale": 3.0}, 1),
    "cluster": ({"cluster": True}, 1),
    "rerank 4": ({}, 4),
    "T=0.7, rerank 4": ({"temperature": 0.7}, 4),
    "T=0.7, rerank 16": ({"temperature": 0.7}, 16),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="CogLM folder (default: the shipped one)")
    p.add_argument("--n-prompts", type=int, default=240, help="prompts per prompt set")
    p.add_argument("--only", nargs="*", help="run only these settings (names as in the table)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="out/benchmarks/sampling_quality.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = CogView.from_pretrained(args.model)
    names = args.only or list(SETTINGS)
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; choose from {list(SETTINGS)}")

    print(f"model: {pipe.meta['path']} (step {pipe.meta['step']}), "
          f"{args.n_prompts} prompts per set, seed {args.seed}\n")
    print("| setting | 1 object: all | colour | shape | size | position "
          "| 2 objects: all | relation | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    reports = {}
    for name in names:
        fields, rerank = SETTINGS[name]
        sampling = SamplingConfig(**fields)
        config = EvalConfig(n_prompts=args.n_prompts, rerank=rerank, n_captions=0, n_inpaint=0,
                            n_edit=0, n_fashion_per_class=0, n_loss=0, seed=args.seed)
        t0 = time.perf_counter()
        report = run_eval(pipe, None, config, sampling)
        seconds = time.perf_counter() - t0
        reports[name] = report
        one = report["t2i"]["one_object"]["accuracy"]
        two = report["t2i"]["two_objects"]["accuracy"]
        cells = [one["all"], one["colour"], one["shape"], one["size"], one["position"],
                 two["all"], two.get("relation", float("nan"))]
        print(f"| {name} | " + " | ".join(f"{100 * c:.1f}%" for c in cells)
              + f" | {seconds:.0f} |", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(reports, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
