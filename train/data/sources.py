"""The built-in data sets, each written as shards (`train.data.shards`): shapes, Fashion-MNIST,
a folder of image + caption pairs, and crops of the photos shipped with scikit-image/learn.

Every builder is deterministic for its seed: sample i of a split draws from its own generator
seeded by (seed, split, i), so the same arguments give byte-identical shards.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cogview.errors import ConfigError, UserError
from train.data.shards import DEFAULT_SHARD_SIZE, ShardSample, write_dataset

_SPLIT_IDS = {"train": 0, "test": 1}  # mixed into per-sample seeds


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_IDS[split], index])


def _key(split: str, index: int) -> str:
    return f"{split}-{index:07d}"


def split_counts(n: int, test_fraction: float) -> tuple[int, int]:
    """(n_train, n_test) for n samples of which a fraction goes to the test split."""
    if n < 0:
        raise ConfigError.of("n", f"must not be negative, got {n}")
    if not 0 <= test_fraction < 1:
        raise ConfigError.of("test_fraction", f"must be in [0, 1), got {test_fraction}")
    n_test = int(round(n * test_fraction))
    return n - n_test, n_test


# ----------------------------------------------------------------------------- shapes


def _shapes_samples(
    split: str,
    n: int,
    size: int,
    seed: int,
    two_fraction: float,
    positions: float,
    reading_order: bool,
) -> Iterator[ShardSample]:
    from cogview.bench import shapes
    from cogview.images import encode_png

    for i in range(n):
        rng = _rng(seed, split, i)
        n_objects = 2 if rng.random() < two_fraction else 1
        scene = shapes.sample_scene(rng, n_objects)
        text, target = shapes.reading_order_target(scene, rng, positions)
        image = shapes.render(scene, size)
        meta = shapes.scene_to_json(scene)
        # region captions from a stream of their own: the captions stay as they were
        meta["regions"] = shapes.regions(scene, np.random.default_rng([seed, _SPLIT_IDS[split],
                                                                       i, 1]))
        yield ShardSample(_key(split, i), encode_png(image), text, meta,
                          target=target if reading_order else None)


def build_shapes(
    out: str | Path,
    *,
    n: int = 20000,
    size: int = 64,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    test_fraction: float = 0.05,
    two_fraction: float = 0.5,
    positions: float = 0.0,
    reading_order_targets: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Rendered shapes scenes with captions and attribute JSON; returns info.json's content.

    `positions` is the fraction of two-object captions that name both objects' positions
    instead of a relation (`shapes.caption`). With `reading_order_targets` a two-object caption
    that names its objects against reading order gets a captioning target that names them in
    reading order (`shapes.reading_order_target`); the captions are the same either way."""
    if size < 8:
        raise ConfigError.of("size", f"must be at least 8 px, got {size}")
    if not 0 <= two_fraction <= 1:
        raise ConfigError.of("two_fraction", f"must be in [0, 1], got {two_fraction}")
    if not 0 <= positions <= 1:
        raise ConfigError.of("positions", f"must be in [0, 1], got {positions}")
    n_train, n_test = split_counts(n, test_fraction)
    info = {
        "source": "shapes",
        "size": size,
        "seed": seed,
        "two_fraction": two_fraction,
        "test_fraction": test_fraction,
    }
    if positions:
        info["positions"] = positions
    if reading_order_targets:
        info["caption_targets"] = "reading order"
    info["regions"] = "objects"  # every sample's JSON lists its objects' boxes and captions
    splits = {
        split: _shapes_samples(split, count, size, seed, two_fraction, positions,
                               reading_order_targets)
        for split, count in (("train", n_train), ("test", n_test))
    }
    totals = {"train": n_train, "test": n_test}
    return write_dataset(out, splits, info, shard_size=shard_size, totals=totals, progress=progress)


