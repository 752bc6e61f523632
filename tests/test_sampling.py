"""Sampling: determinism, KV cache parity, the training layout, filters, guidance, inpainting."""

from __future__ import annotations

import pytest
import torch

from cogview import masks
from cogview.model import CogLM, coglm_config
from cogview.sampling import (
    SamplingConfig,
    SamplingError,
    caption_logprob,
    categorical,
    codebook_clusters,
    generate_captions,
    generate_images,
    guide,
    inpaint,
    prompt_scores,
    rerank,
    restrict_to,
    sample_logits,
    top_k_filter,
    top_p_filter,
)
from tokenizer import UnifiedTokenizer

GRID = (3, 3)
GREEDY = SamplingConfig(temperature=0.0)
CAPTIONS = ["a red circle", "a blue square at the top", "two green triangles", "red blue"] * 4


@pytest.fixture(scope="module")
def tok() -> UnifiedTokenizer:
    return UnifiedTokenizer.train(CAPTIONS, vocab_size=270, image_codes=16, max_text_len=8)


@pytest.fixture(scope="module")
def model(tok) -> CogLM:
    torch.manual_seed(0)
    m = CogLM(coglm_config("tiny", tok.vocab_size, dim=32, n_layers=2, max_seq_len=64))
    # random weights of a larger scale than the init: logits far apart, so greedy decoding
    # has no near-ties that float rounding could flip
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    return m.eval()


def prompts(tok) -> list[list[int]]:
    return [tok.encode_text("a red circle"), [], tok.encode_text("two green")]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ filters


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    out = top_k_filter(logits, 2)
    assert torch.isinf(out[0, [0, 2]]).all() and torch.equal(out[0, [1, 3]], logits[0, [1, 3]])
    assert torch.equal(top_k_filter(logits, 0), logits)


def test_top_p_keeps_smallest_set_with_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = top_p_filter(probs.log(), 0.7)
    assert torch.isfinite(out[0, :2]).all() and torch.isinf(out[0, 2:]).all()
    # the most likely id always survives
    assert torch.isfinite(top_p_filter(probs.log(), 0.1)[0, 0])


def test_restrict_to_range_and_ids():
    logits = torch.zeros(1, 6)
    assert torch.isfinite(restrict_to(logits, range(2, 4))).nonzero()[:, 1].tolist() == [2, 3]
    assert torch.isfinite(restrict_to(logits, torch.tensor([0, 5]))).nonzero()[:, 1].tolist() == [
        0,
        5,
    ]


def test_bad_settings_name_the_flag():
    with pytest.raises(SamplingError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(SamplingError, match="temperature"):
        SamplingConfig(temperature=-1)


def test_categorical_follows_weights_and_never_picks_zero_weight():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.8, 0.0]]).repeat(4000, 1)
    counts = torch.bincount(categorical(probs, gen()), minlength=5)
    assert counts[[0, 2, 4]].sum() == 0
    assert abs(float(counts[3]) / 4000 - 0.8) < 0.03


def test_cluster_sampling_stays_in_top_clusters():
    clusters = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.tensor([[5.0, 5.0, 4.0, 4.0, -9.0, -9.0]]).repeat(200, 1)
    cfg = SamplingConfig(cluster=True, top_clusters=2)
    picked = sample_logits(logits, cfg, gen(), clusters)
    assert set(picked.tolist()) <= {0, 1, 2, 3} and len(set(picked.tolist())) == 4


def test_codebook_clusters_finds_blobs_and_is_deterministic():
    g = gen(1)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(20, 2, generator=g) for c in centers])
    a = codebook_clusters(points, 3, seed=0)
    assert torch.equal(a, codebook_clusters(points, 3, seed=0))
    assert a.shape == (60,) and set(a.tolist()) == {0, 1, 2}
    for i in range(3):
        assert len(set(a[20 * i : 20 * (i + 1)].tolist())) == 1
    assert torch.equal(codebook_clusters(points, 100), torch.arange(60))


def test_guide():
    c, u = torch.randn(2, 5), torch.randn(2, 5)
    assert torch.allclose(guide(c, u, 1.0), c, atol=1e-6)
    assert torch.equal(guide(c, u, 0.0), u)


# ------------------------------------------------------------------------------ text-to-image


def test_same_seed_same_images(model, tok):
    cfg = SamplingConfig(temperature=1.0, top_k=8, top_p=0.9, cfg_scale=2.0, batch_size=2)
    a = generate_images(model, tok, prompts(tok), GRID, cfg, gen(3))
    b = generate_images(model, tok, prompts(tok), GRID, cfg, gen(3))
    c = generate_images(model, tok, prompts(tok), GRID, cfg, gen(4))
    assert a.shape == (3, *GRID) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= int(a.min()) and int(a.max()) < tok.num_image_codes


