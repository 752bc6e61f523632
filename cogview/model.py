"""CogLM: a pre-LN transformer over one vocabulary of text, image codes and special tokens.

The model holds no task logic. Every position carries
- a token id and a 1-D position,
- `cell`: the (row, col) of an image token, 1-based, (0, 0) for other tokens,
- `next_cell`: the (row, col) of the image code that this position predicts, (0, 0) when it
  predicts no image code; this is how a target knows where it goes when targets are not in
  raster order (inpainting, super-resolution),
and attention is one mask handed in from the batch (or built from per-sample prefix lengths:
the prefix is visible to every position, the rest is causal).

A model with `text_dim` > 0 reads its prompts from a frozen text encoder (Imagen-style): at
the positions of `text_mask` its input is `text_proj` of the encoder's states instead of the
token embedding (positions are embedded as everywhere else). The encoder is not part of the
model; its states come with the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class CogLMConfig:
    vocab_size: int
    dim: int = 256
    n_layers: int = 6
    n_heads: int = 8
    mlp_ratio: float = 4.0
    max_seq_len: int = 256  # 1-D positions
    max_grid: int = 32  # rows and cols of image cells, 1..max_grid (0 = not an image cell)
    sandwich_ln: bool = False  # CogView2: LayerNorm on each branch's output too
    dropout: float = 0.0
    bias: bool = False
    text_dim: int = 0  # width of a frozen text encoder's states; 0 = prompts are token ids
    contrastive_dim: int = 0  # width of the contrastive embeddings; 0 = no contrastive head
    contrastive_pool: str = "mean"  # what a contrastive embedding pools (`masks.POOLS`)

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.vocab_size <= 0:
            raise ValueError("vocab_size must be positive")
        if self.text_dim < 0:
            raise ValueError(f"text_dim must be >= 0, got {self.text_dim}")
        if self.contrastive_dim < 0:
            raise ValueError(f"contrastive_dim must be >= 0, got {self.contrastive_dim}")
        if self.contrastive_pool not in ("mean", "last"):
            raise ValueError(f"contrastive_pool must be mean or last, got "
                             f"{self.contrastive_pool!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


# named sizes; vocab_size comes from the tokenizer when a model is built
PRESETS: dict[str, dict] = {
    "tiny": dict(dim=64, n_layers=2, n_heads=4, max_seq_len=512),
    "small": dict(dim=256, n_layers=6, n_heads=8, max_seq_len=512),  # ~5M
    "medium": dict(dim=384, n_layers=8, n_heads=6, max_seq_len=512),  # ~15M
    # the GPU sizes fit 256 px images: an inpainting sample on a 32x32 grid (f=8) with up to
    # 126 text tokens is 2050 + text positions (train.lm.max_sequence_len); 16x16 (f=16) is 514
    "base": dict(dim=768, n_layers=14, n_heads=12, max_seq_len=2176),  # ~100M
    "large": dict(dim=1024, n_layers=28, n_heads=16, max_seq_len=2176),  # ~350M
    "xl": dict(dim=2048, n_layers=20, n_heads=16, max_seq_len=2176),  # ~1B
}


def coglm_config(preset: str, vocab_size: int, **overrides) -> CogLMConfig:
    """The preset's CogLMConfig for this vocabulary; ValueError naming the choices if none."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return CogLMConfig(vocab_size=vocab_size, **{**PRESETS[preset], **overrides})


