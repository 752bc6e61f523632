"""Super-resolution of code grids: low-resolution codes (8x8) -> high-resolution codes (16x16).

The SR model is a CogLM (same class, its own config and presets) over one fixed-layout sequence

    <sr> text[:text_len] (padded) <boi> low-res codes (lr x lr) <eoi> high-res cells (hr x hr)

Every image token carries its `cell` (1-based row, col in its own grid); a high-resolution
position holds the current code of its cell or `<mask>`, and predicts its own cell's code (so
`next_cell == cell` there). The model is not causal; one boolean mask says who sees whom:
- the prefix (`<sr>`, text, `<boi>`, low-res codes, `<eoi>`) attends among itself only, so its
  keys and values are the same in every pass and are computed once at sampling time;
- a high-resolution cell attends to the text and specials, to the low-res cells in a
  `lr_kernel` square around the low-res cell under it, and to the high-res cells in a
  `hr_kernel` square around itself.

Direct SR predicts every high-resolution code in one pass with all inputs `<mask>`. Iterative
SR (LoPAR, CogView2) tiles the grid into `window` x `window` windows and gives each cell the
order `i + j` (its anti-diagonal inside its window, 2w-1 orders); pass r re-predicts, in all
windows at once, every cell of order >= r with those cells as `<mask>`, and keeps the cells of
order < r. Training draws r uniformly and masks the cells of order >= r, so r = 0 is direct SR
and one model does both. The number of passes depends on the window, not on the image size.

Ids come from the tokenizer; this file reads and writes no files except in the loader at the
end, which only goes through `cogview.checkpoint`, `cogview.pretrained` and the tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cogview.errors import ConfigError, UserError
from cogview.masks import IGNORE, TaskBatch, grid_cells
from cogview.model import CogLM, CogLMConfig, KVCache
from cogview.sampling import SamplingConfig, SamplingError, sample_logits

SR_KIND = "sr"
SR_TASKS = ("direct", "lopar")  # loss groups: samples with r = 0, and with r > 0


@dataclass(frozen=True)
class SRConfig:
    """The SR transformer (`lm`, a CogLMConfig whose `max_seq_len` and `max_grid` are the
    sequence and the high-res grid below) and its geometry: grid sides, text slots, the LoPAR
    window and the two local-attention kernels. `SRConfig.build` sizes `lm` to fit."""

    lm: CogLMConfig
    text_len: int = 8  # the first text tokens that condition SR (the rest is cut)
    lr_size: int = 8  # low-resolution grid side (32 px / f=4)
    hr_size: int = 16  # high-resolution grid side (64 px / f=4)
    window: int = 4  # LoPAR window side: 2 * window - 1 passes
    hr_kernel: int = 7  # side of the square of high-res cells a high-res cell attends to
    lr_kernel: int = 5  # side of the square of low-res cells a high-res cell attends to

    def __post_init__(self) -> None:
        if self.hr_size < self.lr_size or self.lr_size < 1:
            raise ValueError(f"need 1 <= lr_size <= hr_size, got {self.lr_size}, {self.hr_size}")
        if not 1 <= self.window <= self.hr_size:
            raise ValueError(f"window must be in 1..hr_size={self.hr_size}, got {self.window}")
        for name in ("hr_kernel", "lr_kernel"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be a positive odd number, got {k}")
        if self.text_len < 0:
            raise ValueError(f"text_len must be >= 0, got {self.text_len}")
        if (self.lm.max_seq_len, self.lm.max_grid) != (self.seq_len, self.hr_size):
            raise ValueError(f"lm must have max_seq_len {self.seq_len} and max_grid "
                             f"{self.hr_size}, got {self.lm.max_seq_len}, {self.lm.max_grid}")

    @classmethod
    def build(cls, lm: dict[str, Any], **geometry: Any) -> SRConfig:
        """An SRConfig of this geometry whose transformer (CogLMConfig fields `lm`, without
        max_seq_len and max_grid) fits it."""
        sides = {f.name: f.default for f in fields(cls) if f.name != "lm"} | geometry
        seq_len = cls.layout(sides["text_len"], sides["lr_size"], sides["hr_size"])[-1]
        return cls(CogLMConfig(**lm, max_seq_len=seq_len, max_grid=sides["hr_size"]),
                   **geometry)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> SRConfig:
        """From config.json: {"lm": {...}, geometry}, or the earlier flat layout (transformer
        and geometry fields side by side)."""
        from cogview.checkpoint import CheckpointError, config_from_dict

        geometry_names = {f.name for f in fields(cls)} - {"lm"}
        geometry = {k: v for k, v in data.items() if k in geometry_names}
        try:
            if "lm" in data:
                rest = set(data) - geometry_names - {"lm"}
                if rest:
                    raise CheckpointError(f"{source}: unknown SRConfig fields {sorted(rest)}")
                lm = config_from_dict(CogLMConfig, data["lm"], source=source)
                return cls(lm, **geometry)
            flat = {k: v for k, v in data.items() if k not in geometry_names}
            known = {f.name for f in fields(CogLMConfig)} - {"max_seq_len", "max_grid"}
            if set(flat) - known:
                raise CheckpointError(f"{source}: unknown SRConfig fields "
                                      f"{sorted(set(flat) - known)}")
            return cls.build(flat, **geometry)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: invalid SRConfig: {e}") from e

    @staticmethod
    def layout(text_len: int, lr_size: int, hr_size: int) -> tuple[int, int, int]:
        """(lr_start, hr_start, seq_len) of the sequence
        [<sr>] [text x text_len] [<boi>] [lr codes] [<eoi>] [hr cells]."""
        lr_start = text_len + 2
        hr_start = lr_start + lr_size**2 + 1
        return lr_start, hr_start, hr_start + hr_size**2

    @property
    def lr_start(self) -> int:
        return self.layout(self.text_len, self.lr_size, self.hr_size)[0]

    @property
    def hr_start(self) -> int:
        return self.layout(self.text_len, self.lr_size, self.hr_size)[1]

    @property
    def seq_len(self) -> int:
        return self.layout(self.text_len, self.lr_size, self.hr_size)[2]

    @property
    def num_orders(self) -> int:
        """LoPAR passes at most: anti-diagonals of one window."""
        return 2 * self.window - 1


# named sizes; vocab_size comes from the tokenizer when a model is built
SR_PRESETS: dict[str, dict] = {
    "tiny": dict(dim=64, n_layers=2, n_heads=4),
    # SR is local (a cell's code follows from the few low-res codes under and around it), so
    # it needs far less model than the base CogLM; ~0.9M parameters with a 64-code vocabulary
    "small": dict(dim=128, n_layers=4, n_heads=4),
}
GEOMETRY = ("text_len", "lr_size", "hr_size", "window", "hr_kernel", "lr_kernel")


def sr_config(preset: str, vocab_size: int, **overrides: Any) -> SRConfig:
    """The SR preset's transformer for this vocabulary; `overrides` set geometry fields
    (lr_size, hr_size, window, ...) or transformer fields."""
    if preset not in SR_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(SR_PRESETS)}")
    lm = {"vocab_size": vocab_size, **SR_PRESETS[preset]}
    lm.update({k: v for k, v in overrides.items() if k not in GEOMETRY})
    return SRConfig.build(lm, **{k: v for k, v in overrides.items() if k in GEOMETRY})


class SRModel(CogLM):
    """A CogLM built from `config.lm`: its state dict is exactly CogLM's; `sr` is the whole
    SRConfig (what checkpoints store)."""

    def __init__(self, config: SRConfig) -> None:
        super().__init__(config.lm)
        self.sr = config


# ---------------------------------------------------------------------------------------------
# geometry: LoPAR windows and orders, the attention mask


def lopar_windows(size: int, window: int) -> Tensor:
    """(size, size) index of the window each cell falls in (windows in raster order)."""
    idx = torch.arange(size) // window
    per_row = -(-size // window)
    return idx[:, None] * per_row + idx[None, :]


def lopar_orders(size: int, window: int) -> Tensor:
    """(size, size) LoPAR order of each cell: i + j inside its window, 0 .. 2*window - 2."""
    idx = torch.arange(size) % window
    return idx[:, None] + idx[None, :]


def lopar_schedule(num_orders: int, steps: int, field: str = "steps") -> list[int]:
    """The first order re-predicted by each of `steps` passes: pass k predicts every cell of
    order >= starts[k] and fixes those below starts[k + 1]. steps = num_orders gives one order
    per pass; steps = 1 is direct SR. A bad `steps` is an error of parameter `field`."""
    if not 1 <= steps <= num_orders:
        raise ConfigError.of(field, f"must be in 1..{num_orders} (2 * window - 1), got {steps}")
    return [k * num_orders // steps for k in range(steps)]


@lru_cache(maxsize=8)
def _sr_attention_mask(config: SRConfig) -> Tensor:
    t, p, l0 = config.seq_len, config.hr_start, config.lr_start
    n_lr = config.lr_size**2
    mask = torch.zeros(t, t, dtype=torch.bool)
    mask[:p, :p] = True  # prefix among itself
    mask[p:, :l0] = True  # high-res -> <sr>, text, <boi>
    mask[p:, l0 + n_lr] = True  # high-res -> <eoi>
    hr = grid_cells(config.hr_size, config.hr_size) - 1  # (N_hr, 2) 0-based
    lr = grid_cells(config.lr_size, config.lr_size) - 1  # (N_lr, 2)
    under = hr * config.lr_size // config.hr_size  # the low-res cell under each high-res cell
    near_lr = (under[:, None] - lr[None]).abs().amax(-1) <= config.lr_kernel // 2
    near_hr = (hr[:, None] - hr[None]).abs().amax(-1) <= config.hr_kernel // 2
    mask[p:, l0 : l0 + n_lr] = near_lr
    mask[p:, p:] = near_hr
    return mask


def sr_attention_mask(config: SRConfig) -> Tensor:
    """(T, T) boolean, True = query (row) may attend key (column); T = config.seq_len."""
    return _sr_attention_mask(config).clone()


# ---------------------------------------------------------------------------------------------
# sequences


def sr_sequence(
    tok: Any,
    config: SRConfig,
    texts: Sequence[Sequence[int]] | None,
    lr_codes: Tensor,
    hr_ids: Tensor,
    labels: Tensor | None = None,
    task: Tensor | None = None,
) -> TaskBatch:
    """Build a batch of SR sequences.

    `texts` B lists of text ids (None or empty lists: no text), `lr_codes` (B, lr, lr)
    codebook indices, `hr_ids` (B, hr*hr) vocabulary ids of the high-res inputs (codes or
    `tok.mask_id`), `labels` (B, hr*hr) vocabulary ids to predict or IGNORE, `task` (B,).
    """
    b, device = lr_codes.shape[0], lr_codes.device
    if tuple(lr_codes.shape[1:]) != (config.lr_size, config.lr_size):
        raise UserError(
            f"low-res codes are {tuple(lr_codes.shape[1:])}, the SR model expects "
            f"{config.lr_size}x{config.lr_size}"
        )
    t, p, l0, n_lr = config.seq_len, config.hr_start, config.lr_start, config.lr_size**2
    ids = torch.full((b, t), tok.pad_id, dtype=torch.long, device=device)
    ids[:, 0] = tok.task_id("sr")
    ids[:, l0 - 1] = tok.boi_id
    ids[:, l0 : l0 + n_lr] = tok.codes_to_ids(lr_codes.reshape(b, -1))
    ids[:, l0 + n_lr] = tok.eoi_id
    ids[:, p:] = hr_ids
    key_valid = torch.ones(b, t, dtype=torch.bool, device=device)
    key_valid[:, 1 : l0 - 1] = False  # text slots; the used ones are switched back on
    for i, text in enumerate(texts or [[]] * b):
        text = list(text)[: config.text_len]
        if text:
            ids[i, 1 : 1 + len(text)] = torch.tensor(text, dtype=torch.long, device=device)
            key_valid[i, 1 : 1 + len(text)] = True

    cell = torch.zeros(t, 2, dtype=torch.long)
    cell[l0 : l0 + n_lr] = grid_cells(config.lr_size, config.lr_size)
    cell[p:] = grid_cells(config.hr_size, config.hr_size)
    next_cell = torch.zeros(t, 2, dtype=torch.long)
    next_cell[p:] = cell[p:]  # a high-res position predicts its own cell

    full_labels = torch.full((b, t), IGNORE, dtype=torch.long, device=device)
    if labels is not None:
        full_labels[:, p:] = labels
    mask = sr_attention_mask(config).to(device)[None] & key_valid[:, None, :]  # (B, T, T)
    return TaskBatch(
        ids=ids,
        pos=torch.arange(t, device=device).expand(b, t).contiguous(),
        cell=cell.to(device).expand(b, t, 2).contiguous(),
        next_cell=next_cell.to(device).expand(b, t, 2).contiguous(),
        attn_mask=mask[:, None],
        labels=full_labels,
        task=task if task is not None else torch.zeros(b, dtype=torch.long, device=device),
    )


@dataclass
class SRSample:
    """One training sample: LoPAR step `r`, cells of order >= r masked and predicted."""

    text: list[int]
    lr_codes: Tensor  # (lr, lr)
    hr_ids: Tensor  # (N,) inputs: code ids, `<mask>` where order >= r
    labels: Tensor  # (N,) code ids where order >= r, IGNORE elsewhere
    r: int


def sr_sample(
    tok: Any, config: SRConfig, text: Sequence[int], lr_codes: Tensor, hr_codes: Tensor, r: int
) -> SRSample:
    """Mask the cells of order >= r of `hr_codes` (hr, hr) and make them the targets."""
    order = lopar_orders(config.hr_size, config.window).flatten()  # (N,)
    masked = order.to(hr_codes.device) >= r
    true_ids = tok.codes_to_ids(hr_codes.flatten())
    return SRSample(
        text=list(text)[: config.text_len],
        lr_codes=lr_codes,
        hr_ids=torch.where(masked, tok.mask_id, true_ids),
        labels=torch.where(masked, true_ids, IGNORE),
        r=int(r),
    )


def collate_sr(tok: Any, config: SRConfig, samples: Sequence[SRSample]) -> TaskBatch:
    return sr_sequence(
        tok,
        config,
        [s.text for s in samples],
        torch.stack([s.lr_codes for s in samples]),
        torch.stack([s.hr_ids for s in samples]),
        labels=torch.stack([s.labels for s in samples]),
        task=torch.tensor([int(s.r > 0) for s in samples]),
    )


def draw_sr_samples(
    tok: Any,
    config: SRConfig,
    texts: Sequence[Sequence[int]],
    lr_codes: Tensor,
    hr_codes: Tensor,
    g: torch.Generator,
    text_dropout: float = 0.1,
) -> list[SRSample]:
    """LoPAR training samples: per sample draw r uniformly in 0 .. 2w-2 (r = 0 is direct SR)
    and, with probability `text_dropout`, drop the text so that SR also works without one.
    `lr_codes` (B, lr, lr), `hr_codes` (B, hr, hr); all randomness comes from `g`."""
    b = hr_codes.shape[0]
    r = torch.randint(0, config.num_orders, (b,), generator=g).tolist()
    drop = (torch.rand(b, generator=g) < text_dropout).tolist()
    return [
        sr_sample(tok, config, [] if drop[i] else texts[i], lr_codes[i], hr_codes[i], r[i])
        for i in range(b)
    ]


def sr_training_batch(
    tok: Any,
    config: SRConfig,
    texts: Sequence[Sequence[int]],
    lr_codes: Tensor,
    hr_codes: Tensor,
    g: torch.Generator,
    text_dropout: float = 0.1,
) -> TaskBatch:
    """`draw_sr_samples` collated into one batch."""
    samples = draw_sr_samples(tok, config, texts, lr_codes, hr_codes, g, text_dropout)
    return collate_sr(tok, config, samples)


# ---------------------------------------------------------------------------------------------
# sampling


def _check_sampling(sampling: SamplingConfig) -> None:
    if sampling.guided or sampling.text_attention_bias:
        raise SamplingError("super-resolution takes no cfg_scale or text_attention_bias")


def _pick(
    logits: Tensor,
    sampling: SamplingConfig,
    g: torch.Generator | None,
    clusters: Tensor | None = None,
) -> Tensor:
    """(B, N, K) code logits -> (B, N) codes (temperature, top-k/top-p, cluster sampling)."""
    b, n, k = logits.shape
    flat = logits.reshape(b * n, k)
    if g is not None and g.device != flat.device:
        flat = flat.to(g.device)
        clusters = None if clusters is None else clusters.to(g.device)
    return sample_logits(flat, sampling, g, clusters).view(b, n).to(logits.device)


class SRState:
    """One batch being super-resolved. The prefix never attends to the high-res cells, so its
    keys and values are the same in every pass: the first pass runs the whole sequence and
    keeps them in a KV cache, later passes run only the high-res cells."""

    def __init__(
        self,
        model: SRModel,
        tok: Any,
        lr_codes: Tensor,
        texts: Sequence[Sequence[int]] | None = None,
    ) -> None:
        config = model.sr
        self.model, self.tok, self.config = model, tok, config
        b, n = lr_codes.shape[0], config.hr_size**2
        hr_ids = torch.full((b, n), tok.mask_id, dtype=torch.long, device=lr_codes.device)
        self.batch = sr_sequence(tok, config, texts, lr_codes, hr_ids)
        self.order = lopar_orders(config.hr_size, config.window).flatten().to(lr_codes.device)
        self.cache: KVCache = model.new_cache(b, config.seq_len)

    def logits(self, hr_codes: Tensor, start: int) -> Tensor:
        """One forward pass: cells of order < start hold `hr_codes` (B, N), the rest `<mask>`.
        Returns (B, N, K) logits over the image codes only."""
        p, bt, tok = self.config.hr_start, self.batch, self.tok
        keep = self.order[None] < start
        hr_ids = torch.where(keep, tok.codes_to_ids(hr_codes), tok.mask_id)
        first = self.cache.length == 0
        q0 = 0 if first else p  # first pass: prefix and high-res cells; later: high-res only
        self.cache.length = 0 if first else p  # drop the previous pass's high-res keys
        h = self.model.hidden(
            torch.cat([bt.ids[:, q0:p], hr_ids], dim=1),
            bt.pos[:, q0:],
            bt.cell[:, q0:],
            bt.next_cell[:, q0:],
            attn_mask=bt.attn_mask[:, :, q0:, :],
            cache=self.cache,
        )[:, p - q0 :]  # (B, N, dim)
        r = self.tok.image_range
        # the head restricted to image codes: (B, N, dim) @ (dim, K)
        return h @ self.model.head.weight[r.start : r.stop].T


@torch.no_grad()
def lopar_step(
    state: SRState,
    hr_codes: Tensor,
    start: int,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    clusters: Tensor | None = None,
) -> Tensor:
    """Re-predict every cell of order >= `start` (in all windows at once); cells of order
    < start keep their codes. `hr_codes` (B, N) -> new (B, N) codes; `clusters` (K,) the
    cluster of each code for cluster sampling."""
    sampling = sampling or SamplingConfig()
    new = _pick(state.logits(hr_codes, start), sampling, generator, clusters)
    return torch.where(state.order[None] < start, hr_codes, new)


@dataclass
class SRResult:
    codes: Tensor  # (B, hr, hr) codebook indices
    passes: int  # forward passes over the high-res grid


@torch.no_grad()
def super_resolve(
    model: SRModel,
    tok: Any,
    lr_codes: Tensor,
    texts: Sequence[Sequence[int]] | None = None,
    *,
    steps: int | None = None,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    clusters: Tensor | None = None,
) -> SRResult:
    """Low-res codes (B, lr, lr) -> high-res codes (B, hr, hr), `sampling.batch_size` at a time.

    `steps` LoPAR passes (default 2w-1, one per order; 1 = direct SR, every code in one
    parallel pass). `texts` B lists of text ids, or None for no text.
    """
    sampling = sampling or SamplingConfig()
    _check_sampling(sampling)
    config = model.sr
    steps = config.num_orders if steps is None else steps
    starts = lopar_schedule(config.num_orders, steps)
    b, n = lr_codes.shape[0], config.hr_size**2
    texts = list(texts) if texts is not None else [[] for _ in range(b)]
    if len(texts) != b:
        raise UserError(f"{len(texts)} texts for {b} low-res code grids")
    out = []
    for i in range(0, b, sampling.batch_size):
        chunk = lr_codes[i : i + sampling.batch_size]
        state = SRState(model, tok, chunk, texts[i : i + sampling.batch_size])
        codes = torch.zeros(chunk.shape[0], n, dtype=torch.long, device=lr_codes.device)
        for start in starts:
            codes = lopar_step(state, codes, start, sampling, generator, clusters)
        out.append(codes)
    codes = torch.cat(out).view(b, config.hr_size, config.hr_size)
    return SRResult(codes=codes, passes=len(starts))


# ---------------------------------------------------------------------------------------------
# checkpoint folders: like a CogLM's (config.json of kind "sr", model.safetensors,
# tokenizer.json, vqvae/), read and written only through cogview.checkpoint


@dataclass
class SRPipeline:
    """An SR model with the tokenizer and VQVAE it was trained with, checked to agree."""

    model: SRModel  # eval mode
    tokenizer: Any  # tokenizer.UnifiedTokenizer
    vqvae: Any  # vqvae.model.VQVAE, eval mode
    low_res_size: int  # pixels of the images whose codes come in (32)
    image_size: int  # pixels of the images whose codes come out (64)
    meta: dict[str, Any]  # the checkpoint's extra JSON, plus "path" and "step"


def load_sr(path: str | Path, device: str | torch.device = "cpu") -> SRPipeline:
    """Load an SR folder (or a training run's newest step) with its tokenizer and VQVAE."""
    from cogview.checkpoint import (
        CONFIG_FILE,
        CheckpointError,
        load_checkpoint,
        load_state_strict,
    )
    from cogview.pipeline import load_bundled

    ckpt = load_checkpoint(path, kind=SR_KIND)
    source = str(ckpt.path / CONFIG_FILE)
    config = SRConfig.from_dict(ckpt.config, source=source)
    needed = ("low_res_size", "image_size", "vqvae_fingerprint")
    missing = [k for k in needed if k not in ckpt.extra]
    if missing:
        raise CheckpointError(f"{source}: extra lacks {', '.join(missing)}")
    tok, vq = load_bundled(ckpt, config.lm, "an SR folder", device)
    model = SRModel(config)
    load_state_strict(model, ckpt.state_dict, source=str(ckpt.path))
    return SRPipeline(
        model=model.to(device).eval(),
        tokenizer=tok,
        vqvae=vq,
        low_res_size=int(ckpt.extra["low_res_size"]),
        image_size=int(ckpt.extra["image_size"]),
        meta={**ckpt.extra, "path": str(ckpt.path), "step": ckpt.step},
    )


def check_sr_fits(sr: SRPipeline, tokenizer: Any, vqvae: Any, grid: tuple[int, int]) -> None:
    """UserError unless codes of a base model with this tokenizer, VQVAE and code grid can go
    into `sr` (same vocabulary, same codebook, the low-res grid the SR model reads)."""
    from vqvae.model import fingerprint

    where = sr.meta.get("path", "the SR model")
    if tokenizer.fingerprint != sr.tokenizer.fingerprint:
        raise UserError(
            f"{where}: trained with another tokenizer than the base model "
            f"({sr.tokenizer.fingerprint} vs {tokenizer.fingerprint})"
        )
    if fingerprint(vqvae) != sr.meta["vqvae_fingerprint"]:
        raise UserError(
            f"{where}: trained on codes of another VQVAE codebook than the base model's"
        )
    lr = sr.model.sr.lr_size
    if tuple(grid) != (lr, lr):
        raise UserError(
            f"{where}: reads {lr}x{lr} low-res codes, the base model makes "
            f"{grid[0]}x{grid[1]}"
        )


@torch.no_grad()
def upscale_codes(
    sr: SRPipeline,
    lr_codes: Tensor,
    texts: Sequence[Sequence[int]] | None = None,
    *,
    steps: int | None = None,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Low-res codes (B, lr, lr) -> (high-res codes (B, hr, hr), images (B, 3, H, W) in
    [-1, 1] decoded by the SR folder's VQVAE)."""
    device = next(sr.model.parameters()).device
    out = super_resolve(
        sr.model,
        sr.tokenizer,
        lr_codes.to(device),
        texts,
        steps=steps,
        sampling=sampling,
        generator=generator,
    )
    return out.codes, sr.vqvae.decode(out.codes)
