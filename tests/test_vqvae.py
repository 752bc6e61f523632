"""VQVAE model, checkpoint loading and training: tiny configs, a few seconds in all."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from cogview.checkpoint import CheckpointError
from cogview.errors import UserError
from cogview.pretrained import load_vqvae, save_vqvae
from train.config import LoopConfig
from train.vqvae import VQVAETrainConfig, evaluate_vqvae, train_vqvae
from vqvae import VQVAE, VQVAEConfig, fingerprint, vqvae_config
from vqvae.metrics import psnr, ssim, usage_and_perplexity

TINY = vqvae_config("tiny")
TINY_FSQ = dataclasses.replace(TINY, quantizer="fsq", fsq_levels=(5, 3, 3), codebook_size=45,
                               codebook_dim=3)


def blocks(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size) images: a flat background with one flat-coloured rectangle."""
    g = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        out[i] = g.integers(0, 256, 3, dtype=np.uint8)[:, None, None]
        y0, x0 = g.integers(0, size // 2, 2)
        h, w = g.integers(size // 4, size // 2, 2)
        out[i, :, y0 : y0 + h, x0 : x0 + w] = g.integers(0, 256, 3, dtype=np.uint8)[:, None, None]
    return torch.from_numpy(out)


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1


def trained_tiny(config: VQVAEConfig = TINY, steps: int = 3) -> VQVAE:
    torch.manual_seed(0)
    model = VQVAE(config)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = as_float(blocks(16, 32))
    for _ in range(steps):
        out = model(x)
        loss = (out.recon - x).pow(2).mean() + out.commit_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("config", [TINY, TINY_FSQ], ids=["vq", "fsq"])
@pytest.mark.parametrize("size", [32, 64])
def test_codes_in_range_and_grid_shape(config, size):
    model = trained_tiny(config)
    codes = model.encode(as_float(blocks(3, size)))
    f = config.factor
    assert codes.shape == (3, size // f, size // f) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < config.codebook_size
    images = model.decode(codes)
    assert images.shape == (3, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1


@pytest.mark.parametrize("config", [TINY, TINY_FSQ], ids=["vq", "fsq"])
def test_decode_of_encode_equals_forward(config):
    model = trained_tiny(config)
    x = as_float(blocks(4, 32, seed=1))
    out = model(x)
    codes = model.encode(x)
    assert torch.equal(codes, out.codes)
    assert torch.equal(model.embed_codes(codes), out.quantized)
    assert torch.equal(model.decode(codes), out.recon.clamp(-1, 1))
    book = model.codebook()
    assert book.shape == (config.codebook_size, config.codebook_dim)
    # the decoder's input is the codebook vector of each code
    assert torch.allclose(out.quantized[0, :, 0, 0], book[codes[0, 0, 0]])


@pytest.mark.parametrize("config", [TINY, TINY_FSQ], ids=["vq", "fsq"])
def test_encode_in_chunks_gives_the_codes_of_one_batch(config, monkeypatch):
    import vqvae.model

    model = trained_tiny(config)
    x = as_float(blocks(10, 32, seed=4))
    whole = model.encode(x)  # 10 x 1024 pixels: under the default chunk, one batch
    monkeypatch.setattr(vqvae.model, "CPU_CHUNK_PIXELS", 3 * 32 * 32)  # chunks of 3, 3, 3, 1
    assert torch.equal(model.encode(x), whole)


def test_eval_mode_leaves_codebook_alone():
    model = trained_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(as_float(blocks(8, 32, seed=2)))
    model.encode(as_float(blocks(8, 64, seed=3)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_inputs_are_refused():
    model = trained_tiny()
    with pytest.raises(ValueError, match="divisible"):
        model.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="codes must lie"):
        model.decode(torch.full((1, 8, 8), TINY.codebook_size))
    with pytest.raises(ValueError, match="fsq"):
        dataclasses.replace(TINY, quantizer="fsq")
    with pytest.raises(ValueError, match="factor"):
        dataclasses.replace(TINY, channel_mult=(1, 2))


def test_fingerprint_tracks_the_codebook():
    a = trained_tiny()
    b = trained_tiny(steps=4)
    assert fingerprint(a) == fingerprint(a) and fingerprint(a) != fingerprint(b)
    assert len(fingerprint(a)) == 16


def test_metrics():
    a = torch.rand(2, 3, 32, 32)
    assert torch.all(psnr(a, a) == 100)
    assert torch.allclose(psnr(a, (a + 0.1).clamp(max=5)), torch.full((2,), 20.0), atol=1e-3)
    assert torch.allclose(ssim(a, a), torch.ones(2))
    usage, ppl = usage_and_perplexity(torch.tensor([5, 5, 0, 0]))
    assert usage == 0.5 and abs(ppl - 2) < 1e-9


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=g)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(2):
        ref = metrics.structural_similarity(
            a[i].permute(1, 2, 0).numpy(), b[i].permute(1, 2, 0).numpy(), channel_axis=2,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        assert abs(float(ours[i]) - float(ref)) < 1e-5


# checkpoints


def test_checkpoint_round_trip_in_a_fresh_process(tmp_path):
    model = trained_tiny()
    save_vqvae(tmp_path / "ck", model, step=3)
    x = as_float(blocks(4, 32, seed=5))
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch\n"
        "from cogview.pretrained import load_vqvae\n"
        "from vqvae import fingerprint\n"
        "m = load_vqvae(sys.argv[1])\n"
        "torch.save(m.encode(torch.load(sys.argv[2])), sys.argv[3])\n"
        "print(fingerprint(m))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ck"), str(tmp_path / "x.pt"),
                          str(tmp_path / "codes.pt")], capture_output=True, text=True, check=True)
    assert torch.equal(torch.load(tmp_path / "codes.pt"), model.encode(x))
    assert out.stdout.strip() == fingerprint(model)
    assert not load_vqvae(tmp_path / "ck").training


def test_checkpoint_with_another_config_is_a_clear_error(tmp_path):
    save_vqvae(tmp_path / "ck", trained_tiny(), step=1)
    meta_file = tmp_path / "ck" / "config.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["channels"] = 24
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_vqvae(tmp_path / "ck")
    meta["config"]["channels"] = 16
    meta["config"]["quantiser"] = "vq"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown VQVAEConfig fields"):
        load_vqvae(tmp_path / "ck")
    meta["kind"] = "coglm"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="expected vqvae"):
        load_vqvae(tmp_path / "ck")


# training


RUN = {"sizes", "loss", "flip", "eval_images"}


def train(images, out, *, test_images=None, **kw):
    """train_vqvae with small settings; `kw` sets fields of the run or the loop."""
    base = dict(steps=6, batch_size=8, sizes=(32,), warmup=2, save_every=3, eval_every=3,
                eval_images=8, lr=3e-3, min_lr=1e-4, weight_decay=0.0, precision="bf16")
    options = {**base, **kw}
    run = VQVAETrainConfig(**{k: v for k, v in options.items() if k in RUN})
    loop = LoopConfig(**{k: v for k, v in options.items()
                         if k not in RUN | {"resume", "on_step", "model"}})
    return train_vqvae(options.get("model", TINY), run, loop, images, out,
                       test_images=test_images, progress=False,
                       resume=options.get("resume", False), on_step=options.get("on_step"))


def test_training_lowers_the_loss(tmp_path):
    images = {32: blocks(64, 32)}
    result = train(images, tmp_path / "run", steps=30, save_every=30, eval_every=0)
    assert result.step == 30 and len(result.losses) == 30
    assert np.mean(result.losses[-5:]) < 0.8 * np.mean(result.losses[:5])
    assert result.checkpoint == tmp_path / "run" / "step-00000030"


def _evals(run) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if any(k.startswith("eval_") for k in r)]


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    images = {32: blocks(24, 32), 64: blocks(8, 64)}

    def stop_at_2(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    full = train(images, tmp_path / "a", test_images=images, sizes=(32, 64))
    half = train(images, tmp_path / "b", test_images=images, sizes=(32, 64), on_step=stop_at_2)
    assert half.interrupted and half.step == 2
    rest = train(images, tmp_path / "b", test_images=images, sizes=(32, 64), resume=True)
    assert rest.step == full.step == 6
    a, b = load_vqvae(full.checkpoint).state_dict(), load_vqvae(rest.checkpoint).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _evals(tmp_path / "b") == _evals(tmp_path / "a")
    assert {"eval_32px_psnr", "eval_64px_usage"} <= set(_evals(tmp_path / "a")[-1])
    assert [e.size for e in rest.evals] == [32, 64]


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    run = tmp_path / "run"

    def send_once_training() -> None:
        # the handler is in place once the loop has written its first checkpoint
        deadline = time.time() + 60
        while not (run / "step-00000001").exists() and time.time() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=send_once_training)
    sender.start()
    result = train({32: blocks(4, 32)}, run, steps=100_000, batch_size=2, save_every=1,
                   eval_every=0)
    sender.join()
    assert result.interrupted and 1 <= result.step < 100_000
    assert result.checkpoint == run / f"step-{result.step:08d}"
    assert (result.checkpoint / "training_state.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_training_refuses_to_overwrite_and_mismatched_resume(tmp_path):
    images = {32: blocks(8, 32)}
    train(images, tmp_path / "run", steps=1)
    with pytest.raises(UserError, match="--resume"):
        train(images, tmp_path / "run", steps=2)
    with pytest.raises(UserError, match="other settings of lr"):
        train(images, tmp_path / "run", steps=2, lr=1e-3, resume=True)
    with pytest.raises(UserError, match="other settings of loss"):
        train(images, tmp_path / "run", steps=2, loss="l1", resume=True)
    other = dataclasses.replace(TINY, codebook_size=32)
    with pytest.raises(UserError, match="another shape"):
        train(images, tmp_path / "run", steps=2, model=other, resume=True)
    assert train(images, tmp_path / "run", steps=2, resume=True).step == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    images = {32: blocks(8, 32)}
    # a huge learning rate blows the weights up within a few steps
    with pytest.raises(UserError, match="last good checkpoint") as err:
        train(images, tmp_path / "run", steps=50, save_every=1, lr=1e12, clip=0)
    saved = sorted((tmp_path / "run").glob("step-*"))
    assert saved and str(saved[-1]) in str(err.value)
    for path in saved:
        assert all(torch.isfinite(t).all() for t in load_vqvae(path).state_dict().values()
                   if t.is_floating_point())


def test_evaluate_reports_usage():
    model = trained_tiny()
    ev = evaluate_vqvae(model, blocks(8, 32), batch_size=3)
    assert ev.images == 8 and ev.size == 32
    assert 0 < ev.usage <= 1 and 1 <= ev.perplexity <= TINY.codebook_size
    assert 0 < ev.psnr < 100 and -1 <= ev.ssim <= 1
