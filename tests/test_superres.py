"""Super-resolution: LoPAR geometry, training masks, direct and iterative SR on a tiny model."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cogview.checkpoint import load_checkpoint, step_dirs
from cogview.cli import main
from cogview.errors import UserError
from cogview.masks import IGNORE
from cogview.sampling import SamplingConfig
from cogview.superres import (
    SRModel,
    SRState,
    check_sr_fits,
    load_sr,
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
    config = model.sr
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
    config = model.sr
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
    config = model.sr
    lr, hr, texts = _inputs(tok, config)
    state = SRState(model, tok, lr, texts)
    codes = hr.view(3, -1)
    for start in (0, 3, 5):  # the first pass fills the prefix cache, the others reuse it
        got = state.logits(codes, start)
        keep = state.order[None] < start
        ids = torch.where(keep, tok.codes_to_ids(codes), tok.mask_id)
        full = model(**sr_sequence(tok, config, texts, lr, ids).model_inputs())
        r = tok.image_range
        torch.testing.assert_close(got, full[:, config.hr_start :, r.start : r.stop])


def test_direct_sr_shapes(tok, model):
    lr, _, texts = _inputs(tok, model.sr, b=2)
    out = super_resolve(model, tok, lr, texts, steps=1, generator=torch.Generator())
    assert out.codes.shape == (2, 16, 16) and out.passes == 1
    assert 0 <= int(out.codes.min()) and int(out.codes.max()) < tok.num_image_codes
    out = super_resolve(model, tok, lr, None, steps=1, sampling=GREEDY)  # no text at all
    assert out.codes.shape == (2, 16, 16)


@pytest.mark.parametrize("start", [1, 3, 6])
def test_lopar_step_keeps_cells_below_its_order(tok, model, start):
    lr, hr, texts = _inputs(tok, model.sr)
    state = SRState(model, tok, lr, texts)
    codes = hr.view(3, -1)
    new = lopar_step(state, codes, start, generator=torch.Generator().manual_seed(0))
    keep = state.order < start
    assert torch.equal(new[:, keep], codes[:, keep])
    assert not torch.equal(new[:, ~keep], codes[:, ~keep])  # the rest was predicted again


def test_first_lopar_pass_is_direct_sr(tok, model):
    lr, _, texts = _inputs(tok, model.sr)
    direct = super_resolve(model, tok, lr, texts, steps=1, sampling=GREEDY)
    lopar = super_resolve(model, tok, lr, texts, sampling=GREEDY)
    assert lopar.passes == model.sr.num_orders
    order0 = lopar_orders(16, model.sr.window) == 0
    assert torch.equal(direct.codes[:, order0], lopar.codes[:, order0])


def test_passes_do_not_depend_on_the_image_size(tok):
    big = SRModel(sr_config("tiny", tok.vocab_size, lr_size=12, hr_size=24, window=3)).eval()
    calls = []
    big.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    lr = torch.randint(0, tok.num_image_codes, (1, 12, 12))
    out = super_resolve(big, tok, lr, sampling=GREEDY)
    assert out.codes.shape == (1, 24, 24)
    assert out.passes == 5 and len(calls) == 5  # 2w - 1 forward passes, the first with prefix
    direct = super_resolve(big, tok, lr, sampling=GREEDY, steps=1)
    assert direct.passes == 1 and len(calls) == 6


# ---------------------------------------------------------------------------------------------
# training and the commands, end to end on tiny models


def make_sr_inputs(root: Path, n_train: int = 24, n_test: int = 8) -> dict[str, str]:
    """A tokenizer, a tiny (untrained) VQVAE and token shards with 8x8 and 16x16 codes, the
    high-res grid being the low-res one with each cell doubled (something SR can learn)."""
    from cogview.pretrained import save_vqvae
    from train.data.tokens import FORMAT, INFO_FILE, VERSION, write_sample
    from vqvae.model import VQVAE, fingerprint, vqvae_config

    root.mkdir(parents=True, exist_ok=True)
    tok = UnifiedTokenizer.train(CAPTIONS * 10, vocab_size=280, image_codes=64, max_text_len=32)
    tok.save(root / "tokenizer.json")
    torch.manual_seed(0)
    vq = VQVAE(vqvae_config("tiny"))
    save_vqvae(root / "vqvae", vq)
    data = root / "tokens"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("test", n_test)):
        with tarfile.open(data / f"{split}-000000.tar", "w") as tar:
            for i in range(n):
                lr = torch.randint(0, 64, (8, 8), generator=g)
                hr = lr.repeat_interleave(2, 0).repeat_interleave(2, 1)
                caption = CAPTIONS[i % len(CAPTIONS)]
                ids = tok.encode_texts([caption])[0]
                codes = {32: lr.numpy(), 64: hr.numpy()}
                write_sample(tar, f"{split}{i:05d}", codes, ids, caption, None)
    info = {
        "format": FORMAT,
        "version": VERSION,
        "counts": {"train": n_train, "test": n_test},
        "sizes": [32, 64],
        "grids": {"32": [8, 8], "64": [16, 16]},
        "codebook_size": 64,
        "vqvae_fingerprint": fingerprint(vq),
        "tokenizer_fingerprint": tok.fingerprint,
        "tokenizer_layout": tok.layout(),
        "source": "test codes",
    }
    (data / INFO_FILE).write_text(json.dumps(info))
    return {"data": str(data), "tokenizer": str(root / "tokenizer.json"),
            "vqvae": str(root / "vqvae")}


TRAIN_FLAGS = ["--preset", "tiny", "--batch-size", "4", "--warmup", "1", "--save-every", "2",
               "--eval-every", "0", "--eval-samples", "4", "--precision", "fp32", "--no-progress"]


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory) -> dict[str, str]:
    """A 4-step train-sr run (and its inputs)."""
    root = tmp_path_factory.mktemp("sr")
    inputs = make_sr_inputs(root)
    out = root / "run"
    argv = ["train-sr", *(f"--{k}={v}" for k, v in inputs.items()), "--out", str(out)]
    assert main([*argv, *TRAIN_FLAGS, "--steps", "4"]) == 0
    return {**inputs, "out": str(out), "argv": argv}


def test_train_sr_writes_self_contained_checkpoints_and_resumes(sr_run, capsys):
    out = Path(sr_run["out"])
    assert [s for s, _ in step_dirs(out)] == [2, 4]
    ckpt = load_checkpoint(out, kind="sr")
    assert ckpt.step == 4 and ckpt.config["lr_size"] == 8 and ckpt.config["hr_size"] == 16
    assert (ckpt.path / "tokenizer.json").is_file() and (ckpt.path / "vqvae").is_dir()
    sr = load_sr(out)
    assert isinstance(sr.model, SRModel) and sr.low_res_size == 32 and sr.image_size == 64
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_direct" in m and "eval_lopar" in m for m in metrics)
    # resume to step 6; without --resume the same --out is refused
    assert main([*sr_run["argv"], *TRAIN_FLAGS, "--steps", "6"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*sr_run["argv"], *TRAIN_FLAGS, "--steps", "6", "--resume"]) == 0
    assert [s for s, _ in step_dirs(out)][-1] == 6


def test_train_sr_refuses_single_size_shards(sr_run, tmp_path, capsys):
    info = json.loads((Path(sr_run["data"]) / "info.json").read_text())
    assert main(["train-sr", "--data", str(tmp_path / "nope"), "--tokenizer",
                 sr_run["tokenizer"], "--vqvae", sr_run["vqvae"], "--out",
                 str(tmp_path / "o"), *TRAIN_FLAGS]) == 2
    assert "--data" in capsys.readouterr().err
    assert main([*sr_run["argv"][:4], "--out", str(tmp_path / "o2"), *TRAIN_FLAGS,
                 "--image-size", "128"]) == 2
    assert "cogview encode --sizes 32,128" in capsys.readouterr().err
    assert info["sizes"] == [32, 64]


def test_superres_command(sr_run, tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "in.png"
    Image.fromarray(np.full((20, 24, 3), 200, np.uint8)).save(img)
    out = tmp_path / "out.png"
    argv = ["superres", str(img), "-o", str(out), "--model", sr_run["out"], "--seed", "1"]
    assert main([*argv, "--steps", "3", "--prompt", "a red circle"]) == 0
    captured = capsys.readouterr()
    assert "resized to 32x32" in captured.err and str(out) in captured.out
    assert Image.open(out).size == (64, 64)
    assert main([*argv, "--steps", "1"]) == 0  # direct SR
    assert main([*argv, "--steps", "99"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["superres", str(tmp_path / "missing.png"), "-o", str(out),
                 "--model", sr_run["out"]]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*argv, "--device", "nonsense"]) == 2
    assert "--device" in capsys.readouterr().err
    assert main([*argv[:3], "out.gif", *argv[4:]]) == 2
    assert "suffix" in capsys.readouterr().err


def test_sr_of_another_vocabulary_is_refused(sr_run):
    sr = load_sr(sr_run["out"])
    other = UnifiedTokenizer.train(["something else entirely"] * 20, vocab_size=270,
                                   image_codes=64)
    with pytest.raises(UserError, match="another tokenizer"):
        check_sr_fits(sr, other, sr.vqvae, (8, 8))
    from vqvae.model import VQVAE, vqvae_config

    other_vq = VQVAE(dataclasses.replace(vqvae_config("tiny"), channels=8))
    with pytest.raises(UserError, match="another VQVAE"):
        check_sr_fits(sr, sr.tokenizer, other_vq, (8, 8))
    with pytest.raises(UserError, match="16x16"):
        check_sr_fits(sr, sr.tokenizer, sr.vqvae, (16, 16))
    check_sr_fits(sr, sr.tokenizer, sr.vqvae, (8, 8))


@pytest.fixture(scope="module")
def base_dir(sr_run):
    """A random tiny CogLM folder with the SR run's tokenizer and VQVAE (32 px, 8x8 codes)."""
    from cogview.model import CogLM, coglm_config
    from cogview.pipeline import COGLM_KIND, bundle_extra, save_bundled
    from cogview.pretrained import load_vqvae
    from vqvae.model import fingerprint

    tok = UnifiedTokenizer.load(sr_run["tokenizer"])
    torch.manual_seed(0)
    model = CogLM(coglm_config("tiny", tok.vocab_size, dim=32, n_layers=1, max_seq_len=128))
    root = Path(sr_run["out"]).parent
    return save_bundled(
        root / "base", COGLM_KIND, config=model.config, state_dict=model.state_dict(),
        tokenizer_file=sr_run["tokenizer"], vqvae_path=sr_run["vqvae"],
        extra=bundle_extra(tok, fingerprint(load_vqvae(sr_run["vqvae"])), image_size=32,
                           grid=(8, 8)),
    )


