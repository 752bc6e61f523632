"""`cogview eval` (the evaluation report) and `cogview train-classifier` (its fashion judge)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from cogview.cli import with_threads
from cogview.errors import UserError


def _progress():
    """A `cogview.bench.evaluate.Progress` that shows one tqdm bar per part on stderr."""
    from tqdm import tqdm

    from cogview.bench.evaluate import Progress

    def start(total: int, what: str):
        bar = tqdm(total=total, desc=what, unit="item", file=sys.stderr, dynamic_ncols=True)

        def update(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        if total <= 0:
            bar.close()
        return update

    return Progress(start=start)


def held_out_loss_fn(
    pipe: Any, codes: Any, text_ids: list[list[int]], target_ids: list[list[int]]
) -> dict[str, float]:
    """Mean held-out loss per task, by the trainer's own evaluation (`CogLMObjective`);
    captioning learns `target_ids`."""
    from types import SimpleNamespace

    from cogview.inpainting import context_from_codes
    from cogview.masks import MaskingScheduler, TaskSchedule
    from train.lm import CogLMObjective

    # a model with a text encoder reads the prompts as strings
    captions = ([pipe.tokenizer.decode_text(t) for t in text_ids]
                if pipe.text_encoder is not None else [])
    data = SimpleNamespace(codes={pipe.image_size: codes}, text_ids=text_ids, targets=target_ids,
                           captions=captions)
    scheduler = MaskingScheduler(
        pipe.tokenizer, schedule=TaskSchedule.constant(t2i=1, cap=1, inp=1), text_dropout=0.0,
        context=functools.partial(context_from_codes, pipe.vqvae), encoder=pipe.text_encoder,
    )

    def no_save(*args: Any, **kwargs: Any) -> Path:
        raise RuntimeError("evaluation writes no checkpoint")

    objective = CogLMObjective(
        model=pipe.model,
        tokenizer=pipe.tokenizer,
        train=data,
        test=data,
        scheduler=scheduler,
        image_size=pipe.image_size,
        save_fn=no_save,
        eval_samples=len(codes),
    )
    device = next(pipe.model.parameters()).device
    losses = objective.evaluate(pipe.model, device, "fp32")
    return {k.removeprefix("eval_"): v for k, v in losses.items()}


def _class_prompts(captions: list[str], labels: list[int], n_classes: int) -> list[str]:
    """For each class, its most frequent caption in the data (a prompt in the model's style)."""
    from collections import Counter

    prompts = []
    for c in range(n_classes):
        counts = Counter(t for t, y in zip(captions, labels, strict=True) if y == c)
        if not counts:
            raise UserError(f"--fashion-data: no test image of class {c}")
        prompts.append(counts.most_common(1)[0][0])
    return prompts


def _load_fashion(args: argparse.Namespace, device: Any, limit: int):
    from cogview.bench.classifier import load_classifier
    from cogview.bench.evaluate import FashionEval
    from cogview.cli.common import load_model
    from cogview.cli.flags import sampling_flags
    from train.classifier import labels_of
    from train.data.loader import load_images

    if not (args.fashion_data and args.classifier):
        raise UserError("--fashion-model needs --fashion-data SHARDS and --classifier DIR")
    pipe = load_model(args, args.fashion_model)
    clf, names = load_classifier(args.classifier)
    clf = clf.to(device)
    # the real images: the whole test split for the classifier's accuracy; prompts from it
    test = load_images(args.fashion_data, pipe.image_size, split="test", limit=limit)
    if len(test) == 0:
        raise UserError(f"--fashion-data {args.fashion_data}: no test images")
    labels = labels_of(test.metas, f"--fashion-data {args.fashion_data}")
    prompts = _class_prompts(test.captions, labels.tolist(), len(names))
    # sampling flags given win; otherwise the fashion model's own sampling.json
    return FashionEval(pipe, clf, names, prompts, test.images, labels,
                       pipe.sampling_config(**sampling_flags(args)))


def run_eval_command(args: argparse.Namespace) -> int:
    return with_threads(args.threads, _run_eval, args)


def _run_eval(args: argparse.Namespace) -> int:

    from cogview.bench.evaluate import QUICK, EvalConfig, format_report, run_eval
    from cogview.cli.common import load_model
    from cogview.cli.flags import check_sampling_flags, sampling_flags
    from cogview.devices import parse_device
    from train.data.loader import load_held_out

    try:
        base = QUICK if args.quick else EvalConfig()
        overrides = {
            k: getattr(args, k)
            for k in ("n_prompts", "n_paraphrase", "n_per_prompt", "rerank", "n_captions",
                      "caption_temperature", "n_inpaint", "n_edit", "n_loss", "n_retrieval")
            if getattr(args, k) is not None
        }
        if args.n_fashion is not None:
            overrides["n_fashion_per_class"] = args.n_fashion
        config = EvalConfig(**{**base.__dict__, **overrides, "seed": args.seed})
    except ValueError as e:
        raise UserError(f"--n-*: {e}") from None
    rerank_by = _rerank_by(args.rerank_by)
    device = parse_device(args.device)
    pipe = load_model(args)
    check_sampling_flags(pipe, args)
    sampling = pipe.sampling_config(**sampling_flags(args))
    # inpainting and edits: the model's sampling.json "inpaint" settings too, flags winning
    sampling_inpaint = pipe.sampling_config(inpainting=True, **sampling_flags(args))
    if args.rerank is None:  # the model's sampling.json
        config = dataclasses.replace(config, rerank=pipe.rerank_default,
                                     rerank_inpaint=pipe.inpaint_rerank_default)
    for by in rerank_by:
        pipe.reranker(by)
    # inpainting and the edits: the first reranker named, else the model's for inpainting
    config = dataclasses.replace(config, rerank_by=rerank_by or (pipe.rerank_by_default,),
                                 rerank_by_inpaint=None if rerank_by else
                                 pipe.inpaint_rerank_by_default)
    held = None
    if args.data is not None:
        # about half of the shapes scenes hold two objects: the edits need twice as many
        limit = max(config.n_captions, config.n_inpaint, 3 * config.n_edit, config.n_loss,
                    config.n_retrieval, 1)
        if not os.path.exists(args.data) and not any(c in args.data for c in "*?[{"):
            raise UserError(f"--data {args.data}: no such file or folder")
        held = load_held_out(args.data, pipe.image_size, limit, args.split)
        if len(held) == 0:
            raise UserError(f"--data {args.data}: no {args.split} images")
    fashion = None
    if args.fashion_model:
        fashion = _load_fashion(args, device, args.fashion_test_limit)
    report = run_eval(
        pipe, held, config, sampling, sampling_inpaint=sampling_inpaint,
        loss_fn=held_out_loss_fn, fashion=fashion, progress=_progress(),
    )
    print(format_report(report))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_finite(report), indent=2, allow_nan=False)
        out.write_text(text + "\n")
        print(f"wrote {out}")
    return 0


