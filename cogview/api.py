"""The library's front door: one object that loads a model folder and samples from it.

    from cogview import CogView

    pipe = CogView.from_pretrained("shapes")           # a shipped name or a model folder
    out = pipe.generate("a red circle at the top left", n=4, seed=0)
    out.images[0].save("circle.png")                   # PIL images; out.arrays: uint8 numpy
    edit = pipe.inpaint(image, mask, "a small yellow triangle at the bottom right", n=4)
    best = pipe.caption(image, n=3).texts[0]
    big = pipe.superres(out.images[0])                 # with the shipped SR model

`CogView` owns what turns a prompt into pictures: the model folder's sampling defaults
(`sampling.json`, with its "inpaint" settings on top for inpainting, overridden by keyword
arguments), reranking (by the model's own caption likelihood, its contrastive head, or both:
`rerank_by`), the leak-free inpainting context, compositing into the original picture and
super-resolution. The command line, the evaluation and the benchmarks are thin callers of it.
No printing: notes for people are the caller's to make.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cogview.contrastive import has_head
from cogview.errors import UserError
from cogview.images import fit, from_tensor, mask_from_image, resize_mask, to_rgb, to_tensor
from cogview.inpainting import blank_codes, context_codes
from cogview.pipeline import Pipeline, load_pipeline, restater
from cogview.pretrained import decode_codes
from cogview.sampling import (
    RegionView,
    SamplingConfig,
    best_of_groups,
    caption_logprob,
    check_reranker,
    codebook_clusters,
    generate_captions,
    generate_images,
    inpaint,
    keep_best,
    prompt_scores,
    restated_ids,
)
from cogview.sampling import rerank as draw_and_rerank

CLUSTERS_FILE = "clusters.safetensors"
DTYPES = ("float32", "bfloat16")
Progress = Callable[[int], None]  # called with the number of candidates each batch finished

# cluster assignments of model folders that could not take the cache file, this process
_CLUSTER_MEMO: dict[tuple[str, int, int, str], Tensor] = {}


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than the model reads; the rest was cut."""


@dataclass
class Images:
    """Pictures of one prompt (or one inpainting): uint8 arrays and their base codes."""

    arrays: np.ndarray  # uint8 (n, H, W, 3)
    codes: Tensor  # (n, h, w) base-resolution codes
    scores: Tensor | None = None  # reranking score of each (rerank_by), kept from candidates

    @property
    def images(self) -> list[Image.Image]:
        return [Image.fromarray(a) for a in self.arrays]


@dataclass
class Candidates:
    """Undecoded candidates of P prompts, `per_prompt` consecutive rows each
    (`CogView.candidates`), ready for `CogView.best_of`, with what drew them, so that
    `best_of` can draw more of a group the way the first were drawn."""

    codes: Tensor  # (P * per_prompt, h, w)
    ids: list[list[int]]  # each row's prompt as text ids (what the caption score reads)
    conditions: list[Any]  # what each row was drawn from: its ids, or an EncodedText
    config: SamplingConfig  # the sampling settings that drew them
    generator: torch.Generator  # further draws continue its stream
    clusters: Tensor | None = None
    progress: Progress | None = None
    # candidates drawn in further rounds, by (group size, group index): each round's codes,
    # kept so that every reranker's rounds pick from the same draws
    more: dict[tuple[int, int], list[Tensor]] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.config.batch_size


@dataclass
class Captions:
    """Captions of one image, best first, with their mean log-likelihood per token."""

    texts: list[str]
    scores: list[float]


def _as_rgb_array(image: Image.Image | np.ndarray, name: str) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image, name), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise UserError(f"{name}: expected a PIL image or uint8 (H, W, 3) array, got "
                        f"{arr.dtype} {arr.shape}")
    return arr


