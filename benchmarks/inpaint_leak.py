"""How much of an erased object the inpainting context gives away, before and after blanking.

For two-object held-out scenes with one object's region masked (the cells of `cogview eval`'s
edit benchmark), it reports
- kept cells whose code changes when the masked cells are blanked before encoding: the cells
  whose codes, taken from the whole image, saw the erased object;
- how often a model redraws the erased object (every attribute right) when inpainting with an
  empty prompt, from the whole image's codes (the leaking context) and from the blanked one
  (what `cogview inpaint` shows the model).

    python benchmarks/inpaint_leak.py --data data/shapes --n 300 [--model DIR] --threads 2
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from cogview.api import CogView
from cogview.bench import detect, shapes
from cogview.bench.evaluate import edit_cases
from cogview.images import resize_mask, to_tensor
from cogview.inpainting import context_codes
from cogview.sampling import inpaint
from train.data.loader import load_held_out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="CogLM folder (default: the shipped shapes model)")
    p.add_argument("--data", default="data/shapes", help="shapes shards (test split)")
    p.add_argument("--n", type=int, default=300, help="two-object scenes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = CogView.from_pretrained(args.model)
    held = load_held_out(args.data, pipe.image_size, 3 * args.n, "test")
    two = [i for i, m in enumerate(held.attributes) if m and len(m["objects"]) == 2][: args.n]
    cases = edit_cases(held, two, int(held.images.shape[-1]), pipe.grid, "region", seed=0)
    sampling = pipe.sampling_config(inpainting=True)  # as `cogview inpaint` samples
    g = {name: torch.Generator().manual_seed(0) for name in ("whole", "blanked")}
    changed = kept = 0
    redrawn = {name: [] for name in g}
    for case in cases:
        cells = torch.from_numpy(resize_mask(case.pixel_mask, pipe.grid))
        x = to_tensor(case.image)
        contexts = {"whole": pipe.vqvae.encode(x)[0],
                    "blanked": context_codes(pipe.vqvae, x, cells[None])[0]}
        changed += int(((contexts["whole"] != contexts["blanked"]) & ~cells).sum())
        kept += int((~cells).sum())
        for name, context in contexts.items():
            codes = inpaint(pipe.model, pipe.tokenizer, [], context, cells, sampling, g[name])
            picture = np.where(case.pixel_mask[..., None], pipe.decode(codes)[0], case.image)
            erased = {k: case.erased[k] for k in shapes.ATTRIBUTES}
            found = detect.detections_to_json(detect.detect(picture))
            score = shapes.compare({"objects": [erased], "relation": None}, found)
            redrawn[name].append(all(score[a] for a in shapes.ATTRIBUTES))  # count aside
    report = {
        "model": pipe.meta.get("path"),
        "scenes": len(cases),
        "kept_cells_that_saw_the_erased_object": changed / max(kept, 1),
        "erased_object_redrawn_unasked": {
            "whole-image codes": float(np.mean(redrawn["whole"])),
            "blanked codes": float(np.mean(redrawn["blanked"])),
        },
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
