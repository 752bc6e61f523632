"""`cogview eval`: how well a trained CogLM draws, describes and repairs shapes scenes.

Every score here is checkable without people: the shapes domain (`cogview.bench.shapes`) has a
detector (`cogview.bench.detect`) that reads colour, shape, size and position back from pixels, and
captions parse back into attributes (`shapes.parse_caption`). One report holds
- text-to-image: per-attribute and all-correct accuracy of the detector on images generated
  for the fixed prompt sets (`shapes.eval_prompts(1)` and `(2)`), and for the same requests
  worded as no training caption is (`shapes.paraphrase_prompts`); with reranking, the same
  candidates picked by each reranker asked for (caption, contrastive, both), with the
  seconds each image took; two-object sets broken down by the relation asked for, and
  paraphrased sets by the wording's template;
- captioning: generated captions of held-out images, parsed and compared with the truth;
- inpainting: the cells of one object masked (the cells its bounding box touches),
  regenerated with the image's caption, decoded and composited into the true image; PSNR
  inside and outside the mask (outside is exact by construction, and checked) and detector
  accuracy of the regenerated object;
- fashion (optional): a Fashion-MNIST classifier's accuracy on images generated for each class
  prompt, next to its accuracy on real test images;
- retrieval (a model with a contrastive head): recall@k of held-out captions and images by
  their embeddings (`eval_retrieval`), and for fashion, class prompts against test images and
  zero-shot classification (`eval_fashion_retrieval`);
- held-out loss per task (through a function the caller passes in: the trainer's evaluation)
  and the VQVAE's reconstruction PSNR on the held-out images.

No I/O: callers load the pipeline and the data; `run_eval` returns a JSON-able dict and
`format_report` turns it into a table.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cogview.bench import detect, shapes
from cogview.contrastive import NO_HEAD
from cogview.images import fit, resize_mask
from cogview.masks import box_cells
from cogview.pretrained import decode_codes, encode_images
from cogview.sampling import (
    RERANKERS,
    SamplingConfig,
    generate_captions,
)

# attributes reported in this order (others follow alphabetically)
KEY_ORDER = ("colour", "shape", "size", "position", "relation", "count", "all")
PSNR_CAP_DB = 100.0  # identical images: reported as this, not infinity


@dataclass(frozen=True)
class EvalConfig:
    """How much of each evaluation to run; 0 skips a part."""

    n_prompts: int = 240  # per prompt set (one object: up to 324; two objects: any number)
    # per prompt set: the first prompts of each set again, worded as the training captions
    # never are (`shapes.paraphrase_prompts`)
    n_paraphrase: int = 240
    n_per_prompt: int = 1  # images per prompt
    rerank: int = 1  # text-to-image: candidates per image, the best kept by reranking
    rerank_inpaint: int = 0  # inpainting and the edits: the same (0: as `rerank`)
    # how candidates are scored (sampling.RERANKERS): text-to-image reports each on the same
    # candidates; inpainting and the edits rerank by `rerank_by_inpaint`, else the first
    rerank_by: tuple[str, ...] = ("caption",)
    rerank_by_inpaint: str | None = None
    caption_temperature: float = 0.0  # captioning is scored on the greedy caption by default
    n_captions: int = 100  # held-out images to caption
    n_inpaint: int = 100  # held-out images to inpaint (reconstruction)
    n_edit: int = 100  # held-out two-object scenes to edit, per prompt style
    n_fashion_per_class: int = 20  # generated images per fashion class
    n_retrieval: int = 200  # held-out scenes (and fashion test images) to retrieve among
    n_loss: int = 256  # held-out samples for the loss per task and the VQVAE PSNR
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name not in ("seed", "rerank_by", "rerank_by_inpaint") and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not self.rerank_by or len(set(self.rerank_by)) < len(self.rerank_by):
            raise ValueError(f"rerank_by must name distinct rerankers, got {self.rerank_by}")
        for by in (*self.rerank_by, self.inpaint_reranker):
            if by not in RERANKERS:
                raise ValueError(f"rerank_by: {by!r} is not one of {', '.join(RERANKERS)}")
        if self.n_per_prompt < 1:
            raise ValueError("n_per_prompt must be >= 1")
        if self.rerank < 1:
            raise ValueError("rerank must be >= 1")

    @property
    def inpaint_reranker(self) -> str:
        """How inpainting's and the edits' candidates are scored."""
        return self.rerank_by_inpaint or self.rerank_by[0]

    @property
    def inpaint_group(self) -> int:
        """Candidates per inpainted picture."""
        return self.rerank_inpaint or self.rerank


QUICK = EvalConfig(
    n_prompts=3, n_paraphrase=3, n_per_prompt=1, n_captions=2, n_inpaint=2, n_edit=2,
    n_fashion_per_class=1, n_loss=8, n_retrieval=8,
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

    def images_hwc(self, i: int) -> np.ndarray:
        """Image i as uint8 (S, S, 3)."""
        return self.images[i].permute(1, 2, 0).cpu().numpy()

    def with_attributes(self) -> list[int]:
        """Indices of the samples that have attributes (and so can be scored)."""
        return [i for i, a in enumerate(self.attributes) if a and a.get("objects")]

    def first(self, n: int) -> HeldOut:
        """The first n samples."""
        return HeldOut(self.images[:n], self.captions[:n], self.attributes[:n],
                       self.targets[:n] if self.targets is not None else None)


# Scenes that `drawn_scenes` makes: the generator of scene i is seeded (seed, SCENE_STREAM, i).
# `cogview data shapes` seeds sample i of a split (seed, 0 | 1, i) (train, test), so no data
# set of any seed holds the same stream of scenes.
SCENE_STREAM = 2
DATA_SIZE = 64  # `cogview data shapes` renders at 64 px; a model's images are resized from it


def drawn_scenes(n: int, size: int, seed: int = 0) -> HeldOut:
    """n held-out shapes scenes drawn as `cogview data shapes` draws a split's samples (half of
    them with two objects, captions in the training phrasings), from generators that no data
    set uses (SCENE_STREAM); rendered at 64 px and area-resized to `size`, as the data are."""
    images, captions, attributes = [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, SCENE_STREAM, i])
        scene = shapes.sample_scene(rng, 2 if rng.random() < 0.5 else 1)
        captions.append(shapes.caption(scene, rng))
        image = shapes.render(scene, max(size, DATA_SIZE))
        images.append(image if size >= DATA_SIZE else fit(image, size))
        attributes.append(shapes.scene_to_json(scene))
    stacked = torch.from_numpy(np.stack(images)) if images else torch.zeros(0, size, size, 3)
    return HeldOut(stacked.permute(0, 3, 1, 2).to(torch.uint8), captions, attributes)


@dataclass
class FashionEval:
    """What the fashion part needs: a fashion CogLM, a classifier and real test images."""

    pipeline: Any  # cogview.api.CogView of a model trained on Fashion-MNIST
    classifier: Any  # cogview.bench.classifier.Classifier
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


def _grouped(labels: Sequence[str], results: Sequence[dict[str, bool]]
             ) -> dict[str, dict[str, float]]:
    """`accuracy_table` of the results of each label (in order of first appearance), with
    "n", the number of results."""
    groups: dict[str, list[dict[str, bool]]] = {}
    for label, r in zip(labels, results, strict=True):
        groups.setdefault(label, []).append(r)
    return {label: {"n": len(rs), **accuracy_table(rs)} for label, rs in groups.items()}


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


def _hwc(images: Tensor) -> np.ndarray:
    """uint8 (N, 3, S, S) tensor -> uint8 (N, S, S, 3) array."""
    return images.permute(0, 2, 3, 1).cpu().numpy()


def _encode_texts(tok: Any, texts: Sequence[str]) -> list[list[int]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long captions are cut to the model's length
        return tok.encode_texts(list(texts))


def object_cells(obj: dict[str, Any], grid: tuple[int, int]) -> Tensor:
    """(h, w) bool: the code cells that the object's bounding box (`shapes.object_box`)
    touches; every pixel the object colours lies in the box, and code cells are aligned with
    pixels, so the mask covers the whole object."""
    return box_cells(shapes.object_box(obj), *grid)


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
    progress: Progress | None = None,
    what: str = "t2i",
    rerank: int = 1,
    rerank_by: Sequence[str] = ("caption",),
    breakdown: dict[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Generate `n_per_prompt` images per prompt, detect, and score against the prompt.

    `breakdown` names groupings of the prompts, each a label per prompt (the relation asked
    for, the wording's template); the report's "by" holds, per grouping and label, the
    number of images and their accuracy (the first reranker's).

    With `rerank` > 1 each image is the best of `rerank` candidates, drawn once and picked by
    each reranker in `rerank_by` (`CogView.best_of`: the pictures `CogView.generate` gives
    with that `rerank_by`); the report's accuracy is the first one's, and "rerankers" holds
    each one's. "seconds_per_image" holds, per reranker ("none" without reranking), the
    seconds of drawing the candidates and of its scoring, per image kept."""
    if not prompts:
        return {"n": 0, "accuracy": {}}
    texts = [p for p, _ in prompts for _ in range(n_per_prompt)]
    attrs = [a for _, a in prompts for _ in range(n_per_prompt)]
    update = (progress or Progress()).start(len(texts) * rerank, what)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long prompts are cut to the model's length
        drawn = pipe.candidates([p for p, _ in prompts], n_per_prompt * rerank,
                                generator=generator, progress=update, **asdict(sampling))
    sampling_s = (time.perf_counter() - start) / len(texts)
    picked: dict[str, dict[str, Any]] = {}
    for by in rerank_by if rerank > 1 else ("none",):
        start = time.perf_counter()
        codes = pipe.best_of(drawn, rerank, by) if rerank > 1 else drawn.codes
        ranking_s = (time.perf_counter() - start) / len(texts)
        images = pipe.decode(codes, sampling.batch_size)
        # detect.score, with the detections kept for the examples of failures
        found = [detect.detections_to_json(detect.detect(img)) for img in images]
        scores = [shapes.compare(a, d) for a, d in zip(attrs, found, strict=True)]
        wrong = [
            {"prompt": t, "detected": d["objects"]}
            for t, d, s in zip(texts, found, scores, strict=True)
            if not s["all"]
        ]
        picked[by] = {
            "accuracy": accuracy_table(scores),
            "seconds_per_image": {"sampling": round(sampling_s, 4),
                                  "reranking": round(ranking_s, 4),
                                  "total": round(sampling_s + ranking_s, 4)},
            "wrong_examples": wrong[:5],
            "scores": scores,
        }
    first = next(iter(picked.values()))
    out = {"n": len(texts), "accuracy": first["accuracy"],
           "wrong_examples": first["wrong_examples"]}
    if breakdown:
        out["by"] = {name: _grouped([label for label in labels for _ in range(n_per_prompt)],
                                    first["scores"])
                     for name, labels in breakdown.items()}
    if rerank > 1:
        out["rerank_by"] = rerank_by[0]
        out["rerankers"] = {by: {"accuracy": r["accuracy"]} for by, r in picked.items()}
    out["seconds_per_image"] = {by: r["seconds_per_image"] for by, r in picked.items()}
    return out


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


