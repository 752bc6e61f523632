import numpy as np
import pytest

from cogview.bench import detect, shapes
from cogview.images import fit


def scenes(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return [shapes.sample_scene(rng, 1 + i % 2) for i in range(n)]


def as_set(objects):
    return sorted((o["colour"], o["shape"], o["size"], o["position"]) for o in objects)


@pytest.mark.parametrize("mode", ["64", "32 from 64", "32"])
def test_detector_is_exact_on_ground_truth(mode):
    for scene in scenes():
        if mode == "64":
            image = shapes.render(scene, 64)
        elif mode == "32":
            image = shapes.render(scene, 32)
        else:  # what the loaders feed a 32 px model: a box-filter resize of the 64 px shards
            image = fit(shapes.render(scene, 64), 32)
        found = detect.detect(image)
        truth = shapes.scene_to_json(scene)
        assert as_set(o.to_json() for o in found) == as_set(truth["objects"])
        assert detect.score(image, truth)["all"]


def test_detector_tolerates_noise_and_stray_pixels():
    rng = np.random.default_rng(3)
    right = []
    for scene in scenes(150, seed=4):
        image = fit(shapes.render(scene, 64), 32).astype(np.float64)
        image += rng.normal(0, 5, image.shape)  # about 34 dB PSNR
        image = image.clip(0, 255).astype(np.uint8)
        for _ in range(2):  # a couple of arbitrary wrong pixels
            image[rng.integers(32), rng.integers(32)] = rng.integers(0, 256, 3)
        right.append(detect.score(image, shapes.scene_to_json(scene))["all"])
    assert np.mean(right) >= 0.97


def test_score_names_the_wrong_attribute():
    scene = shapes.Scene((shapes.ShapeObject("red", "circle", "large", 0, 0),))
    image = shapes.render(scene, 32)
    result = detect.score(image, shapes.parse_caption("a large blue circle at the top left"))
    assert result == {
        "colour": False,
        "shape": True,
        "size": True,
        "position": True,
        "count": True,
        "all": False,
    }
    # a prompt without a size does not score the size
    result = detect.score(image, shapes.parse_caption("a red circle at the top left"))
    assert "size" not in result and result["all"]


def test_score_two_object_relation():
    a = shapes.ShapeObject("green", "triangle", "small", 1, 0)
    b = shapes.ShapeObject("white", "square", "large", 1, 2)
    image = shapes.render(shapes.Scene((a, b)), 32)
    left = shapes.parse_caption("a small green triangle to the left of a large white square")
    assert detect.score(image, left)["all"]
    right = shapes.parse_caption("a small green triangle to the right of a large white square")
    result = detect.score(image, right)
    assert not result["relation"] and result["colour"] and result["shape"] and result["size"]
    assert not result["all"]
    above = shapes.parse_caption("a green triangle above a white square")  # same row: false
    assert not detect.score(image, above)["relation"]


def test_eval_prompt_renders_score_perfectly():
    for _text, attributes in shapes.eval_prompts(1)[::7] + shapes.eval_prompts(2)[::9]:
        if attributes["relation"] is None:
            scene = shapes.scene_from_json(attributes)
        else:  # place the pair so that the relation holds
            o0, o1 = attributes["objects"]
            cells = {
                "left of": ((1, 0), (1, 2)),
                "right of": ((1, 2), (1, 0)),
                "above": ((0, 1), (2, 1)),
                "below": ((2, 1), (0, 1)),
            }[attributes["relation"]]
            scene = shapes.Scene(
                tuple(
                    shapes.ShapeObject(o["colour"], o["shape"], o["size"], *cell)
                    for o, cell in zip((o0, o1), cells, strict=True)
                )
            )
        assert detect.score(fit(shapes.render(scene, 64), 32), attributes)["all"], attributes


def test_blank_and_tiny_noise_images():
    blank = np.zeros((32, 32, 3), np.uint8)
    assert detect.detect(blank) == []
    result = detect.score(blank, shapes.parse_caption("a red circle in the center"))
    assert not result["all"] and not result["count"]
    speck = blank.copy()
    speck[5, 5] = shapes.COLOURS["red"]
    speck[20, 7:9] = shapes.COLOURS["blue"]
    assert detect.detect(speck) == []  # components far smaller than any object are noise
    with pytest.raises(ValueError):
        detect.detect(np.zeros((32, 32), np.uint8))
