"""CogLM: KV-cached decoding equals the full forward pass; preset sizes."""

from __future__ import annotations

import pytest
import torch

from cogview.model import (
    CPU_MATMUL_ATTENTION_MAX_KEYS,
    CogLM,
    CogLMConfig,
    bf16_cpu_attention,
    coglm_config,
    prefix_lm_mask,
)

VOCAB = 97


def _inputs(b: int, t: int, g: torch.Generator):
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    pos = torch.arange(t).expand(b, t)
    cell = torch.randint(0, 5, (b, t, 2), generator=g)
    next_cell = torch.randint(0, 5, (b, t, 2), generator=g)
    return ids, pos, cell, next_cell


@pytest.mark.parametrize("sandwich", [False, True])
def test_kv_cache_logits_equal_full_forward(sandwich):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = CogLM(CogLMConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, max_seq_len=64,
                              max_grid=4, sandwich_ln=sandwich)).eval()
    b, t, p = 2, 12, 5  # prefix of 5, then 7 targets
    ids, pos, cell, next_cell = _inputs(b, t, g)
    with torch.no_grad():
        full = model(ids, pos, cell, next_cell, prefix_len=torch.full((b,), p))  # (B, T, V)
        cache = model.new_cache(b, max_len=t)
        pre = model(ids[:, :p], pos[:, :p], cell[:, :p], next_cell[:, :p],
                    prefix_len=torch.full((b,), p), cache=cache)
        steps = [pre]
        for i in range(p, t):
            s = slice(i, i + 1)
            steps.append(model(ids[:, s], pos[:, s], cell[:, s], next_cell[:, s], cache=cache))
    cached = torch.cat(steps, dim=1)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    assert cache.length == t


def test_hidden_and_head_give_the_logits():
    torch.manual_seed(0)
    model = CogLM(coglm_config("tiny", VOCAB)).eval()
    ids, pos, cell, next_cell = _inputs(2, 6, torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = model.hidden(ids, pos, cell, next_cell)
        torch.testing.assert_close(model.head(h), model(ids, pos, cell, next_cell))
    assert model.head.weight is model.tok_emb.weight  # tied


def test_prefix_mask_hides_padding_keys():
    valid = torch.tensor([[True, True, True, False]])
    m = prefix_lm_mask(torch.tensor([2]), 4, key_valid=valid)[0, 0]
    assert m[:, 3].sum() == 0
    assert m[0, :2].all() and not m[0, 2]  # prefix: bidirectional inside, blind to targets
    assert m[2, :3].all()


@pytest.mark.parametrize(
    "preset, expected", [("base", 100e6), ("large", 350e6), ("xl", 1e9)]
)
def test_gpu_presets_have_their_nominal_sizes(preset, expected):
    with torch.device("meta"):
        model = CogLM(coglm_config(preset, vocab_size=20_000))
    n = model.num_params(embeddings=False)
    assert abs(n - expected) / expected < 0.1, f"{preset}: {n / 1e6:.0f}M"
    assert model.flops_per_token(256) > 6 * n


def test_positions_beyond_max_seq_len_are_refused():
    model = CogLM(CogLMConfig(vocab_size=VOCAB, dim=16, n_layers=1, n_heads=2, max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long), torch.arange(9)[None])


@pytest.mark.parametrize("additive", [False, True])
@pytest.mark.parametrize("t", [9, CPU_MATMUL_ATTENTION_MAX_KEYS])
def test_bf16_cpu_attention_matches_sdpa(additive, t):
    """The CPU bf16 path gives scaled_dot_product_attention's output and gradients (to bf16
    rounding), with a boolean or an additive mask, up to the most keys it is used for."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, t, 16, generator=g) for _ in range(3))
    mask = prefix_lm_mask(torch.tensor([3, 5]), t)  # (B, 1, T, T) boolean
    if additive:
        bias = torch.randn(2, 1, t, t, generator=g)
        mask = torch.zeros(2, 1, t, t).masked_fill(~mask, float("-inf")) + bias
    out_grad = torch.randn(2, 4, t, 16, generator=g)

    def run(fn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        y = fn(*leaves)
        y.float().backward(out_grad)
        return y.float(), [t.grad.float() for t in leaves]

    ref, ref_grads = run(
        lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        torch.float32,
    )
    out, grads = run(lambda q, k, v: bf16_cpu_attention(q, k, v, mask), torch.bfloat16)
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.1)


def test_bf16_model_takes_the_cpu_path_and_agrees_with_fp32():
    torch.manual_seed(0)
    model = CogLM(coglm_config("tiny", VOCAB)).eval()
    ids, pos, cell, next_cell = _inputs(2, 10, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids, pos, cell, next_cell, prefix_len=torch.tensor([4, 6])).softmax(-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, pos, cell, next_cell, prefix_len=torch.tensor([4, 6]))
    torch.testing.assert_close(out.float().softmax(-1), ref, rtol=0, atol=0.02)
