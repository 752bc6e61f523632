"""A rule-based detector for shapes-domain images (`bench.shapes`), and scoring against prompts.

Each pixel is explained as `coverage * palette colour` (black background): the palette colour
with the smallest residual wins, and pixels covered at least half are foreground. Connected
foreground pixels of one colour form a candidate object; tiny components (noise) are dropped.
Per object, with `cover` the coverage of its colour in a window around it:
- size: the larger side of the soft bounding box (per column the largest coverage, summed;
  likewise per row), as a fraction of the image side, against the midpoint of the two sizes;
- shape: a triangle (apex up) puts 3/4 of its mass in the lower half of its box, a circle or a
  square 1/2; a square fills its box, a circle pi/4 of it;
- position: the grid cell of the box centre.
Soft measures keep these exact under the blur of a 64 -> 32 px area resize and stable under
the noise of a VQVAE reconstruction. Pure: no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from cogview.bench import shapes

_PALETTE = np.array([shapes.COLOURS[c] for c in shapes.COLOURS_LIST], dtype=np.float64)  # (K, 3)

# thresholds, derived from the geometry in cogview.bench.shapes
FOREGROUND_COVERAGE = 0.5  # a pixel at least half covered by a colour belongs to an object
# the smallest object (a small triangle) covers SIZE^2 / 2 of the image; a component with under
# a quarter of that is noise
MIN_AREA_FRACTION = shapes.SIZE_FRACTIONS["small"] ** 2 / 2 / 4
SIZE_THRESHOLD = (shapes.SIZE_FRACTIONS["small"] + shapes.SIZE_FRACTIONS["large"]) / 2
# An apex-up triangle has 3/4 of its mass in the lower half of its box (asymmetry 0.5), a circle
# or square 1/2 (asymmetry 0). Measured at 32 px (64 -> 32 area resize, and rendered at 32) with
# Gaussian noise of std 6 added: triangles 0.26..0.48, others -0.07..0.07.
TRIANGLE_ASYMMETRY = 0.17
# A square fills its box, a circle pi/4 of it. Measured as above: squares 0.91..1.0, circles
# 0.75..0.84.
SQUARE_FILL = 0.875


@dataclass(frozen=True)
class DetectedObject:
    colour: str
    shape: str
    size: str
    position: str
    row: int
    col: int
    box: tuple[float, float, float, float]  # soft bounding box x0, y0, x1, y1 in pixels
    area: float  # sum of coverage, in pixels
    fill: float  # area / box area
    asymmetry: float  # (mass in the lower half of the box - upper half) / area

    def to_json(self) -> dict[str, Any]:
        return {
            "colour": self.colour,
            "shape": self.shape,
            "size": self.size,
            "position": self.position,
            "row": self.row,
            "col": self.col,
        }


def _explain_pixels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the best palette index and every palette colour's coverage.

    image (H, W, 3) float -> labels (H, W) int (index into the palette, -1 = background),
    coverage (H, W, K) in [0, 1].
    """
    norms = (_PALETTE**2).sum(axis=1)  # |c|^2, (K,)
    dots = np.einsum("hwc,kc->hwk", image, _PALETTE)  # p . c, (H, W, K)
    t = (dots / norms).clip(0, 1)  # least-squares coverage, (H, W, K)
    # |p - t c|^2 expanded, so that no (H, W, K, 3) array is built
    residual = (image**2).sum(axis=-1)[..., None] - 2 * t * dots + t * t * norms
    best = residual.argmin(axis=-1)  # (H, W)
    best_cover = np.take_along_axis(t, best[..., None], axis=-1)[..., 0]
    labels = np.where(best_cover >= FOREGROUND_COVERAGE, best, -1)
    return labels, t


