import itertools

import numpy as np
import pytest

from cogview.bench import shapes


def scenes(n=200, seed=0, n_objects=None):
    rng = np.random.default_rng(seed)
    return [shapes.sample_scene(rng, n_objects or 1 + i % 2) for i in range(n)]


def test_render_is_deterministic_and_shaped():
    for scene in scenes(20):
        a, b = shapes.render(scene, 64), shapes.render(scene, 64)
        assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("size", [32, 64])
def test_json_matches_pixels(size):
    for scene in scenes(200):
        image = shapes.render(scene, size)
        data = shapes.scene_to_json(scene)
        covered = np.zeros((size, size), dtype=bool)
        for obj in data["objects"]:
            row, col = shapes.position_cell(obj["position"])
            assert (row, col) == (obj["row"], obj["col"])
            # the pixel at the object's centre has exactly its palette colour
            cy, cx = int((row + 0.5) * size / 3), int((col + 0.5) * size / 3)
            assert tuple(image[cy, cx]) == shapes.COLOURS[obj["colour"]]
            half = shapes.SIZE_FRACTIONS[obj["size"]] * size / 2 + 1
            y0, x0 = int((row + 0.5) * size / 3 - half), int((col + 0.5) * size / 3 - half)
            covered[max(y0, 0) : y0 + int(2 * half) + 2, max(x0, 0) : x0 + int(2 * half) + 2] = True
        # everything away from the objects is background
        assert not image[~covered].any()


def test_sizes_fit_in_cells_with_a_gap():
    # two large objects in neighbouring cells stay apart by more than a pixel at 32 px
    gap = (1 / shapes.GRID - shapes.SIZE_FRACTIONS["large"]) * 32
    assert gap > 1.5
    # small and large differ by at least 3 px at 32 px
    assert (shapes.SIZE_FRACTIONS["large"] - shapes.SIZE_FRACTIONS["small"]) * 32 >= 3


def test_two_object_scenes_use_different_cells_and_are_identifiable():
    for scene in scenes(300, n_objects=2):
        a, b = scene.objects
        assert (a.row, a.col) != (b.row, b.col)
        assert (a.colour, a.shape) != (b.colour, b.shape)
        assert shapes.relations_between(a, b)  # some relation always holds


def test_relations_are_defined_by_grid_cells():
    assert shapes.relation_holds("left of", (1, 0), (0, 2))
    assert not shapes.relation_holds("left of", (0, 1), (2, 1))  # same column: neither side
    assert shapes.relation_holds("above", (0, 2), (1, 0))
    for a, b in itertools.product(itertools.product(range(3), range(3)), repeat=2):
        for rel in shapes.RELATIONS:
            inverse = shapes.INVERSE_RELATION[rel]
            assert shapes.relation_holds(rel, a, b) == shapes.relation_holds(inverse, b, a)


def test_captions_parse_back_to_true_attributes():
    rng = np.random.default_rng(1)
    phrasings = set()
    for scene in scenes(300):
        truth = shapes.scene_to_json(scene)
        for _ in range(4):
            text = shapes.caption(scene, rng, positions=0.5)
            phrasings.add(text.split(" a ")[0] if " a " in text else text[:6])
            parsed = shapes.parse_caption(text)
            assert len(parsed["objects"]) == len(scene.objects), text
            # everything the caption states is true of the scene (relation included)
            result = shapes.compare(parsed, truth)
            assert result["all"], (text, result)
            for obj in parsed["objects"]:
                assert {"colour", "shape"} <= set(obj), text
            if len(scene.objects) == 1:
                assert parsed["objects"][0]["position"] == truth["objects"][0]["position"]
            else:  # a relation, or each object's position (checked true by `compare` above)
                assert parsed["relation"] in shapes.RELATIONS or all(
                    "position" in o for o in parsed["objects"]
                ), text
    assert len(phrasings) >= 5