def _rerank_by(value: str | None) -> tuple[str, ...]:
    """--rerank-by's comma-separated rerankers (empty for none given)."""
    from cogview.sampling import RERANKERS

    if value is None:
        return ()
    names = tuple(v.strip() for v in value.split(","))
    for name in names:
        if name not in RERANKERS:
            raise UserError(f"--rerank-by {value}: {name!r} is not one of {', '.join(RERANKERS)}")
    if len(set(names)) < len(names):
        raise UserError(f"--rerank-by {value}: a reranker named twice")
    return names


def _finite(x: Any) -> Any:
    """The report with NaN (a part without samples) as null, so the file is strict JSON."""
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def run_train_classifier(args: argparse.Namespace) -> int:
    return with_threads(args.threads, _run_train_classifier, args)


def _run_train_classifier(args: argparse.Namespace) -> int:
    from cogview.cli.flags import from_flags
    from cogview.cli.train import loop_config
    from train.classifier import LOOP_DEFAULTS, ClassifierTrainConfig, train_classifier

    if not os.path.exists(args.data) and not any(c in args.data for c in "*?[{"):
        raise UserError(f"--data {args.data}: no such file or folder")
    cfg = from_flags(ClassifierTrainConfig, args)
    result = train_classifier(cfg, loop_config(args, LOOP_DEFAULTS), resume=args.resume,
                              progress=not args.no_progress)
    if result.interrupted:
        print(f"interrupted by {result.interrupted}; wrote {result.path}", file=sys.stderr)
        return 130
    print(
        f"test accuracy {100 * result.test_accuracy:.2f}% on {result.n_test} real test images "
        f"(train {100 * result.train_accuracy:.2f}%, {result.n_train} training images, "
        f"{result.seconds:.0f} s)"
    )
    print(f"wrote {result.path}")
    return 0


THREADS_HELP = "CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)"