def _components(labels: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """8-connected components of equal non-negative labels: (label, ys, xs) each."""
    h, w = labels.shape
    grid = labels.tolist()  # plain lists: element access from Python is much faster than numpy
    seen = [[False] * w for _ in range(h)]
    out = []
    for y0, x0 in zip(*np.nonzero(labels >= 0), strict=True):
        y0, x0 = int(y0), int(x0)
        if seen[y0][x0]:
            continue
        label = grid[y0][x0]
        seen[y0][x0] = True
        queue, ys, xs = deque([(y0, x0)]), [], []
        while queue:
            y, x = queue.popleft()
            ys.append(y)
            xs.append(x)
            for ny in (y - 1, y, y + 1):
                if not 0 <= ny < h:
                    continue
                row, seen_row = grid[ny], seen[ny]
                for nx in (x - 1, x, x + 1):
                    if 0 <= nx < w and not seen_row[nx] and row[nx] == label:
                        seen_row[nx] = True
                        queue.append((ny, nx))
        out.append((label, np.array(ys), np.array(xs)))
    return out


@dataclass(frozen=True)
class _Measures:
    width: float  # soft box side lengths, pixels
    height: float
    area: float  # sum of coverage, pixels
    cx: float  # soft box centre, pixels
    cy: float
    asymmetry: float  # (mass below cy - mass above cy) / area


def _measure(label: int, ys: np.ndarray, xs: np.ndarray, labels: np.ndarray, t: np.ndarray):
    """Soft measures of one component: label, its pixels ys/xs, the maps of `_explain_pixels`."""
    h, w = labels.shape
    y0, y1 = max(int(ys.min()) - 1, 0), min(int(ys.max()) + 2, h)
    x0, x1 = max(int(xs.min()) - 1, 0), min(int(xs.max()) + 2, w)
    # this colour's coverage in a 1 px margin around the component, (h', w'); pixels of other
    # objects do not count, and margin pixels under a quarter covered are background noise
    cover = t[y0:y1, x0:x1, label].copy()
    own = np.zeros_like(cover, dtype=bool)
    own[ys - y0, xs - x0] = True
    cover[(labels[y0:y1, x0:x1] >= 0) & ~own] = 0
    cover[~own & (cover < 0.25)] = 0

    # soft box: per column the largest coverage, summed, is the width (edges count partly)
    col_extent, row_extent = cover.max(axis=0), cover.max(axis=1)  # (w',), (h',)
    width, height, area = col_extent.sum(), row_extent.sum(), cover.sum()
    col_centres = x0 + np.arange(cover.shape[1]) + 0.5
    row_centres = y0 + np.arange(cover.shape[0]) + 0.5
    cx = (col_extent * col_centres).sum() / max(width, 1e-9)
    cy = (row_extent * row_centres).sum() / max(height, 1e-9)

    # mass below the box centre minus mass above; the row that holds cy is split pro rata
    below_fraction = np.clip(row_centres + 0.5 - cy, 0, 1)  # (h',)
    below = (cover.sum(axis=1) * below_fraction).sum()
    asymmetry = (2 * below - area) / max(area, 1e-9)
    return _Measures(*(float(v) for v in (width, height, area, cx, cy, asymmetry)))


def detect(image: np.ndarray) -> list[DetectedObject]:
    """Objects in a shapes-domain image (H, W, 3) uint8, largest first."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    h, w = image.shape[:2]
    labels, t = _explain_pixels(image.astype(np.float64))
    min_area = MIN_AREA_FRACTION * h * w
    found = []
    for label, ys, xs in _components(labels):
        if len(ys) < min_area:
            continue
        m = _measure(label, ys, xs, labels, t)
        if m.area < min_area:
            continue
        fill = m.area / max(m.width * m.height, 1e-9)
        if m.asymmetry > TRIANGLE_ASYMMETRY:
            shape = "triangle"
        elif fill > SQUARE_FILL:
            shape = "square"
        else:
            shape = "circle"
        size = "large" if max(m.width / w, m.height / h) > SIZE_THRESHOLD else "small"
        col = min(max(int(m.cx / w * shapes.GRID), 0), shapes.GRID - 1)
        row = min(max(int(m.cy / h * shapes.GRID), 0), shapes.GRID - 1)
        box = (m.cx - m.width / 2, m.cy - m.height / 2, m.cx + m.width / 2, m.cy + m.height / 2)
        found.append(
            DetectedObject(
                colour=shapes.COLOURS_LIST[label],
                shape=shape,
                size=size,
                position=shapes.POSITIONS[row * shapes.GRID + col],
                row=row,
                col=col,
                box=tuple(float(b) for b in box),
                area=m.area,
                fill=float(fill),
                asymmetry=m.asymmetry,
            )
        )
    found.sort(key=lambda d: -d.area)
    return found


def detections_to_json(objects: list[DetectedObject]) -> dict[str, Any]:
    """Detections in the attribute-dict form of `cogview.bench.shapes` (no relation stated)."""
    return {"objects": [o.to_json() for o in objects], "relation": None}


def score(image: np.ndarray, attributes: dict[str, Any]) -> dict[str, bool]:
    """Per-attribute correctness of an image against the attributes a prompt asks for.

    `attributes` is an attribute dict (`shapes.eval_prompts`, `shapes.parse_caption` or
    `shapes.scene_to_json`); see `shapes.compare` for the keys of the result ("colour", "shape",
    "size", "position", "relation", "count", per-object "colour_0", ..., and "all").
    """
    return shapes.compare(attributes, detections_to_json(detect(image)))
