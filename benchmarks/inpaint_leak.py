"""How much of an erased object the inpainting context gives away, before and after blanking.

For two-object held-out scenes with one object's region masked (the cells of `cogview eval`'s
edit benchmark), it reports
- kept cells whose code changes when the masked cells are blanked before encoding: the cells
  whose codes, taken from the whole image, saw the erased object;
- how often a model redraws the erased object (every attribute right) when inpainting with an
  empty prompt, from the whole image's codes (the leaking context) and from the blanked one.

    python benchmarks/inpaint_leak.py --data data/shapes --n 300 [--model DIR] --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from cogview.cli.evaluate import _load_held_out
from cogview.cli.sample import load_model, sampling_config
from cogview.evaluate import Progress, _inpaint_cases, edit_cases, encode_images, resize_cells
from cogview.images import to_tensor
from cogview.inpainting import context_codes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="CogLM folder (default: the shipped shapes model)")
    p.add_argument("--data", default="data/shapes", help="shapes shards (test split)")
    p.add_argument("--n", type=int, default=300, help="two-object scenes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ns = argparse.Namespace(model=args.model, device="cpu", dtype="float32", temperature=None,
                            top_k=None, top_p=None, batch_size=None, cfg=None, cluster=None,
                            n_clusters=None, top_clusters=None, text_attention_bias=None)
    pipe = load_model(ns)
    held = _load_held_out(args.data, pipe.image_size, 3 * args.n, "test")
    two = [i for i in held.with_attributes() if len(held.attributes[i]["objects"]) == 2]
    two = two[: args.n]
    size = int(held.images.shape[-1])
    cases = edit_cases(held, two, size, pipe.grid, "region", seed=0)

    changed = kept = 0
    for case in cases:
        cells = resize_cells(case.pixel_mask, pipe.grid)
        whole = encode_images(pipe.vqvae, torch.from_numpy(case.image).permute(2, 0, 1)[None])[0]
        blank = context_codes(pipe.vqvae, to_tensor(case.image), cells[None])[0]
        changed += int(((whole != blank) & ~cells).sum())
        kept += int((~cells).sum())

    sampling = sampling_config(ns, pipe.sampling)
    unasked = [dataclasses.replace(c, prompt="", region=c.erased) for c in cases]
    redrawn = {}
    for name, leaky in (("whole-image codes", True), ("blanked codes", False)):
        g = torch.Generator().manual_seed(0)
        out = _inpaint_cases(pipe, unasked, sampling, g, clusters=None,
                             update=Progress().start(len(unasked), name), rerank=1, leaky=leaky)
        redrawn[name] = out["object_accuracy"]["all"]
    report = {
        "model": pipe.meta.get("path"),
        "scenes": len(cases),
        "kept_cells_that_saw_the_erased_object": changed / max(kept, 1),
        "erased_object_redrawn_unasked": redrawn,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
