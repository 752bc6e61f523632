"""The compositional shapes domain: seeded scenes, a deterministic renderer, captions and a parser.

A scene holds one object, or two objects in different cells of a 3x3 grid. Every object has a
flat colour from `COLOURS`, a shape, a size and a grid cell; it sits exactly at its cell centre,
so every attribute can be read back from the pixels (see `bench.detect`). Sizes are fractions
of the image side, chosen so that shape and size stay readable at the 32 px base resolution:
a small object is about 6 px wide there and a large one about 9 px, and two large objects in
neighbouring cells keep a gap of about 1.7 px (3.4 px at 64 px).

Attribute dicts (what `scene_to_json`, `parse_caption`, `eval_prompts` and `detect` produce) have
one form: `{"objects": [{"colour", "shape", "size", "position", ...}], "relation": str | None}`.
An object may lack keys (a caption may omit the size); `relation`, when set, relates
`objects[0]` to `objects[1]` ("left of" means objects[0] is left of objects[1]).

Pure: no I/O. Randomness comes only from the `numpy.random.Generator` that callers pass in.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

# Flat colours on a black background, far apart in RGB and in hue so that a dimmed (anti-aliased)
# or slightly noisy pixel still has one nearest colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 250),
    "yellow": (245, 220, 40),
    "purple": (170, 60, 230),
    "white": (245, 245, 245),
}
COLOURS_LIST = tuple(COLOURS)
BACKGROUND = (0, 0, 0)
SHAPES = ("circle", "square", "triangle")
# side of the object's bounding box as a fraction of the image side (one grid cell is 1/3)
SIZE_FRACTIONS: dict[str, float] = {"small": 0.18, "large": 0.28}
SIZES = tuple(SIZE_FRACTIONS)
GRID = 3
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
RELATIONS = ("left of", "right of", "above", "below")
INVERSE_RELATION = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
ATTRIBUTES = ("colour", "shape", "size", "position")

# supersampling factor of the renderer: edges are anti-aliased by averaging SS x SS subpixels
_SUPERSAMPLE = 4

# words a caption may use for an attribute value (the first one is canonical)
_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
_RELATION_WORDS = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
}


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    size: str
    row: int  # 0 = top
    col: int  # 0 = left

    @property
    def position(self) -> str:
        return POSITIONS[self.row * GRID + self.col]


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]


def position_cell(position: str) -> tuple[int, int]:
    """(row, col) of a position name such as "top left"."""
    return divmod(POSITIONS.index(position), GRID)


def relation_holds(relation: str, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether `a relation b` holds for grid cells a, b = (row, col).

    "A left of B" iff col_A < col_B, "A above B" iff row_A < row_B (rows count from the top);
    the other two are the inverses. Cells in one column are neither left nor right of each other.
    """
    (ra, ca), (rb, cb) = a, b
    return {
        "left of": ca < cb,
        "right of": ca > cb,
        "above": ra < rb,
        "below": ra > rb,
    }[relation]


def relations_between(a: ShapeObject, b: ShapeObject) -> list[str]:
    """Every relation in RELATIONS that holds for `a relation b`."""
    return [r for r in RELATIONS if relation_holds(r, (a.row, a.col), (b.row, b.col))]


# ----------------------------------------------------------------------------- sampling


