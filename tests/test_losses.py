"""Cross-entropy and PolyLoss over targets, and the per-task sums the trainer logs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cogview.losses import LossConfig, cross_entropy, lm_loss, poly1_loss, token_losses
from cogview.masks import IGNORE, TASKS, TaskBatch
from cogview.model import CogLM, CogLMConfig


def _logits_labels(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, 11, generator=g)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[:, :2] = IGNORE
    return logits, labels


def test_poly1_with_eps_zero_equals_cross_entropy():
    logits, labels = _logits_labels()
    assert torch.equal(poly1_loss(logits, labels, eps=0.0), cross_entropy(logits, labels))
    flat, targets = logits.reshape(-1, 11), labels.flatten().clamp(min=0)
    assert torch.equal(token_losses(flat, targets, LossConfig("poly1", 0.0)),
                       token_losses(flat, targets, LossConfig("ce")))


def test_poly1_adds_eps_times_one_minus_p_target():
    logits, labels = _logits_labels(1)
    keep = labels != IGNORE
    p = logits.softmax(-1)[keep].gather(1, labels[keep][:, None]).squeeze(1)
    ce = F.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(poly1_loss(logits, labels, eps=2.0), ce + 2.0 * (1 - p).mean())
    torch.testing.assert_close(cross_entropy(logits, labels),
                               F.cross_entropy(logits.transpose(1, 2), labels,
                                               ignore_index=IGNORE))


def test_unknown_loss_kind_is_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        LossConfig("focal")


@pytest.mark.parametrize("kind", ["ce", "poly1"])
def test_lm_loss_on_targets_equals_loss_of_full_logits(kind):
    torch.manual_seed(0)
    model = CogLM(CogLMConfig(vocab_size=23, dim=16, n_layers=1, n_heads=2, max_seq_len=16))
    g = torch.Generator().manual_seed(0)
    b, t = 3, 9
    labels = torch.randint(0, 23, (b, t), generator=g)
    labels[:, :4] = IGNORE
    labels[2, 7:] = IGNORE  # padding
    batch = TaskBatch(
        ids=torch.randint(0, 23, (b, t), generator=g),
        pos=torch.arange(t).expand(b, t),
        cell=torch.zeros(b, t, 2, dtype=torch.long),
        next_cell=torch.zeros(b, t, 2, dtype=torch.long),
        labels=labels,
        prefix_len=torch.tensor([4, 4, 4]),
        task=torch.tensor([0, 2, 0]),
    )
    config = LossConfig(kind, 1.0)
    s = lm_loss(model, batch, config)
    full = model(**batch.model_inputs())  # (B, T, V): every position's logits
    want = poly1_loss(full, labels, 1.0) if kind == "poly1" else cross_entropy(full, labels)
    torch.testing.assert_close(s.mean(), want)
    assert s.task_counts.tolist() == [5 + 3, 0, 5]
    torch.testing.assert_close(s.task_sums.sum(), s.total.detach())
    assert s.task_sums.shape == (len(TASKS),)
