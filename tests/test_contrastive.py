"""The contrastive head: InfoNCE, unimodal pooling, training that learns to retrieve, resume."""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_train_lm import _loop, _scene, _weights, make_inputs

from cogview.contrastive import embed_images, embed_texts, info_nce, recall_at
from cogview.masks import MaskingScheduler, Plan, collate
from cogview.model import CogLM, coglm_config
from train.lm import CogLMTrainConfig, train_coglm


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_inputs(tmp_path_factory.mktemp("con_inputs"), n_train=96, n_test=32)


def _run(inputs: dict[str, str], out: Path, weight: float = 1.0) -> CogLMTrainConfig:
    return CogLMTrainConfig(**inputs, out=str(out), preset="tiny",
                            tasks="t2i=0.5,cap=0.25,inp=0.25", eval_samples=32,
                            contrastive_weight=weight, contrastive_pool="mean")


def test_info_nce_is_low_for_matching_pairs_and_skips_same_caption_negatives():
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    matched, acc = info_nce(emb, emb, torch.tensor(50.0))
    shuffled, _ = info_nce(emb, emb.roll(1, 0), torch.tensor(50.0))
    assert acc == 1 and matched < 0.1 < math.log(6) < shuffled
    # two rows of one caption: without keys each is the other's hard negative (log 2 each)
    twice = torch.cat([emb[:1], emb[:1], emb[2:]])
    plain, _ = info_nce(twice, twice, torch.tensor(50.0))
    keyed, acc = info_nce(twice, twice, torch.tensor(50.0), torch.tensor([7, 7, 1, 2, 3, 4]))
    assert plain > 2 * math.log(2) / 6 - 0.01 and keyed < 0.01 and acc == 1


def test_hard_negatives_compete_with_the_true_text_for_its_image():
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    scale = torch.tensor(50.0)
    plain = info_nce(emb, emb, scale)
    assert info_nce(emb, emb, scale, negatives=emb[:0]) == plain  # none: the same loss
    far = info_nce(emb, emb, scale, negatives=-emb[:2])  # false texts far from every image
    assert float(far[0]) == pytest.approx(float(plain[0]), abs=1e-4) and far[1] == 1
    # a false text nearer to image 0 than its own text: image 0 now finds it first
    near = F.normalize(emb[:1] + 0.05 * torch.randn(1, 16, generator=g), dim=-1)
    text = F.normalize(emb + 0.3 * torch.randn(6, 16, generator=g), dim=-1)
    loss, acc = info_nce(text, emb, scale, negatives=near)
    base, base_acc = info_nce(text, emb, scale)
    assert base_acc == 1 and loss > base + 0.3 and acc == pytest.approx(1 - 1 / 12)
    # ... unless it is that image's own caption (its key), which is never its negative
    keys = torch.arange(6)
    assert info_nce(text, emb, scale, keys, near, torch.tensor([0])) == info_nce(
        text, emb, scale, keys)
    assert info_nce(text, emb, scale, keys, near, torch.tensor([9]))[0] > base + 0.3


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_training_samples_pool_what_the_views_embed(inputs, pool):
    """A text-to-image sample's prompt sees no image and a captioning sample's image sees no
    text, so pooling them inside the training sequences gives the embeddings of the text and
    the image read alone (what `cogview search` compares)."""
    from cogview.contrastive import pair_embeddings
    from tokenizer import UnifiedTokenizer

    tok = UnifiedTokenizer.load(inputs["tokenizer"])
    g = torch.Generator().manual_seed(0)
    scenes = [_scene(i, g) for i in range(6)]
    texts = tok.encode_texts([s for s, _ in scenes])
    codes = torch.stack([c for _, c in scenes])
    torch.manual_seed(0)
    model = CogLM(coglm_config("tiny", tok.vocab_size, contrastive_dim=16,
                               contrastive_pool=pool)).eval()
    sched = MaskingScheduler(tok, text_dropout=0.0, pairs=True, pair_pool=pool)
    plans = [Plan("t2i" if i % 2 else "cap", t, c)
             for i, (t, c) in enumerate(zip(texts, codes, strict=True))]
    batch = collate(sched.sequences(plans), tok.pad_id)
    with torch.no_grad():
        text, image = pair_embeddings(model, model.hidden(**batch.model_inputs()), batch.pairs)
    assert batch.pairs.rows.tolist() == list(range(6))
    assert torch.allclose(text, embed_texts(model, tok, texts), atol=1e-5)
    assert torch.allclose(image, embed_images(model, tok, codes), atol=1e-5)


def test_contrastive_training_learns_to_retrieve_held_out_scenes(inputs, tmp_path):
    from cogview.pipeline import load_pipeline

    result = train_coglm(_run(inputs, tmp_path / "run"),
                         _loop(steps=150, batch_size=32, warmup=10, eval_every=150),
                         progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    con = [r["loss_con"] for r in rows if "loss_con" in r]
    assert sum(con[-10:]) / 10 < 0.5 * sum(con[:10]) / 10
    # the held-out scenes (16 captions among 32 scenes; chance ~0.1)
    assert result.metrics["eval_r1_text_image"] > 0.8
    assert result.metrics["eval_r1_image_text"] > 0.8
    pipe = load_pipeline(tmp_path / "run")
    assert pipe.model.config.contrastive_dim == 32  # the tiny preset's width / 2
    # mean pooling: a 2-layer model from scratch learns `last` too slowly for a test
    assert pipe.model.config.contrastive_pool == "mean"
    assert pipe.meta["train_args"]["contrastive_weight"] == 1.0


def test_contrastive_run_resumes_exactly(inputs, tmp_path):
    loop = _loop(batch_size=8)
    full = train_coglm(_run(inputs, tmp_path / "full"), loop, progress=False)

    def interrupt(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    part = train_coglm(_run(inputs, tmp_path / "part"), loop, progress=False, on_step=interrupt)
    rest = train_coglm(_run(inputs, tmp_path / "part"), loop, progress=False, resume=True)
    assert part.losses + rest.losses == full.losses
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert any(k.startswith("contrastive.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_head_starts_afresh_on_a_model_trained_without_one(inputs, tmp_path):
    train_coglm(_run(inputs, tmp_path / "plain", weight=0.0), _loop(steps=2), progress=False)
    later = replace(_run(inputs, tmp_path / "head"), init_from=str(tmp_path / "plain"))
    train_coglm(later, _loop(steps=1, lr=1e-9, min_lr=0.0), progress=False)
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "head")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert {k for k in b if k not in a} == {"contrastive.text.weight", "contrastive.image.weight",
                                            "contrastive.log_scale"}


def test_recall_counts_any_relevant_item_among_the_k_best():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    relevant = torch.tensor([[False, False, True], [False, False, True]])
    assert recall_at(scores, relevant, (1, 2)) == {1: 0.0, 2: 0.5}
