"""Sampling from a CogLM: text-to-image, inpainting, captioning and self-reranking.

Pure functions of a model, a tokenizer, prompts, a `SamplingConfig` and a `torch.Generator`;
no I/O. Every sequence fed to the model is built by the same builders as training
(`cogview.masks`), so positions, cells and the prefix mask are exactly those the model saw:

- text-to-image: prefix `<t2i> text <boi>`, then the codes in raster order
- inpainting:    prefix `<inp> text <boi> codes with <mask> <eoi>`, then the masked cells' codes
- captioning:    prefix `<cap> <boi> codes <eoi> <bot>`, then text and `<eot>`

Decoding prefills the prefix once with the prefix-LM mask and then feeds one token per step
through the KV cache. Prompts of different lengths are left-padded: padding keys are masked
and positions still start at 0 at the task token of every row. Identical prefixes (n samples
of one prompt, the shared unconditional prefix of classifier-free guidance) are prefilled
once and the cache rows are copied. Logits are computed for the last position only and only
over the ids the target can take (image codes, or text ids and `<eot>`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cogview import masks
from cogview.config import option
from cogview.contrastive import NO_HEAD, has_head
from cogview.errors import ConfigError
from cogview.model import CogLM, prefix_lm_mask


class SamplingError(ConfigError):
    """Settings or prompts that cannot be sampled (bad values, sequences that do not fit);
    `field` names the SamplingConfig field a bad value was given for (None otherwise)."""


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn. Each field's metadata holds its help text; `flag` names a command
    line flag other than the field's name, `images` marks settings of image sampling only."""

    temperature: float = option(1.0, "0 = greedy (default: 1)")
    top_k: int = option(0, "keep the k likeliest ids; 0 = off")
    top_p: float = option(1.0, "nucleus mass; 1 = off")
    # classifier-free guidance: uncond + s * (cond - uncond)
    cfg_scale: float = option(1.0, "classifier-free guidance scale; 1 = off", flag="cfg",
                            metavar="SCALE", images=True)
    # CogView2 cluster sampling: draw a cluster of codebook vectors by its mass among the
    # `top_clusters` heaviest clusters, then a code inside it
    cluster: bool = option(False, "CogView2 cluster sampling over codebook clusters", images=True)
    n_clusters: int = option(32, "k-means clusters of the codebook (default: 32)", images=True)
    top_clusters: int = option(4, "clusters to draw from per step (default: 4)", images=True)
    # CogView2: added to the attention scores of image targets towards text keys
    text_attention_bias: float = option(
        0.0, "added to image tokens' attention towards text (CogView2); 0 = off", images=True
    )
    batch_size: int = option(32, "samples per forward pass (default: 32)", metavar="B")

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0 and math.isfinite(self.temperature), "temperature", ">= 0"),
            (self.top_k >= 0, "top_k", ">= 0"),
            (0 < self.top_p <= 1, "top_p", "in (0, 1]"),
            (math.isfinite(self.cfg_scale), "cfg_scale", "a finite number"),
            (self.n_clusters >= 1, "n_clusters", ">= 1"),
            (self.top_clusters >= 1, "top_clusters", ">= 1"),
            (math.isfinite(self.text_attention_bias), "text_attention_bias", "finite"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
        ]
        for ok, name, want in checks:
            if not ok:
                detail = f"must be {want}, got {getattr(self, name)}"
                raise SamplingError(f"{name} {detail}", field=name, detail=detail)

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0


# ---------------------------------------------------------------------------------------------
# filters: (B, V) logits -> (B, V) logits with removed ids at -inf


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept); k <= 0 = off."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus: keep the most likely ids until their mass reaches p (at least one id)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # an id is dropped when the ids before it already hold p of the mass
    drop = probs.cumsum(dim=-1) - probs >= p
    drop[..., 0] = False
    drop = drop.scatter(-1, order, drop)
    return logits.masked_fill(drop, float("-inf"))


def restrict_to(logits: Tensor, allowed: range | Tensor) -> Tensor:
    """-inf outside `allowed`: a range of ids, or a (V,) boolean mask, or a tensor of ids."""
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    if isinstance(allowed, range):
        keep[allowed.start : allowed.stop] = True
    elif allowed.dtype == torch.bool:
        keep = allowed.to(logits.device)
    else:
        keep[allowed.to(logits.device)] = True
    return logits.masked_fill(~keep, float("-inf"))


