"""The contrastive head of a CogLM (CoCa-style): text and image embeddings in one space.

A text's embedding comes from the final hidden states of the model reading it alone, as the
prompt of text-to-image does (`masks.text_view`: `<t2i> text <boi>`), an image's from the model
reading it alone, as captioning does (`masks.image_view`: `<cap> <boi> codes <eoi> <bot>`):
the state after it (`<boi>`, `<bot>`) or the mean over its positions (the model's
`contrastive_pool`). Both prefixes are unimodal, so a text is embedded without any image and
an image without any text, and the same weights that generate and caption also retrieve.

Training adds InfoNCE over the batch (`contrastive_loss`): a text-to-image sample's prompt is
pooled from its own forward pass (its prefix never sees the image) and its image from a view;
a captioning sample's image comes from its own pass and its caption from a view. Samples with
the same caption are not each other's negatives. A text-to-image sample may bring a hard
negative, a caption false of its image that names its own objects in a wrong pairing
(`cogview train --hard-negatives`): in-batch negatives rarely differ from the truth in a
relation alone, and a head trained on them alone learns which objects are there more than
where.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cogview.masks import PairBatch, Text, collate, image_view, text_view

NO_HEAD = "the model has no contrastive head; train one with --contrastive-weight"


class NoContrastiveHead(ValueError):
    """The model was trained without a contrastive head."""


def has_head(model: nn.Module) -> bool:
    return getattr(model, "contrastive", None) is not None


def head_of(model: nn.Module) -> nn.Module:
    if not has_head(model):
        raise NoContrastiveHead(NO_HEAD)
    return model.contrastive


def info_nce(text: Tensor, image: Tensor, scale: Tensor, keys: Tensor | None = None,
             negatives: Tensor | None = None, negative_keys: Tensor | None = None
             ) -> tuple[Tensor, Tensor]:
    """Symmetric InfoNCE of P matching (text, image) unit embeddings (P, E) at temperature
    1 / `scale`; rows with equal `keys` (P,) are not negatives of each other. `negatives`
    (N, E) are texts false of the image they were made for (hard negatives): every image is
    also scored against them, except against one whose key (`negative_keys`, N) is its own.
    Returns the loss and the share of rows whose best image (and best text) is their own."""
    logits = scale * text @ image.T  # (P, P)
    target = torch.arange(len(text), device=text.device)
    if keys is not None:
        same = (keys[:, None] == keys[None, :]) & ~torch.eye(len(text), dtype=torch.bool,
                                                             device=text.device)
        logits = logits.masked_fill(same, float("-inf"))
    per_image = logits.T  # (P, P) image -> text
    if negatives is not None and len(negatives):
        extra = scale * image @ negatives.T  # (P, N)
        if keys is not None and negative_keys is not None:
            extra = extra.masked_fill(keys[:, None] == negative_keys[None, :], float("-inf"))
        per_image = torch.cat([per_image, extra], dim=1)  # (P, P + N)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(per_image, target)) / 2
    right = (logits.argmax(1) == target).float().mean() + (per_image.argmax(1) == target).float(
    ).mean()
    return loss, right.detach() / 2


def pair_embeddings(model: nn.Module, hidden: Tensor, pairs: PairBatch) -> tuple[Tensor, Tensor]:
    """Text and image embeddings (P, E) of a batch's pairs, from its hidden states (B, T, dim)
    and forward passes over the views the pairs need."""
    head = head_of(model)
    sides = []
    for side in ("text", "image"):
        embedded = head.embed(hidden, getattr(pairs, f"{side}_pool"), side)  # (B, E)
        views = getattr(pairs, f"{side}_views")
        if views is not None:
            h = model.hidden(**views.model_inputs())
            rows = getattr(pairs, f"{side}_view_rows")
            embedded = embedded.index_copy(0, rows, head.embed(h, views.pool, side))
        sides.append(embedded[pairs.rows])
    return sides[0], sides[1]


def contrastive_loss(model: nn.Module, hidden: Tensor, pairs: PairBatch
                     ) -> tuple[Tensor, Tensor]:
    """InfoNCE of a batch's pairs and its accuracy (`info_nce`); zero for fewer than 2."""
    if len(pairs.rows) < 2:
        zero = hidden.sum() * 0.0
        return zero, zero.detach()
    text, image = pair_embeddings(model, hidden, pairs)
    negatives = None
    if pairs.negative_views is not None:
        views = pairs.negative_views
        negatives = head_of(model).embed(model.hidden(**views.model_inputs()), views.pool, "text")
    return info_nce(text, image, head_of(model).scale, pairs.keys, negatives,
                    pairs.negative_keys)


def _embed(model: nn.Module, views: list, side: str, pad_id: int, batch_size: int) -> Tensor:
    head = head_of(model)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(views), batch_size):
        batch = collate(views[i : i + batch_size], pad_id).to(device)
        h = model.hidden(**batch.model_inputs())
        out.append(head.embed(h, batch.pool, side))
    if not out:
        return torch.zeros(0, head.text.out_features, device=device)
    return torch.cat(out)


@torch.inference_mode()
def embed_texts(model: nn.Module, tokenizer, texts: Sequence[Text], batch_size: int = 256
                ) -> Tensor:
    """Unit embeddings (N, E) of N prompts (text ids, or `EncodedText` for a model that reads a
    text encoder); ValueError for an empty one (nothing to pool)."""
    views = []
    for t in texts:
        view = text_view(tokenizer, t, model.config.contrastive_pool)
        if not view.pool.any():
            raise ValueError("an empty text has no embedding")
        views.append(view)
    return _embed(model, views, "text", tokenizer.pad_id, batch_size)


@torch.inference_mode()
def embed_images(model: nn.Module, tokenizer, codes: Tensor, batch_size: int = 256) -> Tensor:
    """Unit embeddings (N, E) of N images given as codes (N, h, w)."""
    pool = model.config.contrastive_pool
    views = [image_view(tokenizer, c, pool) for c in codes.cpu()]
    return _embed(model, views, "image", tokenizer.pad_id, batch_size)


def same_key(keys: Sequence[Hashable]) -> Tensor:
    """(N, N) bool: which of N items share a key (a caption): the items a query by one of them
    counts as found, since identical captions say the same of their images."""
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    key = torch.tensor([index[k] for k in keys], dtype=torch.long)
    return key[:, None] == key[None, :]


def recall_at(scores: Tensor, relevant: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Recall@k of a query-by-item score matrix (Q, N): the share of queries with a relevant
    item (`relevant` (Q, N) bool) among their k best."""
    k_max = min(max(ks), scores.shape[1])
    top = scores.topk(k_max, dim=1).indices  # (Q, k)
    hit = relevant.gather(1, top)  # (Q, k)
    return {k: float(hit[:, :k].any(1).float().mean()) for k in ks}
