"""A trained CogLM as one self-contained folder, and the loader that checks its parts agree.

    MODEL/
      config.json        kind "coglm", the CogLMConfig, the step, and `extra`:
                         tokenizer layout, VQVAE fingerprint, image size, code grid, train args,
                         and for a model that reads a frozen text encoder its `text_encoder`
                         (name, fingerprint of its weights, width, text length)
      model.safetensors  the weights sampling uses (the EMA weights when training kept an EMA)
      tokenizer.json     the vocabulary the model was trained with
      vqvae/             a copy of the VQVAE checkpoint folder its image codes come from
      sampling.json      (optional) the sampling settings that score best with this model,
                         SamplingConfig field names, and "rerank", "rerank_by", "restate",
                         "inpaint" (SamplingConfig fields and "rerank" that inpainting
                         sets on top of the others); command-line flags override them
      training_state.pt  (training runs only) optimizer, generator and RNG state

Nothing else is needed to sample: `load_pipeline(MODEL)` rebuilds the model from config.json,
loads the weights strictly and refuses a tokenizer or VQVAE other than the ones it was trained
with. A text encoder is not copied into the folder: it is loaded from its installed package
(or the folder recorded for an encoder given by path) and refused unless its fingerprint is
the recorded one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from cogview.checkpoint import (
    CONFIG_FILE,
    Checkpoint,
    CheckpointError,
    config_from_dict,
    load_checkpoint,
    load_state_strict,
    resolve_checkpoint,
    save_checkpoint,
)
from cogview.model import CogLM, CogLMConfig

COGLM_KIND = "coglm"
TOKENIZER_FILE = "tokenizer.json"
VQVAE_DIR = "vqvae"
SAMPLING_FILE = "sampling.json"


@dataclass(frozen=True)
class SamplingDefaults:
    """A model folder's sampling.json, split by what its values set (`split_sampling_defaults`);
    the defaults are a folder without one."""

    fields: dict[str, Any] = field(default_factory=dict)  # SamplingConfig fields
    rerank: int = 1  # each image the best of this many candidates (1: no reranking)
    restate: str | None = None  # the grammar that restates prompts for reranking (RESTATERS)
    rerank_by: str = "caption"  # how candidates are scored (sampling.RERANKERS)
    # SamplingConfig fields that inpainting sets on top of `fields`
    inpaint: dict[str, Any] = field(default_factory=dict)
    inpaint_rerank: int | None = None  # candidates per inpainted version, when not `rerank`
    inpaint_rerank_by: str | None = None  # how inpainting's candidates are scored, when not
    # as `rerank_by`
    # more candidates where reranking is unsure (text-to-image): a picture whose best
    # candidate's caption score is below `rerank_floor` draws `rerank` more, up to `rerank_max`
    rerank_floor: float | None = None
    rerank_max: int | None = None


@dataclass
class Pipeline:
    """Everything sampling needs, loaded from one folder and checked to belong together."""

    model: CogLM  # eval mode
    tokenizer: Any  # tokenizer.UnifiedTokenizer
    vqvae: Any  # vqvae.model.VQVAE, eval mode
    image_size: int  # pixels of the base images (the side of a square image)
    grid: tuple[int, int]  # (h, w) image codes per image
    meta: dict[str, Any]  # the checkpoint's extra JSON, plus "path" and "step"
    # sampling.json; its `restate` is the grammar reranking uses (the domain's when it names none)
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    text_encoder: Any = None  # cogview.text_encoder.TextEncoder when config.text_dim > 0


# Prompt grammars that self-reranking may use to say a prompt another way, by domain name. A
# model folder names its own: sampling.json's "restate", else the domain of the data it was
# trained on (config.json's extra "domain"); a model of another domain never uses one.
RESTATERS = {"shapes": "cogview.bench.shapes:restatements"}
# Grammars that word a training prompt anew from a sample's attributes (caption augmentation,
# `cogview train --rephrase`), by the domain of the token data (its info.json "source").
REPHRASERS = {"shapes": "cogview.bench.shapes:rephrase"}
# Grammars that make a caption false of a sample's attributes (hard negatives of the
# contrastive loss, `cogview train --hard-negatives`), by the domain of the token data.
CONTRADICTORS = {"shapes": "cogview.bench.shapes:contradiction"}


def _domain_function(table: Mapping[str, str], name: str | None) -> Any:
    import importlib

    if name is None:
        return None
    module, _, attr = table[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def restater(name: str | None) -> Any:
    """The restating function of a grammar in RESTATERS (None for None)."""
    return _domain_function(RESTATERS, name)


def rephraser(domain: str | None) -> Any:
    """`(attributes, numpy rng, frames=P) -> str | None` of a domain in REPHRASERS; None for
    others."""
    return _domain_function(REPHRASERS, domain if domain in REPHRASERS else None)


def contradictor(domain: str | None) -> Any:
    """`(attributes, numpy rng) -> str | None` of a domain in CONTRADICTORS; None for others."""
    return _domain_function(CONTRADICTORS, domain if domain in CONTRADICTORS else None)


def split_sampling_defaults(values: Mapping[str, Any]) -> SamplingDefaults:
    """A sampling.json's values, split: every key is a SamplingConfig field except "rerank"
    (each image the best of that many candidates), "rerank_by" (how they are scored, one of
    `sampling.RERANKERS`; default "caption"), "restate" (a name in RESTATERS) and "inpaint"
    (an object of SamplingConfig fields that inpainting sets on top of the others, and its
    own "rerank" and "rerank_by", e.g. {"temperature": 1.0, "rerank": 32}), "rerank_floor"
    and "rerank_max" (`CogView.best_of`'s further rounds); a ValueError or TypeError names
    what is wrong: a `ConfigError` of the field ("rerank", "inpaint_rerank",
    "inpaint_temperature", ...) where one is to blame."""
    from cogview.errors import ConfigError
    from cogview.sampling import SamplingConfig

    fields = dict(values)
    rerank = _rerank(fields.pop("rerank", 1), "rerank")
    restate = fields.pop("restate", None)
    if restate is not None and restate not in RESTATERS:
        raise ValueError(f"restate must be one of {', '.join(RESTATERS)}, got {restate!r}")
    rerank_by = _reranker(fields.pop("rerank_by", "caption"), "rerank_by")
    floor, most = fields.pop("rerank_floor", None), fields.pop("rerank_max", None)
    check_rounds(floor, most, rerank)
    inpaint = fields.pop("inpaint", {})
    if not isinstance(inpaint, dict):
        raise ValueError(f"inpaint must be an object of SamplingConfig fields, got {inpaint!r}")
    inpaint = dict(inpaint)
    inpaint_rerank = inpaint.pop("rerank", None)
    if inpaint_rerank is not None:
        inpaint_rerank = _rerank(inpaint_rerank, "inpaint_rerank")
    inpaint_rerank_by = inpaint.pop("rerank_by", None)
    if inpaint_rerank_by is not None:
        _reranker(inpaint_rerank_by, "inpaint: rerank_by")
    SamplingConfig(**fields)  # unknown fields and bad values fail here
    try:
        SamplingConfig(**inpaint)
    except ConfigError as e:
        if e.field is None:
            raise ValueError(f"inpaint: {e}") from None
        raise ConfigError.of(f"inpaint_{e.field}", e.detail) from None
    except (ValueError, TypeError) as e:  # an unknown field
        raise ValueError(f"inpaint: {e}") from None
    return SamplingDefaults(fields, rerank, restate, rerank_by, inpaint, inpaint_rerank,
                            inpaint_rerank_by, floor, most)


def check_rounds(floor: Any, most: Any, rerank: int) -> None:
    """ConfigError of "rerank_floor" or "rerank_max" unless the floor is a number (or None)
    and the most candidates a picture may have is a whole number >= `rerank` (or None)."""
    from cogview.errors import ConfigError

    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, int | float)
                              or floor != floor):
        raise ConfigError.of("rerank_floor", f"must be a number, got {floor!r}")
    if most is not None and _rerank(most, "rerank_max") < rerank:
        raise ConfigError.of("rerank_max", f"must be at least rerank ({rerank}), got {most}")


def _reranker(value: Any, name: str) -> str:
    from cogview.sampling import RERANKERS

    if value not in RERANKERS:
        raise ValueError(f"{name} must be one of {', '.join(RERANKERS)}, got {value!r}")
    return value


def _rerank(value: Any, field: str) -> int:
    from cogview.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError.of(field, f"must be a whole number >= 1, got {value!r}")
    return value


def read_sampling_defaults(folder: str | Path) -> SamplingDefaults:
    """A model folder's sampling.json, split as by `split_sampling_defaults` (no fields, no
    reranking when it has none); an unreadable file or an unknown field is an error naming
    the file."""
    from cogview.sampling import SamplingError

    path = Path(folder) / SAMPLING_FILE
    if not path.is_file():
        return SamplingDefaults()
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        return split_sampling_defaults(values)
    except (ValueError, TypeError, SamplingError) as e:
        raise CheckpointError(f"{path}: {str(e).splitlines()[0]}") from None


def write_sampling_defaults(folder: str | Path, values: Mapping[str, Any]) -> Path:
    """Write `values` (SamplingConfig fields, `rerank`, `rerank_by`, `restate`, `inpaint`) as
    the folder's sampling.json."""
    split_sampling_defaults(values)  # refuse what could not be read back
    path = Path(folder) / SAMPLING_FILE
    path.write_text(json.dumps(dict(values), indent=2) + "\n")
    return path