def register(subparsers: Any) -> None:
    from cogview.cli.flags import add_dtype_flag, add_flags, add_sampling_flags
    from cogview.cli.train import add_loop_flags
    from train.classifier import LOOP_DEFAULTS, ClassifierTrainConfig

    p = subparsers.add_parser(
        "eval",
        help="evaluation report: t2i, captioning, inpainting, retrieval, fashion, held-out loss",
        description="Score a CogLM on the shapes domain with a detector: text-to-image accuracy "
        "per attribute on fixed prompts (per reranker), captioning and inpainting of held-out "
        "images, retrieval by the contrastive head, held-out loss per task and VQVAE PSNR; "
        "optionally a fashion model judged by a classifier. Prints a table; --json writes the "
        "full report.",
    )
    p.add_argument(
        "--model", metavar="DIR",
        help="CogLM folder or training run (default: the shipped shapes model)",
    )
    p.add_argument(
        "--data", metavar="SHARDS", help="shapes shards (folder, .tar, glob) for held-out images"
    )
    p.add_argument("--split", default="test", help="split of --data to use (default: test)")
    p.add_argument("--quick", action="store_true", help="a few samples of each part (smoke test)")
    p.add_argument("--n-prompts", type=int, metavar="N", help="prompts per t2i prompt set")
    p.add_argument("--n-paraphrase", type=int, metavar="N",
                   help="per prompt set: the first N prompts again, worded as no training caption "
                   "is ('draw a ...', 'an image with ...')")
    p.add_argument("--n-per-prompt", type=int, metavar="K", help="images per prompt")
    p.add_argument("--rerank", type=int, metavar="N",
                   help="text-to-image and inpainting: keep the best of N candidates by "
                   "self-reranking (default: the model's sampling.json, whose \"inpaint\" may "
                   "set its own for inpainting and edits, else 1)")
    p.add_argument("--rerank-by", metavar="BY[,BY...]",
                   help="how reranking scores candidates: caption (log p(prompt | image)), "
                   "contrastive (cosine by the contrastive head), both (the two standardised "
                   "per prompt and summed); several, comma-separated, each pick among the same "
                   "text-to-image candidates and are reported side by side with the seconds "
                   "per image; inpainting and edits use the first. Default: the model's "
                   "sampling.json (for inpainting and edits, its \"inpaint\" one first), else "
                   "caption")
    p.add_argument("--n-retrieval", type=int, metavar="N",
                   help="retrieval by the contrastive head among N held-out scenes (the test "
                   "split of --data, else N scenes drawn apart from any data set): caption <-> "
                   "image recall@1/@5, and descriptions in eval and paraphrased wording; with "
                   "--fashion-model, class prompts against N test images and zero-shot "
                   "accuracy. Skipped for a model without a head (default: 200)")
    p.add_argument("--n-captions", type=int, metavar="N", help="held-out images to caption")
    p.add_argument("--caption-temperature", type=float, metavar="T",
                   help="temperature of the scored captions (default: 0, greedy)")
    p.add_argument("--n-inpaint", type=int, metavar="N",
                   help="held-out images to inpaint with their own caption (reconstruction)")
    p.add_argument("--n-edit", type=int, metavar="N",
                   help="held-out two-object scenes to edit (one object replaced by another), "
                   "per prompt style")
    p.add_argument("--n-loss", type=int, metavar="N", help="held-out samples for loss and PSNR")
    p.add_argument("--fashion-model", metavar="DIR",
                   help="CogLM trained on Fashion-MNIST (`fashion`: the shipped one)")
    p.add_argument("--fashion-data", metavar="SHARDS", help="fashion shards (test split used)")
    p.add_argument("--classifier", metavar="DIR", help="checkpoint of cogview train-classifier")
    p.add_argument("--n-fashion", type=int, metavar="N", help="generated images per class")
    p.add_argument(
        "--fashion-test-limit", type=int, metavar="N", help="real test images to score (all)"
    )
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    p.add_argument("--device", default="cpu", metavar="DEV", help="torch device (default: cpu)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    p.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    add_dtype_flag(p)
    add_sampling_flags(p)
    p.set_defaults(func=run_eval_command)

    p = subparsers.add_parser(
        "train-classifier",
        help="train the Fashion-MNIST classifier that cogview eval judges fashion images with",
        description="Train a small CNN on the real training split of fashion shards (cogview "
        "data fashion), print its accuracy on the real test split, write OUT/step-N/.",
    )
    add_flags(p, ClassifierTrainConfig, show_defaults=True)
    p.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    add_loop_flags(p, LOOP_DEFAULTS, keep=lambda f: f.name not in ("deepspeed", "eval_every"))
    p.set_defaults(func=run_train_classifier)