# ----------------------------------------------------------------------------- fashion-mnist

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# how captions name each class (with its article)
_FASHION_NOUNS = (
    ("a t-shirt", "a top"),
    ("a pair of trousers", "trousers"),
    ("a pullover", "a sweater"),
    ("a dress",),
    ("a coat",),
    ("a sandal",),
    ("a shirt",),
    ("a sneaker", "a trainer"),
    ("a bag", "a handbag"),
    ("an ankle boot", "a boot"),
)
_FASHION_TEMPLATES = (
    "{}",
    "a photo of {}",
    "a grayscale image of {}",
    "a picture of {} on a black background",
    "{}, in black and white",
)
FASHION_PAD = 2  # 28 px images padded to 32 px, the base resolution of the models


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array; UserError when it is not one."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    # header: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions,
    # then one big-endian uint32 per dimension
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path}: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def _fashion_arrays(split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    if not folder.is_dir():
        raise UserError(
            f"{folder}: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        )
    images_file, labels_file = FASHION_FILES[split]
    images, labels = read_idx(folder / images_file), read_idx(folder / labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{folder}: {images_file} and {labels_file} do not match")
    return images, labels


def _fashion_samples(
    split: str, images: np.ndarray, labels: np.ndarray, seed: int
) -> Iterator[ShardSample]:
    from cogview.images import encode_png

    pad = FASHION_PAD
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        rng = _rng(seed, split, i)
        label = int(label)
        nouns = _FASHION_NOUNS[label]
        noun = nouns[int(rng.integers(len(nouns)))]
        text = _FASHION_TEMPLATES[int(rng.integers(len(_FASHION_TEMPLATES)))].format(noun)
        padded = np.pad(image, pad)  # (28, 28) -> (32, 32), black border; stays grayscale
        meta = {"label": label, "class": FASHION_CLASSES[label]}
        yield ShardSample(_key(split, i), encode_png(padded), text, meta)


def build_fashion(
    out: str | Path,
    *,
    n: int | None = None,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    folder: str | Path = FASHION_DIR,
    progress: bool = True,
) -> dict[str, Any]:
    """Fashion-MNIST's train and test files as shards (32 px grayscale PNG).

    `n` caps the training images (default: all 60,000); the test split keeps the same
    proportion of its 10,000 (at least 1).
    """
    folder = Path(folder)
    train_x, train_y = _fashion_arrays("train", folder)
    test_x, test_y = _fashion_arrays("test", folder)
    if n is not None:
        if n < 1:
            raise ConfigError.of("n", f"must be at least 1, got {n}")
        n_test = max(1, round(len(test_x) * min(n, len(train_x)) / len(train_x)))
        train_x, train_y = train_x[:n], train_y[:n]
        test_x, test_y = test_x[:n_test], test_y[:n_test]
    info = {
        "source": "fashion",
        "size": train_x.shape[1] + 2 * FASHION_PAD,
        "seed": seed,
        "classes": list(FASHION_CLASSES),
        "grayscale": True,
    }
    splits = {
        "train": _fashion_samples("train", train_x, train_y, seed),
        "test": _fashion_samples("test", test_x, test_y, seed),
    }
    totals = {"train": len(train_x), "test": len(test_x)}
    return write_dataset(out, splits, info, shard_size=shard_size, totals=totals, progress=progress)


# ----------------------------------------------------------------------------- folder

FOLDER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class FolderReport:
    """What `build_folder` found: pairs written and files it left out, by reason."""

    written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first file
    replaced_captions: int = 0  # captions that were not UTF-8 (decoded with replacement)

    def skip(self, reason: str, path: Path) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, str(path))


def find_pairs(src: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(image, caption) pairs under src (nested, sorted), and images that have no caption.

    `dir/name.png` pairs with `dir/name.txt` (and `dir/name.target.txt`, when there is one, is
    the captioning target: see `_folder_samples`).
    """
    pairs, orphans = [], []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        names = set(files)
        for name in sorted(files):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in FOLDER_IMAGE_SUFFIXES:
                continue
            caption = f"{stem}.txt"
            if caption in names:
                pairs.append((Path(root) / name, Path(root) / caption))
            else:
                orphans.append(Path(root) / name)
    return pairs, orphans


def _folder_samples(
    split: str,
    pairs: list[tuple[Path, Path]],
    src: Path,
    size: int | None,
    report: FolderReport,
) -> Iterator[ShardSample]:
    from cogview.images import encode_png, fit, read_image

    index = 0
    for image_path, caption_path in pairs:
        try:
            image = read_image(image_path)
        except UserError:
            report.skip("unreadable image", image_path)
            continue
        try:
            raw = caption_path.read_bytes()
        except OSError:
            report.skip("unreadable caption", caption_path)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            report.replaced_captions += 1
        text = text.strip()
        if not text:
            report.skip("empty caption", caption_path)
            continue
        pixels = fit(image, size) if size else np.asarray(image)
        meta = {"source_path": image_path.relative_to(src).as_posix()}
        yield ShardSample(_key(split, index), encode_png(pixels), text, meta,
                          target=_read_target(caption_path))
        report.written += 1
        index += 1


def _read_target(caption_path: Path) -> str | None:
    """The text of `name.target.txt` beside `name.txt`: what captioning learns instead of the
    caption. None when there is none, or it is empty or unreadable."""
    try:
        raw = caption_path.with_name(caption_path.stem + ".target.txt").read_bytes()
    except OSError:
        return None
    return raw.decode("utf-8", errors="replace").strip() or None


def build_folder(
    src: str | Path,
    out: str | Path,
    *,
    size: int | None = None,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    test_fraction: float = 0.0,
    progress: bool = True,
) -> tuple[dict[str, Any], FolderReport]:
    """Image + caption pairs from a folder tree; unreadable images, images without a caption
    and empty captions are skipped and counted. Images are re-encoded as PNG, resized/cropped
    to `size` when given. A seeded `test_fraction` of the pairs goes to the test split."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src}: no such folder")
    if Path(out).resolve().is_relative_to(src.resolve()):
        raise ConfigError.of("out", f"{out}: must not be inside the source folder {src}")
    if size is not None and size < 1:
        raise ConfigError.of("size", f"must be positive, got {size}")
    pairs, orphans = find_pairs(src)
    report = FolderReport()
    for path in orphans:
        report.skip("no caption", path)
    n_train, n_test = split_counts(len(pairs), test_fraction)
    order = np.random.default_rng(seed).permutation(len(pairs))
    test_ids = set(int(i) for i in order[:n_test])
    test_pairs = [p for i, p in enumerate(pairs) if i in test_ids]
    train_pairs = [p for i, p in enumerate(pairs) if i not in test_ids]
    info: dict[str, Any] = {"source": "folder", "size": size, "seed": seed}
    splits = {
        "train": _folder_samples("train", train_pairs, src, size, report),
        "test": _folder_samples("test", test_pairs, src, size, report),
    }
    totals = {"train": n_train, "test": n_test}
    info = write_dataset(out, splits, info, shard_size=shard_size, totals=totals, progress=progress)
    return info, report


# ----------------------------------------------------------------------------- photos

# (caption, package, file inside it) of the photos shipped with scikit-image and scikit-learn
PHOTOS = (
    ("astronaut", "skimage", "data/astronaut.png"),
    ("cameraman", "skimage", "data/camera.png"),
    ("cat", "skimage", "data/chelsea.png"),
    ("coffee", "skimage", "data/coffee.png"),
    ("coins", "skimage", "data/coins.png"),
    ("hubble deep field", "skimage", "data/hubble_deep_field.jpg"),
    ("immunohistochemistry", "skimage", "data/ihc.png"),
    ("moon", "skimage", "data/moon.png"),
    ("motorcycle", "skimage", "data/motorcycle_left.png"),
    ("retina", "skimage", "data/retina.jpg"),
    ("rocket", "skimage", "data/rocket.jpg"),
    ("grass", "skimage", "data/grass.png"),
    ("gravel", "skimage", "data/gravel.png"),
    ("brick", "skimage", "data/brick.png"),
    ("china", "sklearn", "datasets/images/china.jpg"),
    ("flower", "sklearn", "datasets/images/flower.jpg"),
)
TEST_PHOTOS = ("coffee", "flower")  # whole photos held out: no test crop overlaps a train photo


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it (importing is slow)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _load_photos() -> dict[str, Any]:
    """name -> RGB PIL image, for every photo in PHOTOS that this install has."""
    from cogview.images import read_image

    photos = {}
    for name, package, relative in PHOTOS:
        folder = _package_dir(package)
        if folder is not None and (folder / relative).is_file():
            photos[name] = read_image(folder / relative)
    if not photos:
        raise UserError(
            "no photos found: install scikit-image and scikit-learn "
            "(pip install scikit-image scikit-learn)"
        )
    return photos


def _photo_samples(
    split: str, n: int, names: list[str], photos: dict[str, Any], size: int, seed: int
) -> Iterator[ShardSample]:
    from cogview.images import encode_png, fit

    for i in range(n):
        rng = _rng(seed, split, i)
        name = names[int(rng.integers(len(names)))]
        photo = photos[name]
        w, h = photo.size
        short = min(w, h)
        # crop side log-uniform between max(size, short/8) and the whole short side: from
        # close-ups to whole views
        lo = min(max(size, short // 8), short)
        side = int(round(np.exp(rng.uniform(np.log(lo), np.log(short))))) if lo < short else short
        x = int(rng.integers(w - side + 1))
        y = int(rng.integers(h - side + 1))
        crop = photo.crop((x, y, x + side, y + side))
        meta = {"photo": name, "crop": [x, y, side]}
        yield ShardSample(_key(split, i), encode_png(fit(crop, size)), name, meta)


def build_photos(
    out: str | Path,
    *,
    n: int = 2000,
    size: int = 64,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    test_fraction: float = 0.05,
    progress: bool = True,
) -> dict[str, Any]:
    """Random square crops of natural photos, resized to `size`; the photos in TEST_PHOTOS
    give the test split only."""
    if size < 1:
        raise ConfigError.of("size", f"must be positive, got {size}")
    photos = _load_photos()
    train_names = sorted(p for p in photos if p not in TEST_PHOTOS)
    test_names = sorted(p for p in photos if p in TEST_PHOTOS)
    n_train, n_test = split_counts(n, test_fraction)
    if not test_names:
        n_train, n_test = n, 0
    if not train_names:
        raise UserError("only test photos are installed; cannot make a training split")
    info = {
        "source": "photos",
        "size": size,
        "seed": seed,
        "test_fraction": test_fraction,
        "photos": {"train": train_names, "test": test_names},
    }
    splits = {
        "train": _photo_samples("train", n_train, train_names, photos, size, seed),
        "test": _photo_samples("test", n_test, test_names, photos, size, seed),
    }
    totals = {"train": n_train, "test": n_test}
    return write_dataset(out, splits, info, shard_size=shard_size, totals=totals, progress=progress)