def bundle_extra(
    tokenizer: Any,
    vqvae_fingerprint: str,
    *,
    train_args: Mapping[str, Any] | None = None,
    ema: float | None = None,
    **about: Any,
) -> dict[str, Any]:
    """The `extra` JSON of a self-contained model folder (CogLM or SR): what its ids and codes
    mean, the EMA decay when model.safetensors holds EMA weights (else None), the training
    arguments, and `about` the model: a CogLM's `domain` (the `source` of its image data set:
    shapes, fashion, ...), `image_size` and code `grid`; an SR model's `low_res_size` and
    `image_size`."""
    return {
        **about,
        "tokenizer_layout": tokenizer.layout(),
        "vqvae_fingerprint": vqvae_fingerprint,
        "ema": ema,
        "train_args": dict(train_args or {}),
    }


def save_bundled(
    path: str | Path,
    kind: str,
    *,
    config: Any,
    state_dict: Mapping[str, torch.Tensor],
    tokenizer_file: str | Path,
    vqvae_path: str | Path,
    extra: dict[str, Any],
    step: int = 0,
    training_state: dict[str, Any] | None = None,
    copy: Mapping[str, str | Path] | None = None,
) -> Path:
    """Write a self-contained model folder of `kind` (coglm, sr) atomically: config, fp32
    weights, the tokenizer and the VQVAE; `extra` as made by `bundle_extra`.

    `vqvae_path` may be a VQVAE training run: its newest complete step is copied. `copy` adds
    more files or folders (a DeepSpeed checkpoint while training).
    """
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    return save_checkpoint(
        path,
        kind=kind,
        config=config,
        state_dict=weights,
        step=step,
        extra=extra,
        training_state=training_state,
        copy={
            TOKENIZER_FILE: Path(tokenizer_file),
            VQVAE_DIR: resolve_checkpoint(vqvae_path),
            **(copy or {}),
        },
    )


