"""Task sequences and the masking scheduler, checked on the attention mask the model uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cogview.masks import (
    IGNORE,
    MASK_MAKERS,
    TASKS,
    MaskingScheduler,
    TaskSchedule,
    captioning,
    collate,
    grid_cells,
    inpainting,
    text_to_image,
)
from cogview.model import prefix_lm_mask

H, W = 4, 5  # a non-square grid catches row/col mix-ups


@pytest.fixture(scope="module")
def tok():
    from tokenizer import UnifiedTokenizer

    return UnifiedTokenizer.train(["a red circle", "a blue square"] * 4, vocab_size=270,
                                  image_codes=16, max_text_len=8)


@pytest.fixture(scope="module")
def sample(tok):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (H, W), generator=g)
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[1:3, 2:4] = True
    mask[0, 0] = True
    return tok.encode_texts(["a red circle"])[0], codes, mask


def _sequences(tok, sample):
    text, codes, mask = sample
    return {
        "t2i": text_to_image(tok, text, codes),
        "cap": captioning(tok, text, codes),
        "inp": inpainting(tok, text, codes, mask),
    }


@pytest.mark.parametrize("task", TASKS)
def test_no_target_sees_a_later_target_and_prefix_sees_prefix(tok, sample, task):
    seq = _sequences(tok, sample)[task]
    batch = collate([seq], tok.pad_id)
    t = batch.ids.shape[1]
    mask = prefix_lm_mask(batch.prefix_len, t)[0, 0]  # (T, T), what CogLM.hidden builds
    labelled = (batch.labels[0] != IGNORE).nonzero().flatten()
    for i in labelled.tolist():
        # input j > i holds label i (or later ones): a query that predicts must not see it
        assert not mask[i, i + 1 :].any(), f"position {i} sees a later target"
        assert mask[i, : i + 1].all()  # and it sees the prefix and earlier targets
    p = seq.prefix_len
    assert mask[:p, :p].all()  # the prefix is bidirectional
    assert not mask[: p - 1, p:].any()  # and never sees a target


@pytest.mark.parametrize("task", TASKS)
def test_loss_mask_covers_exactly_the_targets(tok, sample, task):
    text, codes, mask = sample
    seq = _sequences(tok, sample)[task]
    targets = {
        "t2i": tok.codes_to_ids(codes.flatten()),
        "cap": torch.tensor([*text, tok.eot_id]),
        "inp": tok.codes_to_ids(codes.flatten()[mask.flatten()]),
    }[task]
    labelled = seq.labels != IGNORE
    n = len(targets)
    # the last prefix position predicts the first target; labels run to the end
    assert labelled.nonzero().flatten().tolist() == list(range(seq.prefix_len - 1, len(seq.ids)))
    assert torch.equal(seq.labels[labelled], targets)
    assert int(labelled.sum()) == n
    # inputs after the prefix are the targets themselves (teacher forcing), shifted by one
    assert torch.equal(seq.ids[seq.prefix_len :], targets[:-1])


def test_inpainting_targets_are_the_masked_cells_with_their_cells(tok, sample):
    text, codes, mask = sample
    seq = _sequences(tok, sample)["inp"]
    cells = grid_cells(H, W)[mask.flatten()]  # (n, 2) in raster order
    labelled = seq.labels != IGNORE
    assert torch.equal(seq.next_cell[labelled], cells)  # each prediction knows its cell
    assert torch.equal(seq.cell[seq.prefix_len :], cells[:-1])  # each target input its own
    # the visible image shows <mask> exactly at the masked cells, the codes elsewhere
    image_start = 1 + len(text) + 1
    visible = seq.ids[image_start : image_start + H * W]
    assert torch.equal(visible == tok.mask_id, mask.flatten())
    assert torch.equal(visible[~mask.flatten()], tok.codes_to_ids(codes.flatten()[~mask.flatten()]))
    assert torch.equal(seq.cell[image_start : image_start + H * W], grid_cells(H, W))


def test_collate_padding_is_no_target_and_outside_the_prefix(tok, sample):
    seqs = list(_sequences(tok, sample).values())
    batch = collate(seqs, tok.pad_id)
    for i, s in enumerate(seqs):
        n = len(s.ids)
        assert (batch.ids[i, n:] == tok.pad_id).all()
        assert (batch.labels[i, n:] == IGNORE).all()
        assert int(batch.prefix_len[i]) == s.prefix_len <= n
    assert batch.task.tolist() == [TASKS.index(s.task) for s in seqs]


@pytest.mark.parametrize("kind", sorted(MASK_MAKERS))
def test_mask_makers_give_nonempty_masks_of_the_grid(kind):
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        m = MASK_MAKERS[kind](8, 8, g)
        assert m.shape == (8, 8) and m.dtype == torch.bool and m.any()


def test_schedule_weights_follow_the_breakpoints():
    s = TaskSchedule.parse("0:t2i=1;100:t2i=0.5,cap=0.25,inp=0.25")
    assert s.weights(0) == {"t2i": 1.0, "cap": 0.0, "inp": 0.0}
    w = s.weights(50)  # halfway: linear in between
    assert w["t2i"] == pytest.approx(0.75) and w["cap"] == pytest.approx(0.125)
    assert s.weights(100) == s.weights(10_000) == {"t2i": 0.5, "cap": 0.25, "inp": 0.25}
    assert TaskSchedule.parse(str(s)) == s
    with pytest.raises(ValueError, match="unknown task"):
        TaskSchedule.parse("t2x=1")


def test_scheduler_draws_tasks_with_the_scheduled_frequencies(tok, sample):
    text, codes, _ = sample
    sched = MaskingScheduler(tok, TaskSchedule.parse("0:t2i=1;1000:t2i=0.5,cap=0.3,inp=0.2"),
                             text_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    assert {sched.build(text, codes, 0, g).task for _ in range(50)} == {"t2i"}
    n = 2000
    drawn = [sched.pick_task(1000, g) for _ in range(n)]
    for task, want in (("t2i", 0.5), ("cap", 0.3), ("inp", 0.2)):
        assert drawn.count(task) / n == pytest.approx(want, abs=0.04)


def test_mask_kinds_follow_their_weights_and_a_zero_weight_is_never_drawn(tok):
    only_half = MaskingScheduler(tok, mask_weights={"rectangle": 0, "patches": 0, "half": 1,
                                                    "strokes": 0})
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        mask = only_half.make_mask(8, 8, g)
        assert int(mask.sum()) == 32 and (mask.all(0).any() or mask.all(1).any())
    mixed = MaskingScheduler(tok, mask_weights={"rectangle": 3, "patches": 0, "half": 1,
                                                "strokes": 0})
    halves = [int(mixed.make_mask(8, 8, g).sum()) == 32 for _ in range(2000)]
    # a rectangle spans 2..6 rows and 2..6 columns of 8, so it never has a half's 32 cells
    assert np.mean(halves) == pytest.approx(0.25, abs=0.04)


def test_captioning_learns_the_target_and_the_other_tasks_the_caption(tok, sample):
    text, codes, _ = sample
    target = list(reversed(text))
    sched = MaskingScheduler(tok, TaskSchedule.constant(t2i=1, cap=1, inp=1), text_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    for given, learnt in ((target, target), (None, text)):
        seen = set()
        for _ in range(60):
            seq = sched.build(text, codes, 0, g, target_ids=given)
            seen.add(seq.task)
            ids = seq.ids.tolist()
            if seq.task == "cap":  # the labels: the target, then <eot>
                assert seq.labels[seq.labels != IGNORE].tolist() == [*learnt, tok.eot_id]
            else:
                assert ids[1 : 1 + len(text)] == text  # <task> then the caption
        assert seen == {"t2i", "cap", "inp"}


def test_text_dropout_drops_the_caption_of_t2i(tok, sample):
    text, codes, _ = sample
    sched = MaskingScheduler(tok, TaskSchedule.constant(t2i=1.0), text_dropout=1.0)
    seq = sched.build(text, codes, 0, torch.Generator().manual_seed(0))
    assert seq.prefix_len == 2  # <t2i> <boi>


def test_inpainting_shows_the_context_and_learns_the_true_codes(tok, sample):
    text, codes, mask = sample
    context = (codes + 1) % 16  # every kept cell differs from the image's own code
    seq = inpainting(tok, text, codes, mask, context)
    n_head = 1 + len(text) + 1
    shown = seq.ids[n_head : n_head + H * W]
    flat = mask.flatten()
    assert torch.all(shown[flat] == tok.mask_id)
    assert torch.equal(shown[~flat], tok.codes_to_ids(context.flatten()[~flat]))
    labels = seq.labels[seq.labels != IGNORE]
    assert torch.equal(labels, tok.codes_to_ids(codes.flatten()[flat]))


def test_box_cells_and_region_masks_cover_the_box():
    from cogview.masks import box_cells, region_mask

    box = (0.3, 0.1, 0.55, 0.45)  # x0, y0, x1, y1: rows 0..1 of 4, columns 1..2 of 5
    cells = box_cells(box, H, W)
    assert cells.nonzero().tolist() == [[0, 1], [0, 2], [1, 1], [1, 2]]
    g = torch.Generator().manual_seed(0)
    sizes = set()
    for _ in range(40):
        m = region_mask(box, H, W, g)
        assert torch.all(m[cells])  # the whole box, grown by at most a cell on each side
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        assert int(rows[-1]) <= 2 and 0 <= int(cols[0]) and int(cols[-1]) <= 3
        assert int(m.sum()) == len(rows) * len(cols)  # a rectangle
        sizes.add(int(m.sum()))
    assert len(sizes) > 2


def test_scheduler_masks_regions_with_their_own_caption_or_the_whole_one(tok, sample):
    from cogview.masks import Region, box_cells

    text, codes, _ = sample
    region = Region((0.3, 0.1, 0.55, 0.45), tuple(tok.encode_texts(["a blue square"])[0]))
    sched = MaskingScheduler(tok, TaskSchedule.constant(inp=1), text_dropout=0.0,
                             region_masks=1.0, region_prompts=0.5,
                             context=lambda c, m: torch.zeros_like(c))
    g = torch.Generator().manual_seed(0)
    plans = [sched.plan(text, codes, 0, g, regions=[region]) for _ in range(400)]
    assert all(torch.all(p.mask[box_cells(region.box, H, W)]) for p in plans)
    own = np.mean([list(p.text_ids) == list(region.text_ids) for p in plans])
    assert own == pytest.approx(0.5, abs=0.08)
    assert all(list(p.text_ids) in (list(region.text_ids), text) for p in plans)
    # the context function's codes are what the kept cells show
    seq = sched.sequences(plans[:1])[0]
    kept = ~plans[0].mask.flatten()
    n_head = 1 + len(plans[0].text_ids) + 1
    assert torch.all(seq.ids[n_head : n_head + H * W][kept] == tok.codes_to_ids(0))
    without = MaskingScheduler(tok, TaskSchedule.constant(inp=1), region_masks=0.0)
    assert not any(list(without.plan(text, codes, 0, g, regions=[region]).text_ids)
                   == list(region.text_ids) for _ in range(50))
