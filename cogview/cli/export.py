"""`cogview export`: publish a training run's newest checkpoint as a plain model folder."""

from __future__ import annotations

import argparse

from cogview.cli.flags import add_sampling_flags, sampling_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    from cogview.sampling import RERANKERS

    p = subparsers.add_parser(
        "export",
        help="copy a run's newest checkpoint, without training state, to a model folder",
        description="Copy the newest complete checkpoint of a training run (or one checkpoint "
        "folder) to DEST without its optimizer and RNG state: the folder that generate, "
        "inpaint, caption, superres and eval read. DEST is replaced atomically. Sampling "
        "flags given here are stored as DEST/sampling.json, the model's defaults for "
        "generate, inpaint and eval (flags given to those commands still win).",
    )
    p.add_argument("run", metavar="RUN", help="training run folder or checkpoint folder")
    p.add_argument("dest", metavar="DEST", help="model folder to write")
    add_sampling_flags(p)
    p.add_argument("--inpaint-temperature", type=float, metavar="T",
                   help="store a temperature for inpainting only (sampling.json's \"inpaint\"), "
                   "used by inpaint and eval's inpainting and edits instead of --temperature's")
    p.add_argument("--inpaint-rerank", type=int, metavar="R",
                   help="store self-reranking for inpainting only (sampling.json's \"inpaint\"): "
                   "each inpainted version the best of R candidates, instead of --rerank's")
    p.add_argument("--inpaint-rerank-by", choices=RERANKERS,
                   help="store how inpainting's reranking scores candidates (sampling.json's "
                   "\"inpaint\"), instead of --rerank-by's")
    p.add_argument("--rerank", type=int, metavar="R",
                   help="store self-reranking as a default: each image the best of R candidates")
    p.add_argument("--rerank-by", choices=RERANKERS,
                   help="store how reranking scores candidates (see cogview generate "
                   "--rerank-by); contrastive and both need a model with a contrastive head")
    p.add_argument("--rerank-floor", type=float, metavar="SCORE",
                   help="store further rounds of reranking: an image whose best candidate's "
                   "caption score (mean log p(prompt | image) per token) is below SCORE draws "
                   "R more, up to --rerank-max")
    p.add_argument("--rerank-max", type=int, metavar="M",
                   help="store the most candidates an image may have with --rerank-floor "
                   "(default when not stored: 2R)")
    p.add_argument("--bf16", action="store_true",
                   help="store the weights in bfloat16: half the size on disk; loading casts "
                   "them back to the model's float32 (measure the folder before shipping it)")
    p.add_argument("--restate", metavar="DOMAIN",
                   help="reranking also scores prompts restated by this domain's grammar "
                   "(shapes); default: the domain the model was trained on, if it has one")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    import shutil

    import torch
    from safetensors.torch import save_file

    from cogview.checkpoint import (
        TRAINING_STATE_FILE,
        WEIGHTS_FILE,
        atomic_write_dir,
        load_checkpoint,
        resolve_checkpoint,
    )
    from cogview.errors import UserError
    from cogview.pipeline import (
        RESTATERS,
        SAMPLING_FILE,
        split_sampling_defaults,
        write_sampling_defaults,
    )
    from cogview.sampling import check_reranker

    src = resolve_checkpoint(args.run)
    ck = load_checkpoint(src)  # refuses a corrupt checkpoint before anything is copied
    sampling = sampling_flags(args)
    inpaint = {k: v for k, v in (("temperature", args.inpaint_temperature),
                                 ("rerank", args.inpaint_rerank),
                                 ("rerank_by", args.inpaint_rerank_by)) if v is not None}
    if inpaint:
        sampling["inpaint"] = inpaint
    if args.rerank is not None:
        sampling["rerank"] = args.rerank
    for key in ("rerank_floor", "rerank_max"):
        if getattr(args, key) is not None:
            sampling[key] = getattr(args, key)
    if args.rerank_by is not None:
        check_reranker(args.rerank_by, bool(ck.config.get("contrastive_dim")))
        sampling["rerank_by"] = args.rerank_by
    if args.inpaint_rerank_by is not None:
        check_reranker(args.inpaint_rerank_by, bool(ck.config.get("contrastive_dim")),
                       "inpaint_rerank_by")
    if args.restate is not None:
        if args.restate not in RESTATERS:
            raise UserError(f"--restate {args.restate!r}: one of {', '.join(RESTATERS)}")
        sampling["restate"] = args.restate
    # every value checked once, before any copying: a bad one is a ConfigError of its field,
    # which the command line tells by its flag
    split_sampling_defaults(sampling)

    def write(tmp):
        for item in src.iterdir():
            if item.name == TRAINING_STATE_FILE or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            elif item.name == WEIGHTS_FILE and args.bf16:
                save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v
                           for k, v in ck.state_dict.items()}, str(tmp / WEIGHTS_FILE))
            elif item.name != SAMPLING_FILE or not sampling:
                shutil.copyfile(item, tmp / item.name)
        if sampling:
            write_sampling_defaults(tmp, sampling)

    dest = atomic_write_dir(args.dest, write)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"exported {ck.kind} checkpoint of step {ck.step} from {src}")
    print(f"wrote {dest} ({size / 1e6:.1f} MB)")
    if sampling:
        print(f"sampling defaults: {sampling}")
    return 0
