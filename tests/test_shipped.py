"""The models that ship in the package: they load with no flags and do what they are asked."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cogview.bench import detect, shapes
from cogview.cli import main
from cogview.defaults import NAMED, default_model_path

pytestmark = pytest.mark.skipif(default_model_path("coglm") is None,
                                reason="this install has no shipped models")


def _images(folder) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB"))
            for p in sorted(folder.glob("*.png")) if not p.name.endswith("-grid.png")]


def test_generate_with_no_model_flag_draws_what_the_prompt_says(tmp_path):
    prompt = "a red circle at the top left"
    assert main(["generate", prompt, "-n", "4", "--seed", "0", "-o", str(tmp_path)]) == 0
    images = _images(tmp_path)
    assert len(images) == 4 and all(im.shape == (32, 32, 3) for im in images)
    truth = shapes.parse_caption(prompt)
    correct = [detect.score(im, truth)["all"] for im in images]
    assert sum(correct) >= 3  # the shipped model scores 99.6% on one-object prompts


def test_shipped_sr_doubles_the_resolution(tmp_path):
    assert main(["generate", "a large blue square in the center", "-n", "1", "--seed", "0",
                 "--sr", "-o", str(tmp_path)]) == 0
    (image,) = _images(tmp_path)
    assert image.shape == (64, 64, 3)
    assert detect.score(image, shapes.parse_caption("a large blue square in the center"))["all"]


def test_caption_of_a_rendered_scene_names_its_colour_and_shape(tmp_path, capsys):
    scene = shapes.sample_scene(np.random.default_rng(3), 1)
    obj = scene.objects[0]
    Image.fromarray(shapes.render(scene, 32)).save(tmp_path / "scene.png")
    assert main(["caption", str(tmp_path / "scene.png"), "-n", "1", "--seed", "0"]) == 0
    text = capsys.readouterr().out.lower()
    assert obj.colour in text and obj.shape in text


def test_the_fashion_model_is_named_and_draws_a_dark_background_garment(tmp_path):
    assert NAMED["fashion"].is_dir()
    assert main(["generate", "a photo of a pair of trousers", "--model", "fashion", "-n", "2",
                 "--seed", "0", "-o", str(tmp_path)]) == 0
    images = _images(tmp_path)
    assert len(images) == 2
    for im in images:
        grey = im.astype(float).mean(axis=2)
        # Fashion-MNIST: a light garment in the middle of a black frame
        assert grey[:, :3].mean() < 40 and grey[:, -3:].mean() < 40
        assert grey[8:24, 12:20].mean() > grey[:, :3].mean() + 40


def test_the_demo_inpainting_edits_the_masked_object(tmp_path):
    """`make demo`'s edit: the blue square under the mask becomes a small yellow triangle, and
    the red circle stays (the old model copied the square), in at least 3 of the 4 versions:
    each the best of 32 at temperature 1 (sampling.json's "inpaint"), which also gets the size
    right under the demo's generous mask (at temperature 0.7, best of 16: half of them)."""
    from cogview.defaults import ROOT

    demo = ROOT / "demo"
    assert main(["inpaint", "--image", str(demo / "scene.png"), "--mask", str(demo / "mask.png"),
                 "--prompt", "a small yellow triangle at the bottom right", "-n", "4",
                 "--seed", "0", "-o", str(tmp_path)]) == 0
    images = _images(tmp_path)
    want = {"objects": [
        {"colour": "yellow", "shape": "triangle", "size": "small", "position": "bottom right"},
        {"colour": "red", "shape": "circle", "size": "large", "position": "top left"},
    ], "relation": None}
    assert len(images) == 4
    assert sum(detect.score(im, want)["all"] for im in images) >= 3


def test_shipped_models_restate_prompts_in_their_own_domain():
    from cogview.api import CogView

    assert CogView.from_pretrained("shapes").restate is shapes.restatements
    assert CogView.from_pretrained("fashion").restate is None
