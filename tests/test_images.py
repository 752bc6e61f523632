import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cogview.errors import UserError
from cogview.images import fit, from_tensor, make_grid, read_image, save_grid, to_tensor


def assert_one_line_error(path, match):
    with pytest.raises(UserError) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert match in message


def test_read_image_errors_are_one_line_user_errors(tmp_path):
    assert_one_line_error(tmp_path / "missing.png", "no such file")
    assert_one_line_error(tmp_path, "directory")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    assert_one_line_error(text, "not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert_one_line_error(empty, "not an image")
    rng = np.random.default_rng(0)
    for fmt in ("PNG", "JPEG"):
        good = tmp_path / f"good.{fmt.lower()}"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, fmt)
        cut = tmp_path / f"cut.{fmt.lower()}"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        assert_one_line_error(cut, "truncated or corrupt")


def test_modes_convert_to_rgb(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((4, 4), 77, np.uint8), "L").save(gray)
    assert np.asarray(read_image(gray))[0, 0].tolist() == [77, 77, 77]

    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(np.array([[0, 65535], [257 * 100, 257 * 200]], np.uint16)).save(sixteen)
    with Image.open(sixteen) as im:
        assert im.mode.startswith("I")
    assert np.asarray(read_image(sixteen))[..., 0].tolist() == [[0, 255], [100, 200]]

    palette = tmp_path / "palette.png"
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.save(palette)
    assert np.asarray(read_image(palette)).tolist() == [[[255, 0, 0], [0, 0, 255]]]

    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.array([[[200, 100, 50, 255], [200, 100, 50, 0]]], np.uint8), "RGBA").save(
        rgba
    )
    assert np.asarray(read_image(rgba)).tolist() == [[[200, 100, 50], [0, 0, 0]]]  # on black

    half = tmp_path / "la.png"
    Image.fromarray(np.array([[[200, 128]]], np.uint8), "LA").save(half)
    assert np.asarray(read_image(half)).tolist() == [[[100, 100, 100]]]

    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk)  # red in CMYK
    r, g, b = np.asarray(read_image(cmyk))[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60

    bilevel = tmp_path / "one.png"
    Image.new("1", (3, 3), 1).save(bilevel)
    assert np.asarray(read_image(bilevel)).min() == 255

    for path in (gray, sixteen, palette, rgba, half, cmyk, bilevel):
        assert read_image(path).mode == "RGB"


def test_fit_shrinks_with_area_filter_and_crops_centre():
    # alternating 0/255 columns average to gray under an area filter
    stripes = np.zeros((64, 96, 3), np.uint8)
    stripes[:, ::2] = 255
    out = fit(stripes, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - 128).max() <= 1
    # the centre square is kept: a marked left strip outside it disappears
    marked = np.zeros((40, 80, 3), np.uint8)
    marked[:, :20] = 255
    assert fit(marked, 20).max() == 0


def test_fit_handles_tiny_and_enlarging():
    one = Image.new("RGB", (1, 1), (10, 20, 30))
    assert fit(one, 16).tolist() == np.full((16, 16, 3), (10, 20, 30)).tolist()
    two = np.array([[[0, 0, 0], [255, 255, 255]]] * 2, np.uint8)
    big = fit(two, 8)
    assert big.shape == (8, 8, 3) and big[0, 0].max() < 40 and big[0, -1].min() > 215


def test_huge_image_reads_and_fits(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (10000, 10000), 1).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = read_image(path)
    assert image.size == (10000, 10000)
    assert fit(image, 32).min() == 255


def test_tensor_round_trip():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    x = to_tensor(batch)
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(from_tensor(x), batch)
    assert np.array_equal(from_tensor(to_tensor(batch[0])[0]), batch[0])  # single image
    chw = torch.from_numpy(batch).permute(0, 3, 1, 2)  # what the loaders yield
    assert torch.equal(to_tensor(chw), x)
    assert from_tensor(torch.full((1, 3, 2, 2), 5.0)).max() == 255  # clipped


def test_save_grid(tmp_path):
    images = np.zeros((5, 8, 8, 3), np.uint8)
    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=4)
    with Image.open(path) as im:
        assert im.size == (4 * 10 + 2, 2 * 10 + 2)
    grid = make_grid(to_tensor(images), nrow=8)
    assert grid.shape == (12, 5 * 10 + 2, 3)
    with pytest.raises(UserError, match="suffix"):
        save_grid(images, tmp_path / "grid.xyz")