@dataclass
class InpaintCase:
    """One inpainting to score: an image, what to regenerate, the prompt and the truth."""

    image: np.ndarray  # uint8 (S, S, 3)
    pixel_mask: np.ndarray  # (S, S) bool, True = regenerate
    prompt: str
    expected: dict[str, Any]  # attributes the composite should show (shapes attribute dict)
    region: dict[str, Any]  # the object the mask is about (scored on its own)
    erased: dict[str, Any] | None = None  # an edit's object that the mask erased
    stated: tuple[str, ...] = shapes.ATTRIBUTES  # the region's attributes the prompt pins down


def _inpaint_cases(
    pipe: Any,
    cases: Sequence[InpaintCase],
    sampling: SamplingConfig,
    generator: torch.Generator,
    *,
    update: Callable[[int], None],
    rerank: int,
    rerank_by: str | None = None,
) -> dict[str, Any]:
    """Inpaint each case as `cogview inpaint` does (`CogView.inpaint`: context encoded with the
    masked cells blanked, the best of `rerank` versions by self-reranking, composited into the
    original), detect, and score the composite against the case's truth."""
    inside, outside_decoded, cells = [], [], []
    region_scores, scene_scores = [], []
    exact = True
    for case in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # over-long prompts are cut to the model's length
            result = pipe.inpaint(case.image, case.pixel_mask, case.prompt, 1, rerank=rerank,
                                  rerank_by=rerank_by, generator=generator, **asdict(sampling))
        composite, decoded = result.arrays[0], pipe.decode(result.codes[:1])[0]  # (S, S, 3)
        mask, truth = case.pixel_mask, case.image
        exact = exact and bool(np.array_equal(composite[~mask], truth[~mask]))
        inside.append(_psnr(composite[mask], truth[mask]))
        outside_decoded.append(_psnr(decoded[~mask], truth[~mask]))
        cells.append(int(resize_mask(mask, pipe.grid).sum()))
        found = detect.detections_to_json(detect.detect(composite))
        want = {k: case.region[k] for k in shapes.ATTRIBUTES}
        score = shapes.compare({"objects": [want], "relation": None}, found)
        score.pop("count")
        score["all"] = all(score[a] for a in shapes.ATTRIBUTES)
        score["all_stated"] = all(score[a] for a in case.stated)
        region_scores.append(score)
        scene = shapes.compare(case.expected, found)
        n = len(case.expected["objects"])
        scene_scores.append({
            "all": scene["all"],
            "count": scene["count"],
            **({"kept": all(v for k, v in scene.items() if k.endswith("_1"))} if n == 2 else {}),
        })  # fmt: skip
        update(1)
    return {
        "n": len(cases),
        "mean_masked_cells": _mean(cells),
        "psnr_inside": _mean(inside),
        "outside_exact": exact,
        "psnr_outside_decoded": _mean(outside_decoded),
        "object_accuracy": accuracy_table(region_scores),
        "scene": accuracy_table(scene_scores),
        "scene_all": accuracy_table(scene_scores).get("all", float("nan")),
    }