def sample_scene(rng: np.random.Generator, n_objects: int) -> Scene:
    """A uniformly random scene of 1 or 2 objects.

    Two objects take different cells and differ in colour or shape, so that a caption naming
    "the red circle" and "the blue square" picks out each object unambiguously.
    """
    if n_objects not in (1, 2):
        raise ValueError(f"n_objects must be 1 or 2, got {n_objects}")
    cells = rng.permutation(GRID * GRID)[:n_objects]
    objects: list[ShapeObject] = []
    for cell in cells:
        while True:
            colour = COLOURS_LIST[int(rng.integers(len(COLOURS_LIST)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            if all((o.colour, o.shape) != (colour, shape) for o in objects):
                break
        size = SIZES[int(rng.integers(len(SIZES)))]
        row, col = divmod(int(cell), GRID)
        objects.append(ShapeObject(colour, shape, size, row, col))
    return Scene(tuple(objects))


# ----------------------------------------------------------------------------- rendering


def _coverage(obj: ShapeObject, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of subpixel centres (u, v in image fractions, x right, y down) in `obj`."""
    cx, cy = (obj.col + 0.5) / GRID, (obj.row + 0.5) / GRID
    half = SIZE_FRACTIONS[obj.size] / 2
    du, dv = u - cx, v - cy
    if obj.shape == "circle":
        return du * du + dv * dv <= half * half
    if obj.shape == "square":
        return (np.abs(du) <= half) & (np.abs(dv) <= half)
    if obj.shape == "triangle":
        # apex up at (cx, cy - half), base along y = cy + half, base width = height = 2 * half
        return (dv <= half) & (np.abs(du) <= (dv + half) / 2)
    raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene, size: int) -> np.ndarray:
    """The scene as a uint8 image (size, size, 3): flat colours on black, anti-aliased edges.

    Deterministic: a pixel's coverage is the fraction of its SS x SS subpixel centres inside the
    exact shape (an area filter), and the pixel is `coverage * colour`; objects never overlap.
    Only the pixels around each object are supersampled.
    """
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    image = np.zeros((size, size, 3), dtype=np.float64)
    image[:] = BACKGROUND
    ss = _SUPERSAMPLE
    for obj in scene.objects:
        # pixel window [lo, hi) that holds the object's bounding box, on both axes
        half = SIZE_FRACTIONS[obj.size] / 2
        lo_x = max(int(np.floor(((obj.col + 0.5) / GRID - half) * size)) - 1, 0)
        lo_y = max(int(np.floor(((obj.row + 0.5) / GRID - half) * size)) - 1, 0)
        hi_x = min(int(np.ceil(((obj.col + 0.5) / GRID + half) * size)) + 1, size)
        hi_y = min(int(np.ceil(((obj.row + 0.5) / GRID + half) * size)) + 1, size)
        sub_x = (np.arange(lo_x * ss, hi_x * ss, dtype=np.float64) + 0.5) / (size * ss)
        sub_y = (np.arange(lo_y * ss, hi_y * ss, dtype=np.float64) + 0.5) / (size * ss)
        v, u = np.meshgrid(sub_y, sub_x, indexing="ij")  # (h*ss, w*ss): v = y (down), u = x
        inside = _coverage(obj, u, v).astype(np.float64)
        h, w = hi_y - lo_y, hi_x - lo_x
        cover = inside.reshape(h, ss, w, ss).mean(axis=(1, 3))[..., None]  # (h, w, 1)
        window = image[lo_y:hi_y, lo_x:hi_x]
        window[:] = window * (1 - cover) + cover * np.asarray(COLOURS[obj.colour], np.float64)
    return np.rint(image).clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- captions


def _describe(obj: ShapeObject, rng: np.random.Generator, with_size: bool) -> str:
    words = [obj.colour, obj.shape]
    if with_size:
        options = _SIZE_WORDS[obj.size]
        words.insert(0, options[int(rng.integers(len(options)))])
    return "a " + " ".join(words)


def _describe_pair(a: ShapeObject, b: ShapeObject, rng: np.random.Generator) -> tuple[str, str]:
    """Descriptions of two objects, both with their sizes (75%) or neither."""
    with_size = bool(rng.random() < 0.75)
    return _describe(a, rng, with_size), _describe(b, rng, with_size)


def _position_phrases(position: str) -> tuple[list[str], list[str]]:
    """(phrases with a preposition, bare phrases) for a position name."""
    if position == "center":
        return ["in the center", "in the middle", "at the center"], ["center", "middle"]
    upper = position.replace("top", "upper").replace("bottom", "lower")
    if " " in position:  # a corner
        return [f"at the {position}", f"in the {position} corner", f"in the {upper} corner"], [
            position
        ]
    if position in ("left", "right"):
        return [f"on the {position}", f"at the {position}", f"on the {position} side"], [position]
    return [f"at the {position}", f"along the {position} edge"], [position]


def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def caption(
    scene: Scene, rng: np.random.Generator, positions: float = 0.0, reading_order: bool = False
) -> str:
    """A caption in one of several phrasings, true of the scene.

    One object: colour, shape and position, with the size in about 70% of captions (so that a
    prompt like "a red circle at the top left" is in distribution). Two objects: both
    descriptions and one relation that holds between them, either object named first; sizes in
    about 75% of captions (both or neither). With probability `positions` a two-object caption
    names each object's position instead ("a red circle at the top left and a blue square in
    the center"); at 0 no random number is drawn for it, so captions stay as they were.

    With `reading_order` a two-object caption names first the object that comes first in
    reading order (the one the image codes reach first). It draws the same numbers, so with a
    generator in the same state it gives the same phrasing as without, the objects swapped and
    the relation inverted when they were named the other way ("a blue square below a red
    circle" -> "a red circle above a blue square"): the caption that `reading_order_target`
    makes the captioning task learn.
    """
    objs = scene.objects
    if len(objs) == 1:
        obj = objs[0]
        desc = _describe(obj, rng, with_size=rng.random() < 0.7)
        with_prep, bare = _position_phrases(obj.position)
        pos = _pick(rng, with_prep)
        template = int(rng.integers(5))
        if template == 0:
            return f"{desc} {pos}"
        if template == 1:
            return f"there is {desc} {pos}"
        if template == 2:
            return f"{pos}, {desc}"
        if template == 3:
            return f"{desc}, {_pick(rng, bare)}"
        return f"a picture of {desc} {pos}"
    if len(objs) == 2:
        first, second = (objs[0], objs[1]) if rng.random() < 0.5 else (objs[1], objs[0])
        if reading_order:
            first, second = sorted(objs, key=lambda o: (o.row, o.col))
        if positions and rng.random() < positions:
            d1, d2 = _describe_pair(first, second, rng)
            p1 = _pick(rng, _position_phrases(first.position)[0])
            p2 = _pick(rng, _position_phrases(second.position)[0])
            if rng.random() < 0.5:
                return f"{d1} {p1} and {d2} {p2}"
            return f"there is {d1} {p1} and {d2} {p2}"
        relation = _pick(rng, relations_between(first, second))
        d1, d2 = _describe_pair(first, second, rng)
        rel = _pick(rng, _RELATION_WORDS[relation])
        template = int(rng.integers(3))
        if template == 0:
            return f"{d1} {rel} {d2}"
        if template == 1:
            return f"{d1} is {rel} {d2}"
        return f"there is {d1} {rel} {d2}"
    raise ValueError(f"a scene has 1 or 2 objects, got {len(objs)}")


def reading_order_target(
    scene: Scene, rng: np.random.Generator, positions: float = 0.0
) -> tuple[str, str | None]:
    """(caption, captioning target): the caption `caption` gives, and for a two-object caption
    that names the objects against reading order, the same caption in reading order (None
    when the caption already is).

    Learning to caption two objects in free order asks the model to tie the relation word to
    whichever object it named first; it learns to state the relation of the object its image
    codes reach first, and with the other named first gets the relation right in about a
    quarter of captions (benchmarks/caption_order.py). Its captioning targets in reading order
    remove that choice; text-to-image keeps every order.
    """
    state = rng.bit_generator.state
    text = caption(scene, rng, positions)
    if len(scene.objects) < 2:
        return text, None
    after = rng.bit_generator.state
    rng.bit_generator.state = state
    target = caption(scene, rng, positions, reading_order=True)
    rng.bit_generator.state = after  # the caller's stream as if only `caption` had drawn
    return text, (target if target != text else None)


_WORD = re.compile(r"[a-z]+")
_AND = re.compile(r"\band\b")
_RELATION_PATTERN = re.compile(
    r"\b("
    + "|".join(sorted((w for ws in _RELATION_WORDS.values() for w in ws), key=len, reverse=True))
    + r")\b"
)
_RELATION_OF_WORD = {w: r for r, ws in _RELATION_WORDS.items() for w in ws}
_SIZE_OF_WORD = {w: s for s, ws in _SIZE_WORDS.items() for w in ws}


def _attribute_of(word: str) -> tuple[str, str] | None:
    """(attribute, value) that a word names ("big" -> ("size", "large")), else None."""
    if word in COLOURS:
        return "colour", word
    if word in SHAPES:
        return "shape", word
    if word in _SIZE_OF_WORD:
        return "size", _SIZE_OF_WORD[word]
    return None


def _parse_object(text: str, with_position: bool) -> dict[str, str]:
    words = _WORD.findall(text.lower())
    found: dict[str, str] = {}
    for w in words:
        attribute = _attribute_of(w)
        if attribute is not None and attribute[0] not in found:
            found[attribute[0]] = attribute[1]
    if with_position:
        vertical = next((w for w in words if w in ("top", "upper", "bottom", "lower")), None)
        horizontal = next((w for w in words if w in ("left", "right")), None)
        vertical = {"upper": "top", "lower": "bottom"}.get(vertical or "", vertical)
        if vertical or horizontal:
            found["position"] = " ".join(p for p in (vertical, horizontal) if p)
        elif any(w in ("center", "centre", "middle") for w in words):
            found["position"] = "center"
    return found


# words that stand for an object named before them ("a blue square, and a red circle above it")
_ANAPHORS = (("it",), ("that", "one"), ("this", "one"), ("that", "shape"))


def _named_objects(text: str) -> list[dict[str, str] | None]:
    """The objects a stretch of text names, in order: each the colour and size words before a
    shape word and that shape, or None for an anaphor. Attribute words after the last shape
    word belong to the object before them when it lacks them ("a square in red")."""
    words = _WORD.findall(text)
    named: list[dict[str, str] | None] = []
    current: dict[str, str] = {}
    i = 0
    while i < len(words):
        anaphor = next((a for a in _ANAPHORS if tuple(words[i:i + len(a)]) == a), None)
        if anaphor is not None:
            named.append(None)
            i += len(anaphor)
            continue
        attribute = _attribute_of(words[i])
        if attribute is not None:
            key, value = attribute
            if key in current:  # a second colour or size: another object begins
                named.append(current)
                current = {}
            current[key] = value
            if key == "shape":
                named.append(current)
                current = {}
        i += 1
    last = named[-1] if named else None
    if current and last is not None and "shape" not in current and not set(current) & set(last):
        last.update(current)
    elif current:
        named.append(current)
    return named


def _related(before: str, after: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """(subject, ground) of a relation word between `before` and `after`: the object named
    last before it and the one named first after it, an anaphor there standing for the other
    object named before ("a blue square, and a red circle above it"), and with nothing named
    before, the relation put first ("above a blue square is a red circle"); None when the
    relation does not stand between two objects."""
    left, right = _named_objects(before), _named_objects(after)
    named_left = [o for o in left if o is not None]
    if not named_left:
        named_right = [o for o in right if o is not None]
        return (named_right[1], named_right[0]) if len(named_right) == 2 else None
    subject = named_left[-1]
    if right and right[0] is not None:
        return subject, right[0]
    if len(named_left) == 2:
        return subject, named_left[0]
    return None


def parse_caption(text: str) -> dict[str, Any]:
    """Attributes stated by a caption, in the form described at the top of this module.

    Reads every phrasing that `caption`, `rephrase` and `eval_prompts` produce; for free text
    it returns whatever it recognises (keys it cannot find are left out), never raises. A
    relation word relates the object named last before it to the one named first after it
    (or to the one named before, for an anaphor: `_related`); a relation word that does not
    stand between two objects ("at the top left of the image") is read as a position.
    """
    lowered = text.lower()
    match = _RELATION_PATTERN.search(lowered)
    related = None if match is None else _related(lowered[: match.start()],
                                                  lowered[match.end() :])
    if match is None or related is None:
        parts = _AND.split(lowered, maxsplit=1)  # "<object> <position> and <object> <position>"
        return {"objects": [_parse_object(p, with_position=True) for p in parts], "relation": None}
    return {"objects": list(related), "relation": _RELATION_OF_WORD[match.group(1)]}


# ----------------------------------------------------------------------------- json


def object_box(obj: ShapeObject | dict[str, Any]) -> tuple[float, float, float, float]:
    """Exact bounding box (x0, y0, x1, y1) of an object, in fractions of the image side: the
    renderer centres an object of side `SIZE_FRACTIONS[size]` in its grid cell, and colours no
    pixel outside this box."""
    if isinstance(obj, ShapeObject):
        row, col, size = obj.row, obj.col, obj.size
    else:
        row, col = (obj["row"], obj["col"]) if "row" in obj else position_cell(obj["position"])
        size = obj["size"]
    half = SIZE_FRACTIONS[size] / 2
    cx, cy = (col + 0.5) / GRID, (row + 0.5) / GRID
    return (cx - half, cy - half, cx + half, cy + half)


def regions(scene: Scene, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One region per object: its box (`object_box`) and a caption of that object alone, in
    the one-object phrasings of `caption`. Inpainting learns to paint what such a caption
    names into a masked region (the prompt of an edit that names only the new object)."""
    return [
        {"box": [round(v, 6) for v in object_box(o)], "caption": caption(Scene((o,)), rng)}
        for o in scene.objects
    ]


def scene_to_json(scene: Scene) -> dict[str, Any]:
    """Full attributes of a scene; two-object scenes also list every relation that holds."""
    objects = [
        {
            "colour": o.colour,
            "shape": o.shape,
            "size": o.size,
            "position": o.position,
            "row": o.row,
            "col": o.col,
        }
        for o in scene.objects
    ]
    out: dict[str, Any] = {"objects": objects, "relation": None}
    if len(scene.objects) == 2:
        out["relations"] = relations_between(*scene.objects)
    return out


def scene_from_json(data: dict[str, Any]) -> Scene:
    """Inverse of `scene_to_json` (positions are read from "position")."""
    objects = []
    for o in data["objects"]:
        row, col = position_cell(o["position"])
        objects.append(ShapeObject(o["colour"], o["shape"], o["size"], row, col))
    return Scene(tuple(objects))


# ----------------------------------------------------------------------------- evaluation


def describe_object(o: dict[str, str]) -> str:
    """An object in the canonical words: "a large red circle" (the attributes it has)."""
    return "a " + " ".join(o[k] for k in ("size", "colour", "shape") if k in o)


def relation_phrase(relation: str) -> str:
    """The canonical words of a relation: "left of" -> "to the left of"."""
    return _RELATION_WORDS[relation][0]


def canonical_caption(attributes: dict[str, Any]) -> str:
    """The one fixed phrasing used for evaluation prompts."""
    objs = attributes["objects"]
    if len(objs) == 1:
        pos = objs[0].get("position")
        return describe_object(objs[0]) + (f" {_position_phrases(pos)[0][0]}" if pos else "")
    rel = relation_phrase(attributes["relation"])
    return f"{describe_object(objs[0])} {rel} {describe_object(objs[1])}"


def restatements(text: str) -> list[str]:
    """A statement about two objects said in the training wording from either object ("draw
    a red circle above a blue square" -> "a red circle above a blue square", "a blue square
    below a red circle"), or about one object in the training wording that the evaluation
    uses ("draw a red circle in the top left of the image" -> "a red circle at the top
    left"), the text itself left out; [] for text that is neither.

    Self-reranking scores a candidate image by the best of the prompt and its restatements: a
    model whose captioning learnt to name the objects in reading order
    (`reading_order_target`) gives a prompt written in the other order a low likelihood
    whatever the image, and its restatement the likelihood that tells the images apart. Both
    orders are in the training wording, so that the best of them is the order that fits the
    image: a prompt in other words (which captioning never wrote, and which cost the same on
    every image) next to a restatement in the training wording would always lose to it, and
    the images that fit the restatement's order, the wrong ones, would be kept. One object has
    no order; its restatement keeps the caption score of a prompt in other words as high as
    the same request's in the training wording, where further rounds of reranking
    (`rerank_floor`) read it as the image's fit. It is restated only with its place read (as
    every training caption of one object has one): a prompt whose place the grammar cannot
    read ("a red circle in the corner") would otherwise be scored as "a red circle" anywhere.
    """
    parsed = parse_caption(text)
    objects, relation = parsed["objects"], parsed["relation"]
    if not objects or not all({"colour", "shape"} <= set(o) for o in objects):
        return []
    if relation is None:
        placed = len(objects) == 1 and "position" in objects[0]
        said = (canonical_caption(parsed),) if placed else ()
    else:
        restated = {"objects": objects[::-1], "relation": INVERSE_RELATION[relation]}
        said = (canonical_caption(parsed), canonical_caption(restated))
    return [t for t in said if t != text]


def eval_prompts(n_objects: int, n: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """A fixed prompt set with the attributes each prompt asks for.

    One object: every colour x shape x size x position (6 x 3 x 2 x 9 = 324 prompts; `n` takes
    the first n of a fixed shuffle, which stays balanced only roughly). Two objects: `n`
    (default 240) seeded relation prompts, the four relations in turn, with object pairs
    drawn as in `sample_scene`; positions are not stated, so only colour, shape, size and the
    relation are asked for.
    """
    if n_objects == 1:
        combos = itertools.product(COLOURS_LIST, SHAPES, SIZES, POSITIONS)
        attrs = [
            {"objects": [dict(colour=c, shape=s, size=z, position=p)], "relation": None}
            for c, s, z, p in combos
        ]
        if n is not None:
            order = np.random.default_rng(1).permutation(len(attrs))[:n]
            attrs = [attrs[int(i)] for i in order]
        return [(canonical_caption(a), a) for a in attrs]
    if n_objects == 2:
        rng = np.random.default_rng(2)
        out = []
        for i in range(240 if n is None else n):
            relation = RELATIONS[i % len(RELATIONS)]
            while True:
                scene = sample_scene(rng, 2)
                if relation in relations_between(*scene.objects):
                    break
            objects = [
                {"colour": o.colour, "shape": o.shape, "size": o.size} for o in scene.objects
            ]
            a = {"objects": objects, "relation": relation}
            out.append((canonical_caption(a), a))
        return out
    raise ValueError(f"n_objects must be 1 or 2, got {n_objects}")


# Prompts as people write them: wordings that `caption` never produces (new templates, word
# orders and position phrases) with only the domain's words for colours, shapes, sizes,
# positions and relations. Training captions must never use these templates; every one holds a
# word that no training caption has ("draw", "image", "with", "show", ...).
_PARAPHRASE_ONE = (
    "draw {a} {z} {c} {s} {p}",
    "an image with {a} {z} {c} {s} {p}",
    "{p} there should be {a} {z} {c} {s}",
    "{a} {c} {s}, {z}, {p}",
    "show me {a} {c} {z} {s} {p}",
    "{a} {z} {s} in {c} {p}",
    "{z} {c} {s} {p}",
    "please put {a} {z} {c} {s} {p}",
)
_PARAPHRASE_TWO = (
    "draw {d1} {rel} {d2}",
    "an image where {d1} sits {rel} {d2}",
    "{d1}, with {d2} {inverse} it",
    "show {d1} placed {rel} {d2}",
    "{d2}, and {d1} {rel} it",
    "a scene with {d1} {rel} {d2}",
)


# Caption augmentation (`cogview train --rephrase P`): more wordings for training prompts, all
# of them unlike the paraphrase test set above (none of its templates, words, adjective orders
# or position phrases), so that the test still measures wordings the model never saw.
_REPHRASE_ONE = (
    "{d} {p}",
    "{p} is {d}",
    "{p} you can see {d}",
    "a photo of {d} {p}",
    "we see {d} {p}",
    "{d} located {p}",
    "make {d} {p}",
    "create {d} {p}",
    "an illustration of {d} {p}",
    "{d} that is {p}",
)
_REPHRASE_TWO = (
    "{d1} that is {rel} {d2}",
    "{d1} located {rel} {d2}",
    "we see {d1} {rel} {d2}",
    "a photo of {d1} {rel} {d2}",
    "make {d1} {rel} {d2}",
    "{rel} {d2} is {d1}",
    "{d2} and {d1} {rel} that one",
    "{d1} lies {rel} {d2}",
    "{d1} rests {rel} {d2}",
    "{d1} stands {rel} {d2}",
    "a picture in which {d1} is {rel} {d2}",
    "{d2}, plus {d1} {rel} that shape",
    "two shapes: {d1} {rel} {d2}",
)
_REPHRASE_POSITIONS = ("near the {p}", "toward the {p}", "in the {p} area", "in the {p} part")
# Requests around an augmented prompt (`cogview train --rephrase-frames P`), as people make
# them, in words of their own: every wording of the paraphrase set and of the unseen check
# (benchmarks/rerank_headroom.py) keeps a word that no training prompt uses, and none is a
# question, as one unseen wording is.
_REPHRASE_FRAMES = (
    "we need {x}",
    "generate {x}",
    "render {x}",
    "depict {x}",
    "a drawing of {x}",
    "how about {x}",
    "{x}, thanks",
    "my request: {x}",
    "{x} and nothing else",
    "just {x}",
)


def rephrase(attributes: dict[str, Any], rng: np.random.Generator,
             frames: float = 0.0) -> str | None:
    """A training prompt for a scene (`scene_to_json`'s attributes) in a wording drawn from
    the augmentation templates, set in a request (`_REPHRASE_FRAMES`) with probability
    `frames`; None for attributes that are not a shapes scene. With `frames` 0 the draws
    from `rng` are those of the templates alone."""
    text = _rephrase_statement(attributes, rng)
    if text is not None and frames > 0 and rng.random() < frames:
        text = _pick(rng, _REPHRASE_FRAMES).format(x=text)
    return text


def _rephrase_statement(attributes: dict[str, Any], rng: np.random.Generator) -> str | None:
    objects = attributes.get("objects") if isinstance(attributes, dict) else None
    if not objects or not all({"colour", "shape", "size", "position"} <= set(o) for o in objects):
        return None
    with_size = bool(rng.random() < 0.7)

    def describe(o: dict[str, Any]) -> str:
        words = [o["colour"], o["shape"]]
        if with_size:
            words.insert(0, _pick(rng, _SIZE_WORDS[o["size"]]))
        return f"{_article(words[0])} {' '.join(words)}"

    if len(objects) == 1:
        o = objects[0]
        if rng.random() < 0.5:
            position = _pick(rng, _position_phrases(o["position"])[0])
        else:
            name = "middle" if o["position"] == "center" else o["position"]
            position = _pick(rng, _REPHRASE_POSITIONS).format(p=name)
        return _pick(rng, _REPHRASE_ONE).format(d=describe(o), p=position)
    relations = attributes.get("relations") or []
    if len(objects) != 2 or not relations:
        return None
    relation = _pick(rng, relations)  # of objects[0] to objects[1]
    first, second = objects
    if rng.random() < 0.5:
        first, second, relation = second, first, INVERSE_RELATION[relation]
    rel = _pick(rng, _RELATION_WORDS[relation])
    return _pick(rng, _REPHRASE_TWO).format(d1=describe(first), d2=describe(second), rel=rel)


def contradiction(attributes: dict[str, Any], rng: np.random.Generator) -> str | None:
    """A caption in the training wordings (`caption`) that is false of a scene
    (`scene_to_json`'s attributes): a hard negative for the contrastive loss (`cogview train
    --hard-negatives`). Two objects: their places, colours or shapes swapped, so that the
    caption names the scene's own words in a wrong pairing (a relation inverted, a colour on
    the other shape); one object: another place, colour or shape. None for attributes that
    are not a shapes scene, or when no draw gives a false caption."""
    objects = attributes.get("objects") if isinstance(attributes, dict) else None
    if not objects or not all({"colour", "shape", "size", "position"} <= set(o) for o in objects):
        return None
    scene = scene_from_json(attributes)
    for _ in range(4):  # a draw whose caption happens to hold of the scene is drawn again
        changed = _changed(scene, rng)
        if changed is None:
            return None
        text = caption(changed, rng)
        if not compare(parse_caption(text), attributes)["all"]:
            return text
    return None


def _changed(scene: Scene, rng: np.random.Generator) -> Scene | None:
    """The scene with its objects' places, colours or shapes swapped (two objects) or one
    attribute of its object changed (one object); None when nothing can change."""
    objs = scene.objects
    if len(objs) == 1:
        o = objs[0]
        kind = _pick(rng, ("cell", "colour", "shape"))
        if kind == "cell":
            cells = [c for c in itertools.product(range(GRID), repeat=2) if c != (o.row, o.col)]
            row, col = cells[int(rng.integers(len(cells)))]
            return Scene((replace(o, row=row, col=col),))
        options = [v for v in (COLOURS_LIST if kind == "colour" else SHAPES)
                   if v != getattr(o, kind)]
        return Scene((replace(o, **{kind: _pick(rng, tuple(options))}),))
    a, b = objs
    kinds = [k for k in ("colour", "shape") if getattr(a, k) != getattr(b, k)]
    if (a.colour, a.shape, a.size) != (b.colour, b.shape, b.size):
        kinds.append("cell")
    if not kinds:
        return None
    kind = _pick(rng, tuple(kinds))
    if kind == "cell":
        return Scene((replace(a, row=b.row, col=b.col), replace(b, row=a.row, col=a.col)))
    return Scene((replace(a, **{kind: getattr(b, kind)}), replace(b, **{kind: getattr(a, kind)})))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _paraphrase_position(position: str, i: int) -> str:
    where = "in" if position == "center" or " " in position else "at"
    if i % 2:
        return f"{where} the image's {position}"
    return f"{where} the {'middle' if position == 'center' else position} of the image"


def paraphrase_wording(n_objects: int, i: int) -> str:
    """The template of held-out wording number `i` for `n_objects` objects (what
    `paraphrase` fills in; `cogview eval` reports accuracy per template)."""
    templates = _PARAPHRASE_ONE if n_objects == 1 else _PARAPHRASE_TWO
    return templates[i % len(templates)]


def paraphrase(attributes: dict[str, Any], i: int) -> str:
    """The prompt of `attributes` (as `eval_prompts` gives them) in held-out wording number
    `i` (templates and adjective orders taken in turn)."""
    objs = attributes["objects"]
    template = paraphrase_wording(len(objs), i)
    if len(objs) == 1:
        o = objs[0]
        first = template.split("{a} ", 1)[-1].split()[0].strip(",")
        word = {"{z}": o["size"], "{c}": o["colour"], "{s}": o["shape"]}.get(first, o["size"])
        position = _paraphrase_position(o["position"], i // len(_PARAPHRASE_ONE))
        return template.format(a=_article(word), z=o["size"], c=o["colour"], s=o["shape"],
                               p=position)
    swap = (i // len(_PARAPHRASE_TWO)) % 2  # every other round: colour before size

    def describe(o: dict[str, str]) -> str:
        words = (o["colour"], o["size"]) if swap else (o["size"], o["colour"])
        return f"{_article(words[0])} {words[0]} {words[1]} {o['shape']}"

    relation = attributes["relation"]
    return template.format(
        d1=describe(objs[0]), d2=describe(objs[1]), rel=relation_phrase(relation),
        inverse=relation_phrase(INVERSE_RELATION[relation]))


def paraphrase_prompts(n_objects: int, n: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """`eval_prompts(n_objects, n)` with each prompt in a held-out wording (`paraphrase`): the
    same requests, so that the two sets compare prompt by prompt. Two objects: prompt i asks
    for relation i mod 4 in template i mod 6, so each template meets two of the four relations
    ("left of" and "above", or "right of" and "below"); every relation and every template
    has the same share of the set."""
    return [(paraphrase(a, i), a) for i, (_, a) in enumerate(eval_prompts(n_objects, n))]


def _cell(o: dict[str, Any]) -> tuple[int, int] | None:
    if "row" in o and "col" in o:
        return int(o["row"]), int(o["col"])
    if o.get("position") in POSITIONS:
        return position_cell(o["position"])
    return None


def _relation_ok(expected: dict, observed: dict, assign: tuple[int | None, ...]) -> bool:
    """Whether the relation stated on one side holds on the other (see `compare`)."""
    exp, obs = expected["objects"], observed["objects"]
    if None in assign:
        return False
    rel_exp, rel_obs = expected.get("relation"), observed.get("relation")
    a0, a1 = assign[0], assign[1]
    if rel_exp is not None:
        cells = _cell(obs[a0]), _cell(obs[a1])
        if cells[0] is not None and cells[1] is not None:
            return relation_holds(rel_exp, cells[0], cells[1])
        if rel_obs is None:
            return False
        # both sides only state a relation, between observed objects 0 and 1
        return rel_obs == (rel_exp if (a0, a1) == (0, 1) else INVERSE_RELATION[rel_exp])
    if rel_obs is not None:
        # e.g. a caption scored against the true scene: does its relation hold in the scene?
        inverse = {a: i for i, a in enumerate(assign)}
        if 0 not in inverse or 1 not in inverse:
            return False
        cells = _cell(exp[inverse[0]]), _cell(exp[inverse[1]])
        if cells[0] is None or cells[1] is None:
            return False
        return relation_holds(rel_obs, cells[0], cells[1])
    return True


def compare(expected: dict[str, Any], observed: dict[str, Any]) -> dict[str, bool]:
    """Per-attribute correctness of `observed` against `expected` (both attribute dicts).

    Each expected object is matched to a different observed object, choosing the assignment
    that gets the most checks right. Scored: every attribute key present in an expected object
    (an observed object missing that key is wrong), "count" (as many observed objects as
    expected) and, for two objects, "relation" when either side states one. Two-object results
    also carry per-object keys ("colour_0", "shape_1", ...) and per-attribute keys that hold
    when every object has that attribute right. "all" is the conjunction of everything scored.
    """
    exp, obs = expected["objects"], observed["objects"]
    two = len(exp) == 2
    states_relation = two and (
        expected.get("relation") is not None or observed.get("relation") is not None
    )
    slots: list[int | None] = list(range(len(obs))) + [None] * len(exp)
    best: tuple[int, dict[str, bool]] | None = None
    for assign in dict.fromkeys(itertools.permutations(slots, len(exp))):
        result: dict[str, bool] = {}
        for i, (e, a) in enumerate(zip(exp, assign, strict=True)):
            o = obs[a] if a is not None else {}
            for key in ATTRIBUTES:
                if key in e:
                    result[f"{key}_{i}" if two else key] = o.get(key) == e[key]
        if states_relation:
            result["relation"] = _relation_ok(expected, observed, assign)
        right = sum(result.values())
        if best is None or right > best[0]:
            best = (right, result)
    assert best is not None
    result = best[1]
    if two:
        for key in ATTRIBUTES:
            per_object = [result[f"{key}_{i}"] for i in range(2) if f"{key}_{i}" in result]
            if per_object:
                result[key] = all(per_object)
    result["count"] = len(obs) == len(exp)
    result["all"] = all(result.values())
    return result
