"""The evaluation suite: the detector-based scorer on rendered truth, caption scoring, object
masks, and `cogview eval --quick` end to end on a tiny self-contained checkpoint folder."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cogview.bench import detect, shapes
from cogview.bench.evaluate import accuracy_table, caption_score, object_cells
from cogview.cli import main
from cogview.images import fit

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _scene(attrs):
    return shapes.scene_from_json(attrs)


# ---------------------------------------------------------------------------------------------
# the scorer is exact on ground truth


def test_detector_scores_every_rendered_one_object_prompt_correct():
    prompts = shapes.eval_prompts(1)[::3]  # 108 of the 324, every colour/shape/size/position
    for caption, attrs in prompts:
        scene = _scene(attrs)
        for image in (shapes.render(scene, 32), fit(shapes.render(scene, 64), 32)):
            result = detect.score(image, attrs)
            assert result["all"], (caption, result)
            assert set(result) >= {"colour", "shape", "size", "position", "count", "all"}


def test_detector_scores_rendered_two_object_scenes_and_relations_correct():
    rng = np.random.default_rng(0)
    for _ in range(30):
        scene = shapes.sample_scene(rng, 2)
        image = fit(shapes.render(scene, 64), 32)  # the data path: 64 px, area-resized
        assert detect.score(image, shapes.scene_to_json(scene))["all"]
        # the form of the two-object prompts: no positions, one relation
        objects = [{"colour": o.colour, "shape": o.shape, "size": o.size} for o in scene.objects]
        for relation in shapes.relations_between(*scene.objects):
            result = detect.score(image, {"objects": objects, "relation": relation})
            assert result["all"] and result["relation"], (relation, result)
        wrong = shapes.INVERSE_RELATION[shapes.relations_between(*scene.objects)[0]]
        assert not detect.score(image, {"objects": objects, "relation": wrong})["relation"]


def test_detector_notices_a_wrong_attribute():
    _, attrs = shapes.eval_prompts(1)[0]
    image = shapes.render(_scene(attrs), 32)
    other = dict(attrs["objects"][0])
    other["colour"] = next(c for c in shapes.COLOURS_LIST if c != other["colour"])
    result = detect.score(image, {"objects": [other], "relation": None})
    assert not result["colour"] and not result["all"] and result["shape"]


# ---------------------------------------------------------------------------------------------
# caption scoring and inpainting masks


def test_true_captions_score_all_correct_and_wrong_ones_do_not():
    rng = np.random.default_rng(1)
    for n_objects in (1, 2, 1, 2) * 10:
        scene = shapes.sample_scene(rng, n_objects)
        truth = shapes.scene_to_json(scene)
        for positions in (0.0, 1.0):
            text = shapes.caption(scene, rng, positions)
            assert caption_score(truth, shapes.parse_caption(text))["all"], text
    truth = shapes.scene_to_json(shapes.sample_scene(np.random.default_rng(2), 1))
    obj = truth["objects"][0]
    wrong_colour = next(c for c in shapes.COLOURS_LIST if c != obj["colour"])
    s = caption_score(truth, shapes.parse_caption(f"a {wrong_colour} {obj['shape']} at the top"))
    assert not s["colour"] and s["shape"] and not s["all"]
    # a caption that leaves out the position is not all-correct, though nothing it says is wrong
    s = caption_score(truth, shapes.parse_caption(f"a {obj['colour']} {obj['shape']}"))
    assert s["colour"] and s["shape"] and not s["all"]


def test_two_object_captions_with_positions_are_scored_by_position():
    scene = shapes.Scene((
        shapes.ShapeObject("red", "circle", "small", 0, 0),
        shapes.ShapeObject("blue", "square", "large", 2, 1),
    ))  # fmt: skip
    truth = shapes.scene_to_json(scene)
    right = "a blue square at the bottom and a red circle in the upper left corner"
    assert shapes.parse_caption(right)["objects"] == [
        {"colour": "blue", "shape": "square", "position": "bottom"},
        {"colour": "red", "shape": "circle", "position": "top left"},
    ]
    assert caption_score(truth, shapes.parse_caption(right))["all"]
    swapped = "a blue square at the top left and a red circle at the bottom"
    s = caption_score(truth, shapes.parse_caption(swapped))
    assert s["colour"] and s["shape"] and not s["position"] and not s["all"]
    # one position left out: neither a relation nor both positions, so not complete
    s = caption_score(truth, shapes.parse_caption("a blue square and a red circle at the top left"))
    assert not s["all"]


def test_object_cells_cover_every_pixel_of_the_object():
    rng = np.random.default_rng(3)
    for _ in range(40):
        scene = shapes.sample_scene(rng, 1)
        obj = shapes.scene_to_json(scene)["objects"][0]
        for size, grid in ((32, (8, 8)), (64, (16, 16))):
            image = shapes.render(scene, size)
            cells = object_cells(obj, grid)
            f = size // grid[0]
            pixels = cells.repeat_interleave(f, 0).repeat_interleave(f, 1).numpy()
            assert not image[~pixels].any()  # nothing of the object outside the mask
            assert cells.sum() <= 16 if grid == (8, 8) else True  # one object, not the image


def test_accuracy_table_averages_each_key_over_results_that_have_it():
    table = accuracy_table([{"colour": True, "all": False}, {"colour": False, "relation": True}])
    assert table == {"colour": 0.5, "relation": 1.0, "all": 0.0}
    assert list(table) == ["colour", "relation", "all"]


# ---------------------------------------------------------------------------------------------
# cogview eval --quick on a tiny checkpoint folder


def tiny_parts(root: Path) -> tuple[Any, str]:
    """A shapes tokenizer (root/tokenizer.json) and an untrained tiny VQVAE (root/vq): the
    tokenizer and the VQVAE's fingerprint."""
    from cogview.pretrained import save_vqvae
    from tokenizer import UnifiedTokenizer
    from vqvae.model import VQVAE, fingerprint, vqvae_config

    rng = np.random.default_rng(0)
    captions = [shapes.caption(shapes.sample_scene(rng, 1 + i % 2), rng) for i in range(300)]
    tok = UnifiedTokenizer.train(captions, vocab_size=300, image_codes=64, max_text_len=24)
    tok.save(root / "tokenizer.json")
    torch.manual_seed(0)
    vq = VQVAE(vqvae_config("tiny")).eval()
    save_vqvae(root / "vq", vq)
    return tok, fingerprint(vq)


