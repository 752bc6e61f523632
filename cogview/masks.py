"""Task sequences for CogLM and the masking scheduler that picks a task for every sample.

A training sample is `prefix | targets`: the prefix is visible to every position, targets are
predicted left to right and see the whole prefix, and the loss covers targets only.

- text-to-image: `<t2i> text <boi> | image codes (raster order)`
- captioning:    `<cap> <boi> image codes <eoi> <bot> | text <eot>`
- inpainting:    `<inp> text <boi> codes with masked cells as <mask> <eoi> | masked cells' codes`

Builders are pure functions from tokens to a `TaskSequence`; `collate` pads sequences into a
`TaskBatch` that the model consumes. Ids come from the tokenizer, never from literals here.

The prompt of text-to-image and inpainting is text ids, or, for a model that reads a frozen
text encoder (`CogLMConfig.text_dim`), an `EncodedText`: its token states fill the text slots
(whose ids are the tokenizer's `<unk>`, never seen by the model) and the model embeds them
with its projection instead of its token embedding. Captioning text is always ids.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import Tensor

IGNORE = -100  # label of positions without loss (F.cross_entropy's ignore_index)
TASKS = ("t2i", "cap", "inp")
MASK_KINDS = ("rectangle", "patches", "half", "strokes")


@dataclass(frozen=True)
class EncodedText:
    """A prompt read by a frozen text encoder: the string and its token states (L, text_dim);
    L = 0 for an empty prompt (no text slots: the unconditional case)."""

    text: str
    states: Tensor  # (L, text_dim) float


Text = Sequence[int] | EncodedText  # a prompt as the builders take it


@dataclass
class TaskSequence:
    """One sample, ready for the model. T = sequence length minus one (inputs predict the next)."""

    ids: Tensor  # (T,) input ids
    pos: Tensor  # (T,) 1-D positions
    cell: Tensor  # (T, 2) 1-based (row, col) of image input tokens, 0 elsewhere
    next_cell: Tensor  # (T, 2) (row, col) of the image code each position predicts, 0 elsewhere
    labels: Tensor  # (T,) next-token targets, IGNORE outside the targets
    prefix_len: int
    task: str
    # an encoded prompt: its states (L, text_dim) go to the positions where text_slots is True
    text_states: Tensor | None = None  # (L, text_dim)
    text_slots: Tensor | None = None  # (T,) bool, L of them True
    # a view (`text_view`, `image_view`): the positions that pool into its embedding
    pool: Tensor | None = None  # (T,) bool
    # a sample in the contrastive loss: where its text and image embeddings come from
    pair: Pair | None = None


@dataclass
class Pair:
    """What one training sample gives the contrastive loss (`cogview.contrastive`): its text
    and its image, each pooled either from positions of the sample itself, where they form
    a unimodal part of its prefix (the prompt of text-to-image, the image of captioning), or
    from a view of its own (`text_view`, `image_view`)."""

    key: int  # samples with the same key (the same caption) are not each other's negatives
    text_pool: Tensor | None = None  # (T,) bool, positions of the sample
    text_view: TaskSequence | None = None
    image_pool: Tensor | None = None  # (T,) bool
    image_view: TaskSequence | None = None
    # a text that is false of the image (a hard negative: `cogview train --hard-negatives`),
    # and its key
    negative_view: TaskSequence | None = None
    negative_key: int = 0


@dataclass
class PairBatch:
    """The contrastive side of a `TaskBatch`: P of its B rows, with their pooled positions in
    the batch or in views of their own (the views' rows hold rows `*_view_rows` of the batch)."""

    rows: Tensor  # (P,) rows of the batch in the loss
    keys: Tensor  # (P,)
    text_pool: Tensor  # (B, T) bool; no position where the text comes from a view
    image_pool: Tensor  # (B, T) bool
    text_views: TaskBatch | None
    text_view_rows: Tensor  # (Vt,) rows of the batch
    image_views: TaskBatch | None
    image_view_rows: Tensor  # (Vi,)
    share: float = 1.0  # this batch's share of the global batch's pairs
    # views of hard-negative texts, and their keys: a negative is not scored against an image
    # whose own caption it is
    negative_views: TaskBatch | None = None
    negative_keys: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def to(self, device: torch.device | str) -> PairBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return PairBatch(**{k: v if v is None or isinstance(v, float) else v.to(device)
                            for k, v in moved.items()})


@dataclass
class TaskBatch:
    """A padded batch for the model: a prefix-LM mask from `prefix_len` (CogLM tasks) or an
    explicit boolean `attn_mask` (super-resolution's local attention)."""

    ids: Tensor  # (B, T)
    pos: Tensor  # (B, T)
    cell: Tensor  # (B, T, 2)
    next_cell: Tensor  # (B, T, 2)
    labels: Tensor  # (B, T) target id, IGNORE where there is none
    task: Tensor  # (B,) index into the task names of the loss groups
    prefix_len: Tensor | None = None  # (B,)
    attn_mask: Tensor | None = None  # (B, 1, T, T) bool
    text_states: Tensor | None = None  # (B, T, text_dim) encoder states at the text slots
    text_mask: Tensor | None = None  # (B, T) bool, True at the text slots
    pool: Tensor | None = None  # (B, T) bool: the pooled positions of views
    pairs: PairBatch | None = None  # the rows in the contrastive loss

    def to(self, device: torch.device | str) -> TaskBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return TaskBatch(**{k: v.to(device) if v is not None else None for k, v in moved.items()})

    def model_inputs(self) -> dict[str, Tensor | None]:
        inputs = dict(ids=self.ids, pos=self.pos, cell=self.cell, next_cell=self.next_cell,
                      prefix_len=self.prefix_len, attn_mask=self.attn_mask)
        if self.text_states is not None:
            inputs.update(text_states=self.text_states, text_mask=self.text_mask)
        return inputs


def grid_cells(h: int, w: int) -> Tensor:
    """(h*w, 2) 1-based (row, col) of every cell in raster order."""
    rows, cols = torch.meshgrid(torch.arange(1, h + 1), torch.arange(1, w + 1), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1)


def _sequence(
    tokens: list[np.ndarray], cells: list[np.ndarray], prefix_len: int, n_targets: int, task: str
) -> TaskSequence:
    """Join the parts of a full sequence S; inputs are S[:-1], labels S[1:] on the targets.

    Built on numpy arrays: a training batch is hundreds of these small sequences, and torch's
    per-operation overhead made building them cost as much as a small model's GPU step.
    """
    full = np.concatenate(tokens)
    full_cell = np.concatenate(cells)
    n = full.size
    labels = full[1:].copy()
    labels[: n - 1 - n_targets] = IGNORE
    is_image_target = np.zeros(n - 1, dtype=bool)
    is_image_target[n - 1 - n_targets :] = full_cell[n - n_targets :, 0] > 0
    next_cell = np.where(is_image_target[:, None], full_cell[1:], 0)
    return TaskSequence(
        ids=torch.from_numpy(full[:-1]),
        pos=torch.arange(n - 1),
        cell=torch.from_numpy(full_cell[:-1]),
        next_cell=torch.from_numpy(next_cell),
        labels=torch.from_numpy(labels),
        prefix_len=prefix_len,
        task=task,
    )


def _ids(values: Sequence[int] | Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _no_cells(n: int) -> np.ndarray:
    return np.zeros((n, 2), dtype=np.int64)


@functools.lru_cache(maxsize=16)
def _cells(h: int, w: int) -> np.ndarray:
    """`grid_cells` as a read-only numpy array, made once per grid."""
    cells = grid_cells(h, w).numpy()
    cells.flags.writeable = False
    return cells


def _image_ids(tok, codes: Tensor | np.ndarray) -> np.ndarray:
    return tok.codes_to_ids(_ids(codes))


def _prompt_ids(tok, text: Text) -> np.ndarray:
    """The ids of a prompt's text slots: its ids, or `<unk>` once per encoder state."""
    if isinstance(text, EncodedText):
        return np.full(text.states.shape[0], tok.unk_id, dtype=np.int64)
    return _ids(text)


def _with_states(seq: TaskSequence, text: Text, start: int) -> TaskSequence:
    """`seq` with an encoded prompt's states at its slots, which begin at input `start`."""
    if isinstance(text, EncodedText):
        slots = torch.zeros(seq.ids.numel(), dtype=torch.bool)
        slots[start : start + text.states.shape[0]] = True
        seq.text_states, seq.text_slots = text.states, slots
    return seq


def text_to_image(tok, text_ids: Text, codes: Tensor) -> TaskSequence:
    """`<t2i> text <boi> | codes`; `codes` (h, w) are codebook indices; the text is ids or an
    `EncodedText`."""
    h, w = codes.shape
    prompt = _prompt_ids(tok, text_ids)
    prefix = np.concatenate([_ids([tok.task_id("t2i")]), prompt, _ids([tok.boi_id])])
    image = _image_ids(tok, codes)
    seq = _sequence(
        [prefix, image], [_no_cells(prefix.size), _cells(h, w)], prefix.size, h * w, "t2i"
    )
    return _with_states(seq, text_ids, 1)


def captioning(tok, text_ids: Sequence[int], codes: Tensor) -> TaskSequence:
    """`<cap> <boi> codes <eoi> <bot> | text <eot>`."""
    h, w = codes.shape
    start = _ids([tok.task_id("cap"), tok.boi_id])
    image = _image_ids(tok, codes)
    middle = _ids([tok.eoi_id, tok.bot_id])
    text = np.concatenate([_ids(text_ids), _ids([tok.eot_id])])
    prefix_len = start.size + image.size + middle.size
    return _sequence(
        [start, image, middle, text],
        [_no_cells(2), _cells(h, w), _no_cells(2), _no_cells(text.size)],
        prefix_len,
        text.size,
        "cap",
    )


def inpainting(
    tok, text_ids: Text, codes: Tensor, mask: Tensor, context: Tensor | None = None
) -> TaskSequence:
    """`<inp> text <boi> context, masked cells as <mask> <eoi> | masked codes in raster order`.

    `mask` (h, w) is True where a cell is regenerated; each target carries its own cell. The
    kept cells show `context` (h, w): the codes of the image with the masked cells blanked
    (`cogview.inpainting.context_codes`), which carry nothing of the masked pixels. A code
    depends on pixels beyond its cell, so kept codes of the whole image (`codes`, the default
    when no context is given) would show the model the erased content and teach it to copy it.
    The text is ids or an `EncodedText`.
    """
    h, w = codes.shape
    flat_mask = np.asarray(mask, dtype=bool).reshape(-1)
    cells = _cells(h, w)
    image = _image_ids(tok, codes)
    shown = image if context is None else _image_ids(tok, context)
    visible = np.where(flat_mask, tok.mask_id, shown)
    prompt = _prompt_ids(tok, text_ids)
    head = np.concatenate([_ids([tok.task_id("inp")]), prompt, _ids([tok.boi_id])])
    targets = image[flat_mask]
    parts = [head, visible, _ids([tok.eoi_id]), targets]
    part_cells = [_no_cells(head.size), cells, _no_cells(1), cells[flat_mask]]
    prefix_len = head.size + visible.size + 1
    seq = _sequence(parts, part_cells, prefix_len, targets.size, "inp")
    return _with_states(seq, text_ids, 1)


def _view(tokens: list[np.ndarray], cells: list[np.ndarray], pool: np.ndarray,
          task: str) -> TaskSequence:
    """A sequence that is all prefix (no targets) whose positions `pool` make its embedding."""
    full = np.concatenate(tokens)
    n = full.size
    return TaskSequence(
        ids=torch.from_numpy(full),
        pos=torch.arange(n),
        cell=torch.from_numpy(np.concatenate(cells)),
        next_cell=torch.zeros(n, 2, dtype=torch.long),
        labels=torch.full((n,), IGNORE),
        prefix_len=n,
        task=task,
        pool=torch.from_numpy(pool),
    )


POOLS = ("mean", "last")  # a contrastive embedding: the mean over a text's or image's positions,
# or the last position of its prefix (`<boi>` after a prompt, `<bot>` after an image)


def text_view(tok, text_ids: Text, pool: str = "mean") -> TaskSequence:
    """`<t2i> text <boi>`: a prompt alone, as text-to-image reads it (the same inputs as the
    prefix of `text_to_image`); pools the text slots, or `<boi>` (`POOLS`)."""
    prompt = _prompt_ids(tok, text_ids)
    ids = np.concatenate([_ids([tok.task_id("t2i")]), prompt, _ids([tok.boi_id])])
    pool_at = np.zeros(ids.size, dtype=bool)
    if pool == "last":
        pool_at[-1] = True
    else:
        pool_at[1 : 1 + prompt.size] = True
    seq = _view([ids], [_no_cells(ids.size)], pool_at, "t2i")
    seq.next_cell[-1] = 1  # <boi> predicts the first cell, as in text-to-image
    return _with_states(seq, text_ids, 1)


def image_view(tok, codes: Tensor, pool: str = "mean") -> TaskSequence:
    """`<cap> <boi> codes <eoi> <bot>`: an image alone, as captioning reads it; pools the
    codes, or `<bot>` (`POOLS`)."""
    h, w = codes.shape
    image = _image_ids(tok, codes)
    start, end = _ids([tok.task_id("cap"), tok.boi_id]), _ids([tok.eoi_id, tok.bot_id])
    pool_at = np.zeros(image.size + 4, dtype=bool)
    if pool == "last":
        pool_at[-1] = True
    else:
        pool_at[2 : 2 + image.size] = True
    cells = [_no_cells(2), _cells(h, w), _no_cells(2)]
    return _view([start, image, end], cells, pool_at, "cap")


def _positions(n: int, start: int, length: int) -> Tensor:
    pool = torch.zeros(n, dtype=torch.bool)
    pool[start : start + length] = True
    return pool


def _key(text_ids: Sequence[int]) -> int:
    return hash(tuple(int(i) for i in text_ids))


def with_pair(tok, seq: TaskSequence, text_ids: Sequence[int], codes: Tensor,
              encoded: bool = False, pool: str = "mean", negative: Text | None = None,
              negative_ids: Sequence[int] = ()) -> TaskSequence:
    """`seq` with its `Pair` for the contrastive loss, when it has one: a text-to-image sample
    pools its prompt and gets a view of its image; a captioning sample pools its image and gets
    a view of its caption (not when prompts are `encoded` by a text encoder: its caption is
    ids). Samples without text (dropped for guidance) and inpainting samples have none. The
    positions pooled are those of `text_view` and `image_view` with `pool`. A text-to-image
    pair also gets a view of `negative`, a text false of its image (its ids `negative_ids`),
    when one is given."""
    if not len(text_ids) or seq.task == "inp" or (seq.task == "cap" and encoded):
        return seq
    n, key = seq.ids.numel(), _key(text_ids)
    last = pool == "last"
    if seq.task == "t2i":
        slots = seq.text_slots if seq.text_slots is not None else _positions(n, 1, len(text_ids))
        text = _positions(n, 1 + int(slots.sum()), 1) if last else slots  # <boi> or the text
        seq.pair = Pair(key, text_pool=text, image_view=image_view(tok, codes, pool))
        if negative is not None:
            seq.pair.negative_view = text_view(tok, negative, pool)
            seq.pair.negative_key = _key(negative_ids)
    else:
        h, w = codes.shape
        image = _positions(n, 2 + h * w + 1, 1) if last else _positions(n, 2, h * w)
        seq.pair = Pair(key, text_view=text_view(tok, text_ids, pool), image_pool=image)
    return seq


def _pair_batch(samples: Sequence[TaskSequence], t: int, pad_id: int) -> PairBatch | None:
    paired = [i for i, s in enumerate(samples) if s.pair is not None]
    if not paired:
        return None
    b = len(samples)
    pools = {"text": torch.zeros(b, t, dtype=torch.bool),
             "image": torch.zeros(b, t, dtype=torch.bool)}
    views: dict[str, list[TaskSequence]] = {"text": [], "image": []}
    view_rows: dict[str, list[int]] = {"text": [], "image": []}
    for i in paired:
        pair, n = samples[i].pair, samples[i].ids.numel()
        for side in ("text", "image"):
            pool, view = getattr(pair, f"{side}_pool"), getattr(pair, f"{side}_view")
            if pool is not None:
                pools[side][i, :n] = pool
            else:
                views[side].append(view)
                view_rows[side].append(i)
    batched = {side: collate(v, pad_id) if v else None for side, v in views.items()}
    negatives = [samples[i].pair for i in paired if samples[i].pair.negative_view is not None]
    return PairBatch(
        rows=torch.tensor(paired),
        keys=torch.tensor([samples[i].pair.key for i in paired]),
        text_pool=pools["text"],
        image_pool=pools["image"],
        text_views=batched["text"],
        text_view_rows=torch.tensor(view_rows["text"], dtype=torch.long),
        image_views=batched["image"],
        image_view_rows=torch.tensor(view_rows["image"], dtype=torch.long),
        negative_views=collate([p.negative_view for p in negatives], pad_id) if negatives
        else None,
        negative_keys=torch.tensor([p.negative_key for p in negatives], dtype=torch.long),
    )


def collate(samples: Sequence[TaskSequence], pad_id: int) -> TaskBatch:
    """Right-pad sequences to the longest; padding is never a target and never in a prefix."""
    t = max(s.ids.numel() for s in samples)
    b = len(samples)
    ids = np.full((b, t), pad_id, dtype=np.int64)
    pos = np.zeros((b, t), dtype=np.int64)
    cell = np.zeros((b, t, 2), dtype=np.int64)
    next_cell = np.zeros((b, t, 2), dtype=np.int64)
    labels = np.full((b, t), IGNORE, dtype=np.int64)
    for i, s in enumerate(samples):  # filled through numpy: per-row torch copies cost 5x more
        n = s.ids.numel()
        ids[i, :n] = s.ids.numpy()
        pos[i, :n] = s.pos.numpy()
        cell[i, :n] = s.cell.numpy()
        next_cell[i, :n] = s.next_cell.numpy()
        labels[i, :n] = s.labels.numpy()
    text_states = text_mask = None
    encoded = [i for i, s in enumerate(samples) if s.text_states is not None]
    if encoded:  # a model that reads a text encoder; other rows (captioning) have no slots
        dim = samples[encoded[0]].text_states.shape[-1]
        text_states = torch.zeros(b, t, dim)
        text_mask = torch.zeros(b, t, dtype=torch.bool)
        for i in encoded:
            s = samples[i]
            n = s.ids.numel()
            text_mask[i, :n] = s.text_slots
            text_states[i, :n][s.text_slots] = s.text_states.float()
    pool = None
    if any(s.pool is not None for s in samples):  # views (`text_view`, `image_view`)
        pool = torch.zeros(b, t, dtype=torch.bool)
        for i, s in enumerate(samples):
            if s.pool is not None:
                pool[i, : s.ids.numel()] = s.pool
    return TaskBatch(
        ids=torch.from_numpy(ids),
        pos=torch.from_numpy(pos),
        cell=torch.from_numpy(cell),
        next_cell=torch.from_numpy(next_cell),
        labels=torch.from_numpy(labels),
        prefix_len=torch.tensor([s.prefix_len for s in samples]),
        task=torch.tensor([TASKS.index(s.task) for s in samples]),
        text_states=text_states,
        text_mask=text_mask,
        pool=pool,
        pairs=_pair_batch(samples, t, pad_id),
    )


# ---------------------------------------------------------------------------------------------
# inpainting masks: (h, w) bool, True = regenerate


def _randint(lo: int, hi: int, g: torch.Generator) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def rectangle_mask(h: int, w: int, g: torch.Generator) -> Tensor:
    mh, mw = (
        _randint(max(1, h // 4), max(1, 3 * h // 4), g),
        _randint(max(1, w // 4), max(1, 3 * w // 4), g),
    )
    top, left = _randint(0, h - mh, g), _randint(0, w - mw, g)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[top : top + mh, left : left + mw] = True
    return mask


def patches_mask(h: int, w: int, g: torch.Generator) -> Tensor:
    """CogView2-style: the grid cut into p x p patches, most of them masked (50-90%)."""
    p = max(1, min(h, w) // 4)
    ph, pw = -(-h // p), -(-w // p)
    rate = 0.5 + 0.4 * float(torch.rand(1, generator=g))
    coarse = torch.rand(ph, pw, generator=g) < rate
    if not coarse.any():
        coarse.view(-1)[_randint(0, ph * pw - 1, g)] = True
    return coarse.repeat_interleave(p, 0).repeat_interleave(p, 1)[:h, :w]


def half_mask(h: int, w: int, g: torch.Generator) -> Tensor:
    """Outpainting: the left, right, top or bottom half is regenerated."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    side = _randint(0, 3, g)
    if side == 0:
        mask[:, : w // 2] = True
    elif side == 1:
        mask[:, w // 2 :] = True
    elif side == 2:
        mask[: h // 2] = True
    else:
        mask[h // 2 :] = True
    return mask


def strokes_mask(h: int, w: int, g: torch.Generator) -> Tensor:
    """Free-form: a few random walks of a one-cell brush, as a user paints."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    steps = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0], [1, 1], [-1, -1], [1, -1], [-1, 1]])
    for _ in range(_randint(1, 3, g)):
        r, c = _randint(0, h - 1, g), _randint(0, w - 1, g)
        for _ in range(_randint(h // 2, 2 * h, g)):
            mask[r, c] = True
            dr, dc = steps[_randint(0, 7, g)].tolist()
            r, c = min(max(r + dr, 0), h - 1), min(max(c + dc, 0), w - 1)
    return mask


def box_cells(box: Sequence[float], h: int, w: int) -> Tensor:
    """(h, w) bool: the cells that a box (x0, y0, x1, y1), in fractions of the image side,
    touches; cells are aligned with pixels, so the cells hold every pixel of the box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    ys = torch.arange(h, dtype=torch.float64)
    xs = torch.arange(w, dtype=torch.float64)
    in_y = (ys / h < y1) & ((ys + 1) / h > y0)  # (h,)
    in_x = (xs / w < x1) & ((xs + 1) / w > x0)  # (w,)
    return in_y[:, None] & in_x[None, :]


def region_mask(box: Sequence[float], h: int, w: int, g: torch.Generator) -> Tensor:
    """The cells of a region (an object's box), each side grown by a cell half the time, as a
    user paints a little beyond an object."""
    mask = box_cells(box, h, w)
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    if not len(rows):
        return mask
    grow = (torch.rand(4, generator=g) < 0.5).tolist()  # top, bottom, left, right
    top, bottom = max(int(rows[0]) - grow[0], 0), min(int(rows[-1]) + grow[1], h - 1)
    left, right = max(int(cols[0]) - grow[2], 0), min(int(cols[-1]) + grow[3], w - 1)
    mask[top : bottom + 1, left : right + 1] = True
    return mask


def _draw(weights: Sequence[float], g: torch.Generator) -> int:
    """Index drawn with probability proportional to `weights`: one uniform number against the
    running sums (a multinomial call per sample cost more than building the sample)."""
    bounds = list(itertools.accumulate(weights))
    u = float(torch.rand(1, generator=g, dtype=torch.float64)) * bounds[-1]
    # bisect_right steps over equal bounds, so a zero-weight entry is never drawn
    return min(bisect.bisect_right(bounds, u), len(bounds) - 1)


MASK_MAKERS = {
    "rectangle": rectangle_mask,
    "patches": patches_mask,
    "half": half_mask,
    "strokes": strokes_mask,
}


# ---------------------------------------------------------------------------------------------
# task weights over training steps


@dataclass(frozen=True)
class TaskSchedule:
    """Task weights at breakpoint steps, linear in between and constant after the last.

    Written on the command line as `STEP:task=w,task=w;STEP:...`, for example
    `0:t2i=1;2000:t2i=0.6,cap=0.2,inp=0.2` (text-to-image only at first, then a mix).
    """

    points: tuple[tuple[int, tuple[float, ...]], ...]  # (step, weights in TASKS order)

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a task schedule needs at least one point")
        steps = [s for s, _ in self.points]
        if steps != sorted(steps) or len(set(steps)) != len(steps):
            raise ValueError("task schedule steps must increase")
        for _, w in self.points:
            if len(w) != len(TASKS) or min(w) < 0 or sum(w) <= 0:
                raise ValueError(
                    f"task weights must be {len(TASKS)} non-negative numbers, not all 0"
                )

    @classmethod
    def constant(cls, **weights: float) -> TaskSchedule:
        return cls(((0, tuple(float(weights.get(t, 0.0)) for t in TASKS)),))

    @classmethod
    def parse(cls, text: str) -> TaskSchedule:
        points = []
        for part in filter(None, (p.strip() for p in text.split(";"))):
            m = re.fullmatch(r"(?:(\d+)\s*:)?\s*(.+)", part)
            step = int(m.group(1) or 0)
            weights = dict.fromkeys(TASKS, 0.0)
            for item in m.group(2).split(","):
                name, _, value = item.partition("=")
                name = name.strip()
                if name not in weights:
                    raise ValueError(
                        f"unknown task {name!r} in schedule; tasks: {', '.join(TASKS)}"
                    )
                try:
                    weights[name] = float(value)
                except ValueError:
                    raise ValueError(f"bad weight {value!r} for task {name}") from None
            points.append((step, tuple(weights[t] for t in TASKS)))
        return cls(tuple(points))

    def weights(self, step: int) -> dict[str, float]:
        """Normalised task weights at `step`."""
        points = self.points
        w = points[-1][1]
        for (s0, w0), (s1, w1) in zip(points, points[1:], strict=False):
            if step < s0:
                w = w0
                break
            if step < s1:
                a = (step - s0) / (s1 - s0)
                w = tuple((1 - a) * x + a * y for x, y in zip(w0, w1, strict=True))
                break
        if step < points[0][0]:
            w = points[0][1]
        total = sum(w)
        return {t: x / total for t, x in zip(TASKS, w, strict=True)}

    def __str__(self) -> str:
        return ";".join(
            f"{s}:" + ",".join(f"{t}={x:g}" for t, x in zip(TASKS, w, strict=True) if x)
            for s, w in self.points
        )


@dataclass(frozen=True)
class Region:
    """A part of a sample's image that a caption of its own describes (an object)."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in fractions of the image side
    text_ids: tuple[int, ...]  # the region's caption
    caption: str = ""  # the same caption as a string (what a text encoder reads)


@dataclass
class Plan:
    """What the scheduler chose for one sample, before its sequence is built."""

    task: str
    text_ids: Sequence[int]
    codes: Tensor  # (h, w)
    mask: Tensor | None = None  # (h, w) bool, inpainting only
    prompt: str | None = None  # the prompt as a string ("" when dropped), when it was given
    # a text false of the image, for the contrastive loss (text-to-image only): its ids and
    # its string (which a text encoder reads)
    negative_ids: Sequence[int] | None = None
    negative: str | None = None


ContextFn = Callable[[Tensor, Tensor], Tensor]  # codes (B, h, w), masks (B, h, w) -> context
EncoderFn = Callable[[Sequence[str]], list[Tensor]]  # prompts -> states (L_i, text_dim) each


@dataclass
class MaskingScheduler:
    """Turns (text ids, codes) samples into task sequences, choosing each sample's task.

    The task is drawn from `schedule.weights(step)`; with probability `text_dropout` the text
    of a text-to-image or inpainting sample is dropped so that the model also learns the
    unconditional distribution (classifier-free guidance).

    Inpainting: a sample with regions (objects with captions of their own) masks one region
    with probability `region_masks`, and then says what goes there with the region's caption
    with probability `region_prompts` (the prompt of an edit that names only the new object)
    or else with the whole image's caption; other masks come from `mask_weights` and use the
    caption. The kept cells show `context(codes, masks)`: codes of the image with the masked
    cells blanked (`cogview.inpainting`), computed for the whole batch at once; without it
    they show the sample's own codes, which leak the masked content.

    With `encoder` (a frozen text encoder, `cogview.text_encoder.TextEncoder`), the prompts of
    text-to-image and inpainting samples are read by it from their strings (`plan`'s
    `caption`, a region's `caption`; "" when dropped); captioning still learns text ids.
    """

    tokenizer: object
    schedule: TaskSchedule = field(default_factory=lambda: TaskSchedule.constant(t2i=1.0))
    text_dropout: float = 0.1
    mask_weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MASK_KINDS, 1.0))
    region_masks: float = 0.5
    region_prompts: float = 0.5
    context: ContextFn | None = None
    encoder: EncoderFn | None = None
    pairs: bool = False  # give text-to-image and captioning samples a contrastive `Pair`
    pair_pool: str = "mean"  # the positions the pairs pool (`POOLS`)

    def pick_task(self, step: int, g: torch.Generator) -> str:
        weights = self.schedule.weights(step)
        return TASKS[_draw([weights[t] for t in TASKS], g)]

    def make_mask(self, h: int, w: int, g: torch.Generator) -> Tensor:
        kinds = list(self.mask_weights)
        kind = kinds[_draw([self.mask_weights[k] for k in kinds], g)]
        return MASK_MAKERS[kind](h, w, g)

    def plan(
        self,
        text_ids: Sequence[int],
        codes: Tensor,
        step: int,
        g: torch.Generator,
        target_ids: Sequence[int] | None = None,
        regions: Sequence[Region] = (),
        caption: str | None = None,
    ) -> Plan:
        """One sample's task, text and mask; a captioning sample learns `target_ids` when given
        (another phrasing of the same caption), else the caption itself. `caption` is the
        caption as a string (needed with a text encoder); the random draws do not depend on
        it."""
        task = self.pick_task(step, g)
        if task == "cap":
            return Plan(task, text_ids if target_ids is None else target_ids, codes)
        mask = None
        if task == "inp":
            h, w = codes.shape
            if regions and float(torch.rand(1, generator=g)) < self.region_masks:
                region = regions[_randint(0, len(regions) - 1, g)]
                mask = region_mask(region.box, h, w, g)
                if float(torch.rand(1, generator=g)) < self.region_prompts:
                    text_ids = region.text_ids
                    caption = None if caption is None else region.caption
            else:
                mask = self.make_mask(h, w, g)
        if float(torch.rand(1, generator=g)) < self.text_dropout:
            text_ids = []
            caption = None if caption is None else ""
        return Plan(task, text_ids, codes, mask, caption)

    def _prompts(self, plans: Sequence[Plan]) -> tuple[list[Text], list[Text | None]]:
        """Each plan's prompt for the builders and its hard negative (None without one): text
        ids, or with an encoder their strings' states (each distinct string encoded once)."""
        if self.encoder is None:
            return [p.text_ids for p in plans], [p.negative_ids for p in plans]
        wanted = [p.prompt for p in plans if p.task != "cap"]
        if any(w is None for w in wanted):
            raise ValueError("caption: a scheduler with a text encoder needs each sample's "
                             "caption string")
        unique = list(dict.fromkeys(wanted + [p.negative for p in plans if p.negative]))
        states = dict(zip(unique, self.encoder(unique), strict=True))
        prompts: list[Text] = [p.text_ids if p.task == "cap" else EncodedText(p.prompt,
                                                                               states[p.prompt])
                               for p in plans]
        return prompts, [EncodedText(p.negative, states[p.negative]) if p.negative else None
                         for p in plans]

    def sequences(self, plans: Sequence[Plan]) -> list[TaskSequence]:
        """The plans' sequences; the inpainting contexts of all of them in one call."""
        inp = [i for i, p in enumerate(plans) if p.task == "inp"]
        contexts: dict[int, Tensor] = {}
        if inp and self.context is not None:
            codes = torch.stack([plans[i].codes for i in inp])
            cell_masks = torch.stack([plans[i].mask for i in inp])
            contexts = dict(zip(inp, self.context(codes, cell_masks), strict=True))
        tok = self.tokenizer
        out = []
        prompts, negatives = self._prompts(plans)
        for i, (p, text) in enumerate(zip(plans, prompts, strict=True)):
            if p.task == "t2i":
                out.append(text_to_image(tok, text, p.codes))
            elif p.task == "cap":
                out.append(captioning(tok, p.text_ids, p.codes))
            else:
                out.append(inpainting(tok, text, p.codes, p.mask, contexts.get(i)))
            if self.pairs:
                with_pair(tok, out[-1], p.text_ids, p.codes, encoded=self.encoder is not None,
                          pool=self.pair_pool, negative=negatives[i],
                          negative_ids=p.negative_ids or ())
        return out

    def build(
        self,
        text_ids: Sequence[int],
        codes: Tensor,
        step: int,
        g: torch.Generator,
        target_ids: Sequence[int] | None = None,
        regions: Sequence[Region] = (),
        caption: str | None = None,
    ) -> TaskSequence:
        """One sample's sequence (`plan`, then `sequences`)."""
        plan = self.plan(text_ids, codes, step, g, target_ids, regions, caption)
        return self.sequences([plan])[0]

    def batch(
        self,
        texts: Sequence[Sequence[int]],
        codes: Tensor,
        step: int,
        g: torch.Generator,
    ) -> TaskBatch:
        """`texts` B lists of text ids, `codes` (B, h, w) -> a padded batch."""
        plans = [self.plan(t, c, step, g) for t, c in zip(texts, codes, strict=True)]
        return collate(self.sequences(plans), self.tokenizer.pad_id)