def _cell_pixels(cell_mask: Tensor, size: int) -> np.ndarray:
    f = size // cell_mask.shape[0]
    return cell_mask.repeat_interleave(f, 0).repeat_interleave(f, 1).numpy()


def stated_attributes(caption: str, obj: dict[str, Any]) -> tuple[str, ...]:
    """The attributes of `obj` that a caption pins down: those it states of the object it
    names with obj's colour and shape, and the position (the mask holds it). A caption that
    leaves out the size asks for none: from a context without leaks, no model can know it."""
    for named in shapes.parse_caption(caption)["objects"]:
        if (named.get("colour"), named.get("shape")) == (obj["colour"], obj["shape"]):
            return tuple(a for a in shapes.ATTRIBUTES if a in named or a == "position")
    return shapes.ATTRIBUTES


def eval_inpainting(
    pipe: Any,
    held: HeldOut,
    indices: Sequence[int],
    sampling: SamplingConfig,
    generator: torch.Generator,
    *,
    progress: Progress | None = None,
    seed: int = 0,
    rerank: int = 1,
    rerank_by: str | None = None,
) -> dict[str, Any]:
    """Reconstruction: mask one object's cells, regenerate them with the image's own caption,
    composite, and score whether the same object comes back: every attribute ("all"), and
    the attributes the caption states ("all_stated": a caption may leave out the size). With
    `rerank` > 1 each result is the best of `rerank` versions by reranking (`rerank_by`; None:
    the model's default). Which object
    of a two-object scene is masked is drawn from `seed`. This measures repair, not editing
    (`eval_edits`)."""
    if not indices:
        return {"n": 0}
    images = _hwc(held.images[list(indices)])  # (n, S, S, 3)
    size = images.shape[1]
    pick = torch.Generator().manual_seed(seed)
    cases = []
    for k, i in enumerate(indices):
        attrs = held.attributes[i]
        objs = attrs["objects"]
        target = objs[int(torch.randint(len(objs), (1,), generator=pick))]
        cell_mask = object_cells(target, pipe.grid)
        cases.append(InpaintCase(images[k], _cell_pixels(cell_mask, size), held.captions[i],
                                 attrs, target, stated=stated_attributes(held.captions[i], target)))
    update = (progress or Progress()).start(len(cases), "inpaint")
    out = _inpaint_cases(pipe, cases, sampling, generator, update=update, rerank=rerank,
                         rerank_by=rerank_by)
    out["psnr_outside"] = PSNR_CAP_DB if out["outside_exact"] else float("nan")
    return out


