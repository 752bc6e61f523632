"""Reading user images, resizing them to a model's resolution, and tensor conversions.

Every command that reads an image goes through `read_image`, so a bad file is always reported the
same way: one line naming the file (`UserError`), never a traceback. Arrays are uint8 HWC;
tensors are float (B, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cogview.errors import UserError

if TYPE_CHECKING:
    import torch

# what `save_grid` can write, by file suffix
_GRID_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is composited onto black; 16/32-bit gray is scaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (PNG, TIFF); 32-bit "I" holds 16-bit data for most files
        gray = np.asarray(image, dtype=np.float64)
        if mode == "I" and gray.max(initial=0) <= 255:
            scaled = gray
        else:
            scaled = gray / 257.0  # 65535 -> 255
        return Image.fromarray(np.rint(scaled.clip(0, 255)).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        gray = np.asarray(image, dtype=np.float64)
        if gray.size and np.nanmax(gray) <= 1.0:
            gray = gray * 255.0  # float images are usually in [0, 1]
        gray = np.nan_to_num(gray).clip(0, 255)
        return Image.fromarray(np.rint(gray).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)  # (H, W, 4)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)  # composite onto black
        return Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")
    try:
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, ...
    except (ValueError, OSError) as e:
        raise UserError(f"{name}: cannot convert image mode {mode} to RGB ({e})") from None


def read_image(path: str | os.PathLike) -> Image.Image:
    """An RGB image from a file, fully decoded, with its EXIF orientation applied.

    Raises UserError (one line naming the file) for a missing, unreadable, non-image or
    truncated file. Very large images only warn (Pillow's decompression-bomb warning).
    """
    name = os.fspath(path)
    p = Path(name)
    if not p.exists():
        raise UserError(f"{name}: no such file")
    if p.is_dir():
        raise UserError(f"{name}: is a directory, not an image")
    try:
        with Image.open(p) as image:
            image.load()  # decode now: a truncated file fails here, not later
            image = ImageOps.exif_transpose(image)
            return to_rgb(image, name)
    except UnidentifiedImageError:
        raise UserError(f"{name}: not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"{name}: image too large to decode safely ({e})") from None
    except PermissionError:
        raise UserError(f"{name}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{name}: truncated or corrupt image ({reason})") from None


def fit(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to `size` and centre-crop: uint8 array (size, size, 3).

    Shrinking uses a box (area) filter, so thin or small details average rather than alias;
    enlarging uses bicubic. The crop is taken in source coordinates, so it costs one resample.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(_as_hwc_uint8(image), "RGB")
    elif image.mode != "RGB":
        image = to_rgb(image, "image")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    resample = Image.Resampling.BOX if side >= size else Image.Resampling.BICUBIC
    # reducing_gap: for huge images, first shrink by an integer factor (fast, still an area
    # average), then resample the rest exactly
    out = image.resize((size, size), resample=resample, box=box, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8).copy()


def _as_hwc_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W, 3) image array, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] == 4:
        arr = np.rint(arr[..., :3] * (arr[..., 3:] / 255.0))
    if arr.dtype != np.uint8:
        arr = np.rint(np.asarray(arr, dtype=np.float64)).clip(0, 255).astype(np.uint8)
    return arr


def to_tensor(images: np.ndarray | Sequence[np.ndarray] | torch.Tensor) -> torch.Tensor:
    """uint8 images -> float tensor (B, 3, H, W) in [-1, 1].

    Accepts one array (H, W, 3), a batch (B, H, W, 3), a list of (H, W, 3) arrays, or a uint8
    tensor (B, 3, H, W) / (3, H, W) as the data loaders yield.
    """
    import torch

    if isinstance(images, torch.Tensor):
        x = images if images.ndim == 4 else images.unsqueeze(0)  # (B, 3, H, W)
        if x.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 tensor, got {x.dtype}")
    else:
        arr = np.stack(images) if isinstance(images, (list, tuple)) else np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"expected uint8 (B, H, W, 3) images, got {arr.dtype} {arr.shape}")
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)  # (B, 3, H, W)
    return x.float().div(127.5).sub(1.0)


def from_tensor(x: torch.Tensor) -> np.ndarray:
    """Float tensor (B, 3, H, W) or (3, H, W) in [-1, 1] -> uint8 array (B, H, W, 3) / (H, W, 3).

    Values outside [-1, 1] are clipped; rounding is to nearest, so from_tensor(to_tensor(a)) == a.
    """
    import torch

    single = x.ndim == 3
    x = x.detach().float().cpu()
    if single:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
    arr = x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    out = arr.permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    return out[0] if single else out


def _as_batch(images: np.ndarray | Sequence[np.ndarray] | torch.Tensor) -> np.ndarray:
    """Any image batch form -> uint8 (B, H, W, 3)."""
    import torch

    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            x = images if images.ndim == 4 else images.unsqueeze(0)
            return x.permute(0, 2, 3, 1).cpu().numpy()
        out = from_tensor(images)
        return out if out.ndim == 4 else out[None]
    if isinstance(images, (list, tuple)):
        return np.stack([_as_hwc_uint8(np.asarray(a)) for a in images])
    arr = np.asarray(images)
    if arr.ndim == 3:
        return _as_hwc_uint8(arr)[None]
    return np.stack([_as_hwc_uint8(a) for a in arr])


def make_grid(
    images: np.ndarray | Sequence[np.ndarray] | torch.Tensor,
    nrow: int = 8,
    pad: int = 2,
    pad_value: int = 128,
) -> np.ndarray:
    """Tile images (equal sizes) into one uint8 array, `nrow` images per row.

    The padding is gray by default, so that images with black backgrounds stay apart.
    """
    batch = _as_batch(images)  # (B, H, W, 3)
    if len(batch) == 0:
        raise ValueError("no images to put in a grid")
    b, h, w, _ = batch.shape
    cols = max(1, min(nrow, b))
    rows = -(-b // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), pad_value, np.uint8)
    for i, img in enumerate(batch):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def save_grid(
    images: np.ndarray | Sequence[np.ndarray] | torch.Tensor,
    path: str | os.PathLike,
    nrow: int = 8,
) -> Path:
    """Write images as one grid picture (format from the suffix: png, jpg, webp, bmp).

    Accepts what `make_grid` accepts: uint8 arrays (B, H, W, 3) or lists of them, uint8 tensors
    (B, 3, H, W), or float tensors in [-1, 1]. The file is written atomically.
    """
    out = Path(path)
    fmt = _GRID_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"{out}: unknown image suffix; use one of {', '.join(_GRID_FORMATS)}")
    grid = make_grid(images, nrow=nrow)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(grid, "RGB").save(f, format=fmt)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def labelled(images: np.ndarray, labels: Sequence[str], min_side: int = 128,
             lines: int = 3) -> np.ndarray:
    """Images (B, H, W, 3) enlarged by a whole factor (nearest) to at least `min_side` px wide,
    each above a white strip with its label in black (wrapped to the width, cut at `lines`
    lines): uint8 (B, H', W', 3), to tile with `make_grid` or `save_grid`."""
    from PIL import ImageDraw, ImageFont

    batch = _as_batch(images)  # (B, H, W, 3)
    scale = max(1, -(-min_side // batch.shape[2]))
    font = ImageFont.load_default()
    line_h = 12
    out = []
    for img, label in zip(batch, labels, strict=True):
        tile = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale),
                                           Image.Resampling.NEAREST)
        sheet = Image.new("RGB", (tile.width, tile.height + lines * line_h + 4), "white")
        sheet.paste(tile)
        draw = ImageDraw.Draw(sheet)
        rows: list[str] = []
        for word in label.split():
            if rows and draw.textlength(f"{rows[-1]} {word}", font=font) <= tile.width - 4:
                rows[-1] += f" {word}"
            else:
                rows.append(word)
        for i, row in enumerate(rows[:lines]):
            draw.text((2, tile.height + 2 + i * line_h), row, fill="black", font=font)
        out.append(np.asarray(sheet, dtype=np.uint8))
    return np.stack(out)


# ---------------------------------------------------------------------------------------------
# inpainting masks, painted by hand


def mask_from_image(image: Image.Image) -> np.ndarray:
    """A painted mask -> (H, W) bool, True = regenerate.

    White means regenerate and black keep, thresholded at 50% of the gray value; a mask with
    transparent pixels (RGBA, LA, or a palette with transparency) is read by its alpha instead:
    painted (opaque) pixels are regenerated.
    """
    im = image
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() < 255:
            return alpha >= 128
        im = im.convert("RGB")
    if im.mode == "1":
        return np.asarray(im, dtype=bool).copy()
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        gray = np.asarray(im, dtype=np.float64)
        top = 65535.0 if gray.max(initial=0) > 255 else 255.0
        return gray >= top / 2
    return np.asarray(im.convert("L"), dtype=np.uint8) >= 128


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> (h, w) = size bool; a target pixel is set when any source pixel it
    overlaps is set (conservative: nothing the user painted is lost)."""
    h, w = size
    src_h, src_w = mask.shape
    rows = _overlaps(src_h, h)
    cols = _overlaps(src_w, w)
    # any over the source rows, then over the source columns, of each target cell
    by_row = np.stack([mask[r0:r1].any(axis=0) for r0, r1 in rows])  # (h, W)
    return np.stack([by_row[:, c0:c1].any(axis=1) for c0, c1 in cols], axis=1)  # (h, w)


def _overlaps(src: int, dst: int) -> list[tuple[int, int]]:
    """For each of `dst` equal intervals of [0, src): the source pixels [a, b) it overlaps."""
    # target i covers [i * src / dst, (i + 1) * src / dst) in source pixels
    return [((i * src) // dst, -((-(i + 1) * src) // dst)) for i in range(dst)]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A painted mask file -> (H, W) bool, True = regenerate (`mask_from_image`); a one-line
    UserError naming the file when it is missing or not a readable image."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    try:
        with Image.open(p) as im:
            im.load()
            return mask_from_image(im)
    except UnidentifiedImageError:
        raise UserError(f"{p}: not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        why = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise UserError(f"{p}: unreadable image ({why})") from None


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    """PNG bytes of an image; deterministic for equal pixels (no timestamps or text chunks)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