def save_tiny_model(root: Path, name: str, tok: Any, vq_fingerprint: str, step: int = 0,
                    **config: Any) -> Path:
    """An untrained tiny CogLM folder root/name (32 px, 8x8 codes) with `tiny_parts`."""
    from cogview.model import CogLM, coglm_config
    from cogview.pipeline import COGLM_KIND, bundle_extra, save_bundled

    model = CogLM(coglm_config("tiny", tok.vocab_size, **config))
    return save_bundled(
        root / name, COGLM_KIND, config=model.config, state_dict=model.state_dict(),
        tokenizer_file=root / "tokenizer.json", vqvae_path=root / "vq",
        extra=bundle_extra(tok, vq_fingerprint, image_size=32, grid=(8, 8)), step=step,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untrained tiny CogLM folder (tokenizer + VQVAE inside) and shapes shards."""
    from train.data.sources import build_shapes

    root = tmp_path_factory.mktemp("eval")
    build_shapes(root / "shapes", n=24, size=64, test_fraction=0.5, progress=False)
    tok, vq_fingerprint = tiny_parts(root)
    save_tiny_model(root, "model", tok, vq_fingerprint, step=5)
    return root


def test_eval_quick_runs_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "report.json"
    args = ["eval", "--model", str(tiny / "model"), "--data", str(tiny / "shapes"), "--quick"]
    before = torch.get_num_threads()
    assert main([*args, "--json", str(out), "--batch-size", "4", "--threads", "1"]) == 0
    assert torch.get_num_threads() == before
    printed = capsys.readouterr().out
    assert "t2i 1 object" in printed and "inpainting" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    assert report["step"] == 5
    for part in ("one_object", "two_objects"):
        acc = report["t2i"][part]["accuracy"]
        assert report["t2i"][part]["n"] == 3
        assert 0 <= acc["all"] <= acc["colour"] <= 1
    assert "relation" in report["t2i"]["two_objects"]["accuracy"]
    # the breakdowns partition each set: their counts add up to it, their accuracies average
    # to its accuracy, and each prompt is counted under its own label
    prompts = shapes.paraphrase_prompts(2, 3)
    for part, groupings in (("two_objects", {"relation"}),
                            ("one_object_paraphrased", {"wording"}),
                            ("two_objects_paraphrased", {"wording", "relation"})):
        entry = report["t2i"][part]
        assert set(entry["by"]) == groupings
        for groups in entry["by"].values():
            assert sum(g["n"] for g in groups.values()) == entry["n"]
            mean = sum(g["n"] * g["all"] for g in groups.values()) / entry["n"]
            assert mean == pytest.approx(entry["accuracy"]["all"])
    by_wording = report["t2i"]["two_objects_paraphrased"]["by"]["wording"]
    assert list(by_wording) == [shapes.paraphrase_wording(2, i) for i in range(3)]
    assert {a["relation"] for _, a in prompts} == set(
        report["t2i"]["two_objects_paraphrased"]["by"]["relation"])
    assert "wording 'draw {d1} {rel} {d2}' (n=1)" in printed
    assert report["captioning"]["n"] == 2 and "all" in report["captioning"]["accuracy"]
    inp = report["inpainting"]
    assert inp["n"] == 2 and inp["outside_exact"] is True and inp["psnr_outside"] == 100.0
    assert inp["mean_masked_cells"] >= 1 and 0 < inp["psnr_inside"] <= 100
    edits = report["edits"]
    assert edits["n_scenes"] == 2 and edits["leak"]["n"] == 2
    for style in ("region", "scene", "blob"):
        assert edits[style]["n"] == 2 and edits[style]["outside_exact"] is True
        assert 0 <= edits[style]["scene_all"] <= edits[style]["scene"]["count"] <= 1
    assert "edit (blob)" in printed and "erased object redrawn" in printed
    assert set(report["held_out_loss"]) == {"n", "t2i", "t2i_nocap", "cap", "inp"}
    assert all(v > 0 for k, v in report["held_out_loss"].items() if k != "n")
    assert 0 < report["vqvae"]["psnr"] <= 100
    assert 0 <= report["vqvae"]["detector_all"] <= 1


def test_eval_same_seed_same_report(tiny, tmp_path):
    reports = []
    for name in ("a.json", "b.json"):
        args = ["eval", "--model", str(tiny / "model"), "--n-prompts", "2", "--n-captions", "0"]
        args += ["--n-inpaint", "0", "--n-loss", "0", "--n-fashion", "0", "--threads", "1"]
        args += ["--json", str(tmp_path / name)]
        assert main(args) == 0
        reports.append(json.loads((tmp_path / name).read_text()))
    assert "captioning" not in reports[0]
    assert reports[0]["t2i"] == reports[1]["t2i"]


def test_eval_in_bf16_gives_the_held_out_loss_of_fp32(tiny, tmp_path):
    losses = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"{dtype}.json"
        args = ["eval", "--model", str(tiny / "model"), "--data", str(tiny / "shapes")]
        args += ["--n-prompts", "0", "--n-captions", "0", "--n-inpaint", "0", "--n-loss", "8"]
        args += ["--threads", "1", "--dtype", dtype, "--json", str(out)]
        assert main(args) == 0
        losses[dtype] = json.loads(out.read_text())["held_out_loss"]
    for task in ("t2i", "cap", "inp"):
        assert losses["bfloat16"][task] == pytest.approx(losses["float32"][task], rel=0.03)


def test_eval_scores_greedy_captions_unless_told(tiny, monkeypatch):
    from cogview.api import CogView
    from cogview.bench import evaluate
    from cogview.sampling import SamplingConfig
    from train.data.loader import load_held_out

    pipe = CogView.from_pretrained(tiny / "model")
    held = load_held_out(str(tiny / "shapes"), 32, 8, "test")
    idx = held.with_attributes()[:4]

    def examples(sampling, seed):
        g = torch.Generator().manual_seed(seed)
        return evaluate.eval_captioning(pipe, held, idx, sampling, g)["examples"]

    # greedy captions do not depend on the seed; sampled ones do
    greedy = SamplingConfig(temperature=0)
    assert examples(greedy, 0) == examples(greedy, 1)
    sampled = [examples(SamplingConfig(temperature=1), s) for s in range(3)]
    assert any(x != sampled[0] for x in sampled[1:])

    # run_eval hands captioning the caption temperature, whatever the image sampling is
    seen = []
    monkeypatch.setattr(evaluate, "eval_captioning", lambda p, h, i, sampling, *a, **k: (
        seen.append(sampling.temperature) or {"n": 0, "accuracy": {}, "stated": {}}))
    config = evaluate.EvalConfig(n_prompts=0, n_captions=2, n_inpaint=0, n_loss=0)
    evaluate.run_eval(pipe, held, config, SamplingConfig(temperature=0.7))
    evaluate.run_eval(pipe, held, evaluate.EvalConfig(n_prompts=0, n_captions=2, n_inpaint=0,
                      n_loss=0, caption_temperature=1.0), SamplingConfig(temperature=0.7))
    assert seen == [0.0, 1.0]


def test_eval_inpaints_with_the_models_inpaint_sampling(tiny, tmp_path, monkeypatch):
    import shutil

    from cogview.bench import evaluate
    from cogview.pipeline import write_sampling_defaults

    model = tmp_path / "model"
    shutil.copytree(tiny / "model", model)
    write_sampling_defaults(model, {"temperature": 0.7, "rerank": 2,
                                    "inpaint": {"temperature": 0.0, "rerank": 3}})
    # the temperature and candidates each part is handed (the parts themselves are tested apart)
    seen = {}

    def record(name, result):
        def part(pipe, data, indices, sampling, *args, rerank=1, **kwargs):
            seen[name] = (sampling.temperature, rerank)
            return result
        return part

    monkeypatch.setattr(evaluate, "eval_text_to_image", record("t2i", {"n": 0, "accuracy": {}}))
    monkeypatch.setattr(evaluate, "eval_inpainting", record("inpainting", {"n": 0}))
    monkeypatch.setattr(evaluate, "eval_edits", record("edits", {"n_scenes": 0}))
    monkeypatch.setattr(evaluate, "format_report", lambda report: "")
    args = ["eval", "--model", str(model), "--data", str(tiny / "shapes"), "--n-prompts", "1",
            "--n-paraphrase", "0", "--n-captions", "0", "--n-inpaint", "1", "--n-edit", "1",
            "--n-loss", "0", "--n-retrieval", "0", "--threads", "1"]
    for flags, t2i, inpainting in (([], (0.7, 2), (0.0, 3)),
                                   (["--temperature", "0.3", "--rerank", "4"], (0.3, 4), (0.3, 4))):
        seen.clear()
        out = tmp_path / "report.json"
        assert main([*args, *flags, "--json", str(out)]) == 0
        assert seen == {"t2i": t2i, "inpainting": inpainting, "edits": inpainting}
        report = json.loads(out.read_text())
        assert report["sampling"]["temperature"] == t2i[0]
        assert report["sampling_inpaint"]["temperature"] == inpainting[0]


def test_eval_rerank_keeps_the_candidate_the_model_scores_best(tiny, monkeypatch):
    from cogview.api import CogView
    from cogview.bench import evaluate
    from cogview.sampling import SamplingConfig, caption_logprob, generate_images

    pipe = CogView.from_pretrained(tiny / "model")
    prompts = shapes.eval_prompts(1, 3)
    sampling = SamplingConfig(batch_size=8)
    kept = []
    decode = CogView.decode
    monkeypatch.setattr(CogView, "decode",
                        lambda self, codes, bs=32: kept.append(codes) or decode(self, codes, bs))
    g = torch.Generator().manual_seed(3)
    report = evaluate.eval_text_to_image(pipe, prompts, 1, sampling, g, rerank=4)
    kept = [torch.cat(kept)]  # the pictures of each prompt
    assert report["n"] == 3 and kept[0].shape == (3, 8, 8)

    ids = [pipe.tokenizer.encode_texts([p])[0] for p, _ in prompts]
    repeated = [t for t in ids for _ in range(4)]
    candidates = generate_images(pipe.model, pipe.tokenizer, repeated, pipe.grid, sampling,
                                 torch.Generator().manual_seed(3))
    scores = caption_logprob(pipe.model, pipe.tokenizer, candidates, repeated).view(3, 4)
    for i in range(3):
        best = int(scores[i].argmax())
        assert torch.equal(kept[0][i], candidates[4 * i + best])
        assert scores[i, best] == scores[i].max()


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_eval_fashion_part(tiny, tmp_path):
    from cogview.bench.classifier import PRESETS, Classifier, save_classifier
    from train.data.sources import build_fashion

    build_fashion(tmp_path / "fashion", n=600, progress=False)  # 100 test images
    names = [f"c{i}" for i in range(10)]
    save_classifier(tmp_path / "clf", Classifier(PRESETS["tiny"]), names)
    out = tmp_path / "r.json"
    args = ["eval", "--model", str(tiny / "model"), "--quick", "--n-prompts", "0", "--threads", "1"]
    args += ["--fashion-model", str(tiny / "model"), "--fashion-data", str(tmp_path / "fashion")]
    assert main([*args, "--classifier", str(tmp_path / "clf"), "--json", str(out)]) == 0
    fa = json.loads(out.read_text())["fashion"]
    assert fa["n_generated"] == 10 and fa["n_real"] == 100
    assert list(fa["per_class"]) == names
    assert all(c["prompt"] for c in fa["per_class"].values())
    assert 0 <= fa["real_accuracy"] <= 1


def test_eval_errors_name_the_flag(tiny, tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "missing"), "--quick"]) == 2
    assert "missing" in capsys.readouterr().err
    args = ["eval", "--model", str(tiny / "model"), "--quick", "--data", str(tmp_path / "none")]
    assert main(args) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny / "model"), "--n-prompts", "-1"]) == 2
    args = ["eval", "--model", str(tiny / "model"), "--fashion-model", str(tiny / "model")]
    assert main(args) == 2
    assert "--fashion-data" in capsys.readouterr().err


def _two_object_held_out(n: int = 30):
    from cogview.bench.evaluate import HeldOut

    rng = np.random.default_rng(5)
    scenes = [shapes.sample_scene(rng, 2) for _ in range(n)]
    images = torch.from_numpy(np.stack([shapes.render(s, 32) for s in scenes])).permute(0, 3, 1, 2)
    return HeldOut(images, ["x"] * n, [shapes.scene_to_json(s) for s in scenes])


@pytest.mark.parametrize("style", ["region", "scene", "blob"])
def test_edit_cases_ask_for_another_object_where_one_was(style):
    from cogview.bench.evaluate import edit_cases

    held = _two_object_held_out()
    cases = edit_cases(held, range(len(held)), 32, (8, 8), style, seed=0)
    assert len(cases) == len(held)
    for i, case in enumerate(cases):
        new, kept = case.expected["objects"]
        erased = case.erased
        assert new["colour"] != erased["colour"] and new["shape"] != erased["shape"]
        assert (new["colour"], new["shape"]) != (kept["colour"], kept["shape"])
        assert new["position"] == erased["position"] and case.region == {**new, **case.region}
        assert kept in [{k: o[k] for k in shapes.ATTRIBUTES} for o in held.attributes[i]["objects"]]
        # the mask holds every pixel of the erased object and of a new one of either size
        gone = shapes.render(shapes.scene_from_json({"objects": [erased]}), 32).any(-1)
        assert case.pixel_mask[gone].all()
        x0, y0, x1, y1 = (v * 32 for v in shapes.object_box(new))
        assert case.pixel_mask[int(np.ceil(y0)) : int(y1), int(np.ceil(x0)) : int(x1)].all()
        # the kept object's pixels are never painted over by a blob
        if style == "blob":
            there = shapes.render(shapes.scene_from_json({"objects": [kept]}), 32).any(-1)
            assert not case.pixel_mask[there].any()
        stated = shapes.parse_caption(case.prompt)
        if style == "scene":
            assert stated["relation"] is not None and len(stated["objects"]) == 2
        else:
            assert stated["objects"] == [{k: new[k] for k in shapes.ATTRIBUTES}]


def test_stated_attributes_are_those_the_caption_pins_down():
    from cogview.bench.evaluate import stated_attributes

    obj = {"colour": "red", "shape": "circle", "size": "large", "position": "top left"}
    assert stated_attributes("a red circle above a blue square", obj) == ("colour", "shape",
                                                                          "position")
    assert stated_attributes("a big red circle at the top left", obj) == shapes.ATTRIBUTES
    assert stated_attributes("a green square", obj) == shapes.ATTRIBUTES  # not named: all