class KVCache:
    """Keys and values of every layer for up to `max_len` positions: prefill once, then decode."""

    def __init__(
        self,
        config: CogLMConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (config.n_layers, batch_size, config.n_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, nh, T, hs) after the cached positions; return all keys and values."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, {end} needed")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (e.g. to expand one prefill to many samples)."""
        self.k = self.k[:, index]
        self.v = self.v[:, index]


def prefix_lm_mask(prefix_len: Tensor, seq_len: int, key_valid: Tensor | None = None) -> Tensor:
    """Boolean attention mask (B, 1, T, T), True = may attend.

    Key j is visible from query i when j is in the prefix (j < prefix_len) or j <= i, and,
    when `key_valid` (B, T) is given, only if key j is a real token (not padding).
    """
    idx = torch.arange(seq_len, device=prefix_len.device)
    causal = idx[None, :] <= idx[:, None]  # (T, T)
    in_prefix = idx[None, None, :] < prefix_len[:, None, None]  # (B, 1, T)
    mask = causal[None] | in_prefix  # (B, T, T)
    if key_valid is not None:
        mask = mask & key_valid[:, None, :]
    return mask[:, None]


class Attention(nn.Module):
    def __init__(self, config: CogLMConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=config.bias)
        self.proj = nn.Linear(config.dim, config.dim, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None) -> Tensor:
        q, k, v = rearrange(
            self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_heads
        )
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, nh, S, hs) with S = cached + T
        dropout = self.dropout if self.training else 0.0
        short = k.shape[-2] <= CPU_MATMUL_ATTENTION_MAX_KEYS
        if q.device.type == "cpu" and q.dtype == torch.bfloat16 and short:
            y = bf16_cpu_attention(q, k, v, mask, dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))


# up to this many keys, bf16 attention on a CPU is `bf16_cpu_attention`
CPU_MATMUL_ATTENTION_MAX_KEYS = 128


def bf16_cpu_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float = 0.0
) -> Tensor:
    """Attention of bf16 (B, nh, T, hs) queries, as `scaled_dot_product_attention`, for CPUs.

    torch's CPU flash-attention kernel is slow in bf16 over few keys, its backward most of
    all: forward and backward of one layer of the `small` preset (32 x 96 tokens) take 59 ms
    against 24 ms in fp32. Two bf16 matmuls around a float32 softmax take 20 ms; the bf16
    training step of that preset takes 0.71 s against 0.95 s, and generation with bf16 weights
    is 1.25x faster. Over many keys the float32 scores cost more memory traffic than the
    kernel loses (super-resolution, about 330 keys: a training step took 1.16 s against
    0.60 s in the kernel), hence `CPU_MATMUL_ATTENTION_MAX_KEYS`. `mask` is boolean
    (True = attend) or additive.
    """
    scores = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5  # (B, nh, T, S)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1)
    if dropout:
        probs = F.dropout(probs, dropout)
    return probs.to(v.dtype) @ v


class MLP(nn.Module):
    def __init__(self, config: CogLMConfig) -> None:
        super().__init__()
        hidden = int(config.mlp_ratio * config.dim)
        self.fc = nn.Linear(config.dim, hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.dim, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: CogLMConfig, layer: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.dim, bias=config.bias)
        self.attn = Attention(config, layer)
        self.ln2 = nn.LayerNorm(config.dim, bias=config.bias)
        self.mlp = MLP(config)
        # sandwich-LN normalises each branch before it joins the residual stream, which kept
        # CogView's large models from diverging in fp16
        self.ln1_out = nn.LayerNorm(config.dim, bias=config.bias) if config.sandwich_ln else None
        self.ln2_out = nn.LayerNorm(config.dim, bias=config.bias) if config.sandwich_ln else None
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None) -> Tensor:
        h = self.attn(self.ln1(x), mask, cache)
        if self.ln1_out is not None:
            h = self.ln1_out(h)
        x = x + self.drop(h)
        h = self.mlp(self.ln2(x))
        if self.ln2_out is not None:
            h = self.ln2_out(h)
        return x + self.drop(h)


class ContrastiveHead(nn.Module):
    """CoCa-style: the final hidden states of a text's or an image's pooled positions
    (`contrastive_pool`: the position after it, or all of its own), averaged, projected into a
    shared space of unit vectors and compared at a learnt temperature."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.text = nn.Linear(dim, out_dim, bias=False)
        self.image = nn.Linear(dim, out_dim, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's start

    @property
    def scale(self) -> Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    def embed(self, hidden: Tensor, pool: Tensor, side: str) -> Tensor:
        """Unit embeddings (B, out_dim) of hidden states (B, T, dim) averaged over `pool`
        (B, T) bool; `side` is "text" or "image"."""
        weights = pool.to(torch.float32)
        count = weights.sum(1, keepdim=True).clamp(min=1)  # rows without positions pool to 0
        pooled = (hidden.float() * weights[..., None]).sum(1) / count
        proj = self.text if side == "text" else self.image
        return F.normalize(proj(pooled.to(proj.weight.dtype)).float(), dim=-1)


class CogLM(nn.Module):
    # activation checkpointing in training: each block's activations are recomputed in the
    # backward pass instead of kept (set by the trainer; no effect on results)
    checkpointing = False

    def __init__(self, config: CogLMConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.pos_emb = nn.Embedding(config.max_seq_len, d)
        # (row, col) of the input token and of the code to predict; index 0 means "none"
        self.row_emb = nn.Embedding(config.max_grid + 1, d)
        self.col_emb = nn.Embedding(config.max_grid + 1, d)
        self.next_row_emb = nn.Embedding(config.max_grid + 1, d)
        self.next_col_emb = nn.Embedding(config.max_grid + 1, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d, bias=config.bias)
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied output embedding
        # encoder states (B, T, text_dim) -> the model's width, at the text slots
        self.text_proj = nn.Linear(config.text_dim, d) if config.text_dim else None
        self.contrastive = (ContrastiveHead(d, config.contrastive_dim)
                            if config.contrastive_dim else None)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual branches: GPT-2 scaled init
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layers))
        for emb in (self.row_emb, self.col_emb, self.next_row_emb, self.next_col_emb):
            nn.init.zeros_(emb.weight[0])

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= self.tok_emb.weight.numel() + self.pos_emb.weight.numel()
            n -= sum(e.weight.numel() for e in (self.row_emb, self.col_emb))
            n -= sum(e.weight.numel() for e in (self.next_row_emb, self.next_col_emb))
        return n

    def embed(
        self,
        ids: Tensor,
        pos: Tensor,
        cell: Tensor | None = None,
        next_cell: Tensor | None = None,
        text_states: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> Tensor:
        """(B, T) ids and positions, (B, T, 2) cells -> (B, T, dim); where `text_mask` (B, T)
        is True the input is `text_proj(text_states)` (B, T, text_dim), not the token."""
        if int(pos.max()) >= self.config.max_seq_len:
            raise ValueError(f"position {int(pos.max())} >= max_seq_len {self.config.max_seq_len}")
        x = self.tok_emb(ids)
        if text_states is not None:
            if self.text_proj is None:
                raise ValueError("text_states given to a model without a text encoder "
                                 "(text_dim 0)")
            w = self.text_proj.weight
            slots = text_mask[..., None]  # (B, T, 1)
            # only the slots are projected: most positions of a batch are image tokens
            states = self.text_proj(text_states[text_mask].to(w.dtype))  # (N slots, dim)
            x = x.masked_scatter(slots, states.to(x.dtype))
        x = x + self.pos_emb(pos)
        if cell is not None:
            x = x + self.row_emb(cell[..., 0]) + self.col_emb(cell[..., 1])
        if next_cell is not None:
            x = x + self.next_row_emb(next_cell[..., 0]) + self.next_col_emb(next_cell[..., 1])
        return self.drop(x)

    def hidden(
        self,
        ids: Tensor,
        pos: Tensor,
        cell: Tensor | None = None,
        next_cell: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        prefix_len: Tensor | None = None,
        cache: KVCache | None = None,
        text_states: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> Tensor:
        """Final hidden states (B, T, dim), after the last LayerNorm.

        `attn_mask` is (B, 1|nh, T, S) boolean (True = attend) or additive float, with S the
        number of keys (cached + new). Without it, `prefix_len` (B,) builds a prefix-LM mask;
        with neither, attention is causal. `text_states` (B, T, text_dim) and `text_mask`
        (B, T) give an encoded prompt's states at its slots (`embed`).
        """
        x = self.embed(ids, pos, cell, next_cell, text_states, text_mask)
        mask = attn_mask
        if mask is None and prefix_len is not None:
            if cache is not None and cache.length:
                raise ValueError("prefix_len masks only apply without cached positions")
            mask = prefix_lm_mask(prefix_len, ids.shape[1])
        if mask is None:
            t, s = ids.shape[1], (cache.length if cache is not None else 0) + ids.shape[1]
            mask = torch.ones(t, s, dtype=torch.bool, device=ids.device).tril(s - t)
        for block in self.blocks:
            if self.checkpointing and self.training and cache is None and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, None, use_reentrant=False)
            else:
                x = block(x, mask, cache)
        if cache is not None:
            cache.length += ids.shape[1]
        return self.ln_f(x)

    def forward(
        self,
        ids: Tensor,
        pos: Tensor,
        cell: Tensor | None = None,
        next_cell: Tensor | None = None,
        **kwargs,
    ) -> Tensor:
        """Logits (B, T, vocab_size); keyword arguments as for `hidden`."""
        return self.head(self.hidden(ids, pos, cell, next_cell, **kwargs))

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        p = next(self.parameters())
        return KVCache(
            self.config, batch_size, max_len or self.config.max_seq_len, p.device, p.dtype
        )

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM appendix."""
        c = self.config
        n = self.num_params(embeddings=False) + c.vocab_size * c.dim  # the head is a matmul
        return 6 * n + 12 * c.n_layers * c.dim * seq_len