def test_generate_and_inpaint_chain_sr(sr_run, base_dir, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "gen"
    flags = ["--model", str(base_dir), "--sr", sr_run["out"], "--sr-steps", "2"]
    assert main(["generate", "a red circle", "-n", "2", "-o", str(out), *flags]) == 0
    assert Image.open(out / "a-red-circle-0.png").size == (64, 64)
    img, mask = tmp_path / "img.png", tmp_path / "mask.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(img)
    painted = np.zeros((32, 32), np.uint8)
    painted[:16] = 255
    Image.fromarray(painted).save(mask)
    out = tmp_path / "inp"
    assert main(["inpaint", "--image", str(img), "--mask", str(mask), "-n", "1", "-o", str(out),
                 *flags]) == 0
    result = np.asarray(Image.open(out / "img-0.png"))
    assert result.shape == (32, 32, 3) and (result[16:] == 90).all()  # composited back
    assert main(["generate", "x", "-o", str(out), "--model", str(base_dir), "--sr",
                 sr_run["out"], "--sr-steps", "9"]) == 2
    assert "--sr-steps" in capsys.readouterr().err


def test_bare_sr_flag_uses_the_shipped_sr_model(sr_run, base_dir, tmp_path, monkeypatch):
    from PIL import Image

    import cogview.defaults
    from cogview.checkpoint import resolve_checkpoint

    monkeypatch.setitem(cogview.defaults.DEFAULTS, "sr", resolve_checkpoint(sr_run["out"]))
    out = tmp_path / "gen"
    argv = ["generate", "a red circle", "-n", "1", "--seed", "2", "--model", str(base_dir)]
    assert main([*argv, "--sr", "-o", str(out / "bare")]) == 0
    assert main([*argv, "--sr", sr_run["out"], "-o", str(out / "given")]) == 0
    bare = np.asarray(Image.open(out / "bare" / "a-red-circle-0.png"))
    assert bare.shape == (64, 64, 3)
    assert np.array_equal(bare, np.asarray(Image.open(out / "given" / "a-red-circle-0.png")))


def test_generate_refuses_sr_of_another_codebook(sr_run, base_dir, tmp_path, capsys):
    from cogview.pipeline import bundle_extra, save_bundled
    from cogview.pretrained import save_vqvae
    from cogview.superres import SR_KIND
    from vqvae.model import VQVAE, fingerprint, vqvae_config

    tok = UnifiedTokenizer.load(sr_run["tokenizer"])
    vq = VQVAE(dataclasses.replace(vqvae_config("tiny"), channels=8))
    save_vqvae(tmp_path / "vq", vq)
    model = SRModel(sr_config("tiny", tok.vocab_size))
    other = save_bundled(tmp_path / "sr", SR_KIND, config=model.sr,
                         state_dict=model.state_dict(), tokenizer_file=sr_run["tokenizer"],
                         vqvae_path=tmp_path / "vq",
                         extra=bundle_extra(tok, fingerprint(vq), low_res_size=32, image_size=64))
    code = main(["generate", "x", "-o", str(tmp_path / "o"), "--model", str(base_dir),
                 "--sr", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and "another VQVAE" in err and len(err.strip().splitlines()) == 1


def test_sr_config_reads_its_own_layout_and_the_earlier_flat_one():
    import json
    from dataclasses import asdict

    from cogview.checkpoint import CheckpointError
    from cogview.superres import SRConfig

    config = sr_config("tiny", 300, window=2, lr_size=4, hr_size=8)
    nested = json.loads(json.dumps(asdict(config)))  # as config.json holds it
    lm = {k: v for k, v in nested["lm"].items() if k not in ("max_seq_len", "max_grid")}
    flat = {**lm, **{k: v for k, v in nested.items() if k != "lm"}}
    assert SRConfig.from_dict(nested) == config == SRConfig.from_dict(flat)
    assert config.lm.max_seq_len == config.seq_len and config.lm.max_grid == 8
    with pytest.raises(CheckpointError, match="unknown SRConfig fields"):
        SRConfig.from_dict({**flat, "heads": 3})
    with pytest.raises(CheckpointError, match="max_seq_len"):
        SRConfig.from_dict({**nested, "text_len": 3})  # the transformer no longer fits