def load_coglm(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[CogLM, Checkpoint]:
    """The model alone (eval mode) and its checkpoint record, loaded strictly."""
    ckpt = load_checkpoint(path, kind=COGLM_KIND)
    config = config_from_dict(CogLMConfig, ckpt.config, source=str(ckpt.path / CONFIG_FILE))
    model = CogLM(config)
    load_state_strict(model, ckpt.state_dict, source=str(ckpt.path))
    return model.to(device).eval(), ckpt


def check_tokenizer(ckpt: Checkpoint, config: CogLMConfig, tokenizer: Any) -> None:
    """CheckpointError unless `tokenizer` is the vocabulary the checkpoint was trained with."""
    from tokenizer import TokenizerError

    layout = ckpt.extra.get("tokenizer_layout")
    if layout is None:
        raise CheckpointError(f"{ckpt.path}: config.json records no tokenizer layout")
    try:
        tokenizer.check_layout(layout, source=str(ckpt.path))
    except TokenizerError as e:
        raise CheckpointError(str(e)) from e
    if config.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            f"{ckpt.path}: the model has {config.vocab_size} token embeddings but its tokenizer "
            f"has {tokenizer.vocab_size} ids"
        )


def load_bundled(
    ckpt: Checkpoint, config: Any, what: str, device: str | torch.device = "cpu"
) -> tuple[Any, Any]:
    """The tokenizer and VQVAE that a self-contained model folder carries, checked against it.

    Shared by CogLM and SR folders: the tokenizer must have the layout the model was trained
    with, and the VQVAE the fingerprint recorded in `config.json` and one code per image id.
    """
    from cogview.pretrained import load_vqvae
    from tokenizer import TokenizerError, UnifiedTokenizer
    from vqvae.model import fingerprint

    tok_file = ckpt.path / TOKENIZER_FILE
    if not tok_file.is_file():
        raise CheckpointError(f"{tok_file}: missing; {what} carries its tokenizer")
    try:
        tok = UnifiedTokenizer.load(tok_file)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from e
    check_tokenizer(ckpt, config, tok)

    vq_dir = ckpt.path / VQVAE_DIR
    if not vq_dir.is_dir():
        raise CheckpointError(f"{vq_dir}: missing; {what} carries its VQVAE")
    vq = load_vqvae(vq_dir, device=device)
    if fingerprint(vq) != ckpt.extra["vqvae_fingerprint"]:
        raise CheckpointError(
            f"{vq_dir}: not the VQVAE the model was trained with (fingerprint "
            f"{fingerprint(vq)}, trained with {ckpt.extra['vqvae_fingerprint']})"
        )
    if vq.codebook_size != tok.num_image_codes:
        raise CheckpointError(
            f"{vq_dir}: {vq.codebook_size} codes, but the tokenizer has {tok.num_image_codes}"
        )
    return tok, vq


