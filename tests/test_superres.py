"""Super-resolution: LoPAR geometry, training masks, direct and iterative SR on a tiny model."""

from __future__ import annotations

import pytest
import torch

from cogview.errors import UserError
from cogview.masks import IGNORE
from cogview.sampling import SamplingConfig
from cogview.superres import (
    SRModel,
    SRState,
    lopar_orders,
    lopar_schedule,
    lopar_step,
    lopar_windows,
    sr_attention_mask,
    sr_config,
    sr_sequence,
    sr_training_batch,
    super_resolve,
)
from tokenizer import UnifiedTokenizer

CAPTIONS = ["a red circle at the top left", "a blue square at the bottom right", "a green star"]
GREEDY = SamplingConfig(temperature=0.0)


@pytest.fixture(scope="module")
def tok() -> UnifiedTokenizer:
    return UnifiedTokenizer.train(CAPTIONS * 10, vocab_size=280, image_codes=32)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return SRModel(sr_config("tiny", tok.vocab_size)).eval()


def _inputs(tok, config, b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k = tok.num_image_codes
    lr = torch.randint(0, k, (b, config.lr_size, config.lr_size), generator=g)
    hr = torch.randint(0, k, (b, config.hr_size, config.hr_size), generator=g)
    texts = [tok.encode_text(c) for c in (CAPTIONS * b)[:b]]
    return lr, hr, texts


# ---------------------------------------------------------------------------------------------
# geometry


@pytest.mark.parametrize("size,window", [(16, 4), (16, 3), (10, 4), (8, 1), (16, 16)])
def test_windows_tile_the_grid_and_every_cell_has_one_order(size, window):
    win, order = lopar_windows(size, window), lopar_orders(size, window)
    assert win.shape == order.shape == (size, size)
    per_side = -(-size // window)
    assert sorted(win.unique().tolist()) == list(range(per_side**2))
    for w in win.unique():
        rows, cols = torch.nonzero(win == w, as_tuple=True)
        # a window is one solid rectangle of at most window x window cells
        h, wd = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
        assert h <= window and wd <= window and rows.numel() == h * wd
        # inside it, the order is the anti-diagonal i + j
        i, j = rows - rows.min(), cols - cols.min()
        assert torch.equal(order[rows, cols], i + j)
    assert int(order.min()) == 0 and int(order.max()) <= 2 * window - 2
    if size % window == 0:  # full windows: order k holds min(k + 1, 2w - 1 - k) cells each
        counts = torch.bincount(order[:window, :window].flatten())
        assert counts.tolist() == [min(k + 1, 2 * window - 1 - k) for k in range(2 * window - 1)]


def test_schedule():
    assert lopar_schedule(7, 7) == list(range(7))
    assert lopar_schedule(7, 1) == [0]
    starts = lopar_schedule(7, 3)
    assert starts[0] == 0 and starts == sorted(set(starts)) and len(starts) == 3
    with pytest.raises(UserError):
        lopar_schedule(7, 8)
    with pytest.raises(UserError):
        lopar_schedule(7, 0)


def test_attention_mask_is_local_and_prefix_ignores_high_res(tok):
    config = sr_config("tiny", tok.vocab_size)
    mask = sr_attention_mask(config)
    p, l0, n_lr = config.hr_start, config.lr_start, config.lr_size**2
    assert mask.shape == (config.seq_len, config.seq_len) and mask.dtype == torch.bool
    assert torch.equal(mask, sr_attention_mask(config))  # pure
    assert mask[:p, :p].all() and not mask[:p, p:].any()
    # high-res cell (5, 9): high-res keys within hr_kernel // 2 in both directions
    hr = config.hr_size
    q = p + 5 * hr + 9
    keys = mask[q, p:].view(hr, hr)
    rad = config.hr_kernel // 2
    want = torch.zeros(hr, hr, dtype=torch.bool)
    want[5 - rad : 5 + rad + 1, 9 - rad : 9 + rad + 1] = True
    assert torch.equal(keys, want)
    lr_keys = mask[q, l0 : l0 + n_lr].view(config.lr_size, config.lr_size)
    r2 = config.lr_kernel // 2
    want = torch.zeros_like(lr_keys)
    want[max(0, 2 - r2) : 2 + r2 + 1, max(0, 4 - r2) : 4 + r2 + 1] = True  # under (5, 9): (2, 4)
    assert torch.equal(lr_keys, want)
    assert mask[p:, :l0].all() and mask[p:, l0 + n_lr].all()  # text and specials


def test_outputs_depend_only_on_the_local_window(tok, model):
    """Changing a high-res input outside a cell's kernel leaves that cell's logits unchanged."""
    config = model.sr_config
    lr, hr, texts = _inputs(tok, config, b=1)
    ids = tok.codes_to_ids(hr.view(1, -1))
    base = model(**sr_sequence(tok, config, texts, lr, ids).model_inputs())
    far = ids.clone()
    far[0, 15 * 16 + 15] = tok.mask_id  # cell (15, 15) is far from (0, 0)
    moved = model(**sr_sequence(tok, config, texts, lr, far).model_inputs())
    p = config.hr_start
    torch.testing.assert_close(base[0, p], moved[0, p])
    assert not torch.allclose(base[0, -2], moved[0, -2])  # but its neighbour sees it


# ---------------------------------------------------------------------------------------------
# training masks


def test_training_cells_never_see_their_window_at_or_after_their_order(tok):
    config = sr_config("tiny", tok.vocab_size)
    lr, hr, texts = _inputs(tok, config, b=16)
    g = torch.Generator().manual_seed(1)
    batch = sr_training_batch(tok, config, texts, lr, hr, g)
    p = config.hr_start
    order = lopar_orders(config.hr_size, config.window).flatten()
    win = lopar_windows(config.hr_size, config.window).flatten()
    hr_mask = batch.attn_mask[:, 0, p:, p:]  # (B, N, N)
    hr_ids = batch.ids[:, p:]
    hr_labels = batch.labels[:, p:]
    content = hr_ids != tok.mask_id  # (B, N) keys that carry a code
    same_win_later = (win[:, None] == win[None]) & (order[None] >= order[:, None])  # (N, N)
    targets = hr_labels != IGNORE  # (B, N)
    seen = hr_mask & content[:, None, :] & same_win_later[None] & targets[:, :, None]
    assert not seen.any()
    # and the schedule: targets are exactly the cells of order >= r for one r per sample
    true_ids = tok.codes_to_ids(hr.view(16, -1))
    for i in range(16):
        r = int(order[targets[i]].min())
        assert torch.equal(targets[i], order >= r)
        assert torch.equal(hr_labels[i][targets[i]], true_ids[i][targets[i]])
        assert torch.equal(hr_ids[i][~targets[i]], true_ids[i][~targets[i]])
    assert batch.labels[:, :p].eq(IGNORE).all()


def test_training_batch_trains(tok, model):
    """One loss on the batch is finite and gradients reach the embeddings."""
    config = model.sr_config
    lr, hr, texts = _inputs(tok, config)
    batch = sr_training_batch(tok, config, texts, lr, hr, torch.Generator().manual_seed(0))
    logits = model(**batch.model_inputs())
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels.flatten())
    assert torch.isfinite(loss)
    loss.backward()
    assert model.tok_emb.weight.grad.abs().sum() > 0
    model.zero_grad()


# ---------------------------------------------------------------------------------------------
# sampling


def test_prefix_cache_matches_full_forward(tok, model):
    config = model.sr_config
    lr, hr, texts = _inputs(tok, config)
    state = SRState(model, tok, lr, texts)
    codes = hr.view(3, -1)
    for start in (0, 3):
        got = state.logits(codes, start)
        keep = state.order[None] < start
        ids = torch.where(keep, tok.codes_to_ids(codes), tok.mask_id)
        full = model(**sr_sequence(tok, config, texts, lr, ids).model_inputs())
        r = tok.image_range
        torch.testing.assert_close(got, full[:, config.hr_start :, r.start : r.stop])


def test_direct_sr_shapes(tok, model):
    lr, _, texts = _inputs(tok, model.sr_config, b=2)
    out = super_resolve(model, tok, lr, texts, steps=1, generator=torch.Generator())
    assert out.codes.shape == (2, 16, 16) and out.passes == 1
    assert 0 <= int(out.codes.min()) and int(out.codes.max()) < tok.num_image_codes
    out = super_resolve(model, tok, lr, None, steps=1, sampling=GREEDY)  # no text at all
    assert out.codes.shape == (2, 16, 16)


@pytest.mark.parametrize("start", [1, 3, 6])
def test_lopar_step_keeps_cells_below_its_order(tok, model, start):
    lr, hr, texts = _inputs(tok, model.sr_config)
    state = SRState(model, tok, lr, texts)
    codes = hr.view(3, -1)
    new = lopar_step(state, codes, start, generator=torch.Generator().manual_seed(0))
    keep = state.order < start
    assert torch.equal(new[:, keep], codes[:, keep])
    assert not torch.equal(new[:, ~keep], codes[:, ~keep])  # the rest was predicted again


def test_first_lopar_pass_is_direct_sr(tok, model):
    lr, _, texts = _inputs(tok, model.sr_config)
    direct = super_resolve(model, tok, lr, texts, steps=1, sampling=GREEDY)
    lopar = super_resolve(model, tok, lr, texts, sampling=GREEDY)
    assert lopar.passes == model.sr_config.num_orders
    order0 = lopar_orders(16, model.sr_config.window) == 0
    assert torch.equal(direct.codes[:, order0], lopar.codes[:, order0])


def test_passes_do_not_depend_on_the_image_size(tok):
    big = SRModel(sr_config("tiny", tok.vocab_size, lr_size=12, hr_size=24, window=3)).eval()
    calls = []
    big.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    lr = torch.randint(0, tok.num_image_codes, (1, 12, 12))
    out = super_resolve(big, tok, lr, sampling=GREEDY)
    assert out.codes.shape == (1, 24, 24)
    assert out.passes == 5 and len(calls) == 1 + 5  # one prefix pass, then 2w - 1