EDIT_STYLES = ("region", "scene", "blob")


def _blob(box: Sequence[float], avoid: Sequence[float], size: int,
          rng: np.random.Generator) -> np.ndarray:
    """A brush blob (size, size) bool over a box (fractions): a rounded, wobbly shape that
    covers the box with a margin of 0.5-2 px, not aligned with the code grid, and keeps off
    the `avoid` box (the kept object) by a pixel, as a careful hand paints."""
    x0, y0, x1, y1 = (v * size for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ax = (x1 - x0) / 2 + rng.uniform(0.5, 2.0)
    ay = (y1 - y0) / 2 + rng.uniform(0.5, 2.0)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    theta = np.arctan2(yy - cy, xx - cx)
    phase = rng.uniform(0, 2 * np.pi)
    wobble = 1 + 0.08 * np.sin(3 * theta + phase)
    # a superellipse of exponent 4: a square with rounded corners, which holds the box
    r = (np.abs((xx - cx) / ax) ** 4 + np.abs((yy - cy) / ay) ** 4) ** 0.25
    blob = r <= wobble * 2 ** 0.25
    a0, b0, a1, b1 = (v * size for v in avoid)
    keep_off = (xx > a0 - 1) & (xx < a1 + 1) & (yy > b0 - 1) & (yy < b1 + 1)
    return blob & ~keep_off


def edit_cases(
    held: HeldOut, indices: Sequence[int], size: int, grid: tuple[int, int], style: str, seed: int
) -> list[InpaintCase]:
    """Edits of two-object scenes: one object erased and a different object (another shape and
    another colour, its size drawn) asked for in its place. The mask covers the cells of the
    larger of the two objects' boxes (a brush blob over it for "blob"); the prompt names the
    new object alone ("region", "blob") or is the caption of the edited scene ("scene"). The
    composite should show the new object and the kept one, and nothing else."""
    if style not in EDIT_STYLES:
        raise ValueError(f"style must be one of {EDIT_STYLES}, got {style!r}")
    rng = np.random.default_rng([seed, EDIT_STYLES.index(style)])
    cases = []
    for i in indices:
        attrs = held.attributes[i]
        objs = [dict(o) for o in attrs["objects"]]
        gone = int(rng.integers(2))
        erased, kept = objs[gone], objs[1 - gone]
        while True:
            colour = shapes.COLOURS_LIST[int(rng.integers(len(shapes.COLOURS_LIST)))]
            shape = shapes.SHAPES[int(rng.integers(len(shapes.SHAPES)))]
            if (colour != erased["colour"] and shape != erased["shape"]
                    and (colour, shape) != (kept["colour"], kept["shape"])):
                break
        new = {"colour": colour, "shape": shape,
               "size": shapes.SIZES[int(rng.integers(len(shapes.SIZES)))],
               "position": erased["position"], "row": erased["row"], "col": erased["col"]}
        larger = max((erased, new), key=lambda o: shapes.SIZE_FRACTIONS[o["size"]])
        box = shapes.object_box(larger)
        if style == "blob":
            mask = _blob(box, shapes.object_box(kept), size, rng)
        else:
            mask = _cell_pixels(box_cells(box, *grid), size)
        if style == "scene":
            first, second = (new, kept) if rng.random() < 0.5 else (kept, new)
            a, b = shapes.scene_from_json({"objects": [first, second]}).objects
            relation = shapes.relations_between(a, b)
            described = [{k: o[k] for k in ("size", "colour", "shape")} for o in (first, second)]
            prompt = shapes.canonical_caption(
                {"objects": described, "relation": relation[int(rng.integers(len(relation)))]}
            )
        else:
            prompt = shapes.canonical_caption({"objects": [new], "relation": None})
        truth = [{k: o[k] for k in shapes.ATTRIBUTES} for o in (new, kept)]
        cases.append(InpaintCase(held.images_hwc(i), mask, prompt,
                                 {"objects": truth, "relation": None}, new, erased))
    return cases


def eval_edits(
    pipe: Any,
    held: HeldOut,
    indices: Sequence[int],
    sampling: SamplingConfig,
    generator: torch.Generator,
    *,
    styles: Sequence[str] = EDIT_STYLES,
    progress: Progress | None = None,
    seed: int = 0,
    rerank: int = 1,
    rerank_by: str | None = None,
) -> dict[str, Any]:
    """The edit benchmark (`edit_cases`) for each prompt style: "all" is the new object with
    every attribute right, the kept object unchanged and no other object. "leak" inpaints the
    region cases with an empty prompt: how often the erased object comes back unasked (what
    the context tells the model of it)."""
    two = [i for i in indices if len(held.attributes[i]["objects"]) == 2]
    size = int(held.images.shape[-1])
    out: dict[str, Any] = {"n_scenes": len(two)}
    cases = {style: edit_cases(held, two, size, pipe.grid, style, seed)
             for style in dict.fromkeys([*styles, "region"])}
    for style in styles:
        update = (progress or Progress()).start(len(cases[style]), f"edit ({style})")
        out[style] = _inpaint_cases(pipe, cases[style], sampling, generator, update=update,
                                    rerank=rerank, rerank_by=rerank_by)
    if two:
        unasked = [replace(c, prompt="", region=c.erased) for c in cases["region"]]
        update = (progress or Progress()).start(len(unasked), "edit (leak)")
        leak = _inpaint_cases(pipe, unasked, sampling, generator, update=update, rerank=1)
        out["leak"] = {"n": leak["n"],
                       "erased_redrawn": leak["object_accuracy"].get("all", float("nan"))}
    return out


def eval_fashion(
    fashion: FashionEval,
    n_per_class: int,
    sampling: SamplingConfig,
    generator: torch.Generator,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Classifier accuracy on generated images of each class prompt and on real test images."""
    from cogview.bench.classifier import accuracy

    pipe, clf, names = fashion.pipeline, fashion.classifier, fashion.class_names
    n_classes = len(fashion.prompts)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    texts = [fashion.prompts[int(c)] for c in labels]
    update = (progress or Progress()).start(len(texts), "fashion")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long prompts are cut to the model's length
        out = pipe.generate(texts, 1, rerank=1, generator=generator, progress=update,
                            **asdict(sampling))
    generated = torch.from_numpy(np.concatenate([o.arrays for o in out])).permute(0, 3, 1, 2)
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


RECALL_KS = (1, 5)
SAME_CAPTION = ("an item whose caption equals the query's counts as found: identical captions "
                "say the same of their scenes, so no ranking can tell them apart")


def _recalls(scores: Tensor, relevant: Tensor) -> dict[str, float]:
    from cogview.contrastive import recall_at

    return {f"r@{k}": v for k, v in recall_at(scores, relevant, RECALL_KS).items()}


def _image_embeddings(pipe: Any, images: Tensor) -> Tensor:
    """Unit embeddings (N, E) of uint8 images (N, 3, S, S) by the contrastive head."""
    from cogview.contrastive import embed_images

    codes = encode_images(pipe.vqvae, images)
    return embed_images(pipe.model, pipe.tokenizer, codes).float().cpu()


def caption_retrieval(text: Tensor, image: Tensor, captions: Sequence[str]) -> dict[str, Any]:
    """Recall@k both ways between N captions and their N images from unit embeddings (N, E):
    text -> image ranks the images for each caption, image -> text the captions for each
    image; an item whose caption equals the query's is relevant (`SAME_CAPTION`)."""
    from cogview.contrastive import same_key

    same = same_key(captions)  # (N, N)
    scores = text @ image.T  # (N captions, N images)
    return {
        "n": len(captions),
        "distinct_captions": len(set(captions)),
        "relevant_per_query": float(same.sum(1).float().mean()) if len(captions) else 0.0,
        "text_to_image": _recalls(scores, same),
        "image_to_text": _recalls(scores.T, same.T),
    }


def scene_description(attributes: dict[str, Any], i: int) -> dict[str, Any]:
    """What a prompt of the evaluation sets states of a scene (`shapes.eval_prompts`' form):
    one object with colour, shape, size and position; two with colour, shape and size and one
    relation that holds between them (the i-th of those that do)."""
    objects = attributes["objects"]
    if len(objects) == 1:
        return {"objects": [{k: objects[0][k] for k in shapes.ATTRIBUTES}], "relation": None}
    relations = attributes.get("relations") or shapes.relations_between(
        *shapes.scene_from_json(attributes).objects)
    return {"objects": [{k: o[k] for k in ("colour", "shape", "size")} for o in objects],
            "relation": relations[i % len(relations)]}


def _fits(description: dict[str, Any], attributes: dict[str, Any]) -> bool:
    """Whether a scene has every attribute a description states (`shapes.compare`)."""
    def kinds(objs: list[dict[str, Any]]) -> list[tuple[str, ...]]:
        return sorted((o["colour"], o["shape"], o["size"]) for o in objs)

    if kinds(description["objects"]) != kinds(attributes["objects"]):
        return False  # the cheap test first: compare tries every pairing of objects
    return shapes.compare(description, attributes)["all"]


def description_retrieval(text: Tensor, image: Tensor, descriptions: Sequence[dict[str, Any]],
                          attributes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Text -> image recall@k of one description per scene (unit embeddings (N, E)) among the N
    images, a scene relevant when it has everything its query states (`_fits`)."""
    relevant = torch.tensor([[_fits(d, a) for a in attributes] for d in descriptions])
    return {"n": len(descriptions),
            "relevant_per_query": float(relevant.sum(1).float().mean()),
            "text_to_image": _recalls(text @ image.T, relevant)}


def eval_retrieval(pipe: Any, held: HeldOut, source: str) -> dict[str, Any]:
    """Retrieval among held-out scenes by the contrastive head (skipped, with a note, for a model
    without one): each caption against the images and each image against the captions
    (`caption_retrieval`); and for the scenes with attributes, their description in the
    wording of the evaluation prompts (`shapes.canonical_caption`) and in held-out wording
    (`shapes.paraphrase`, the paraphrased prompt set's templates) against the images
    (`description_retrieval`). `source` says where the scenes come from."""
    if not pipe.has_contrastive_head:
        return {"skipped": NO_HEAD}
    keep = [i for i, c in enumerate(held.captions) if c.strip()]  # an empty text has no embedding
    captions = [held.captions[i] for i in keep]
    image = _image_embeddings(pipe, held.images[keep])
    out: dict[str, Any] = {
        "scenes": source,
        "relevant": SAME_CAPTION,
        "captions": caption_retrieval(pipe.embed_texts(captions).cpu(), image, captions),
    }
    with_attrs = set(held.with_attributes())
    scored = [k for k, i in enumerate(keep) if i in with_attrs]
    if scored:
        attrs = [held.attributes[keep[k]] for k in scored]
        described = [scene_description(a, k) for k, a in enumerate(attrs)]
        wordings = {"canonical": [shapes.canonical_caption(d) for d in described],
                    "paraphrased": [shapes.paraphrase(d, k) for k, d in enumerate(described)]}
        for name, queries in wordings.items():
            out[f"descriptions_{name}"] = description_retrieval(
                pipe.embed_texts(queries).cpu(), image[scored], described, attrs)
    return out


def eval_fashion_retrieval(fashion: FashionEval, n: int) -> dict[str, Any]:
    """Class-level retrieval by the fashion model's contrastive head among the first `n` real
    test images (skipped, with a note, for a model without one): text -> image recall@k of
    each class prompt (a hit: an image of its class among the k best) and image -> text, the
    zero-shot classification accuracy@k over the class prompts."""
    pipe = fashion.pipeline
    if not pipe.has_contrastive_head:
        return {"skipped": NO_HEAD}
    images, labels = fashion.test_images[:n], fashion.test_labels[:n].cpu()
    scores = pipe.embed_texts(fashion.prompts).cpu() @ _image_embeddings(pipe, images).T
    # (classes, n)
    relevant = labels[None, :] == torch.arange(len(fashion.prompts))[:, None]
    return {"n_images": len(images), "n_classes": len(fashion.prompts),
            "text_to_image": _recalls(scores, relevant),
            "zero_shot_accuracy": _recalls(scores.T, relevant.T)}


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
    sampling_inpaint: SamplingConfig | None = None,
    loss_fn: LossFn | None = None,
    fashion: FashionEval | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Every part of the evaluation that `config` asks for; a JSON-able dict.

    Inpainting and edits sample with `sampling_inpaint` (`CogView.sampling_config(
    inpainting=True)`; None: `sampling`), every other part with `sampling`.

    `loss_fn(pipe, codes (N, h, w), text_ids, target_ids)` returns held-out losses per task
    (the trainer's evaluation; captioning scored on the targets); without it, or without
    held-out data, those parts are left out.
    """
    device = _device(pipe)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    inpainting = sampling_inpaint or sampling
    timings: dict[str, float] = {}
    report: dict[str, Any] = {
        "model": pipe.meta.get("path"),
        "step": pipe.meta.get("step"),
        "eval_config": asdict(config),
        "sampling": asdict(sampling),
        "sampling_inpaint": asdict(inpainting),
    }

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        return out

    def relations(prompts: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, list[str]]:
        return {"relation": [a["relation"] for _, a in prompts]}

    if config.n_prompts:
        n = config.n_prompts
        one = shapes.eval_prompts(1, min(n, 324))
        two = shapes.eval_prompts(2, n)
        report["t2i"] = {
            "one_object": timed(
                "t2i_one_object",
                lambda: eval_text_to_image(
                    pipe, one, config.n_per_prompt, sampling, generator,
                    progress=progress, what="t2i (1 object)", rerank=config.rerank,
                    rerank_by=config.rerank_by,
                ),
            ),
            "two_objects": timed(
                "t2i_two_objects",
                lambda: eval_text_to_image(
                    pipe, two, config.n_per_prompt, sampling, generator,
                    progress=progress, what="t2i (2 objects)", rerank=config.rerank,
                    rerank_by=config.rerank_by, breakdown=relations(two),
                ),
            ),
        }  # fmt: skip
    if config.n_paraphrase:
        n = config.n_paraphrase
        sets = (("one_object_paraphrased", "t2i (1 object, paraphrased)",
                 shapes.paraphrase_prompts(1, min(n, 324))),
                ("two_objects_paraphrased", "t2i (2 objects, paraphrased)",
                 shapes.paraphrase_prompts(2, n)))
        t2i = report.setdefault("t2i", {})
        for name, what, prompts in sets:
            n_objects = len(prompts[0][1]["objects"]) if prompts else 1
            groups = {"wording": [shapes.paraphrase_wording(n_objects, i)
                                  for i in range(len(prompts))]}
            if n_objects == 2:
                groups.update(relations(prompts))
            t2i[name] = timed(f"t2i_{name}", lambda prompts=prompts, what=what, groups=groups: (
                eval_text_to_image(pipe, prompts, config.n_per_prompt, sampling, generator,
                                   progress=progress, what=what, rerank=config.rerank,
                                   rerank_by=config.rerank_by, breakdown=groups)))
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
                    inpainting,
                    generator,
                    progress=progress,
                    seed=config.seed,
                    rerank=config.inpaint_group,
                    rerank_by=config.inpaint_reranker,
                ),
            )
        if config.n_edit:
            two = [i for i in scored if len(held.attributes[i]["objects"]) == 2]
            idx = two[: config.n_edit]
            report["edits"] = timed(
                "edits",
                lambda: eval_edits(
                    pipe, held, idx, inpainting, generator, progress=progress,
                    seed=config.seed, rerank=config.inpaint_group,
                    rerank_by=config.inpaint_reranker,
                ),
            )  # fmt: skip
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
    if config.n_retrieval:
        n = config.n_retrieval
        if held is not None and len(held):
            scenes, source = held.first(n), "from the held-out data"
        else:
            scenes = drawn_scenes(n, pipe.image_size, config.seed)
            source = f"drawn (seed {config.seed}, stream {SCENE_STREAM})"
        report["retrieval"] = timed("retrieval", lambda: eval_retrieval(pipe, scenes, source))
    if fashion is not None and config.n_retrieval:
        report["fashion_retrieval"] = timed(
            "fashion_retrieval", lambda: eval_fashion_retrieval(fashion, config.n_retrieval))
    if fashion is not None and config.n_fashion_per_class:
        report["fashion"] = timed(
            "fashion",
            lambda: eval_fashion(
                fashion, config.n_fashion_per_class, fashion.sampling or sampling, generator,
                progress=progress,
            ),
        )
    # wall-clock times apart from the scores, which are a function of the seed alone
    per_image = {name: part.pop("seconds_per_image")
                 for name, part in report.get("t2i", {}).items() if "seconds_per_image" in part}
    if per_image:
        report["seconds_per_image"] = per_image
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

    def timing(part: str, what: str, s: dict[str, float]) -> None:
        rows.append((part, f"s/image{what}", f"{s['total']:.3f} (sampling {s['sampling']:.3f} "
                     f"+ reranking {s['reranking']:.3f})"))

    def recall_rows(part: str, direction: str, recalls: dict[str, float]) -> None:
        for k, v in recalls.items():
            rows.append((part, f"{direction} R@{k.removeprefix('r@')}", _pct(v)))

    t2i = report.get("t2i", {})
    for name, label in (("one_object", "t2i 1 object"), ("two_objects", "t2i 2 objects"),
                        ("one_object_paraphrased", "t2i 1 object, paraphrased"),
                        ("two_objects_paraphrased", "t2i 2 objects, paraphrased")):
        if name in t2i:
            acc_rows(label, t2i[name]["accuracy"], t2i[name]["n"])
            if "rerank_by" in t2i[name]:
                rows.append((label, "reranked by", t2i[name]["rerank_by"]))
            times = report.get("seconds_per_image", {}).get(name, {})
            for by, r in t2i[name].get("rerankers", {}).items():
                rows.append((label, f"all, reranked by {by}", _pct(r["accuracy"].get("all"))))
                if by in times:
                    timing(label, f", reranked by {by}", times[by])
            if "none" in times:
                timing(label, "", times["none"])
            for grouping, groups in t2i[name].get("by", {}).items():
                for group, acc in groups.items():
                    wanted = [k for k in ("relation", "all") if k in acc]
                    rows.append((label, f"{grouping} '{group}' (n={acc['n']})",
                                 ", ".join(f"{k} {_pct(acc[k])}" for k in wanted)))
    if "captioning" in report:
        cap = report["captioning"]
        acc_rows("captioning", cap["accuracy"], cap["n"])
        for k, v in cap.get("stated", {}).items():
            rows.append(("captioning", f"states {k}", _pct(v)))
    if "inpainting" in report:
        inp = report["inpainting"]
        part = "inpainting (reconstruction)"
        rows.append((part, "n", str(inp["n"])))
        if inp["n"]:
            rows.append((part, "masked cells (mean)", f"{inp['mean_masked_cells']:.1f}"))
            rows.append((part, "PSNR inside mask", _db(inp["psnr_inside"])))
            exact = "exact" if inp["outside_exact"] else "NOT exact"
            rows.append((part, "PSNR outside (composited)", exact))
            rows.append((part, "PSNR outside (decoded)", _db(inp["psnr_outside_decoded"])))
            for k, v in inp["object_accuracy"].items():
                label = "object all (stated attributes)" if k == "all_stated" else f"object {k}"
                rows.append((part, label, _pct(v)))
            rows.append((part, "scene all", _pct(inp["scene_all"])))
    if "edits" in report:
        ed = report["edits"]
        for style in EDIT_STYLES:
            if style not in ed or not ed[style]["n"]:
                continue
            e, part = ed[style], f"edit ({style})"
            rows.append((part, "n", str(e["n"])))
            rows.append((part, "masked cells (mean)", f"{e['mean_masked_cells']:.1f}"))
            rows.append((part, "unmasked pixels", "exact" if e["outside_exact"] else "NOT exact"))
            rows.append((part, "new object all", _pct(e["object_accuracy"].get("all"))))
            for k in shapes.ATTRIBUTES:
                rows.append((part, f"new object {k}", _pct(e["object_accuracy"].get(k))))
            rows.append((part, "kept object unchanged", _pct(e["scene"].get("kept"))))
            rows.append((part, "no other object", _pct(e["scene"].get("count"))))
            rows.append((part, "all (edit right)", _pct(e["scene_all"])))
        if "leak" in ed:
            rows.append(("edit (empty prompt)", "erased object redrawn",
                         _pct(ed["leak"]["erased_redrawn"])))
    if "fashion" in report:
        fa = report["fashion"]
        rows.append(("fashion", "classifier on generated", _pct(fa["generated_accuracy"])))
        rows.append(("fashion", "classifier on real test", _pct(fa["real_accuracy"])))
        for name, c in fa["per_class"].items():
            rows.append(("fashion", f"{name} (gen / real)", f"{_pct(c['generated'])} / "
                         f"{_pct(c['real'])}"))  # fmt: skip
    if "retrieval" in report:
        ret, part = report["retrieval"], "retrieval"
        if "skipped" in ret:
            rows.append((part, "skipped", ret["skipped"]))
        else:
            cap = ret["captions"]
            rows.append((part, "scenes", f"{cap['n']} {ret['scenes']}; "
                         f"{cap['distinct_captions']} distinct captions"))
            rows.append((part, "found", "an item with the query's caption (identical captions "
                         "say the same of their scenes)"))
            recall_rows(part, "caption->image", cap["text_to_image"])
            recall_rows(part, "image->caption", cap["image_to_text"])
            for name, label in (("canonical", "eval wording"), ("paraphrased", "paraphrased")):
                if f"descriptions_{name}" in ret:
                    d = ret[f"descriptions_{name}"]
                    recall_rows(f"{part} (descriptions)", f"{label}->image", d["text_to_image"])
            if "descriptions_canonical" in ret:
                rows.append((f"{part} (descriptions)", "found",
                             "a scene with everything the description states"))
    if "fashion_retrieval" in report:
        fr, part = report["fashion_retrieval"], "fashion retrieval"
        if "skipped" in fr:
            rows.append((part, "skipped", fr["skipped"]))
        else:
            rows.append((part, "test images", str(fr["n_images"])))
            recall_rows(part, "class prompt->image", fr["text_to_image"])
            for k, v in fr["zero_shot_accuracy"].items():
                rows.append((part, f"zero-shot accuracy@{k.removeprefix('r@')}", _pct(v)))
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
