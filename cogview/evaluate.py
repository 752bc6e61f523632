"""`cogview eval`: how well a trained CogLM draws, describes and repairs shapes scenes.

Every score here is checkable without people: the shapes domain (`cogview.shapes`) has a
detector (`cogview.detect`) that reads colour, shape, size and position back from pixels, and
captions parse back into attributes (`shapes.parse_caption`). One report holds
- text-to-image: per-attribute and all-correct accuracy of the detector on images generated
  for the fixed prompt sets (`shapes.eval_prompts(1)` and `(2)`);
- captioning: generated captions of held-out images, parsed and compared with the truth;
- inpainting: the cells of one object masked (the cells its bounding box touches),
  regenerated with the image's caption, decoded and composited into the true image; PSNR
  inside and outside the mask (outside is exact by construction, and checked) and detector
  accuracy of the regenerated object;
- fashion (optional): a Fashion-MNIST classifier's accuracy on images generated for each class
  prompt, next to its accuracy on real test images;
- held-out loss per task (through a function the caller passes in: the trainer's evaluation)
  and the VQVAE's reconstruction PSNR on the held-out images.

No I/O: callers load the pipeline and the data; `run_eval` returns a JSON-able dict and
`format_report` turns it into a table.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cogview import detect, shapes
from cogview.images import from_tensor, to_tensor
from cogview.sampling import (
    SamplingConfig,
    best_of_groups,
    generate_captions,
    generate_images,
    inpaint,
)

# attributes reported in this order (others follow alphabetically)
KEY_ORDER = ("colour", "shape", "size", "position", "relation", "count", "all")
PSNR_CAP_DB = 100.0  # identical images: reported as this, not infinity


@dataclass(frozen=True)
class EvalConfig:
    """How much of each evaluation to run; 0 skips a part."""

    n_prompts: int = 240  # per prompt set (one object: up to 324; two objects: any number)
    n_per_prompt: int = 1  # images per prompt
    rerank: int = 1  # text-to-image, inpainting: candidates per image, the best kept by reranking
    caption_temperature: float = 0.0  # captioning is scored on the greedy caption by default
    n_captions: int = 100  # held-out images to caption
    n_inpaint: int = 100  # held-out images to inpaint
    n_fashion_per_class: int = 20  # generated images per fashion class
    n_loss: int = 256  # held-out samples for the loss per task and the VQVAE PSNR
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name != "seed" and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.n_per_prompt < 1:
            raise ValueError("n_per_prompt must be >= 1")
        if self.rerank < 1:
            raise ValueError("rerank must be >= 1")


QUICK = EvalConfig(
    n_prompts=3, n_per_prompt=1, n_captions=2, n_inpaint=2, n_fashion_per_class=1, n_loss=8
)


@dataclass
class HeldOut:
    """Held-out shapes images with their captions and attribute dicts (`scene_to_json`)."""

    images: Tensor  # uint8 (N, 3, S, S)
    captions: list[str]
    attributes: list[dict[str, Any] | None]  # None where a sample carries no attributes
    targets: list[str | None] | None = None  # captioning targets where not the caption

    def __len__(self) -> int:
        return len(self.captions)

    def caption_targets(self) -> list[str]:
        """What captioning learns for each sample: its target, or else its caption."""
        targets = self.targets or [None] * len(self.captions)
        return [t or c for t, c in zip(targets, self.captions, strict=True)]

    def with_attributes(self) -> list[int]:
        """Indices of the samples that have attributes (and so can be scored)."""
        return [i for i, a in enumerate(self.attributes) if a and a.get("objects")]


@dataclass
class FashionEval:
    """What the fashion part needs: a fashion CogLM, a classifier and real test images."""

    pipeline: Any  # cogview.pipeline.Pipeline of a model trained on Fashion-MNIST
    classifier: Any  # cogview.classifier.Classifier
    class_names: list[str]
    prompts: list[str]  # one caption per class, index = label
    test_images: Tensor  # uint8 (N, 3, S, S)
    test_labels: Tensor  # (N,)
    sampling: SamplingConfig | None = None  # the fashion model's; None: the shapes model's


class Progress:
    """Callbacks for long parts: `start(total, what)` returns an `update(n)` function."""

    def __init__(self, start: Callable[[int, str], Callable[[int], None]] | None = None) -> None:
        self.start = start or (lambda total, what: lambda n: None)


# ---------------------------------------------------------------------------------------------
# helpers


def accuracy_table(results: Sequence[dict[str, bool]]) -> dict[str, float]:
    """Mean of every key over the results that have it (keys in KEY_ORDER first)."""
    counts: Counter[str] = Counter()
    right: Counter[str] = Counter()
    for r in results:
        for k, v in r.items():
            counts[k] += 1
            right[k] += bool(v)
    keys = [k for k in KEY_ORDER if k in counts] + sorted(set(counts) - set(KEY_ORDER))
    return {k: right[k] / counts[k] for k in keys}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of uint8 pixel arrays of equal shape; capped at PSNR_CAP_DB."""
    if a.size == 0:
        return float("nan")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) / 255.0**2
    return min(PSNR_CAP_DB, -10.0 * math.log10(mse)) if mse > 0 else PSNR_CAP_DB


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _device(pipe: Any) -> torch.device:
    return next(pipe.model.parameters()).device