def _fit(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """A picture (PIL or uint8 array) at `size` x `size` (`images.fit`)."""
    return fit(image if isinstance(image, Image.Image) else _as_rgb_array(image, "image"), size)


def _as_mask(mask: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(mask, Image.Image):
        return mask_from_image(mask)
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise UserError(f"mask: expected (H, W) values, got shape {arr.shape}")
    return arr.astype(bool)


# ---------------------------------------------------------------------------------------------
# the pipeline object


class CogView:
    """A CogLM with its tokenizer, VQVAE and sampling defaults, and optionally an SR model."""

    def __init__(self, pipeline: Pipeline, sr: Any = None) -> None:
        self.pipeline = pipeline
        self.sr = sr  # cogview.superres.SRPipeline, or None until `load_sr`

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        sr: str | Path | bool | None = None,
    ) -> CogView:
        """Load a CogLM folder (or a training run: its newest step), or a shipped model by name
        (`shapes`, `fashion`; None: the default). `dtype="bfloat16"` runs the transformer in
        bf16 (the VQVAE and the sampling arithmetic stay in float32); `sr` loads an SR folder
        too (True: the shipped one)."""
        from cogview.defaults import model_path_or_default
        from cogview.devices import parse_device

        if dtype not in DTYPES:
            raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        device = parse_device(str(device)) if not isinstance(device, torch.device) else device
        pipe = load_pipeline(model_path_or_default(name_or_dir, "coglm"), device=device)
        if dtype != "float32":
            # weights and KV cache in bf16 halve the memory traffic of decoding
            pipe.model.to(getattr(torch, dtype))
        out = cls(pipe)
        if sr:
            out.load_sr(None if sr is True else sr)
        return out

    # parts ---------------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        return self.pipeline.model

    @property
    def tokenizer(self) -> Any:
        return self.pipeline.tokenizer

    @property
    def vqvae(self) -> Any:
        return self.pipeline.vqvae

    @property
    def image_size(self) -> int:
        return self.pipeline.image_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.pipeline.grid

    @property
    def meta(self) -> dict[str, Any]:
        """The model folder's extra JSON, with its "path" and "step"."""
        return self.pipeline.meta

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def text_encoder(self) -> Any:
        """The frozen text encoder the model reads its prompts with, or None (text ids)."""
        return self.pipeline.text_encoder

    def conditions(self, prompts: Sequence[str], ids: Sequence[Sequence[int]]) -> list[Any]:
        """What each prompt conditions sampling on: its text ids (`encode_prompt`), or for a
        model with a text encoder its `EncodedText` (reranking still scores the ids)."""
        enc = self.text_encoder
        if enc is None:
            return [list(i) for i in ids]
        from cogview.masks import EncodedText

        return [EncodedText(p, s) for p, s in zip(prompts, enc.encode(prompts), strict=True)]

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Unit embeddings (N, E) of texts by the contrastive head, each read as the model reads
        a prompt (cut to its text length, silently: captions in bulk; a text encoder's states
        for a model with one); `contrastive.NoContrastiveHead` for a model without a head,
        ValueError for an empty text."""
        from cogview.contrastive import embed_texts
        from tokenizer import TextTruncatedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TextTruncatedWarning)
            ids = self.tokenizer.encode_texts(list(texts))
        return embed_texts(self.model, self.tokenizer, self.conditions(list(texts), ids),
                           batch_size)

    @property
    def restate(self) -> Any:
        """How reranking restates a prompt (the model's domain grammar), or None."""
        return restater(self.pipeline.defaults.restate)

    @property
    def rerank_default(self) -> int:
        """Candidates per image of the model's sampling.json (1: no reranking)."""
        return self.pipeline.defaults.rerank

    @property
    def inpaint_rerank_default(self) -> int:
        """Candidates per inpainted version: the model's sampling.json "inpaint" "rerank",
        else its "rerank"."""
        defaults = self.pipeline.defaults
        return defaults.inpaint_rerank or defaults.rerank

    @property
    def rerank_by_default(self) -> str:
        """How the model's sampling.json reranks (`sampling.RERANKERS`; "caption" unless it
        says otherwise)."""
        return self.pipeline.defaults.rerank_by

    @property
    def inpaint_rerank_by_default(self) -> str:
        """How inpainting reranks: the model's sampling.json "inpaint" "rerank_by", else its
        "rerank_by"."""
        defaults = self.pipeline.defaults
        return defaults.inpaint_rerank_by or defaults.rerank_by

    @property
    def has_contrastive_head(self) -> bool:
        """Whether the model embeds prompts and images (reranking by "contrastive", "both")."""
        return has_head(self.model)

    def reranker(self, rerank_by: str | None, inpainting: bool = False) -> str:
        """`rerank_by`, or the model's default (for inpainting, when `inpainting`) for None; an
        error of the `rerank_by` parameter unless the model can rerank that way
        (`sampling.check_reranker`)."""
        default = self.inpaint_rerank_by_default if inpainting else self.rerank_by_default
        by = default if rerank_by is None else rerank_by
        check_reranker(by, self.has_contrastive_head)
        return by

    def load_sr(self, path: str | Path | None = None) -> Any:
        """Load an SR folder (None: the shipped one) that reads this model's codes."""
        from cogview.defaults import default_model_path
        from cogview.superres import check_sr_fits, load_sr

        if path is None:
            path = default_model_path("sr")
            if path is None:
                raise UserError("no shipped default SR model in this install (train one with "
                                "`cogview train-sr`)")
        elif not Path(path).exists():
            raise UserError(f"{path}: no such SR checkpoint folder")
        sr = load_sr(path, device=self.device)
        check_sr_fits(sr, self.tokenizer, self.vqvae, self.grid)
        self.sr = sr
        return sr

    def sampling_config(self, images: bool = True, *, inpainting: bool = False,
                        **overrides: Any) -> SamplingConfig:
        """SamplingConfig defaults, then the model's sampling.json (image settings: not for
        captions), for `inpainting` then its "inpaint" fields, then `overrides` (None values
        are left out)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        defaults = self.pipeline.defaults
        fields = dict(defaults.fields) if images else {}
        if images and inpainting:
            fields.update(defaults.inpaint)
        return SamplingConfig(**{**fields, **given})

    def generator(self, seed: int | None = 0) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(0 if seed is None else seed)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Text ids of a prompt; a `PromptTruncatedWarning` when it is cut to the model's text
        length."""
        from tokenizer import TextTruncatedWarning

        tok = self.tokenizer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TextTruncatedWarning)
            ids = tok.encode_text(prompt)
        full = len(tok.encode_text(prompt, truncate=False))
        if full > len(ids):
            short = prompt if len(prompt) <= 40 else prompt[:37] + "..."
            warnings.warn(f"prompt {short!r} has {full} tokens; truncated to the model's "
                          f"{tok.max_text_len}", PromptTruncatedWarning, stacklevel=2)
        return ids

    def clusters(self, n_clusters: int, seed: int = 0) -> Tensor:
        """Cluster of each image code (K,), cached as `clusters.safetensors` in the model folder.

        The file records the cluster count, the seed and the VQVAE fingerprint, so a stale file
        is recomputed; a read-only folder keeps the result in memory for this process.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open, save_file

        meta = self.pipeline.meta
        folder = Path(meta["path"])
        fp = str(meta.get("vqvae_fingerprint", ""))
        key = (str(folder), n_clusters, seed, fp)
        want = {"n_clusters": str(n_clusters), "seed": str(seed), "vqvae_fingerprint": fp}
        if key in _CLUSTER_MEMO:
            return _CLUSTER_MEMO[key]
        path = folder / CLUSTERS_FILE
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:
                    stored = f.metadata() or {}
                if all(stored.get(k) == v for k, v in want.items()):
                    clusters = load_file(str(path))["clusters"].long()
                    if clusters.numel() == self.tokenizer.num_image_codes:
                        return clusters
            except (SafetensorError, OSError, KeyError, ValueError):
                pass  # a damaged cache is recomputed
        clusters = codebook_clusters(self.vqvae.codebook(), n_clusters, seed)
        tmp = folder / f".{CLUSTERS_FILE}.tmp-{os.getpid()}"
        try:
            save_file({"clusters": clusters.to(torch.int32)}, str(tmp), metadata=want)
            os.replace(tmp, path)
        except (OSError, SafetensorError):  # a read-only folder: keep it for this process only
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            _CLUSTER_MEMO[key] = clusters
        return clusters

    def decode(self, codes: Tensor, batch_size: int = 32) -> np.ndarray:
        """Base codes (B, h, w) -> uint8 images (B, H, W, 3)."""
        return decode_codes(self.vqvae, codes, batch_size)

    def encode(self, image: Image.Image | np.ndarray) -> Tensor:
        """Codes (h, w) of a picture brought to the model's size (`images.fit`)."""
        pixels = _fit(image, self.image_size)
        with torch.inference_mode():
            return self.vqvae.encode(to_tensor(pixels).to(self.device))[0]

    def _pictures(self, codes: Tensor, texts: Sequence[Sequence[int]], config: SamplingConfig,
                  generator: torch.Generator, superres: bool, sr_steps: int | None,
                  sr_temperature: float) -> np.ndarray:
        """Codes -> pictures, through the SR model when `superres`."""
        if not superres:
            return self.decode(codes, config.batch_size)
        if self.sr is None:
            self.load_sr()
        from cogview.superres import upscale_codes

        sampling = SamplingConfig(temperature=sr_temperature, batch_size=config.batch_size)
        b = config.batch_size
        out = []
        for i in range(0, codes.shape[0], b):
            _, images = upscale_codes(self.sr, codes[i : i + b], list(texts[i : i + b]),
                                      steps=sr_steps, sampling=sampling, generator=generator)
            out.append(from_tensor(images))
        return np.concatenate(out)

    def _check_candidates(self, candidates: int | None, n: int) -> None:
        if n < 1:
            raise UserError(f"n must be >= 1, got {n}")
        if candidates is not None and candidates < n:
            raise UserError(f"candidates ({candidates}) must be at least n ({n})")

    # tasks ---------------------------------------------------------------------------------

    def generate(
        self,
        prompts: str | Sequence[str],
        n: int = 1,
        *,
        candidates: int | None = None,
        rerank: int | None = None,
        rerank_by: str | None = None,
        rerank_floor: float | None = None,
        rerank_max: int | None = None,
        superres: bool = False,
        sr_steps: int | None = None,
        sr_temperature: float = 0.0,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
        **sampling: Any,
    ) -> Images | list[Images]:
        """Text-to-image: `n` pictures of each prompt ("" samples unconditionally).

        Each picture is the best of `rerank` candidates by reranking (default: the model's
        sampling.json; 1 = off), or of more where reranking is unsure (`rerank_floor`,
        `rerank_max`: see `best_of`); with `candidates` N, N are drawn per prompt and the n
        best kept instead. `rerank_by` scores candidates by the model's own log p(prompt | image)
        ("caption", CogView's self-reranking), by the contrastive cosine of prompt and image
        ("contrastive": a model with a contrastive head), or by both, each standardised over
        a prompt's candidates, summed ("both"); default: the model's sampling.json, else
        "caption". `sampling` holds SamplingConfig fields (temperature=0.7, cfg_scale=2, ...).
        One prompt gives one `Images`, a list of prompts a list.

            out = pipe.generate("a red circle at the top left", n=4, rerank=8,
                                rerank_by="contrastive")
        """
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        if not texts:
            raise UserError("no prompt")
        self._check_candidates(candidates, n)
        config = self.sampling_config(**sampling)
        group = 1 if candidates else (self.rerank_default if rerank is None else rerank)
        if group < 1:
            raise UserError(f"rerank must be >= 1, got {group}")
        by = self.reranker(rerank_by)
        clusters = self.clusters(config.n_clusters) if config.cluster else None
        g = generator if generator is not None else self.generator(seed)
        ids = [self.encode_prompt(t) for t in texts]
        conds = self.conditions(texts, ids)
        results: list[tuple[Tensor, Tensor | None]] = []
        if candidates:
            for prompt_ids, cond in zip(ids, conds, strict=True):
                best = draw_and_rerank(self.model, self.tokenizer, prompt_ids, self.grid, config,
                                       g, candidates, n, clusters=clusters, progress=progress,
                                       restate=self.restate, by=by,
                                       condition=cond if self.text_encoder is not None else None)
                results.append((best.codes, best.scores))
        else:
            drawn = self._draw(ids, conds, n * group, config, g, clusters, progress)
            best = self.best_of(drawn, group, by, rerank_floor=rerank_floor,
                                rerank_max=rerank_max)
            results = [(c, None) for c in best.split(n)]
        out = [
            Images(self._pictures(codes, [p] * len(codes), config, g, superres, sr_steps,
                                  sr_temperature), codes, scores)
            for p, (codes, scores) in zip(ids, results, strict=True)
        ]
        return out[0] if single else out

    def candidates(
        self,
        prompts: Sequence[str],
        per_prompt: int,
        *,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
        **sampling: Any,
    ) -> Candidates:
        """`per_prompt` undecoded candidates of each prompt, drawn as `generate` draws them
        before reranking: for the same generator, `generate(prompts, n, rerank=R,
        rerank_by=b)` keeps `best_of(candidates(prompts, n * R), R, b)`. For scoring one draw
        by several rerankers (`cogview eval --rerank-by caption,contrastive`)."""
        texts = list(prompts)
        if not texts:
            raise UserError("no prompt")
        if per_prompt < 1:
            raise UserError(f"per_prompt must be >= 1, got {per_prompt}")
        config = self.sampling_config(**sampling)
        clusters = self.clusters(config.n_clusters) if config.cluster else None
        g = generator if generator is not None else self.generator(seed)
        ids = [self.encode_prompt(t) for t in texts]
        return self._draw(ids, self.conditions(texts, ids), per_prompt, config, g, clusters,
                          progress)

    def _draw(self, ids: list[list[int]], conds: list[Any], per_prompt: int,
              config: SamplingConfig, g: torch.Generator, clusters: Tensor | None,
              progress: Progress | None) -> Candidates:
        # every picture of every prompt in one stream of batches: prompts of different
        # lengths share a batch (left-padded)
        all_ids = [p for p in ids for _ in range(per_prompt)]
        all_conds = [c for c in conds for _ in range(per_prompt)]
        codes = generate_images(self.model, self.tokenizer, all_conds, self.grid, config, g,
                                clusters=clusters, progress=progress)
        return Candidates(codes, all_ids, all_conds, config, g, clusters, progress)

    def best_of(self, drawn: Candidates, group: int, rerank_by: str | None = None, *,
                rerank_floor: float | None = None, rerank_max: int | None = None) -> Tensor:
        """Codes (rows / group, h, w): the best of each `group` consecutive candidates by
        reranking (`rerank_by` as for `generate`; None: the model's default); `drawn.codes`
        unchanged for a group of 1.

        Where reranking is unsure, more candidates: a group whose best has a caption score
        (the mean log p(prompt | image) per token, the better of the prompt and its
        restatements: `sampling.prompt_scores`) below `rerank_floor` draws `group` more, as
        the first were drawn, and its best is taken from all of them, until it reaches the
        floor or has `rerank_max` candidates (defaults: the model's sampling.json; without a
        floor, or with `rerank_max` = `group`, one round; an empty prompt, one round). The
        further candidates stay in `drawn`, so that another reranker's rounds take theirs from
        the same draws."""
        if group < 1 or drawn.codes.shape[0] % group:
            raise UserError(f"group must divide the {drawn.codes.shape[0]} candidates, got "
                            f"{group}")
        by = self.reranker(rerank_by)
        floor, most = self.rerank_rounds(group, rerank_floor, rerank_max)
        if group == 1:
            return drawn.codes
        picks = list(drawn.codes[::group])  # each group's pick, replaced below
        pending = list(range(drawn.codes.shape[0] // group))
        size = group
        while True:
            codes = self._groups(drawn, group, pending, size)
            ids = [drawn.ids[i * group] for i in pending]
            conds = [drawn.conditions[i * group] for i in pending]
            best = best_of_groups(self.model, self.tokenizer, codes,
                                  [t for t in ids for _ in range(size)], size,
                                  drawn.batch_size, restate=self.restate, by=by,
                                  conditions=[c for c in conds for _ in range(size)])
            for i, pick in zip(pending, best, strict=True):
                picks[i] = pick
            if floor is None or size + group > most:
                break
            scores = prompt_scores(self.model, self.tokenizer, best, ids,
                                   restated_ids(self.tokenizer, ids, self.restate),
                                   drawn.batch_size)
            pending = [i for i, t, score in zip(pending, ids, scores.tolist(), strict=True)
                       if t and score < floor]  # an empty prompt has nothing to be unsure of
            if not pending:
                break
            size += group
        return torch.stack(picks)

    def rerank_rounds(self, group: int, rerank_floor: float | None = None,
                      rerank_max: int | None = None) -> tuple[float | None, int]:
        """`best_of`'s floor and most candidates per group of `group`: the arguments, else
        the model's sampling.json (at least `group`: one round where it says fewer), else no
        floor and 2 * `group`."""
        from cogview.pipeline import check_rounds

        defaults = self.pipeline.defaults
        floor = defaults.rerank_floor if rerank_floor is None else rerank_floor
        if rerank_max is None:
            rerank_max = max(defaults.rerank_max or 2 * group, group)
        check_rounds(floor, rerank_max, group)
        return floor, rerank_max

    def _groups(self, drawn: Candidates, group: int, which: list[int], size: int) -> Tensor:
        """The first `size` candidates of each group in `which`, stacked: its `group` first
        ones, then those of further rounds, drawn now (in one stream for every group that
        needs them) where `drawn` has not got them yet."""
        def rounds(i: int) -> list[Tensor]:
            return drawn.more.get((group, i), [])

        while short := [i for i in which if group * (1 + len(rounds(i))) < size]:
            conds = [drawn.conditions[i * group] for i in short for _ in range(group)]
            more = generate_images(self.model, self.tokenizer, conds, self.grid, drawn.config,
                                   drawn.generator, clusters=drawn.clusters,
                                   progress=drawn.progress)
            for i, codes in zip(short, more.split(group), strict=True):
                drawn.more.setdefault((group, i), []).append(codes)
        return torch.cat([torch.cat([drawn.codes[i * group:(i + 1) * group], *rounds(i)])[:size]
                          for i in which])

    def inpaint(
        self,
        image: Image.Image | np.ndarray,
        mask: Image.Image | np.ndarray,
        prompt: str = "",
        n: int = 1,
        *,
        candidates: int | None = None,
        rerank: int | None = None,
        rerank_by: str | None = None,
        superres: bool = False,
        sr_steps: int | None = None,
        sr_temperature: float = 0.0,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
        **sampling: Any,
    ) -> Images:
        """Regenerate the masked part of a picture of any size: `n` versions.

        `mask` is a painted picture (white = regenerate, or opaque where it has transparency:
        `images.mask_from_image`) or an (H, W) bool array, resized to the picture when its
        size differs.
        Every code cell touched by the mask is sampled again, from a context encoded with the
        masked cells blanked (`cogview.inpainting`), and composited back at the original
        size: every unmasked pixel stays exactly as it was. The prompt says what goes in the
        mask, or describes the whole edited picture. Reranking (`rerank`, `candidates`,
        `rerank_by`: as for `generate`) needs a prompt and scores each version by the better
        of the whole picture and the region alone (`sampling.RegionView`); an all-white mask
        is plain generation, an all-black one gives the picture back. `sampling` (SamplingConfig
        fields) wins over the model's sampling.json, whose "inpaint" fields win over its others
        (`sampling_config(inpainting=True)`).
        """
        original = _as_rgb_array(image, "image")
        height, width = original.shape[:2]
        pixel_mask = _as_mask(mask)
        if pixel_mask.shape != (height, width):
            pixel_mask = resize_mask(pixel_mask, (height, width))
        self._check_candidates(candidates, n)
        by = self.reranker(rerank_by, inpainting=True)
        if not pixel_mask.any():
            return Images(np.stack([original] * n), torch.empty(0, *self.grid, dtype=torch.long))
        config = self.sampling_config(inpainting=True, **sampling)
        tok, size = self.tokenizer, self.image_size
        cells = resize_mask(pixel_mask, self.grid)  # (h, w)
        resample = Image.Resampling.BOX if min(height, width) >= size else Image.Resampling.BICUBIC
        small = np.array(Image.fromarray(original).resize((size, size), resample=resample),
                         dtype=np.uint8)
        ids = self.encode_prompt(prompt)
        cond = self.conditions([prompt], [ids])[0]
        clusters = self.clusters(config.n_clusters) if config.cluster else None
        g = generator if generator is not None else self.generator(seed)
        if not prompt:  # nothing to score by
            candidates, group = None, 1
        else:
            group = 1 if candidates else (self.inpaint_rerank_default if rerank is None
                                          else rerank)
        total = candidates or n * group
        if pixel_mask.all():
            codes = generate_images(self.model, tok, [cond] * total, self.grid, config, g,
                                    clusters=clusters, progress=progress)
        else:
            # the kept cells' codes, from the picture with the masked cells blanked: codes of
            # the whole picture would carry the erased content into the context
            mask_t = torch.from_numpy(cells)[None].to(self.device)
            src = context_codes(self.vqvae, to_tensor(small).to(self.device), mask_t)[0]
            if tuple(src.shape) != tuple(self.grid):
                raise UserError(f"the model's VQVAE gives a {tuple(src.shape)} grid at {size} "
                                f"px, the model expects {self.grid}")
            codes = inpaint(self.model, tok, cond, src, torch.from_numpy(cells), config, g,
                            total, clusters=clusters, progress=progress)
        # reranking also scores the region alone: the prompt may name only what goes there
        view = RegionView(torch.from_numpy(cells), blank_codes(self.vqvae, size))
        scores = None
        if candidates:
            best = keep_best(self.model, tok, codes, ids, n, config.batch_size, view,
                             self.restate, by=by,
                             condition=cond if self.text_encoder is not None else None)
            codes, scores = best.codes, best.scores
        elif group > 1:
            codes = best_of_groups(self.model, tok, codes, [ids] * total, group,
                                   config.batch_size, view, self.restate, by=by,
                                   conditions=[cond] * total)
        generated = self._pictures(codes, [ids] * len(codes), config, g, superres, sr_steps,
                                   sr_temperature)
        results = []
        for img in generated:
            big = np.asarray(Image.fromarray(img).resize((width, height),
                                                         Image.Resampling.BICUBIC), dtype=np.uint8)
            # only masked pixels change: every other pixel is the original's, bit for bit
            results.append(np.where(pixel_mask[..., None], big, original))
        return Images(np.stack(results), codes, scores)

    def caption(
        self,
        image: Image.Image | np.ndarray,
        n: int = 3,
        *,
        max_len: int | None = None,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        **sampling: Any,
    ) -> Captions:
        """`n` captions of a picture in captioning mode, best first by their mean
        log-likelihood per token. The model's sampling.json (image settings) does not apply."""
        if n < 1:
            raise UserError(f"n must be >= 1, got {n}")
        if max_len is not None and max_len < 1:
            raise UserError(f"max_len must be >= 1, got {max_len}")
        config = self.sampling_config(images=False, **sampling)
        g = generator if generator is not None else self.generator(seed)
        codes = self.encode(image)
        tok = self.tokenizer
        caps = generate_captions(self.model, tok, codes, config, g, n, max_len)
        scores = caption_logprob(self.model, tok, codes.expand(len(caps), -1, -1), caps)
        ranked = sorted(zip(scores.tolist(), caps, strict=True), key=lambda x: -x[0])
        return Captions([tok.decode_text(c) for _, c in ranked], [s for s, _ in ranked])

    def superres(
        self,
        image: Image.Image | np.ndarray,
        prompt: str | None = None,
        *,
        steps: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
    ) -> Image.Image:
        """A picture super-resolved by the SR model (the shipped one unless `load_sr` chose
        another): brought to its input size, encoded, `steps` LoPAR passes (1 = direct)."""
        if self.sr is None:
            self.load_sr()
        return superres_image(self.sr, image, prompt, steps=steps, temperature=temperature,
                              top_k=top_k, generator=generator or self.generator(seed))


def superres_image(
    sr: Any,
    image: Image.Image | np.ndarray,
    prompt: str | None = None,
    *,
    steps: int | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> Image.Image:
    """`CogView.superres` with an SR folder alone (`cogview.superres.load_sr`)."""
    from cogview.superres import upscale_codes

    device = next(sr.model.parameters()).device
    sampling = SamplingConfig(temperature=temperature, top_k=top_k)
    pixels = _fit(image, sr.low_res_size)
    with torch.inference_mode():
        lr_codes = sr.vqvae.encode(to_tensor(pixels).to(device))  # (1, lr, lr)
    texts = [sr.tokenizer.encode_text(prompt)] if prompt else None
    _, images = upscale_codes(sr, lr_codes, texts, steps=steps, sampling=sampling,
                              generator=generator)
    return Image.fromarray(from_tensor(images[0]))