def test_one_object_captions_sometimes_omit_the_size():
    rng = np.random.default_rng(2)
    scene = scenes(1, n_objects=1)[0]
    with_size = [
        "size" in shapes.parse_caption(shapes.caption(scene, rng))["objects"][0] for _ in range(200)
    ]
    assert 0.4 < np.mean(with_size) < 0.95


def test_parse_reads_a_plain_user_prompt():
    parsed = shapes.parse_caption("A red circle at the top left")
    assert parsed == {
        "objects": [{"colour": "red", "shape": "circle", "position": "top left"}],
        "relation": None,
    }
    parsed = shapes.parse_caption("a small red circle to the left of a large blue square")
    assert parsed["relation"] == "left of"
    assert parsed["objects"] == [
        {"size": "small", "colour": "red", "shape": "circle"},
        {"size": "large", "colour": "blue", "shape": "square"},
    ]
    assert shapes.parse_caption("something else entirely")["objects"] == [{}]


def test_parse_reads_augmented_and_held_out_wordings():
    """Every wording of caption augmentation and of the paraphrase test set parses to the
    statement it was made from: the relation between the right objects, whichever is named
    first, an anaphor ("that one", "it") standing for the object named before."""
    rng = np.random.default_rng(5)
    worded = []
    for _ in range(1500):
        attrs = shapes.scene_to_json(shapes.sample_scene(rng, 2))
        worded.append((shapes.rephrase(attrs, rng, frames=0.5), attrs))
    worded += shapes.paraphrase_prompts(2, 48)
    for text, attrs in worded:
        parsed = shapes.parse_caption(text)
        assert parsed["relation"] is not None and len(parsed["objects"]) == 2, text
        assert all({"colour", "shape"} <= set(o) for o in parsed["objects"]), text
        assert shapes.compare(parsed, attrs)["all"], text  # true of the scene
    assert shapes.parse_caption("a blue square, and a red circle above it") == {
        "objects": [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"}],
        "relation": "above"}
    fronted = shapes.parse_caption("above a blue square is a big red circle")
    assert fronted["objects"] == [{"size": "large", "colour": "red", "shape": "circle"},
                                  {"colour": "blue", "shape": "square"}]
    # a relation word that stands between no two objects is a position
    for p, attrs in shapes.paraphrase_prompts(1, 324):
        parsed = shapes.parse_caption(p)
        assert parsed["relation"] is None and shapes.compare(attrs, parsed)["all"], p


def test_eval_prompts_cover_every_value_and_parse_back():
    one = shapes.eval_prompts(1)
    assert len(one) == 6 * 3 * 2 * 9
    attrs = [a["objects"][0] for _, a in one]
    for key, values in [
        ("colour", shapes.COLOURS),
        ("shape", shapes.SHAPES),
        ("size", shapes.SIZES),
        ("position", shapes.POSITIONS),
    ]:
        assert {a[key] for a in attrs} == set(values)
    for text, a in one:
        assert shapes.parse_caption(text) == a
    two = shapes.eval_prompts(2)
    assert two == shapes.eval_prompts(2)  # fixed
    counts = {r: sum(a["relation"] == r for _, a in two) for r in shapes.RELATIONS}
    assert set(counts.values()) == {len(two) // 4}
    for text, a in two:
        assert shapes.parse_caption(text) == a


def test_scene_json_round_trip():
    for scene in scenes(50):
        assert shapes.scene_from_json(shapes.scene_to_json(scene)) == scene


def test_compare_matches_objects_in_any_order():
    scene = scenes(1, n_objects=2)[0]
    truth = shapes.scene_to_json(scene)
    swapped = {"objects": truth["objects"][::-1], "relation": None}
    assert shapes.compare(truth, swapped)["all"]
    wrong = {"objects": [dict(truth["objects"][0]), truth["objects"][1]], "relation": None}
    other = next(c for c in shapes.COLOURS if c != truth["objects"][0]["colour"])
    wrong["objects"][0]["colour"] = other
    result = shapes.compare(truth, wrong)
    assert not result["colour_0"] and not result["colour"] and not result["all"]
    assert result["shape"] and result["position"] and result["count"]
    missing = shapes.compare(truth, {"objects": truth["objects"][:1], "relation": None})
    assert not missing["count"] and not missing["all"]


def test_compare_checks_stated_relations_both_ways():
    prompt = shapes.parse_caption("a red circle to the left of a blue square")
    inverse = shapes.parse_caption("a blue square to the right of a red circle")
    assert shapes.compare(prompt, inverse)["all"]
    wrong = shapes.parse_caption("a blue square to the left of a red circle")
    assert not shapes.compare(prompt, wrong)["relation"]


def test_position_captions_leave_the_default_stream_alone():
    """`positions=0` draws no extra random number: existing data sets regenerate identically."""
    def captions(**kwargs):
        rng = np.random.default_rng(7)
        return [shapes.caption(shapes.sample_scene(rng, 2), rng, **kwargs) for _ in range(50)]

    assert captions() == captions(positions=0.0)
    with_positions = captions(positions=1.0)
    assert all(" and " in c and shapes.parse_caption(c)["relation"] is None for c in with_positions)


def test_reading_order_targets_restate_the_caption_from_the_first_object():
    """The target names first the object that comes first in reading order, states the same
    objects and a true relation, and leaves the caption (and the caller's stream) as is."""
    seed = np.random.default_rng(3)
    restated = 0
    for scene in scenes(300, seed=4, n_objects=2):
        state = seed.bit_generator.state
        alone = np.random.default_rng()
        alone.bit_generator.state = state
        text, target = shapes.reading_order_target(scene, seed)
        assert text == shapes.caption(scene, alone)
        assert seed.bit_generator.state == alone.bit_generator.state
        first = min(scene.objects, key=lambda o: (o.row, o.col))
        said = shapes.parse_caption(target or text)
        assert shapes.compare(said, shapes.scene_to_json(scene))["all"], (text, target)
        named = said["objects"][0]
        assert (named["colour"], named["shape"]) == (first.colour, first.shape), (text, target)
        if target is not None:
            restated += 1
            stated = shapes.parse_caption(text)
            assert said["objects"] == stated["objects"][::-1]
            assert said["relation"] == shapes.INVERSE_RELATION[stated["relation"]]
    assert 100 < restated < 200  # about half of the captions name the objects the other way
    one = scenes(20, n_objects=1)
    assert all(shapes.reading_order_target(s, seed)[1] is None for s in one)


def test_restatements_say_the_same_from_the_other_object():
    for prompt, attrs in shapes.eval_prompts(2, 40):
        (restated,) = shapes.restatements(prompt)
        said = shapes.parse_caption(restated)
        assert said["objects"] == attrs["objects"][::-1]
        assert said["relation"] == shapes.INVERSE_RELATION[attrs["relation"]]
        assert shapes.compare(attrs, said)["all"]  # the same statement
        assert shapes.restatements(restated) == [prompt]  # eval prompts are canonical
    # a prompt in other words: both orders in the training wording, each the same statement
    # ("..., with a blue circle below it" too: the subject of its relation is named second)
    for prompt, attrs in shapes.paraphrase_prompts(2, 40):
        said = [shapes.parse_caption(t) for t in shapes.restatements(prompt)]
        objects = [s["objects"] for s in said]
        assert objects in ([attrs["objects"], attrs["objects"][::-1]],
                           [attrs["objects"][::-1], attrs["objects"]]), prompt
        assert all(shapes.compare(attrs, s)["all"] for s in said), prompt
    # one object: the same request in the evaluation's wording, which has none
    assert not any(shapes.restatements(prompt) for prompt, _ in shapes.eval_prompts(1))
    for prompt, attrs in shapes.paraphrase_prompts(1, 40):
        (restated,) = shapes.restatements(prompt)
        assert shapes.parse_caption(restated) == attrs, prompt
    for text in ("a photo of a sneaker", "", "a red thing at the top left",
                 "draw a red circle", "a red circle in the corner",
                 "a red circle at the top left and a blue square in the center"):
        assert shapes.restatements(text) == []


def test_paraphrased_prompts_ask_the_same_in_wordings_training_never_uses():
    import importlib.util
    import re
    from pathlib import Path

    rng = np.random.default_rng(0)
    scenes = [shapes.sample_scene(rng, int(rng.integers(1, 3))) for _ in range(4000)]
    captions = [shapes.caption(scene, rng, positions=0.3) for scene in scenes]
    # prompts of caption augmentation (cogview train --rephrase) are training prompts too
    captions += [shapes.rephrase(shapes.scene_to_json(scene), rng, frames=0.5)
                 for scene in scenes]
    training_words = {w for c in captions for w in re.findall(r"[a-z']+", c)}
    for n_objects in (1, 2):
        plain = shapes.eval_prompts(n_objects, 48)
        worded = shapes.paraphrase_prompts(n_objects, 48)
        assert [a for _, a in worded] == [a for _, a in plain]  # the same requests
        assert not {p for p, _ in worded} & set(captions)
        for prompt, attrs in worded:
            words = re.findall(r"[a-z']+", prompt)
            assert set(words) - training_words, prompt  # a word no caption uses
            for o in attrs["objects"]:  # every attribute asked for is in the prompt
                assert {o["colour"], o["shape"], o["size"]} <= set(words), prompt
                if "position" in o:
                    assert o["position"].replace("center", "") in prompt, prompt
        for i, (prompt, _) in enumerate(worded):  # each prompt is its wording filled in
            wording = shapes.paraphrase_wording(n_objects, i)
            pattern = re.sub(r"\\\{\w+\\\}", ".+", re.escape(wording))
            assert re.fullmatch(pattern, prompt), (wording, prompt)
    # and so does each wording of the unseen check (benchmarks/rerank_headroom.py)
    spec = importlib.util.spec_from_file_location(
        "rerank_headroom", Path(__file__).parents[1] / "benchmarks" / "rerank_headroom.py")
    headroom = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(headroom)
    for prompt, _, wording in headroom.unseen_prompts(48):
        assert set(re.findall(r"[a-z']+", prompt)) - training_words, wording
    templates = {re.sub(r"(red|green|blue|yellow|purple|white|circle|square|triangle|small|"
                        r"large|top|bottom|left|right|center|middle)", "_", p)
                 for p, _ in shapes.paraphrase_prompts(1, 324)}
    assert len(templates) >= 8


def test_rephrased_prompts_state_the_scene():
    rng = np.random.default_rng(3)
    for _ in range(300):
        scene = shapes.sample_scene(rng, int(rng.integers(1, 3)))
        attrs = shapes.scene_to_json(scene)
        text = shapes.rephrase(attrs, rng)
        words = set(text.replace(",", "").split())
        for o in attrs["objects"]:
            assert {o["colour"], o["shape"]} <= words, text
        if len(attrs["objects"]) == 1:
            assert shapes.parse_caption(text)["objects"][0]["colour"] == attrs["objects"][0][
                "colour"]
    assert shapes.rephrase({"label": 3}, rng) is None


def test_frames_set_the_same_statement_in_a_request():
    """`--rephrase-frames`: a framed prompt is the unframed draw of the same generator state set
    in a request, and frames 0 leave the draws (so earlier runs' prompts) as they were."""
    attrs = [shapes.scene_to_json(shapes.sample_scene(np.random.default_rng(i), 1 + i % 2))
             for i in range(200)]
    before, unframed, plain, framed = (np.random.default_rng(9) for _ in range(4))
    seen = set()
    for a in attrs:
        assert shapes.rephrase(a, unframed, frames=0.0) == shapes.rephrase(a, before)
        statement = shapes.rephrase(a, plain)
        text = shapes.rephrase(a, framed, frames=1.0)
        plain.random(), plain.integers(len(shapes._REPHRASE_FRAMES))  # the frame's draws
        matches = [f for f in shapes._REPHRASE_FRAMES if f.format(x=statement) == text]
        assert matches, (statement, text)
        seen.add(matches[0])
    assert len(seen) == len(shapes._REPHRASE_FRAMES)