@torch.inference_mode()
def encode_images(vqvae: Any, images: Tensor, batch_size: int = 64) -> Tensor:
    """uint8 images (N, 3, S, S) -> codes (N, h, w) on the CPU."""
    device = next(vqvae.parameters()).device
    out = [
        vqvae.encode(to_tensor(images[i : i + batch_size]).to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, 0, 0, dtype=torch.long)


@torch.inference_mode()
def decode_codes(vqvae: Any, codes: Tensor, batch_size: int = 64) -> np.ndarray:
    """Codes (N, h, w) -> uint8 images (N, H, W, 3)."""
    device = next(vqvae.parameters()).device
    out = [
        from_tensor(vqvae.decode(codes[i : i + batch_size].to(device)))
        for i in range(0, len(codes), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def _hwc(images: Tensor) -> np.ndarray:
    """uint8 (N, 3, S, S) tensor -> uint8 (N, S, S, 3) array."""
    return images.permute(0, 2, 3, 1).cpu().numpy()


def _encode_texts(tok: Any, texts: Sequence[str]) -> list[list[int]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long captions are cut to the model's length
        return tok.encode_texts(list(texts))


def object_cells(obj: dict[str, Any], grid: tuple[int, int]) -> Tensor:
    """(h, w) bool: the code cells that the object's bounding box touches.

    The box is exact in image fractions (the renderer centres an object of side
    `SIZE_FRACTIONS[size]` in its grid cell); every pixel the object colours lies in it, and
    code cells are aligned with pixels, so the mask covers the whole object.
    """
    h, w = grid
    row, col = (obj["row"], obj["col"]) if "row" in obj else shapes.position_cell(obj["position"])
    half = shapes.SIZE_FRACTIONS[obj["size"]] / 2
    cx, cy = (col + 0.5) / shapes.GRID, (row + 0.5) / shapes.GRID
    ys = torch.arange(h, dtype=torch.float64)
    xs = torch.arange(w, dtype=torch.float64)
    in_y = (ys / h < cy + half) & ((ys + 1) / h > cy - half)  # (h,)
    in_x = (xs / w < cx + half) & ((xs + 1) / w > cx - half)  # (w,)
    return in_y[:, None] & in_x[None, :]


def caption_score(truth: dict[str, Any], stated: dict[str, Any]) -> dict[str, bool]:
    """Correctness of a parsed caption (`stated`) against the true scene attributes.

    Every attribute the caption states must hold in the scene (`shapes.compare` with the
    caption as the expectation, so a caption's relation is checked against the true cells);
    "count" asks for as many objects as the scene has. "all" additionally needs the
    caption to state what every training caption states: colour and shape of each object, and
    the position (one object) or, for two objects, a relation or the position of each; the
    size is optional, as in the data.
    """
    result = shapes.compare(stated, truth)
    objs = stated["objects"]
    complete = all(k in o for o in objs for k in ("colour", "shape"))
    placed = all("position" in o for o in objs)
    if len(truth["objects"]) == 2:
        complete = complete and (stated.get("relation") is not None or placed)
    else:
        complete = complete and placed
    result["all"] = bool(result["all"] and complete)
    return result


def _stated(stated: dict[str, Any]) -> dict[str, bool]:
    """Which attributes a parsed caption states (for every object it names)."""
    objs = stated["objects"] or [{}]
    out = {k: all(k in o for o in objs) for k in shapes.ATTRIBUTES}
    if len(objs) == 2:
        out.pop("position")
        out["relation"] = stated.get("relation") is not None
    return out


# ---------------------------------------------------------------------------------------------
# parts


def eval_text_to_image(
    pipe: Any,
    prompts: Sequence[tuple[str, dict[str, Any]]],
    n_per_prompt: int,
    sampling: SamplingConfig,
    generator: torch.Generator,
    *,
    clusters: Tensor | None = None,
    progress: Progress | None = None,
    what: str = "t2i",
    rerank: int = 1,
) -> dict[str, Any]:
    """Generate `n_per_prompt` images per prompt, detect, and score against the prompt. With
    `rerank` > 1 each image is the best of `rerank` candidates by the model's own
    log p(prompt | image) (CogView self-reranking)."""
    if not prompts:
        return {"n": 0, "accuracy": {}}
    texts = [p for p, _ in prompts for _ in range(n_per_prompt)]
    attrs = [a for _, a in prompts for _ in range(n_per_prompt)]
    ids = _encode_texts(pipe.tokenizer, texts)
    candidates = [t for t in ids for _ in range(rerank)]
    update = (progress or Progress()).start(len(candidates), what)
    codes = generate_images(
        pipe.model,
        pipe.tokenizer,
        candidates,
        pipe.grid,
        sampling,
        generator,
        clusters=clusters,
        progress=update,
    )
    codes = best_of_groups(pipe.model, pipe.tokenizer, codes, candidates, rerank,
                           batch_size=sampling.batch_size)
    images = decode_codes(pipe.vqvae, codes.cpu(), sampling.batch_size)
    # detect.score, with the detections kept for the examples of failures
    found = [detect.detections_to_json(detect.detect(img)) for img in images]
    scores = [shapes.compare(a, d) for a, d in zip(attrs, found, strict=True)]
    wrong = [
        {"prompt": t, "detected": d["objects"]}
        for t, d, s in zip(texts, found, scores, strict=True)
        if not s["all"]
    ]
    return {"n": len(texts), "accuracy": accuracy_table(scores), "wrong_examples": wrong[:5]}


def eval_captioning(
    pipe: Any,
    held: HeldOut,
    indices: Sequence[int],
    sampling: SamplingConfig,
    generator: torch.Generator,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Caption held-out images and compare the parsed captions with the true attributes."""
    if not indices:
        return {"n": 0, "accuracy": {}, "stated": {}}
    tok = pipe.tokenizer
    codes = encode_images(pipe.vqvae, held.images[list(indices)])
    update = (progress or Progress()).start(len(indices), "captions")
    scores, stated, examples = [], [], []
    for k, i in enumerate(indices):
        ids = generate_captions(pipe.model, tok, codes[k], sampling, generator, n=1)[0]
        text = tok.decode_text(ids)
        parsed = shapes.parse_caption(text)
        truth = held.attributes[i]
        s = caption_score(truth, parsed)
        scores.append(s)
        stated.append(_stated(parsed))
        if len(examples) < 5:
            examples.append({"truth": held.captions[i], "generated": text, "all": s["all"]})
        update(1)
    return {
        "n": len(indices),
        "accuracy": accuracy_table(scores),
        "stated": accuracy_table(stated),
        "examples": examples,
    }


def eval_inpainting(
    pipe: Any,
    held: HeldOut,
    indices: Sequence[int],
    sampling: SamplingConfig,
    generator: torch.Generator,
    *,
    clusters: Tensor | None = None,
    progress: Progress | None = None,
    seed: int = 0,
    rerank: int = 1,
) -> dict[str, Any]:
    """Mask one object's cells, regenerate them with the caption, composite, and score. With
    `rerank` > 1 the regenerated image is the best of `rerank` by self-reranking.

    Which object of a two-object scene is masked is drawn from `seed`."""
    if not indices:
        return {"n": 0}
    tok, grid = pipe.tokenizer, pipe.grid
    truth_images = _hwc(held.images[list(indices)])  # (n, S, S, 3)
    codes = encode_images(pipe.vqvae, held.images[list(indices)])
    f = truth_images.shape[1] // grid[0]
    pick = torch.Generator().manual_seed(seed)
    update = (progress or Progress()).start(len(indices), "inpaint")
    inside, outside, outside_decoded, cells = [], [], [], []
    object_scores, scene_scores = [], []
    exact = True
    for k, i in enumerate(indices):
        attrs = held.attributes[i]
        objs = attrs["objects"]
        target = objs[int(torch.randint(len(objs), (1,), generator=pick))]
        cell_mask = object_cells(target, grid)
        text_ids = _encode_texts(tok, [held.captions[i]])[0]
        new = inpaint(
            pipe.model, tok, text_ids, codes[k], cell_mask, sampling, generator, rerank,
            clusters=clusters,
        )  # fmt: skip
        new = best_of_groups(pipe.model, tok, new, [text_ids] * rerank, rerank,
                             sampling.batch_size)
        decoded = decode_codes(pipe.vqvae, new.cpu())[0]  # (S, S, 3)
        pixel_mask = cell_mask.repeat_interleave(f, 0).repeat_interleave(f, 1).numpy()  # (S, S)
        truth = truth_images[k]
        composite = np.where(pixel_mask[..., None], decoded, truth)
        exact = exact and bool(np.array_equal(composite[~pixel_mask], truth[~pixel_mask]))
        inside.append(_psnr(composite[pixel_mask], truth[pixel_mask]))
        outside.append(_psnr(composite[~pixel_mask], truth[~pixel_mask]))
        outside_decoded.append(_psnr(decoded[~pixel_mask], truth[~pixel_mask]))
        cells.append(int(cell_mask.sum()))
        found = detect.detections_to_json(detect.detect(composite))
        want = {k2: target[k2] for k2 in shapes.ATTRIBUTES}
        score = shapes.compare({"objects": [want], "relation": None}, found)
        score.pop("count")
        score["all"] = all(score[a] for a in shapes.ATTRIBUTES)
        object_scores.append(score)
        scene_scores.append({"all": shapes.compare(attrs, found)["all"]})
        update(1)
    return {
        "n": len(indices),
        "mean_masked_cells": float(np.mean(cells)),
        "psnr_inside": _mean(inside),
        "psnr_outside": _mean(outside),
        "outside_exact": exact,
        "psnr_outside_decoded": _mean(outside_decoded),
        "object_accuracy": accuracy_table(object_scores),
        "scene_all": accuracy_table(scene_scores).get("all", float("nan")),
    }


def eval_fashion(
    fashion: FashionEval,
    n_per_class: int,
    sampling: SamplingConfig,
    generator: torch.Generator,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Classifier accuracy on generated images of each class prompt and on real test images."""
    from cogview.classifier import accuracy

    pipe, clf, names = fashion.pipeline, fashion.classifier, fashion.class_names
    n_classes = len(fashion.prompts)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    texts = [fashion.prompts[int(c)] for c in labels]
    update = (progress or Progress()).start(len(texts), "fashion")
    codes = generate_images(
        pipe.model,
        pipe.tokenizer,
        _encode_texts(pipe.tokenizer, texts),
        pipe.grid,
        sampling,
        generator,
        progress=update,
    )
    generated = torch.from_numpy(decode_codes(pipe.vqvae, codes.cpu())).permute(0, 3, 1, 2)
    clf_device = next(clf.parameters()).device
    pred = clf.predict(generated.float().div(255).to(clf_device)).cpu()
    real_x = fashion.test_images.float().div(255).to(clf_device)
    real_pred = clf.predict(real_x).cpu() if len(real_x) else torch.zeros(0, dtype=torch.long)
    per_class = {}
    for c in range(n_classes):
        real_c = fashion.test_labels == c
        per_class[names[c]] = {
            "prompt": fashion.prompts[c],
            "generated": float((pred[labels == c] == c).float().mean()) if n_per_class else None,
            "real": float((real_pred[real_c] == c).float().mean()) if real_c.any() else None,
        }
    return {
        "n_generated": len(texts),
        "n_real": len(fashion.test_labels),
        "generated_accuracy": float((pred == labels).float().mean()) if len(texts) else None,
        "real_accuracy": accuracy(clf, real_x, fashion.test_labels.to(clf_device))
        if len(real_x)
        else None,
        "per_class": per_class,
    }


def vqvae_psnr(
    vqvae: Any,
    images: Tensor,
    attributes: Sequence[dict[str, Any] | None] | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Mean PSNR (dB) of the VQVAE's reconstructions of uint8 images (N, 3, S, S).

    With `attributes` (one per image, None where unknown), also the detector's all-correct rate
    on the reconstructions: the ceiling that the tokenizer puts on text-to-image accuracy.
    """
    if len(images) == 0:
        return {"n": 0, "psnr": float("nan")}
    recon = decode_codes(vqvae, encode_images(vqvae, images, batch_size), batch_size)
    truth = _hwc(images)
    out: dict[str, Any] = {
        "n": len(images),
        "psnr": _mean([_psnr(r, t) for r, t in zip(recon, truth, strict=True)]),
    }
    if attributes is not None:
        scored = [detect.score(r, a)["all"] for r, a in zip(recon, attributes, strict=True) if a]
        out["detector_all"] = float(np.mean(scored)) if scored else None
    return out


# ---------------------------------------------------------------------------------------------
# the whole report

LossFn = Callable[[Any, Tensor, list[list[int]], list[list[int]]], dict[str, float]]


def run_eval(
    pipe: Any,
    held: HeldOut | None,
    config: EvalConfig,
    sampling: SamplingConfig,
    *,
    loss_fn: LossFn | None = None,
    fashion: FashionEval | None = None,
    clusters: Tensor | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Every part of the evaluation that `config` asks for; a JSON-able dict.

    `loss_fn(pipe, codes (N, h, w), text_ids, target_ids)` returns held-out losses per task
    (the trainer's evaluation; captioning scored on the targets); without it, or without
    held-out data, those parts are left out.
    """
    device = _device(pipe)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    timings: dict[str, float] = {}
    report: dict[str, Any] = {
        "model": pipe.meta.get("path"),
        "step": pipe.meta.get("step"),
        "eval_config": asdict(config),
        "sampling": asdict(sampling),
    }

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        return out

    if config.n_prompts:
        n = config.n_prompts
        one = shapes.eval_prompts(1, min(n, 324))
        two = shapes.eval_prompts(2, n)
        report["t2i"] = {
            "one_object": timed(
                "t2i_one_object",
                lambda: eval_text_to_image(
                    pipe, one, config.n_per_prompt, sampling, generator, clusters=clusters,
                    progress=progress, what="t2i (1 object)", rerank=config.rerank,
                ),
            ),
            "two_objects": timed(
                "t2i_two_objects",
                lambda: eval_text_to_image(
                    pipe, two, config.n_per_prompt, sampling, generator, clusters=clusters,
                    progress=progress, what="t2i (2 objects)", rerank=config.rerank,
                ),
            ),
        }  # fmt: skip
    if held is not None and len(held):
        scored = held.with_attributes()
        captioning = replace(sampling, temperature=config.caption_temperature)
        if config.n_captions:
            idx = scored[: config.n_captions]
            report["captioning"] = timed(
                "captioning",
                lambda: eval_captioning(pipe, held, idx, captioning, generator, progress=progress),
            )
        if config.n_inpaint:
            idx = scored[: config.n_inpaint]
            report["inpainting"] = timed(
                "inpainting",
                lambda: eval_inpainting(
                    pipe,
                    held,
                    idx,
                    sampling,
                    generator,
                    clusters=clusters,
                    progress=progress,
                    seed=config.seed,
                    rerank=config.rerank,
                ),
            )
        if config.n_loss:
            images = held.images[: config.n_loss]
            attrs = held.attributes[: config.n_loss]
            report["vqvae"] = timed("vqvae", lambda: vqvae_psnr(pipe.vqvae, images, attrs))
            if loss_fn is not None:
                codes = encode_images(pipe.vqvae, images)
                text_ids = _encode_texts(pipe.tokenizer, held.captions[: config.n_loss])
                targets = _encode_texts(pipe.tokenizer, held.caption_targets()[: config.n_loss])
                losses = timed("held_out_loss", lambda: loss_fn(pipe, codes, text_ids, targets))
                report["held_out_loss"] = {"n": len(images), **losses}
    if fashion is not None and config.n_fashion_per_class:
        report["fashion"] = timed(
            "fashion",
            lambda: eval_fashion(
                fashion, config.n_fashion_per_class, fashion.sampling or sampling, generator,
                progress=progress,
            ),
        )
    report["seconds"] = timings
    return report


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _db(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2f} dB"


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of the report: one line per metric."""
    rows: list[tuple[str, str, str]] = []  # (part, metric, value)

    def acc_rows(part: str, acc: dict[str, float], n: int) -> None:
        rows.append((part, "n", str(n)))
        for k, v in acc.items():
            if not k[-1].isdigit():  # per-object keys ("colour_0") are in the JSON only
                rows.append((part, k, _pct(v)))

    t2i = report.get("t2i", {})
    for name, label in (("one_object", "t2i 1 object"), ("two_objects", "t2i 2 objects")):
        if name in t2i:
            acc_rows(label, t2i[name]["accuracy"], t2i[name]["n"])
    if "captioning" in report:
        cap = report["captioning"]
        acc_rows("captioning", cap["accuracy"], cap["n"])
        for k, v in cap.get("stated", {}).items():
            rows.append(("captioning", f"states {k}", _pct(v)))
    if "inpainting" in report:
        inp = report["inpainting"]
        rows.append(("inpainting", "n", str(inp["n"])))
        if inp["n"]:
            rows.append(("inpainting", "masked cells (mean)", f"{inp['mean_masked_cells']:.1f}"))
            rows.append(("inpainting", "PSNR inside mask", _db(inp["psnr_inside"])))
            exact = "exact" if inp["outside_exact"] else "NOT exact"
            rows.append(("inpainting", "PSNR outside (composited)", exact))
            rows.append(("inpainting", "PSNR outside (decoded)", _db(inp["psnr_outside_decoded"])))
            for k, v in inp["object_accuracy"].items():
                rows.append(("inpainting", f"object {k}", _pct(v)))
            rows.append(("inpainting", "scene all", _pct(inp["scene_all"])))
    if "fashion" in report:
        fa = report["fashion"]
        rows.append(("fashion", "classifier on generated", _pct(fa["generated_accuracy"])))
        rows.append(("fashion", "classifier on real test", _pct(fa["real_accuracy"])))
        for name, c in fa["per_class"].items():
            rows.append(("fashion", f"{name} (gen / real)", f"{_pct(c['generated'])} / "
                         f"{_pct(c['real'])}"))  # fmt: skip
    if "held_out_loss" in report:
        for k, v in report["held_out_loss"].items():
            rows.append(("held-out loss", k, str(v) if k == "n" else f"{v:.4f}"))
    if "vqvae" in report:
        rows.append(("vqvae", "reconstruction PSNR", _db(report["vqvae"]["psnr"])))
        if report["vqvae"].get("detector_all") is not None:
            rows.append(("vqvae", "detector all (reconstructions)",
                         _pct(report["vqvae"]["detector_all"])))  # fmt: skip
    w0 = max([len(r[0]) for r in rows] + [4])
    w1 = max([len(r[1]) for r in rows] + [6])
    lines = [f"model: {report.get('model')} (step {report.get('step')})"]
    lines.append(f"{'part':<{w0}}  {'metric':<{w1}}  value")
    lines.append(f"{'-' * w0}  {'-' * w1}  -----")
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)
