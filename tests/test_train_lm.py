"""CogLM training: overfitting, resume equality, signals, NaN handling, errors, the CLI."""

from __future__ import annotations

import json
import os
import signal
import tarfile
from pathlib import Path

import pytest
import torch

from cogview.checkpoint import TRAINING_STATE_FILE, load_checkpoint, step_dirs
from cogview.cli import main
from cogview.errors import UserError
from cogview.losses import LossConfig
from cogview.masks import MaskingScheduler, TaskSchedule
from cogview.model import CogLM, coglm_config
from train.config import LoopConfig, lr_at
from train.lm import CogLMObjective, CogLMTrainConfig, train_coglm
from train.loop import TrainingDiverged, train_loop

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "star")
CODES = 64  # the tiny VQVAE's codebook
GRID = 8  # 32 px / f=4


def _scene(i: int, g: torch.Generator) -> tuple[str, torch.Tensor]:
    """A caption and an 8x8 code grid that depends on it: an object patch on a background."""
    colour, shape = COLOURS[i % 4], SHAPES[(i // 4) % 4]
    codes = torch.zeros(GRID, GRID, dtype=torch.long)
    r, c = (int(x) for x in torch.randint(0, GRID - 3, (2,), generator=g))
    codes[r : r + 3, c : c + 3] = 1 + COLOURS.index(colour) * 4 + SHAPES.index(shape)
    return f"a {colour} {shape}", codes


def make_inputs(root: Path, n_train: int = 48, n_test: int = 8) -> dict[str, str]:
    """A tokenizer, a tiny VQVAE checkpoint and token shards that match them."""
    from cogview.pretrained import save_vqvae
    from tokenizer import UnifiedTokenizer
    from train.data.tokens import FORMAT, INFO_FILE, VERSION, write_sample
    from vqvae.model import VQVAE, fingerprint, vqvae_config

    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    scenes = [_scene(i, g) for i in range(n_train + n_test)]
    tok = UnifiedTokenizer.train(
        [s for s, _ in scenes] * 4, vocab_size=300, image_codes=CODES, max_text_len=8
    )
    tok.save(root / "tokenizer.json")
    torch.manual_seed(0)
    vq = VQVAE(vqvae_config("tiny"))
    save_vqvae(root / "vqvae", vq)
    data = root / "tokens"
    data.mkdir()
    for split, part in (("train", scenes[:n_train]), ("test", scenes[n_train:])):
        with tarfile.open(data / f"{split}-000000.tar", "w") as tar:
            for i, (caption, codes) in enumerate(part):
                ids = tok.encode_texts([caption])[0]
                write_sample(tar, f"{split}{i:05d}", {32: codes.numpy()}, ids, caption, None)
    info = {
        "format": FORMAT,
        "version": VERSION,
        "counts": {"train": n_train, "test": n_test},
        "sizes": [32],
        "grids": {"32": [GRID, GRID]},
        "codebook_size": CODES,
        "vqvae_fingerprint": fingerprint(vq),
        "tokenizer_fingerprint": tok.fingerprint,
        "tokenizer_layout": tok.layout(),
        "source": "test scenes",
    }
    (data / INFO_FILE).write_text(json.dumps(info))
    return {"data": str(data), "tokenizer": str(root / "tokenizer.json"),
            "vqvae": str(root / "vqvae")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_inputs(tmp_path_factory.mktemp("lm_inputs"))


def _run(inputs: dict[str, str], out: Path, **loop) -> CogLMTrainConfig:
    return CogLMTrainConfig(**inputs, out=str(out), preset="tiny",
                            tasks="t2i=0.5,cap=0.25,inp=0.25", eval_samples=8)


def _loop(**kw) -> LoopConfig:
    base = dict(steps=6, batch_size=4, lr=3e-3, warmup=2, min_lr=3e-4, precision="fp32",
                save_every=3, eval_every=0, seed=0)
    return LoopConfig(**{**base, **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    cfg = LoopConfig(steps=100, warmup=10, lr=1.0, min_lr=0.1, precision="fp32")
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


class _Split:
    def __init__(self, codes: torch.Tensor, text_ids: list[list[int]]) -> None:
        self.codes, self.text_ids, self.targets = {32: codes}, text_ids, text_ids


def test_tiny_model_overfits_one_batch(inputs, tmp_path):
    from tokenizer import UnifiedTokenizer

    tok = UnifiedTokenizer.load(inputs["tokenizer"])
    g = torch.Generator().manual_seed(0)
    scenes = [_scene(i, g) for i in range(4)]
    train = _Split(torch.stack([c for _, c in scenes]),
                   tok.encode_texts([s for s, _ in scenes]))
    torch.manual_seed(0)
    model = CogLM(coglm_config("tiny", tok.vocab_size))
    sched = MaskingScheduler(tok, schedule=TaskSchedule.constant(t2i=1.0), text_dropout=0.0)
    objective = CogLMObjective(model=model, tokenizer=tok, train=train, scheduler=sched,
                               image_size=32, save_fn=lambda *a, **k: Path(),
                               loss_config=LossConfig())
    # one fixed batch: the same 4 samples every step
    batch = objective.collate(objective.draw(0, 4, torch.Generator().manual_seed(0)))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        s = objective.loss(model, batch)
        loss = s.mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0
    assert loss.item() < 0.1


def test_resume_after_sigint_equals_uninterrupted_run(inputs, tmp_path):
    loop = _loop(ema=0.9)
    full = train_coglm(_run(inputs, tmp_path / "full"), loop, progress=False)
    assert full.step == 6 and full.interrupted is None

    def interrupt(step: int) -> None:
        if step == 4:  # between checkpoints: the handler must save step 4 itself
            os.kill(os.getpid(), signal.SIGINT)

    part = train_coglm(_run(inputs, tmp_path / "part"), loop, progress=False, on_step=interrupt)
    assert part.interrupted == "SIGINT" and part.step == 4
    assert [s for s, _ in step_dirs(tmp_path / "part")] == [3, 4]
    rest = train_coglm(_run(inputs, tmp_path / "part"), loop, progress=False, resume=True)
    assert rest.step == 6
    assert part.losses + rest.losses == full.losses

    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # EMA weights (what is exported)
    sa = torch.load(tmp_path / "full/step-00000006" / TRAINING_STATE_FILE, weights_only=True)
    sb = torch.load(tmp_path / "part/step-00000006" / TRAINING_STATE_FILE, weights_only=True)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    # metrics.jsonl holds each step once, also after the interruption
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "part/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6] + [6] * (len(steps) - 6)


def test_a_checkpoint_written_before_a_config_field_existed_resumes(inputs, tmp_path):
    """config.json without a field added later (its default) is the same shape: it resumes."""
    loop = _loop()
    full = train_coglm(_run(inputs, tmp_path / "full"), loop, progress=False)

    def interrupt(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    part = train_coglm(_run(inputs, tmp_path / "part"), loop, progress=False, on_step=interrupt)
    meta_file = tmp_path / "part/step-00000004/config.json"
    meta = json.loads(meta_file.read_text())
    for later in ("contrastive_dim", "contrastive_pool"):  # both default: no head
        del meta["config"][later]
    meta_file.write_text(json.dumps(meta))
    rest = train_coglm(_run(inputs, tmp_path / "part"), loop, progress=False, resume=True)
    assert part.losses + rest.losses == full.losses


def test_checkpoint_folder_loads_as_pipeline(inputs, tmp_path):
    from cogview.pipeline import load_pipeline

    train_coglm(_run(inputs, tmp_path / "run"), _loop(steps=3, eval_every=2), progress=False)
    pipe = load_pipeline(tmp_path / "run")
    assert pipe.grid == (GRID, GRID) and pipe.image_size == 32
    assert pipe.model.config.vocab_size == pipe.tokenizer.vocab_size
    assert pipe.meta["step"] == 3 and pipe.meta["train_args"]["preset"] == "tiny"
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text()
               .splitlines()]
    evals = [r for r in records if "eval_t2i" in r]
    assert [r["step"] for r in evals] == [2, 3]
    assert {"eval_t2i", "eval_t2i_nocap", "eval_cap", "eval_inp"} <= set(evals[0])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(inputs, tmp_path, monkeypatch):
    run = _run(inputs, tmp_path / "run")

    def poison(step: int) -> None:
        if step == 4:  # after the step-3 checkpoint the weights go bad: step 5's loss is NaN
            with torch.no_grad():
                for p in model_ref[0].parameters():
                    p.fill_(float("nan"))

    import train.lm as lm

    model_ref = []
    real = lm.CogLMObjective.__post_init__

    def grab(self):
        model_ref.append(self.model)
        real(self)

    monkeypatch.setattr(lm.CogLMObjective, "__post_init__", grab)
    with pytest.raises(TrainingDiverged, match="step-00000003"):
        train_coglm(run, _loop(), progress=False, on_step=poison)
    assert [s for s, _ in step_dirs(tmp_path / "run")] == [3]
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "run").values())


def test_errors_name_the_problem(inputs, tmp_path, capsys):
    base = ["train", "--tokenizer", inputs["tokenizer"], "--vqvae", inputs["vqvae"],
            "--preset", "tiny", "--steps", "1", "--no-progress"]
    assert main(base + ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(base + ["--data", inputs["data"], "--out", str(tmp_path / "o"),
                        "--batch-size", "5", "--grad-accum", "2"]) == 2
    assert "--batch-size 5" in capsys.readouterr().err
    assert main(base + ["--data", inputs["data"], "--out", str(tmp_path / "o"),
                        "--deepspeed", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err

    # token shards of another tokenizer
    from tokenizer import UnifiedTokenizer

    other = UnifiedTokenizer.train(["something else entirely"] * 8, vocab_size=270,
                                   image_codes=CODES)
    other.save(tmp_path / "other.json")
    args = base + ["--data", inputs["data"], "--out", str(tmp_path / "o")]
    args[args.index("--tokenizer") + 1] = str(tmp_path / "other.json")
    assert main(args) == 2
    assert "another tokenizer" in capsys.readouterr().err


def test_cli_trains_and_refuses_to_overwrite_without_resume(inputs, tmp_path, capsys):
    args = ["train", "--data", inputs["data"], "--tokenizer", inputs["tokenizer"],
            "--vqvae", inputs["vqvae"], "--preset", "tiny", "--out", str(tmp_path / "run"),
            "--steps", "2", "--batch-size", "4", "--grad-accum", "2", "--eval-every", "0",
            "--precision", "fp32", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "step-00000002" in out and "metrics.jsonl" in out
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # already at --steps: nothing to do, no error


def test_loop_rejects_uneven_batches():
    with pytest.raises(UserError, match="^batch_size 6 does not split"):
        train_loop(None, _loop(batch_size=6, grad_accum=4), "/nonexistent",
                   backend=type("B", (), {"rank": 0, "world": 1, "device": "cpu"})())


def test_pipeline_refuses_a_foreign_tokenizer_or_vocab_size(inputs, tmp_path):
    import shutil

    from cogview.checkpoint import CheckpointError
    from cogview.pipeline import load_pipeline
    from tokenizer import UnifiedTokenizer

    train_coglm(_run(inputs, tmp_path / "run"), _loop(steps=1), progress=False)
    good = tmp_path / "run/step-00000001"
    swapped = tmp_path / "swapped"
    shutil.copytree(good, swapped)
    UnifiedTokenizer.train(["other words here"] * 8, vocab_size=270,
                           image_codes=CODES).save(swapped / "tokenizer.json")
    with pytest.raises(CheckpointError, match="another vocabulary"):
        load_pipeline(swapped)

    resized = tmp_path / "resized"
    shutil.copytree(good, resized)
    meta = json.loads((resized / "config.json").read_text())
    meta["config"]["vocab_size"] += 1
    (resized / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="token embeddings but its tokenizer"):
        load_pipeline(resized)


def test_init_from_starts_a_run_from_another_runs_weights(inputs, tmp_path):
    from dataclasses import replace

    first = train_coglm(_run(inputs, tmp_path / "a"), _loop(), progress=False)
    later = replace(_run(inputs, tmp_path / "b"), init_from=str(tmp_path / "a"))
    # --resume with no checkpoint yet still starts from --init-from (a recipe's later stage)
    second = train_coglm(later, _loop(steps=1, lr=1e-9, min_lr=0.0), progress=False, resume=True)
    assert second.losses[0] < first.losses[0] - 0.5
    a = _weights(tmp_path / "a")
    b = load_checkpoint(tmp_path / "b" / "step-00000001").state_dict
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # lr ~0: still a's weights
    wrong = replace(later, out=str(tmp_path / "c"), preset="small")
    with pytest.raises(UserError, match="another shape"):
        train_coglm(wrong, _loop(steps=1), progress=False)


def test_loop_config_errors_name_the_field_and_the_command_line_its_flag(tmp_path, capsys):
    with pytest.raises(UserError, match="^grad_accum must be at least 1"):
        LoopConfig(grad_accum=0)
    args = ["train", "--data", str(tmp_path), "--tokenizer", "t.json", "--vqvae", "vq",
            "--out", str(tmp_path / "run"), "--grad-accum", "0"]
    assert main(args) == 2
    assert "error: --grad-accum must be at least 1" in capsys.readouterr().err


def test_caption_augmentation_words_prompts_anew_and_keeps_captioning_targets():
    import numpy as np

    from cogview.bench import shapes
    from cogview.defaults import default_model_path
    from tokenizer import UnifiedTokenizer
    from train.lm import reworded

    tok = UnifiedTokenizer.load(default_model_path("tokenizer"))
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    changed = 0
    for _ in range(40):
        scene = shapes.sample_scene(rng, 1)
        meta = shapes.scene_to_json(scene)
        ids = tok.encode_text(shapes.caption(scene, rng))
        text, target, worded = reworded(tok, ids, None, meta, shapes.rephrase, 0.5, g)
        assert (worded is None) == (target is None)
        if target is not None:  # worded anew (sometimes as the data's own template)
            assert tok.encode_text(worded) == text
            changed += text != ids
            assert target == ids  # captioning learns the data's caption
            words = tok.decode_text(text).split()
            assert meta["objects"][0]["colour"] in words and meta["objects"][0]["shape"] in words
        else:
            assert text == ids
    assert 10 <= changed <= 30
    assert reworded(tok, ids, None, meta, shapes.rephrase, 0.0, g) == (ids, None, None)
    assert reworded(tok, ids, None, None, shapes.rephrase, 1.0, g) == (ids, None, None)