@pytest.mark.parametrize("bias", [0.0, 2.0])
def test_cache_equals_full_forward_greedy(model, tok, bias):
    cfg = SamplingConfig(temperature=0.0, text_attention_bias=bias, cfg_scale=1.5)
    a = generate_images(model, tok, prompts(tok), GRID, cfg, use_cache=True)
    b = generate_images(model, tok, prompts(tok), GRID, cfg, use_cache=False)
    assert torch.equal(a, b)


def test_text_attention_bias_changes_images(model, tok):
    a = generate_images(model, tok, prompts(tok)[:1], GRID, GREEDY)
    b = generate_images(
        model, tok, prompts(tok)[:1], GRID, SamplingConfig(temperature=0, text_attention_bias=5)
    )
    assert not torch.equal(a, b)


def test_greedy_matches_training_layout(model, tok):
    """Left-padded batched decoding gives, for every row, the argmax of the model run on the
    training sequence of that prompt and the decoded image (teacher forcing)."""
    codes = generate_images(model, tok, prompts(tok), GRID, GREEDY)
    for text, img in zip(prompts(tok), codes, strict=True):
        seq = masks.text_to_image(tok, text, img)
        batch = masks.collate([seq], tok.pad_id)
        logits = model(**batch.model_inputs())[0, seq.prefix_len - 1 :]
        r = tok.image_range
        pred = logits[:, r.start : r.stop].argmax(-1)
        assert torch.equal(pred, img.flatten())


def test_top_k_one_is_greedy(model, tok):
    a = generate_images(model, tok, prompts(tok), GRID, GREEDY)
    b = generate_images(model, tok, prompts(tok), GRID, SamplingConfig(top_k=1), gen(9))
    assert torch.equal(a, b)


def test_cfg_scale_one_is_conditional_and_zero_is_unconditional(model, tok):
    cond = generate_images(model, tok, prompts(tok), GRID, GREEDY)
    one = generate_images(model, tok, prompts(tok), GRID, SamplingConfig(temperature=0))
    assert torch.equal(cond, one)
    # with scale 0 the guided logits are the unconditional ones: every row is the empty prompt
    zero = generate_images(model, tok, prompts(tok), GRID, SamplingConfig(0.0, cfg_scale=0.0))
    uncond = generate_images(model, tok, [[]], GRID, GREEDY)
    assert torch.equal(zero, uncond.expand_as(zero))
    # a guided batch holds the conditional rows and the unconditional rows
    s = 3.0
    guided = generate_images(model, tok, prompts(tok), GRID, SamplingConfig(0.0, cfg_scale=s))
    assert guided.shape == cond.shape


def test_batch_size_does_not_change_greedy(model, tok):
    a = generate_images(model, tok, prompts(tok), GRID, SamplingConfig(0.0, batch_size=1))
    b = generate_images(model, tok, prompts(tok), GRID, SamplingConfig(0.0, batch_size=8))
    assert torch.equal(a, b)


def test_cluster_sampling_runs_and_is_seeded(model, tok):
    clusters = codebook_clusters(torch.randn(tok.num_image_codes, 4, generator=gen()), 4)
    cfg = SamplingConfig(cluster=True, n_clusters=4, top_clusters=2)
    a = generate_images(model, tok, prompts(tok), GRID, cfg, gen(1), clusters=clusters)
    b = generate_images(model, tok, prompts(tok), GRID, cfg, gen(1), clusters=clusters)
    assert torch.equal(a, b)
    with pytest.raises(SamplingError, match="cluster"):
        generate_images(model, tok, prompts(tok), GRID, cfg, gen(1))


def test_too_long_for_the_model_is_an_error(model, tok):
    with pytest.raises(SamplingError, match="max_seq_len"):
        generate_images(model, tok, prompts(tok), (8, 8), GREEDY)


# ------------------------------------------------------------------------------ inpainting