def guide(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance on logits (log-probabilities up to a constant)."""
    return uncond + scale * (cond - uncond)


def sample_logits(
    logits: Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None,
    clusters: Tensor | None = None,
) -> Tensor:
    """(B, V) logits -> (B,) sampled indices; `clusters` (V,) assigns each index a cluster."""
    logits = logits.float()
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits / config.temperature, config.top_k), config.top_p)
    probs = logits.softmax(dim=-1)
    if clusters is not None:
        n = int(clusters.max()) + 1
        mass = probs.new_zeros(probs.shape[0], n).index_add_(1, clusters, probs)  # (B, C)
        top = mass.topk(min(config.top_clusters, n), dim=-1)
        pick = categorical(top.values, generator)  # (B,) among the top clusters
        chosen = top.indices.gather(1, pick[:, None])  # (B, 1) cluster id
        probs = probs * (clusters[None, :] == chosen)
    return categorical(probs, generator)


def categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row of (B, V) non-negative weights, drawn in proportion to them.

    Inverse CDF with one uniform number per row: cheaper per decode step than
    `torch.multinomial`, which validates its input and draws per entry.
    """
    cdf = probs.cumsum(dim=-1)  # (B, V)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    # x in (0, total]: the first index whose cdf reaches x has positive weight (a zero weight
    # repeats the cdf value before it) and exists (x <= cdf[-1] even after rounding)
    x = (1.0 - u) * cdf[:, -1:]
    return torch.searchsorted(cdf, x)[:, 0]


# ---------------------------------------------------------------------------------------------
# k-means of the codebook for cluster sampling


def codebook_clusters(codebook: Tensor, n_clusters: int, seed: int = 0, iters: int = 50) -> Tensor:
    """k-means (k-means++ start, Lloyd steps) of codebook vectors (K, d) -> cluster of each (K,).

    Computed once per model; deterministic for a seed. With as many clusters as codes, every
    code is its own cluster (cluster sampling is then plain sampling).
    """
    x = codebook.detach().float().cpu()
    k = x.shape[0]
    if n_clusters >= k:
        return torch.arange(k)
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randint(k, (1,), generator=g)]
    for _ in range(1, n_clusters):
        d2 = torch.cdist(x, centers).min(dim=1).values.pow(2)
        weights = d2 if float(d2.sum()) > 0 else torch.ones(k)
        centers = torch.cat([centers, x[torch.multinomial(weights, 1, generator=g)]])
    assign = torch.cdist(x, centers).argmin(dim=1)
    for _ in range(iters):
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=n_clusters)
        dist = torch.cdist(x, centers).min(dim=1).values
        for c in (counts == 0).nonzero().flatten().tolist():
            # an empty cluster takes the point farthest from its centre
            far = int(dist.argmax())
            sums[c], counts[c], dist[far] = x[far], 1, -1.0
        centers = sums / counts[:, None]
        new = torch.cdist(x, centers).argmin(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    # number clusters by their first code so the result does not depend on centre order
    _, first = torch.unique(assign, return_inverse=True)
    order = {}
    for c in first.tolist():
        order.setdefault(c, len(order))
    return torch.tensor([order[c] for c in first.tolist()])


# ---------------------------------------------------------------------------------------------
# the decoder shared by every task


@dataclass
class _Prefix:
    ids: Tensor  # (L,)
    cell: Tensor  # (L, 2)
    text_states: Tensor | None = None  # (n slots, text_dim) of an encoded prompt
    text_slots: Tensor | None = None  # (L,) bool
    text: str | None = None  # an encoded prompt's string: prefixes of equal ids may differ

    @property
    def key(self) -> tuple:
        return (tuple(self.ids.tolist()), self.text)


def _prefix(seq: masks.TaskSequence, text: masks.Text) -> _Prefix:
    n = seq.prefix_len
    if seq.text_states is None:
        return _Prefix(seq.ids[:n], seq.cell[:n])
    return _Prefix(seq.ids[:n], seq.cell[:n], seq.text_states, seq.text_slots[:n], text.text)


def _t2i_prefix(tok, text_ids: masks.Text, grid: tuple[int, int]) -> _Prefix:
    return _prefix(masks.text_to_image(tok, text_ids, torch.zeros(grid, dtype=torch.long)),
                   text_ids)


def _inp_prefix(tok, text_ids: masks.Text, codes: Tensor, cell_mask: Tensor) -> _Prefix:
    return _prefix(masks.inpainting(tok, text_ids, codes, cell_mask), text_ids)


def _cap_prefix(tok, codes: Tensor) -> _Prefix:
    seq = masks.captioning(tok, [], codes)
    return _Prefix(seq.ids[: seq.prefix_len], seq.cell[: seq.prefix_len])


class _Decoder:
    """Rows of prefixes (left-padded) followed by targets fed one at a time.

    `target_cells` (N, 2) are the cells of the N targets, the same for every row ((0, 0) for
    text targets): target k is input with cell `target_cells[k]` and predicts the target at
    `target_cells[k + 1]`, and the last prefix token predicts `target_cells[0]`, as in
    `masks._sequence`.
    """

    def __init__(
        self,
        model: CogLM,
        tok,
        prefixes: Sequence[_Prefix],
        target_cells: Tensor,
        text_bias: float = 0.0,
        use_cache: bool = True,
    ) -> None:
        self.model = model
        self.use_cache = use_cache
        device = next(model.parameters()).device
        n_targets = target_cells.shape[0]

        # unique prefixes are prefilled once; `index` (B,) maps each row to its prefix
        unique: dict[tuple, int] = {}
        index = [unique.setdefault(p.key, len(unique)) for p in prefixes]
        firsts = {}
        for row, u in enumerate(index):
            firsts.setdefault(u, prefixes[row])
        uniq = [firsts[u] for u in range(len(unique))]
        self.index = torch.tensor(index, device=device)

        if n_targets < 1:
            raise SamplingError("nothing to sample")
        lp = max(p.ids.numel() for p in uniq)  # padded prefix length
        total = lp + n_targets - 1  # the last target is never an input
        if total > model.config.max_seq_len:
            raise SamplingError(
                f"sequence of {total} tokens exceeds the model's max_seq_len "
                f"{model.config.max_seq_len}"
            )
        if target_cells.numel() and int(target_cells.max()) > model.config.max_grid:
            raise SamplingError(f"image grid exceeds the model's max_grid {model.config.max_grid}")

        u_rows = len(uniq)
        ids = torch.full((u_rows, total), tok.pad_id, dtype=torch.long)
        pos = torch.zeros(u_rows, total, dtype=torch.long)
        cell = torch.zeros(u_rows, total, 2, dtype=torch.long)
        next_cell = torch.zeros(u_rows, total, 2, dtype=torch.long)
        valid = torch.ones(u_rows, total, dtype=torch.bool)
        # encoded prompts: their states at the text slots (the model's text_proj reads them)
        encoded = [p.text_states for p in uniq if p.text_states is not None]
        text_states = text_mask = None
        if encoded:
            text_states = torch.zeros(u_rows, total, encoded[0].shape[-1])
            text_mask = torch.zeros(u_rows, total, dtype=torch.bool)
        for r, p in enumerate(uniq):
            n, pad = p.ids.numel(), lp - p.ids.numel()
            ids[r, pad:lp] = p.ids
            pos[r, pad:lp] = torch.arange(n)
            pos[r, lp:] = torch.arange(n, n + n_targets - 1)
            cell[r, pad:lp] = p.cell
            valid[r, :pad] = False
            if p.text_states is not None:
                text_mask[r, pad:lp] = p.text_slots
                text_states[r, pad:lp][p.text_slots] = p.text_states.float()
        cell[:, lp:] = target_cells[:-1]
        next_cell[:, lp - 1 :] = target_cells

        # prefix keys are seen by every query, target keys causally; padding keys by nobody
        # but themselves (a query row with no key at all would make NaNs that leak via values)
        allowed = prefix_lm_mask(torch.full((u_rows,), lp), total, valid)
        allowed |= torch.eye(total, dtype=torch.bool)
        if text_bias:
            text = torch.zeros(tok.vocab_size, dtype=torch.bool)
            text[tok.text_range.start : tok.text_range.stop] = True
            is_text = text[ids] & valid  # (U, S)
            if text_mask is not None:
                is_text |= text_mask
            # queries that predict an image target: the last prefix token and every target
            is_target = torch.arange(total) >= lp - 1  # (T,)
            bias = (is_target[:, None] & is_text[:, None, :]) * text_bias  # (U, T, S)
            mask = torch.zeros(u_rows, 1, total, total).masked_fill(~allowed, float("-inf"))
            mask = mask + bias[:, None]
        else:
            mask = allowed
        self.lp, self.total = lp, total
        dev = dict(device=device)
        self.u_ids, self.u_pos = ids.to(**dev), pos.to(**dev)
        self.u_cell, self.u_next_cell, self.u_mask = (
            cell.to(**dev),
            next_cell.to(**dev),
            mask.to(**dev),
        )
        # per-row copies (B rows) for the decode steps
        self.ids = self.u_ids[self.index]
        self.pos, self.cell = self.u_pos[self.index], self.u_cell[self.index]
        self.next_cell, self.mask = self.u_next_cell[self.index], self.u_mask[self.index]
        self.u_text: dict[str, Tensor] = {}  # text_states and text_mask, when prompts are encoded
        self.text: dict[str, Tensor] = {}
        if text_states is not None:
            self.u_text = dict(text_states=text_states.to(**dev), text_mask=text_mask.to(**dev))
            self.text = {k: v[self.index] for k, v in self.u_text.items()}
        self.t = lp  # index of the next input
        self.cache = None

    def start(self) -> Tensor:
        """Run the prefix; hidden state (B, dim) of the last prefix token."""
        lp = self.lp
        if self.use_cache:
            self.cache = self.model.new_cache(self.u_ids.shape[0], self.total)
            h = self.model.hidden(
                self.u_ids[:, :lp],
                self.u_pos[:, :lp],
                self.u_cell[:, :lp],
                self.u_next_cell[:, :lp],
                attn_mask=self.u_mask[:, :, :lp, :lp],
                cache=self.cache,
                **{k: v[:, :lp] for k, v in self.u_text.items()},
            )[:, -1]
            if self.index.numel() != self.u_ids.shape[0] or bool(
                (self.index != torch.arange(self.index.numel(), device=self.index.device)).any()
            ):
                self.cache.reorder(self.index)
            return h[self.index]
        return self._full(lp)

    def _full(self, t: int) -> Tensor:
        """Forward over the first t inputs without a cache; hidden state of the last."""
        return self.model.hidden(
            self.ids[:, :t],
            self.pos[:, :t],
            self.cell[:, :t],
            self.next_cell[:, :t],
            attn_mask=self.mask[:, :, :t, :t],
            **{k: v[:, :t] for k, v in self.text.items()},
        )[:, -1]

    def step(self, ids: Tensor) -> Tensor:
        """Feed (B,) ids as the next target; hidden state (B, dim) at it."""
        t = self.t
        self.ids[:, t] = ids
        self.t = t + 1
        if not self.use_cache:
            return self._full(t + 1)
        return self.model.hidden(
            self.ids[:, t : t + 1],
            self.pos[:, t : t + 1],
            self.cell[:, t : t + 1],
            self.next_cell[:, t : t + 1],
            attn_mask=self.mask[:, :, t : t + 1, : t + 1],
            cache=self.cache,
        )[:, -1]


def _image_head(model: CogLM, tok) -> Tensor:
    """Output embedding rows of the image codes (K, dim): logits over codes only."""
    r = tok.image_range
    return model.head.weight[r.start : r.stop]


def _text_head(model: CogLM, tok) -> tuple[Tensor, Tensor]:
    """Output rows of the text ids and `<eot>`, and the vocabulary id of each row."""
    r = tok.text_range
    ids = torch.cat([torch.arange(r.start, r.stop), torch.tensor([tok.eot_id])])
    ids = ids.to(model.head.weight.device)
    return model.head.weight[ids], ids


def _check_clusters(config: SamplingConfig, clusters: Tensor | None, tok) -> Tensor | None:
    if not config.cluster:
        return None
    if clusters is None or clusters.numel() != tok.num_image_codes:
        raise SamplingError(
            "cluster sampling needs a cluster for each image code (see codebook_clusters)"
        )
    return clusters


def _sample_targets(
    model: CogLM,
    tok,
    cond: Sequence[_Prefix],
    uncond: Sequence[_Prefix] | None,
    target_cells: Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None,
    clusters: Tensor | None,
    use_cache: bool,
) -> Tensor:
    """Image codes (B, N) for B prefixes; guided by the unconditional rows when given."""
    rows = list(cond) + list(uncond or [])
    b, n = len(cond), target_cells.shape[0]
    dec = _Decoder(model, tok, rows, target_cells, config.text_attention_bias, use_cache)
    weight = _image_head(model, tok)
    if clusters is not None:
        clusters = clusters.to(weight.device)
    out = torch.empty(b, n, dtype=torch.long, device=weight.device)
    first_id = tok.image_range.start
    h = dec.start()
    for k in range(n):
        logits = F.linear(h, weight).float()  # (rows, K)
        if uncond is not None:
            logits = guide(logits[:b], logits[b:], config.cfg_scale)
        code = sample_logits(logits, config, generator, clusters)
        out[:, k] = code
        if k + 1 < n:
            ids = code + first_id  # codes_to_ids without its range check on every step
            h = dec.step(ids if uncond is None else ids.repeat(2))
    return out


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


# ---------------------------------------------------------------------------------------------
# public tasks


@torch.inference_mode()
def generate_images(
    model: CogLM,
    tokenizer,
    text_ids_list: Sequence[masks.Text],
    grid: tuple[int, int],
    config: SamplingConfig,
    generator: torch.Generator | None = None,
    *,
    clusters: Tensor | None = None,
    use_cache: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Codes (B, h, w) of one image per prompt in `text_ids_list` (B lists of text ids, or
    `masks.EncodedText` for a model that reads a text encoder).

    An empty prompt samples unconditionally (the text-dropout case of training). `clusters`
    (K,) from `codebook_clusters` is needed when `config.cluster`. `progress(k)` is called
    after each batch with the number of images it finished.
    """
    h, w = grid
    clusters = _check_clusters(config, clusters, tokenizer)
    cells = masks.grid_cells(h, w)
    outs = []
    for chunk in _chunks(len(text_ids_list), config.batch_size):
        cond = [_t2i_prefix(tokenizer, text_ids_list[i], grid) for i in chunk]
        uncond = [_t2i_prefix(tokenizer, [], grid)] * len(chunk) if config.guided else None
        codes = _sample_targets(
            model, tokenizer, cond, uncond, cells, config, generator, clusters, use_cache
        )
        outs.append(codes.view(len(chunk), h, w))
        if progress is not None:
            progress(len(chunk))
    return torch.cat(outs) if outs else torch.empty(0, h, w, dtype=torch.long)


@torch.inference_mode()
def inpaint(
    model: CogLM,
    tokenizer,
    text_ids: masks.Text,
    codes: Tensor,
    cell_mask: Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
    n: int = 1,
    *,
    clusters: Tensor | None = None,
    use_cache: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """n versions (n, h, w) of `codes` (h, w) with the cells where `cell_mask` (h, w) is True
    sampled again, in raster order, each target carrying its cell (the `inpainting` layout).
    Unmasked cells keep their codes. The prompt is text ids or a `masks.EncodedText`."""
    cell_mask = cell_mask.bool().cpu()
    codes = codes.long().cpu()
    if codes.shape != cell_mask.shape:
        raise SamplingError(
            f"mask {tuple(cell_mask.shape)} differs from codes {tuple(codes.shape)}"
        )
    clusters = _check_clusters(config, clusters, tokenizer)
    device = next(model.parameters()).device
    out = codes.to(device).repeat(n, 1, 1)
    if not cell_mask.any():
        return out
    cells = masks.grid_cells(*codes.shape)[cell_mask.flatten()]  # (N, 2) masked, raster order
    cond_p = _inp_prefix(tokenizer, text_ids, codes, cell_mask)
    uncond_p = _inp_prefix(tokenizer, [], codes, cell_mask) if config.guided else None
    flat = out.view(n, -1)
    where = cell_mask.flatten().nonzero().flatten().to(device)
    for chunk in _chunks(n, config.batch_size):
        uncond = [uncond_p] * len(chunk) if uncond_p is not None else None
        new = _sample_targets(
            model,
            tokenizer,
            [cond_p] * len(chunk),
            uncond,
            cells,
            config,
            generator,
            clusters,
            use_cache,
        )
        flat[chunk.start : chunk.stop, where] = new
        if progress is not None:
            progress(len(chunk))
    return out


@torch.inference_mode()
def generate_captions(
    model: CogLM,
    tokenizer,
    codes: Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
    n: int = 1,
    max_len: int | None = None,
    *,
    use_cache: bool = True,
) -> list[list[int]]:
    """n captions (text ids, without `<eot>`) of the image `codes` (h, w), in captioning mode.

    A caption ends at `<eot>` or after `max_len` text tokens (default: the tokenizer's
    `max_text_len`). Guidance, clusters and the text attention bias are for images only.
    """
    max_len = tokenizer.max_text_len if max_len is None else max_len
    if max_len < 1:
        raise SamplingError(f"max_len must be >= 1, got {max_len}")
    weight, row_ids = _text_head(model, tokenizer)
    prefix = _cap_prefix(tokenizer, codes.long().cpu())
    captions: list[list[int]] = []
    for chunk in _chunks(n, config.batch_size):
        b = len(chunk)
        # max_len text tokens, then room for <eot>; text targets have no cell
        dec = _Decoder(
            model,
            tokenizer,
            [prefix] * b,
            torch.zeros(max_len + 1, 2, dtype=torch.long),
            use_cache=use_cache,
        )
        rows: list[list[int]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool)
        h = dec.start()
        for k in range(max_len + 1):
            ids = row_ids[sample_logits(F.linear(h, weight), config, generator)]
            for r, i in enumerate(ids.tolist()):
                if done[r]:
                    continue
                if i == tokenizer.eot_id or k == max_len:
                    done[r] = True
                else:
                    rows[r].append(i)
            if bool(done.all()):
                break
            h = dec.step(ids)
        captions.extend(rows)
    return captions


@torch.inference_mode()
def caption_logprob(
    model: CogLM,
    tokenizer,
    codes: Tensor,
    text_ids: Sequence[int] | Sequence[Sequence[int]],
    batch_size: int = 64,
) -> Tensor:
    """Mean log p(text, `<eot>` | image) per sample (B,), teacher-forced in captioning mode.

    `codes` is (B, h, w) or one image (h, w); `text_ids` is one list of ids for every image or
    B lists. One batched forward per `batch_size` samples over the training sequences
    (`masks.captioning`); probabilities are over the whole vocabulary, as in training.
    """
    if codes.dim() == 2:
        codes = codes[None]
    b = codes.shape[0]
    texts = list(text_ids)
    if not texts or isinstance(texts[0], int) or hasattr(texts[0], "__index__"):
        texts = [[int(i) for i in texts]] * b
    if len(texts) != b:
        raise SamplingError(f"{len(texts)} texts for {b} images")
    seqs = [masks.captioning(tokenizer, texts[i], codes[i].cpu()) for i in range(b)]
    return target_logprob(model, seqs, tokenizer.pad_id, batch_size)


@torch.inference_mode()
def target_logprob(
    model: CogLM, seqs: Sequence[masks.TaskSequence], pad_id: int, batch_size: int = 64
) -> Tensor:
    """Mean log p of each task sequence's targets (B,), teacher-forced, one batched forward per
    `batch_size` sequences; probabilities are over the whole vocabulary, as in training."""
    device = next(model.parameters()).device
    out = []
    for chunk in _chunks(len(seqs), batch_size):
        batch = masks.collate([seqs[i] for i in chunk], pad_id).to(device)
        logits = model(**batch.model_inputs()).float()  # (B, T, V)
        keep = batch.labels != masks.IGNORE
        logp = logits.log_softmax(-1).gather(-1, batch.labels.clamp(min=0)[..., None])[..., 0]
        out.append((logp * keep).sum(1) / keep.sum(1))
    return torch.cat(out)


@torch.inference_mode()
def prompt_scores(
    model: CogLM,
    tokenizer,
    codes: Tensor,
    text_ids: Sequence[Sequence[int]],
    alternatives: Sequence[Sequence[Sequence[int]]] | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Self-reranking scores (B,): the mean log p(prompt | image) of each image (B, h, w) with
    its prompt in `text_ids`, or the best over the prompt and the other phrasings of it in
    `alternatives` (B lists, empty where there are none; `restated_ids`)."""
    if not alternatives or not any(alternatives):
        return caption_logprob(model, tokenizer, codes, text_ids, batch_size)
    if len(alternatives) != len(text_ids):
        raise SamplingError(f"{len(alternatives)} lists of alternatives for {len(text_ids)} texts")
    rows = [i for i, alts in enumerate(alternatives) for _ in range(len(alts) + 1)]
    texts = [t for i, alts in enumerate(alternatives) for t in (text_ids[i], *alts)]
    flat = caption_logprob(model, tokenizer, codes[rows], texts, batch_size)
    index = torch.tensor(rows, device=flat.device)
    best = torch.full((len(text_ids),), -math.inf, device=flat.device, dtype=flat.dtype)
    return best.scatter_reduce(0, index, flat, reduce="amax")


Restate = Callable[[str], list[str]]  # a prompt -> other phrasings that say the same


def restated_ids(
    tokenizer, text_ids: Sequence[Sequence[int]], restate: Restate | None
) -> list[list[list[int]]]:
    """For each prompt, the text ids of its restatements by `restate` (for the shapes domain
    `shapes.restatements`: a two-object relation said from either object, one object in the
    training wording), [] for the rest or without `restate`; each distinct prompt once.

    A model whose captioning learnt to name two objects in reading order gives a prompt
    written in the other order a low likelihood whatever the image; its restatement gives
    the likelihood that tells the images apart."""
    import warnings

    if restate is None:
        return [[] for _ in text_ids]
    found: dict[tuple[int, ...], list[list[int]]] = {}
    for ids in map(tuple, text_ids):
        if ids not in found:
            texts = restate(tokenizer.decode_text(ids)) if ids else []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a restated prompt is cut like the prompt
                found[ids] = [list(t) for t in tokenizer.encode_texts(texts)] if texts else []
    return [found[tuple(ids)] for ids in text_ids]


# How reranking scores a candidate image against its prompt:
# - "caption": the model's own mean log p(prompt | image) in captioning mode (CogView's
#   self-reranking; `prompt_scores`)
# - "contrastive": the cosine of the prompt's and the image's unit embeddings by the
#   contrastive head (`contrastive_scores`); one forward pass over the image, none per phrasing
# - "both": the sum of the two, each standardised over the candidates of one prompt
#   (`standardised`)
RERANKERS = ("caption", "contrastive", "both")


def check_reranker(by: str, with_head: bool, field: str = "rerank_by") -> None:
    """SamplingError of the parameter `field` unless `by` is one of RERANKERS that a model
    with (or without) a contrastive head can score by: "contrastive" and "both" need one."""
    if by not in RERANKERS:
        raise SamplingError.of(field, f"must be one of {', '.join(RERANKERS)}, got {by!r}")
    if by != "caption" and not with_head:
        raise SamplingError.of(field, f"{by}: {NO_HEAD}")


def _text_key(text: masks.Text) -> object:
    return ("encoded", text.text) if isinstance(text, masks.EncodedText) else tuple(text)


def _is_empty(text: masks.Text) -> bool:
    return (len(text.states) if isinstance(text, masks.EncodedText) else len(text)) == 0


@torch.inference_mode()
def contrastive_scores(
    model: CogLM,
    tokenizer,
    codes: Tensor,
    texts: Sequence[masks.Text],
    batch_size: int = 64,
    region: RegionView | None = None,
) -> Tensor:
    """Contrastive reranking scores (B,): the cosine of each image (B, h, w) with its prompt in
    `texts` (text ids, or the `masks.EncodedText` a model with a text encoder reads), by
    `contrastive.embed_texts` and `embed_images`. Each distinct prompt is embedded once; an
    empty prompt has no embedding and scores 0 (no preference). With a `region`, the better of
    the whole image and the region alone (`RegionView`), as for the caption score: a prompt
    may name only what goes into the region, and an image embedding pools every cell."""
    from cogview.contrastive import embed_images, embed_texts

    if len(texts) != codes.shape[0]:
        raise SamplingError(f"{len(texts)} texts for {codes.shape[0]} images")
    index: dict[object, int] = {}
    distinct: list[masks.Text] = []
    for t in texts:
        if not _is_empty(t) and _text_key(t) not in index:
            index[_text_key(t)] = len(distinct)
            distinct.append(t)
    device = next(model.parameters()).device
    scores = torch.zeros(len(texts), device=device)
    rows = [i for i, t in enumerate(texts) if not _is_empty(t)]
    if not rows:
        return scores
    prompts = embed_texts(model, tokenizer, distinct, batch_size)  # (D, E)
    which = torch.tensor([index[_text_key(texts[i])] for i in rows], device=device)
    rows_t = torch.tensor(rows, device=device)
    images = embed_images(model, tokenizer, codes[rows_t.to(codes.device)], batch_size)
    cos = (prompts[which] * images).sum(-1)  # (R,) of unit vectors: cosines
    if region is not None:
        alone = embed_images(model, tokenizer, region.apply(codes[rows_t.to(codes.device)]),
                             batch_size)
        cos = torch.maximum(cos, (prompts[which] * alone).sum(-1))
    return scores.index_copy(0, rows_t, cos)


def standardised(scores: Tensor) -> Tensor:
    """Scores (P, n) shifted and scaled to mean 0 and standard deviation 1 within each row (the
    candidates of one prompt); a row of equal scores gives zeros.

    The caption score (a mean log-likelihood per token, its spread depending on the prompt's
    length and the model) and a cosine live on unrelated scales; reranking only compares the
    candidates of one prompt, so each score's offset and unit within that group carry no
    information. Standardising both there makes the sum weigh them equally, whatever either
    score's scale, and leaves each one's own order unchanged."""
    x = scores.double()  # candidates' caption scores may differ in the 5th digit only
    centred = x - x.mean(dim=1, keepdim=True)
    spread = x.std(dim=1, unbiased=False, keepdim=True)
    return (centred / spread.clamp(min=1e-9)).to(scores.dtype)


@dataclass
class Reranked:
    codes: Tensor  # (keep, h, w), best first
    scores: Tensor  # (keep,) their reranking scores (`best_candidates`)
    all_scores: Tensor  # (n_candidates,) in generation order


@torch.inference_mode()
def rerank(
    model: CogLM,
    tokenizer,
    text_ids: Sequence[int],
    grid: tuple[int, int],
    config: SamplingConfig,
    generator: torch.Generator | None = None,
    n_candidates: int = 16,
    keep: int = 1,
    *,
    clusters: Tensor | None = None,
    progress: Callable[[int], None] | None = None,
    restate: Restate | None = None,
    condition: masks.EncodedText | None = None,
    by: str = "caption",
) -> Reranked:
    """CogView self-reranking: sample `n_candidates` images of the prompt, score each against
    it (`best_candidates`: by default the model's own log p(prompt | image) in captioning
    mode; `by` one of RERANKERS), keep the best `keep`. A model that reads a text encoder
    draws from `condition`, the prompt's states, scores captions by the text ids and
    contrastive embeddings by `condition`."""
    if not 1 <= keep <= n_candidates:
        raise SamplingError(f"keep must be in 1..{n_candidates}, got {keep}")
    check_reranker(by, has_head(model))
    prompt = list(text_ids) if condition is None else condition
    codes = generate_images(
        model,
        tokenizer,
        [prompt] * n_candidates,
        grid,
        config,
        generator,
        clusters=clusters,
        progress=progress,
    )
    return keep_best(model, tokenizer, codes, text_ids, keep, config.batch_size,
                     restate=restate, by=by, condition=condition)


@dataclass(frozen=True)
class RegionView:
    """How self-reranking also looks at an inpainted region alone: the masked cells (h, w)
    keep their codes and every other cell shows `blank` (h, w), the codes of an empty image.

    A prompt may name only what goes into the region ("a yellow triangle at the bottom
    right") while the whole image holds more; captioning, trained on whole images, then
    scores the prompt against an image that shows just the region. Each candidate scores the
    better of the two views (by the caption and by the contrastive score alike)."""

    cell_mask: Tensor  # (h, w) bool
    blank: Tensor  # (h, w) codes

    def apply(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) with every cell outside the region blank."""
        mask, blank = self.cell_mask.to(codes.device), self.blank.to(codes.device)
        return torch.where(mask, codes, blank)


def keep_best(
    model: CogLM,
    tokenizer,
    codes: Tensor,
    text_ids: Sequence[int],
    keep: int,
    batch_size: int = 64,
    region: RegionView | None = None,
    restate: Restate | None = None,
    *,
    by: str = "caption",
    condition: masks.EncodedText | None = None,
) -> Reranked:
    """The `keep` best of candidate images (n, h, w) of one prompt by reranking
    (`best_candidates`), best first; `condition` is the prompt as a model with a text encoder
    reads it."""
    n = codes.shape[0]
    conditions = None if condition is None else [condition] * n
    best, scores = best_candidates(model, tokenizer, codes, [list(text_ids)] * n, n, keep,
                                   batch_size, region, restate, by=by, conditions=conditions)
    return Reranked(codes=codes[best[0].to(codes.device)], scores=scores[0, best[0]],
                    all_scores=scores[0])


@torch.inference_mode()
def best_candidates(
    model: CogLM,
    tokenizer,
    codes: Tensor,
    text_ids: Sequence[Sequence[int]],
    n_candidates: int,
    keep: int = 1,
    batch_size: int = 64,
    region: RegionView | None = None,
    restate: Restate | None = None,
    *,
    by: str = "caption",
    conditions: Sequence[masks.Text] | None = None,
) -> tuple[Tensor, Tensor]:
    """Reranking of P groups of `n_candidates` consecutive images (P * n, h, w), each row with
    its prompt in `text_ids`. Returns the `keep` best of each group, best first, as indices
    into the group (P, keep), and every score (P, n), by `by` (RERANKERS):

    - "caption": `prompt_scores` over each prompt and its restatements by `restate`
      (`restated_ids`), and with a `region`, the better of that and the prompt's score on the
      region alone (inpainting);
    - "contrastive": `contrastive_scores` of each image with its prompt as the model reads it
      (`conditions`, one per row: text ids or `masks.EncodedText`; default `text_ids`), with a
      `region` the better of the two views; restatements are not needed (the text embedding
      does not depend on which object a prompt names first the way captioning does);
    - "both": `standardised` caption scores plus `standardised` contrastive scores.
    """
    check_reranker(by, has_head(model))
    scores = []
    if by in ("caption", "both"):
        alternatives = restated_ids(tokenizer, text_ids, restate)
        caption = prompt_scores(model, tokenizer, codes, text_ids, alternatives, batch_size)
        if region is not None:
            alone = prompt_scores(model, tokenizer, region.apply(codes), text_ids,
                                  batch_size=batch_size)
            caption = torch.maximum(caption, alone)
        scores.append(caption.view(-1, n_candidates))
    if by in ("contrastive", "both"):
        texts = list(text_ids) if conditions is None else list(conditions)
        cos = contrastive_scores(model, tokenizer, codes, texts, batch_size, region)
        scores.append(cos.view(-1, n_candidates))
    combined = scores[0] if len(scores) == 1 else sum(standardised(s) for s in scores)
    return combined.argsort(dim=1, descending=True, stable=True)[:, :keep], combined


def best_of_groups(
    model: CogLM,
    tokenizer,
    codes: Tensor,
    text_ids: Sequence[Sequence[int]],
    n_candidates: int,
    batch_size: int = 64,
    region: RegionView | None = None,
    restate: Restate | None = None,
    *,
    by: str = "caption",
    conditions: Sequence[masks.Text] | None = None,
) -> Tensor:
    """The best image (P, h, w) of each of P groups of `n_candidates` consecutive candidates
    (`best_candidates` with keep=1); the codes unchanged when `n_candidates` is 1."""
    if n_candidates == 1:
        return codes
    best, _ = best_candidates(model, tokenizer, codes, text_ids, n_candidates,
                              batch_size=batch_size, region=region, restate=restate, by=by,
                              conditions=conditions)
    first = torch.arange(best.shape[0], device=best.device) * n_candidates  # each group's start
    return codes[(first + best[:, 0]).to(codes.device)]