def load_pipeline(path: str | Path, device: str | torch.device = "cpu") -> Pipeline:
    """Load a CogLM folder (or a training run's newest step) with its tokenizer and VQVAE."""

    ckpt = load_checkpoint(path, kind=COGLM_KIND)
    source = str(ckpt.path / CONFIG_FILE)
    config = config_from_dict(CogLMConfig, ckpt.config, source=source)
    missing = [k for k in ("image_size", "grid", "vqvae_fingerprint") if k not in ckpt.extra]
    if missing:
        raise CheckpointError(f"{source}: extra lacks {', '.join(missing)}")

    tok, vq = load_bundled(ckpt, config, "a CogLM folder", device)
    encoder = load_recorded_encoder(ckpt, config, device)

    model = CogLM(config)
    load_state_strict(model, ckpt.state_dict, source=str(ckpt.path))
    grid = ckpt.extra["grid"]
    defaults = read_sampling_defaults(ckpt.path)
    restate = defaults.restate
    if restate is None and ckpt.extra.get("domain") in RESTATERS:
        restate = ckpt.extra["domain"]
    from cogview.sampling import SamplingError, check_reranker

    try:
        check_reranker(defaults.rerank_by, config.contrastive_dim > 0)
        if defaults.inpaint_rerank_by is not None:
            check_reranker(defaults.inpaint_rerank_by, config.contrastive_dim > 0,
                           "inpaint_rerank_by")
    except SamplingError as e:
        raise CheckpointError(f"{ckpt.path / SAMPLING_FILE}: {e}") from None
    return Pipeline(
        model=model.to(device).eval(),
        tokenizer=tok,
        vqvae=vq,
        image_size=int(ckpt.extra["image_size"]),
        grid=(int(grid[0]), int(grid[1])),
        meta={**ckpt.extra, "path": str(ckpt.path), "step": ckpt.step},
        defaults=replace(defaults, restate=restate),
        text_encoder=encoder,
    )


def load_recorded_encoder(ckpt: Checkpoint, config: CogLMConfig,
                          device: str | torch.device = "cpu") -> Any:
    """The text encoder a CogLM folder records (None when `config.text_dim` is 0), refused
    unless it is the one the model was trained with (`text_encoder.encoder_from_record`)."""
    if not config.text_dim:
        return None
    from cogview.text_encoder import encoder_from_record

    record = ckpt.extra.get("text_encoder")
    source = str(ckpt.path / CONFIG_FILE)
    if not isinstance(record, dict):
        raise CheckpointError(f"{source}: text_dim {config.text_dim} but extra records no "
                              "text_encoder")
    if record.get("dim") != config.text_dim:
        raise CheckpointError(f"{source}: text_encoder dim {record.get('dim')} differs from "
                              f"text_dim {config.text_dim}")
    return encoder_from_record(record, str(ckpt.path), device)