def test_inpaint_keeps_unmasked_cells_and_matches_training_layout(model, tok):
    codes = torch.randint(0, tok.num_image_codes, GRID, generator=gen(5))
    cell_mask = torch.tensor([[0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    text = tok.encode_text("a red circle")
    out = inpaint(model, tok, text, codes, cell_mask, SamplingConfig(batch_size=2), gen(), n=5)
    assert out.shape == (5, *GRID)
    assert torch.equal(out[:, ~cell_mask], codes[~cell_mask].expand(5, -1))
    assert not torch.equal(out[:, cell_mask], codes[cell_mask].expand(5, -1))

    greedy = inpaint(model, tok, text, codes, cell_mask, GREEDY, n=2)
    uncached = inpaint(model, tok, text, codes, cell_mask, GREEDY, n=1, use_cache=False)
    assert torch.equal(greedy[0], greedy[1]) and torch.equal(greedy[0], uncached[0])
    seq = masks.inpainting(tok, text, greedy[0], cell_mask)
    logits = model(**masks.collate([seq], tok.pad_id).model_inputs())[0, seq.prefix_len - 1 :]
    r = tok.image_range
    assert torch.equal(logits[:, r.start : r.stop].argmax(-1), greedy[0][cell_mask])


def test_inpaint_empty_mask_returns_codes(model, tok):
    codes = torch.randint(0, tok.num_image_codes, GRID, generator=gen(5))
    out = inpaint(model, tok, [], codes, torch.zeros(GRID, dtype=torch.bool), GREEDY, n=2)
    assert torch.equal(out, codes.expand(2, -1, -1))


# ------------------------------------------------------------------------------ captions


def test_captions_greedy_match_training_layout_and_logprob(model, tok):
    codes = torch.randint(0, tok.num_image_codes, GRID, generator=gen(6))
    caps = generate_captions(model, tok, codes, GREEDY, n=2, max_len=6)
    uncached = generate_captions(model, tok, codes, GREEDY, n=1, max_len=6, use_cache=False)
    assert caps[0] == caps[1] == uncached[0]
    allowed = set(tok.text_range)
    assert all(i in allowed for i in caps[0])

    # caption_logprob of a text equals the teacher-forced mean over text and <eot>
    text = tok.encode_text("a blue square")
    seq = masks.captioning(tok, text, codes)
    logits = model(**masks.collate([seq], tok.pad_id).model_inputs())[0].log_softmax(-1)
    keep = seq.labels != masks.IGNORE
    want = logits[keep].gather(-1, seq.labels[keep][:, None]).mean()
    got = caption_logprob(model, tok, codes, text)
    assert got.shape == (1,) and torch.allclose(got[0], want, atol=1e-5)
    # batched with texts of different lengths: the same numbers as one at a time
    texts = [text, tok.encode_text("red"), []]
    batched = caption_logprob(model, tok, codes.expand(3, -1, -1), texts)
    single = torch.cat([caption_logprob(model, tok, codes, t) for t in texts])
    assert torch.allclose(batched, single, atol=1e-5)


def test_captions_are_seeded(model, tok):
    codes = torch.randint(0, tok.num_image_codes, GRID, generator=gen(6))
    cfg = SamplingConfig(batch_size=2)
    a = generate_captions(model, tok, codes, cfg, gen(2), n=3, max_len=5)
    b = generate_captions(model, tok, codes, cfg, gen(2), n=3, max_len=5)
    assert a == b and len(a) == 3 and all(len(c) <= 5 for c in a)


# ------------------------------------------------------------------------------ reranking


def test_prompt_scores_take_the_best_phrasing(model, tok):
    codes = generate_images(model, tok, [tok.encode_text("a red circle")] * 4, GRID,
                            SamplingConfig(), gen(5))
    texts = [tok.encode_text(t) for t in ("a red circle", "red blue", "two green", "a red")]
    others = [[tok.encode_text("two green"), tok.encode_text("blue")], [], [],
              [tok.encode_text("a blue square")]]
    plain = caption_logprob(model, tok, codes, texts)
    assert torch.equal(prompt_scores(model, tok, codes, texts), plain)
    assert torch.equal(prompt_scores(model, tok, codes, texts, [[]] * 4), plain)
    got = prompt_scores(model, tok, codes, texts, others, batch_size=3)
    for i, alts in enumerate(others):
        each = [caption_logprob(model, tok, codes[i], t) for t in (texts[i], *alts)]
        assert torch.allclose(got[i], torch.cat(each).max(), atol=1e-6)
    with pytest.raises(SamplingError, match="alternatives"):
        prompt_scores(model, tok, codes, texts, others[:2])


def test_rerank_keeps_the_best_scored(model, tok):
    text = tok.encode_text("a red circle")
    cfg = SamplingConfig(batch_size=3)
    out = rerank(model, tok, text, GRID, cfg, gen(8), n_candidates=6, keep=2)
    assert out.codes.shape == (2, *GRID) and out.all_scores.shape == (6,)
    assert torch.equal(out.scores, out.all_scores.sort(descending=True).values[:2])
    assert torch.allclose(out.scores, caption_logprob(model, tok, out.codes, text), atol=1e-5)
    # the candidates are exactly what generate_images draws with the same seed
    cands = generate_images(model, tok, [text] * 6, GRID, cfg, gen(8))
    assert torch.equal(out.codes[0], cands[int(out.all_scores.argmax())])


def test_region_view_scores_the_better_of_the_whole_image_and_the_region_alone(tok, model):
    from cogview.sampling import RegionView, best_candidates, prompt_scores

    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, tok.num_image_codes, (6, *GRID), generator=g)
    mask = torch.zeros(GRID, dtype=torch.bool)
    mask[1:3, 1:3] = True
    view = RegionView(mask, torch.zeros(GRID, dtype=torch.long))
    alone = view.apply(codes)
    assert torch.equal(alone[:, mask], codes[:, mask]) and not alone[:, ~mask].any()
    ids = [tok.encode_text("a red circle")] * 6
    _, scores = best_candidates(model, tok, codes, ids, 6, region=view)
    whole = prompt_scores(model, tok, codes, ids)
    region = prompt_scores(model, tok, alone, ids)
    assert torch.allclose(scores[0], torch.maximum(whole, region))
