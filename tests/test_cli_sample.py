"""`cogview generate`, `inpaint` and `caption` end to end on a tiny self-contained model folder."""

from __future__ import annotations

import json
import shlex
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cogview.api import CLUSTERS_FILE, CogView
from cogview.cli import main
from cogview.cli.sample import read_mask_file, slug
from cogview.images import resize_mask
from cogview.model import CogLM, coglm_config
from cogview.pipeline import COGLM_KIND, bundle_extra, save_bundled
from cogview.pretrained import save_vqvae
from tokenizer import UnifiedTokenizer
from vqvae import fingerprint
from vqvae.model import VQVAE, VQVAEConfig

SIZE, GRID = 16, (4, 4)
CAPTIONS = ["a red circle", "a blue square at the top", "two green triangles", "red blue"] * 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A CogLM folder with its tokenizer and VQVAE: 16 px images, 4x4 codes, random weights."""
    root = tmp_path_factory.mktemp("sample-cli")
    torch.manual_seed(0)
    vq = VQVAE(
        VQVAEConfig(
            channels=8,
            channel_mult=(1, 1, 2),
            codebook_size=16,
            codebook_dim=4,
            kmeans_init=False,
        )
    ).eval()
    save_vqvae(root / "vqvae", vq)
    tok = UnifiedTokenizer.train(CAPTIONS, vocab_size=270, image_codes=16, max_text_len=8)
    tok.save(root / "tokenizer.json")
    model = CogLM(coglm_config("tiny", tok.vocab_size, dim=32, n_layers=1, max_seq_len=64))
    return save_bundled(
        root / "model", COGLM_KIND,
        config=model.config,
        state_dict=model.state_dict(),
        tokenizer_file=root / "tokenizer.json",
        vqvae_path=root / "vqvae",
        extra=bundle_extra(tok, fingerprint(vq), image_size=SIZE, grid=GRID),
    )


def run(capsys, *argv) -> tuple[int, str, str]:
    """`cogview ARGV`; a string argument is split like a shell command line."""
    args = [a for x in argv for a in (shlex.split(x) if isinstance(x, str) else [str(x)])]
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ------------------------------------------------------------------------------ generate


def test_generate_writes_images_and_grid_and_is_seeded(model_dir, tmp_path, capsys):
    rc, out, _ = run(capsys, f"generate 'a red circle' -n 3 --model {model_dir} -o {tmp_path}/a")
    assert rc == 0
    files = [tmp_path / "a" / f"a-red-circle-{i}.png" for i in range(3)]
    grid = tmp_path / "a" / "a-red-circle-grid.png"
    assert all(str(f) in out for f in [*files, grid]) and "3 image(s)" in out
    assert png(files[0]).shape == (SIZE, SIZE, 3)
    rc, _, _ = run(capsys, f"generate 'a red circle' -n 3 --model {model_dir} -o {tmp_path}/b")
    assert rc == 0
    for f in files:
        assert np.array_equal(png(f), png(tmp_path / "b" / f.name))


def test_generate_prompts_file_guidance_clusters_rerank(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    long = "a red circle and a blue square at the top and two green triangles"
    prompts.write_text(f"a red circle\n\n{long}\n")
    flags = "-n 2 --rerank 3 --cfg 2 --cluster --n-clusters 4 --top-k 5 --text-attention-bias 1"
    flags += " --dtype bfloat16"
    rc, out, err = run(
        capsys, f"generate --prompts {prompts} {flags} --model {model_dir} -o {tmp_path}/o"
    )
    assert rc == 0, err
    assert (tmp_path / "o" / "a-red-circle-1.png").is_file()
    assert (tmp_path / "o" / f"{slug(long)}-grid.png").is_file()
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "truncated" in warning[0]
    assert "kept 2 of 3" in err
    assert (model_dir / CLUSTERS_FILE).is_file()  # the k-means is cached with the model


def test_model_sampling_defaults_apply_and_flags_override_them(model_dir, tmp_path, capsys):
    tuned = tmp_path / "tuned"
    rc, out, err = run(capsys, f"export {model_dir} {tuned} --temperature 0.5 --top-k 3")
    assert rc == 0, err
    assert json.loads((tuned / "sampling.json").read_text()) == {"temperature": 0.5, "top_k": 3}
    assert "sampling defaults" in out

    def images(model, flags, name):
        rc, _, err = run(capsys, f"generate 'a red circle' -n 3 --seed 1 --model {model} "
                                 f"{flags} -o {tmp_path}/{name}")
        assert rc == 0, err
        return [png(tmp_path / name / f"a-red-circle-{i}.png") for i in range(3)]

    by_default = images(tuned, "", "d")
    assert all(map(np.array_equal, by_default, images(model_dir, "--temperature 0.5 --top-k 3",
                                                      "e")))
    # a flag given on the command line wins over sampling.json
    overridden = images(tuned, "--temperature 1 --top-k 0", "f")
    assert all(map(np.array_equal, overridden, images(model_dir, "", "g")))
    assert not all(map(np.array_equal, by_default, overridden))

    # a bad value: one line, exit 2, and neither DEST nor a half-written folder left behind
    rc, _, err = run(capsys, f"export {model_dir} {tmp_path}/bad --temperature -1")
    assert rc == 2 and "--temperature" in err
    assert not any(p.name.startswith((".bad", "bad")) for p in tmp_path.iterdir())

    (tuned / "sampling.json").write_text('{"temprature": 0.5}')
    rc, _, err = run(capsys, f"generate 'a red circle' --model {tuned} -o {tmp_path}/h")
    assert rc == 2 and "sampling.json" in err and len(err.strip().splitlines()) == 1


def test_model_rerank_default_keeps_the_best_of_r_per_image(model_dir, tmp_path, capsys):
    from cogview.pipeline import load_pipeline
    from cogview.sampling import SamplingConfig, best_candidates, generate_images

    tuned = tmp_path / "tuned"
    rc, _, err = run(capsys, f"export {model_dir} {tuned} --temperature 0.5 --rerank 3")
    assert rc == 0, err
    assert json.loads((tuned / "sampling.json").read_text()) == {"temperature": 0.5, "rerank": 3}

    def generate(flags, name):
        rc, _, err = run(capsys, f"generate 'a red circle' -n 2 --seed 1 --model {tuned} "
                                 f"{flags} -o {tmp_path}/{name}")
        assert rc == 0, err
        return err, [png(tmp_path / name / f"a-red-circle-{i}.png") for i in range(2)]

    err, by_default = generate("", "d")
    assert "best of 3" in err
    # the same as drawing 2 x 3 candidates and keeping the best of each group of three
    pipe = load_pipeline(tuned)
    ids = [pipe.tokenizer.encode_text("a red circle")] * 6
    g = torch.Generator().manual_seed(1)
    codes = generate_images(pipe.model, pipe.tokenizer, ids, pipe.grid,
                            SamplingConfig(temperature=0.5), g)
    best, _ = best_candidates(pipe.model, pipe.tokenizer, codes, ids, 3)
    expected = CogView(pipe).decode(codes[torch.tensor([0, 3]) + best[:, 0]], 32)
    assert all(map(np.array_equal, by_default, expected))
    err, plain = generate("--rerank 0", "f")
    assert "best of" not in err and "kept" not in err
    assert not all(map(np.array_equal, by_default, plain))
    err, _ = generate("--rerank 6", "e")
    assert "kept 2 of 6" in err

    (tuned / "sampling.json").write_text('{"rerank": 0}')
    rc, _, err = run(capsys, f"generate 'a red circle' --model {tuned} -o {tmp_path}/g")
    assert rc == 2 and "sampling.json" in err and "rerank" in err


def test_cluster_cache_is_reused_and_refreshed(model_dir):
    from safetensors import safe_open

    pipe = CogView.from_pretrained(model_dir)
    a = pipe.clusters(3)
    path = model_dir / CLUSTERS_FILE
    assert path.is_file() and a.shape == (16,) and set(a.tolist()) == {0, 1, 2}
    path.write_bytes(path.read_bytes())  # the same file: read back, not recomputed
    assert torch.equal(pipe.clusters(3), a)
    assert set(pipe.clusters(5).tolist()) == set(range(5))  # other count: recomputed
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["n_clusters"] == "5"


def test_generate_batches_several_prompts(model_dir, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red circle\ntwo green\na red circle\n")
    rc, out, err = run(
        capsys, f"generate --prompts {tmp_path}/p.txt -n 2 --model {model_dir} -o {tmp_path}/o"
    )
    assert rc == 0, err
    for stem in ("a-red-circle", "two-green", "a-red-circle-2"):  # a repeated prompt
        assert all((tmp_path / "o" / f"{stem}-{i}.png").is_file() for i in ("0", "1", "grid"))
    assert "6 image(s) and 3 grid(s)" in out


def test_generate_empty_prompt_is_unconditional(model_dir, tmp_path, capsys):
    rc, out, err = run(capsys, f"generate '' -n 1 --model {model_dir} -o {tmp_path}")
    assert rc == 0 and "unconditional" in err
    assert (tmp_path / "unconditional-0.png").is_file()


# ------------------------------------------------------------------------------ inpaint


def _image_and_mask(tmp_path, h=20, w=28):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    mask = np.zeros((h, w), bool)
    mask[3:9, 5:13] = True
    mask[15, 20] = True  # one stray pixel still claims its cell
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    return image, mask


def test_inpaint_changes_only_masked_pixels(model_dir, tmp_path, capsys):
    image, mask = _image_and_mask(tmp_path)
    rc, out, err = run(
        capsys,
        f"inpaint --image {tmp_path}/in.png --mask {tmp_path}/mask.png --prompt 'a red circle' "
        f"-n 2 --show-mask {tmp_path}/cells.png --model {model_dir} -o {tmp_path}/o",
    )
    assert rc == 0, err
    cells = png(tmp_path / "cells.png")[..., 0] > 127
    assert cells.shape == GRID and np.array_equal(cells, resize_mask(mask, GRID))
    for i in range(2):
        result = png(tmp_path / "o" / f"in-{i}.png")
        assert result.shape == image.shape
        assert np.array_equal(result[~mask], image[~mask])  # bit-exact outside the mask
        assert not np.array_equal(result[mask], image[mask])
    assert str(tmp_path / "o" / "in-grid.png") in out


def test_inpaint_reranks_like_generate(model_dir, tmp_path, capsys, monkeypatch):
    from cogview.images import to_tensor
    from cogview.inpainting import blank_codes, context_codes
    from cogview.pipeline import load_pipeline
    from cogview.sampling import RegionView, SamplingConfig, best_candidates, inpaint

    _image_and_mask(tmp_path)
    tuned = tmp_path / "tuned"
    assert run(capsys, f"export {model_dir} {tuned} --rerank 3")[0] == 0
    kept = []
    decode = CogView.decode
    monkeypatch.setattr(CogView, "decode", lambda self, codes, bs=32: kept.append(codes)
                        or decode(self, codes, bs))
    base = (f"inpaint --image {tmp_path}/in.png --mask {tmp_path}/mask.png --prompt 'a red "
            f"circle' -n 2 --seed 4 --model {tuned} -o {tmp_path}/o")
    rc, _, err = run(capsys, base)
    assert rc == 0 and "best of 3" in err, err
    # the same as drawing 2 x 3 versions and keeping the best of each group of three
    pipe = load_pipeline(tuned)
    size = pipe.image_size
    small = np.array(Image.open(tmp_path / "in.png").resize((size, size), Image.BOX))  # 20x28
    cells = torch.from_numpy(resize_mask(png(tmp_path / "mask.png")[..., 0] > 127, GRID))
    src = context_codes(pipe.vqvae, to_tensor(small), cells[None])[0]
    ids = [pipe.tokenizer.encode_text("a red circle")] * 6
    versions = inpaint(pipe.model, pipe.tokenizer, ids[0], src, cells, SamplingConfig(),
                       torch.Generator().manual_seed(4), 6)
    view = RegionView(cells, blank_codes(pipe.vqvae, size))
    best, _ = best_candidates(pipe.model, pipe.tokenizer, versions, ids, 3, region=view)
    assert torch.equal(kept[-1], versions[torch.tensor([0, 3]) + best[:, 0]])
    rc, _, err = run(capsys, base + " --rerank 0")
    assert rc == 0 and "best of" not in err and kept[-1].shape[0] == 2
    rc, _, err = run(capsys, base + " --rerank 1")
    assert rc == 2 and "--rerank 1" in err
    rc, _, err = run(capsys, base.replace("--prompt 'a red circle'", "") + " --rerank 4")
    assert rc == 0 and "not reranking" in err and kept[-1].shape[0] == 2


def test_inpaint_mask_of_another_size_and_alpha_mask(model_dir, tmp_path, capsys):
    image, mask = _image_and_mask(tmp_path)
    big = Image.fromarray((mask * 255).astype(np.uint8)).resize((56, 40), Image.NEAREST)
    rgba = np.zeros((40, 56, 4), np.uint8)
    rgba[..., 3] = np.asarray(big)  # painted = opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    rc, _, err = run(
        capsys,
        f"inpaint --image {tmp_path}/in.png --mask {tmp_path}/alpha.png -n 1 "
        f"--model {model_dir} -o {tmp_path}/o",
    )
    assert rc == 0 and "resized" in err
    result = png(tmp_path / "o" / "in-0.png")
    assert np.array_equal(result[~mask], image[~mask])


def test_inpaint_all_black_and_all_white(model_dir, tmp_path, capsys):
    image, _ = _image_and_mask(tmp_path)
    Image.new("L", (28, 20), 0).save(tmp_path / "black.png")
    inpaint = f"inpaint --image {tmp_path}/in.png --model {model_dir} -n 1"
    rc, out, err = run(capsys, f"{inpaint} --mask {tmp_path}/black.png -o {tmp_path}/k")
    assert rc == 0 and "all black" in err
    assert np.array_equal(png(tmp_path / "k" / "in-0.png"), image)
    Image.new("1", (28, 20), 1).save(tmp_path / "white.png")
    rc, out, err = run(capsys, f"{inpaint} --mask {tmp_path}/white.png -o {tmp_path}/w")
    assert rc == 0 and "plain generation" in err
    assert png(tmp_path / "w" / "in-0.png").shape == image.shape


def test_inpaint_settings_of_sampling_json_apply_to_inpainting_only(model_dir, tmp_path,
                                                                     capsys):
    image, mask = _image_and_mask(tmp_path)
    tuned = tmp_path / "tuned"
    rc, _, err = run(capsys, f"export {model_dir} {tuned} --temperature 0 "
                             "--inpaint-temperature 0.5 --inpaint-rerank 2")
    assert rc == 0, err
    assert json.loads((tuned / "sampling.json").read_text()) == {
        "temperature": 0.0, "inpaint": {"temperature": 0.5, "rerank": 2}}
    pipe, plain = CogView.from_pretrained(tuned), CogView.from_pretrained(model_dir)
    assert (pipe.rerank_default, pipe.inpaint_rerank_default) == (1, 2)
    assert plain.inpaint_rerank_default == plain.rerank_default == 1
    assert pipe.sampling_config().temperature == 0
    assert pipe.sampling_config(inpainting=True).temperature == 0.5
    assert pipe.sampling_config(inpainting=True, temperature=None).temperature == 0.5
    assert pipe.sampling_config(inpainting=True, temperature=0.2).temperature == 0.2  # wins
    assert pipe.sampling_config(False, inpainting=True).temperature == 1.0  # captions: neither

    # inpainting draws as with temperature=0.5 and rerank=2 given, text-to-image as with 0
    def inpainted(cogview, **sampling):
        return cogview.inpaint(image, mask, "a red circle", 3, seed=2, **sampling)

    by_default = inpainted(pipe)
    assert torch.equal(by_default.codes, inpainted(plain, temperature=0.5, rerank=2).codes)
    assert not torch.equal(by_default.codes, inpainted(plain, temperature=0.5).codes)
    greedy = inpainted(plain, temperature=0)
    assert not torch.equal(by_default.codes, greedy.codes)
    assert torch.equal(pipe.generate("a red circle", 2, seed=2).codes,
                       plain.generate("a red circle", 2, seed=2, temperature=0).codes)

    # `cogview inpaint`: the same, and --temperature still wins
    base = (f"inpaint --image {tmp_path}/in.png --mask {tmp_path}/mask.png --prompt 'a red "
            f"circle' -n 3 --seed 2 --model {tuned}")
    for flags, expected in (("", by_default), ("--temperature 0 --rerank 0", greedy)):
        rc, _, err = run(capsys, f"{base} {flags} -o {tmp_path}/o")
        assert rc == 0, err
        for i in range(3):
            assert np.array_equal(png(tmp_path / "o" / f"in-{i}.png"), expected.arrays[i])

    for bad in ("--inpaint-temperature -1", "--inpaint-rerank 0", "--rerank 0"):
        rc, _, err = run(capsys, f"export {model_dir} {tmp_path}/bad {bad}")
        assert rc == 2 and bad.split()[0] in err


def test_sampling_json_inpaint_round_trips(tmp_path):
    from cogview.pipeline import SamplingDefaults, read_sampling_defaults, write_sampling_defaults

    values = {"temperature": 0.7, "rerank": 16, "restate": "shapes",
              "inpaint": {"temperature": 1.0, "top_k": 5, "rerank": 32}}
    path = write_sampling_defaults(tmp_path, values)
    assert json.loads(path.read_text()) == values
    assert read_sampling_defaults(tmp_path) == SamplingDefaults(
        {"temperature": 0.7}, 16, "shapes", "caption", {"temperature": 1.0, "top_k": 5}, 32)
    assert read_sampling_defaults(tmp_path / "none").inpaint == {}


@pytest.mark.parametrize("inpaint", ['{"temprature": 1}', '{"rerank": 0}', '{"restate": null}',
                                     '{"temperature": -1}', '{"rerank_by": "clip"}', '0.5',
                                     '[]'])
def test_bad_inpaint_defaults_are_refused_naming_the_file(tmp_path, inpaint):
    from cogview.checkpoint import CheckpointError
    from cogview.pipeline import read_sampling_defaults, write_sampling_defaults

    path = tmp_path / "sampling.json"
    path.write_text(f'{{"temperature": 0.7, "inpaint": {inpaint}}}')
    with pytest.raises(CheckpointError, match="inpaint") as e:
        read_sampling_defaults(tmp_path)
    assert str(path) in str(e.value) and len(str(e.value).splitlines()) == 1
    with pytest.raises(ValueError, match="inpaint"):
        write_sampling_defaults(tmp_path, json.loads(path.read_text()))


def test_cell_mask_covers_every_masked_pixel():
    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w = rng.integers(3, 50, 2)
        mask = rng.random((h, w)) < 0.03
        cells = resize_mask(mask, GRID)
        ys, xs = mask.nonzero()
        # the cell a pixel's top-left corner falls in, and its bottom-right corner
        for y0, x0 in (
            ((ys * GRID[0]) // h, (xs * GRID[1]) // w),
            (((ys + 1) * GRID[0] - 1) // h, ((xs + 1) * GRID[1] - 1) // w),
        ):
            assert cells[y0, x0].all()
        # and no cell is regenerated without a masked pixel in it
        assert cells.sum() <= mask.sum() * 4
    assert not resize_mask(np.zeros((9, 7), bool), GRID).any()
    assert resize_mask(np.ones((2, 3), bool), (5, 7)).all()


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA"])
def test_read_mask_modes_threshold_at_half(tmp_path, mode):
    gray = np.array([[0, 127, 128, 255]], np.uint8)
    if mode == "1":
        img = Image.fromarray(gray >= 128)
    elif mode == "RGBA":
        img = Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 255)]), "RGBA")
    else:
        img = Image.fromarray(gray, "L").convert(mode)
    img.save(tmp_path / "m.png")
    assert read_mask_file(tmp_path / "m.png").tolist() == [[False, False, True, True]]


# ------------------------------------------------------------------------------ caption


def test_caption_prints_scored_captions(model_dir, tmp_path, capsys):
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(tmp_path / "img.png")
    rc, out, err = run(capsys, f"caption {tmp_path}/img.png -n 3 --max-len 4 --model {model_dir}")
    assert rc == 0, err
    lines = out.strip().splitlines()
    scores = [float(line.split()[0]) for line in lines]
    assert len(lines) == 3 and scores == sorted(scores, reverse=True) and max(scores) <= 0


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inpaint", "--image", "{t}/nope.png", "--mask", "{t}/m.png"], "nope.png"),
        (["inpaint", "--image", "{t}/in.png", "--mask", "{t}/bad.png"], "bad.png"),
        (["inpaint", "--image", "{t}/bad.png", "--mask", "{t}/m.png"], "bad.png"),
        (["caption", "{t}/bad.png"], "bad.png"),
        (["generate", "x", "--model", "{t}/nomodel"], "nomodel"),
        (["generate", "x", "--model", "{t}/notok"], "tokenizer.json"),
        (["generate", "x", "--top-p", "0"], "--top-p"),
        (["generate", "x", "-n", "0"], "-n"),
        (["generate", "x", "--device", "nodevice"], "--device"),
        (["generate", "--prompts", "{t}/none.txt"], "none.txt"),
        (["generate", "x", "--rerank", "2", "-n", "4"], "--rerank"),
        (["generate"], "PROMPT"),
    ],
)
def test_bad_input_is_one_line_exit_2(model_dir, tmp_path, capsys, argv, message):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    Image.new("L", (8, 8)).save(tmp_path / "m.png")
    shutil.copytree(model_dir, tmp_path / "notok")
    (tmp_path / "notok" / "tokenizer.json").unlink()
    argv = [a.format(t=tmp_path) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(model_dir)]
    if argv[0] != "caption":
        argv += ["-o", str(tmp_path / "out")]
    rc, _, err = run(capsys, *argv)
    err = err.strip()
    assert rc == 2 and err.startswith("error: ") and message in err and "\n" not in err


def test_no_model_and_no_default_asks_for_model(tmp_path, capsys, monkeypatch):
    import cogview.defaults

    monkeypatch.setitem(cogview.defaults.DEFAULTS, "coglm", tmp_path / "none")
    rc, _, err = run(capsys, "generate", "x", "-o", tmp_path / "o")
    assert rc == 2 and "--model" in err


def test_inpaint_output_does_not_depend_on_the_erased_pixels(model_dir, tmp_path, capsys):
    """The context is encoded with the masked cells blanked: two images that differ only under
    the mask give the same results (codes of the whole image would leak the erased content)."""
    image, mask = _image_and_mask(tmp_path)
    other = image.copy()
    other[mask] = 255 - other[mask]
    Image.fromarray(other).save(tmp_path / "other.png")
    for name in ("in", "other"):
        rc, _, err = run(capsys, f"inpaint --image {tmp_path}/{name}.png --mask "
                                 f"{tmp_path}/mask.png --prompt 'a red circle' -n 2 --seed 3 "
                                 f"--model {model_dir} -o {tmp_path}/{name}-out")
        assert rc == 0, err
    for i in range(2):
        assert np.array_equal(png(tmp_path / "in-out" / f"in-{i}.png"),
                              png(tmp_path / "other-out" / f"other-{i}.png"))


def test_reranking_restates_prompts_only_in_the_models_own_domain(model_dir, tmp_path, capsys):
    from cogview.bench import shapes

    assert CogView.from_pretrained(model_dir).restate is None  # no domain: never restated
    tuned = tmp_path / "tuned"
    assert run(capsys, f"export {model_dir} {tuned} --rerank 2 --restate shapes")[0] == 0
    assert json.loads((tuned / "sampling.json").read_text())["restate"] == "shapes"
    assert CogView.from_pretrained(tuned).restate is shapes.restatements
    rc, _, err = run(capsys, f"export {model_dir} {tmp_path}/bad --restate french")
    assert rc == 2 and "--restate" in err
