"""The page: Gradio components wired to a `Page`, whose methods call `CogView`.

Every function returns the model's real outputs (32 px for the shipped model, 64 px through
super-resolution); the page shows them enlarged, pixel for pixel (CSS `pixelated`). Small
pictures are enlarged (nearest neighbour) inside the inpainting editor so that a brush can paint
on them, and the mask is brought back to the picture's own size before inpainting. Bad input is
a one-line message on the page (`gradio.Error`), never a stack trace.
"""

from __future__ import annotations

import os

# before gradio is imported: no telemetry and no version check over the network
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from cogview.api import CogView, PromptTruncatedWarning
from cogview.errors import UserError
from cogview.images import resize_mask, to_rgb
from cogview.sampling import RERANKERS
from cogview.web import DEFAULT_HOST, DEFAULT_PORT, where

MAX_SIDE = 2048  # pixels: a larger upload is refused with a message
MAX_FILE = "10mb"  # Gradio refuses larger uploads before they reach a function
MAX_N = 8  # pictures per click
MAX_RERANK = 32  # candidates per picture
# how the status line names each way of reranking
RERANKED_BY = {"caption": "self-reranking", "contrastive": "contrastive reranking",
               "both": "self- and contrastive reranking"}
EDIT_SIDE = 320  # small pictures are enlarged to about this side in the inpainting editor
SAVE = ["download", "fullscreen"]  # no "share": nothing leaves this machine
MODEL_JOBS = "model"  # the queue's concurrency group of everything that runs the model
PROGRESS = gr.Progress()  # marks a page function's progress parameter (Gradio passes its own)

# pictures of 32 px are shown enlarged without smoothing; single images fill their frame
CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.fill img { width: 100%; height: 100%; object-fit: contain; }
"""


@dataclass
class Loaded:
    """The inpainting editor's picture and mask, checked."""

    picture: np.ndarray  # uint8 (H, W, 3), the real pixels
    mask: np.ndarray  # bool (H, W): True = regenerate


# ---------------------------------------------------------------------------------------------
# input checks: every refusal is one line on the page


@contextmanager
def _messages() -> Iterator[None]:
    """UserError (the library's "bad input") -> gradio.Error, shown on the page."""
    try:
        yield
    except UserError as e:
        raise gr.Error(str(e), print_exception=False) from None


def picture_array(image: Any, what: str) -> np.ndarray:
    """An uploaded picture (numpy from Gradio, RGBA or RGB or gray; or PIL) -> uint8 (H, W, 3),
    refused when missing or larger than MAX_SIDE."""
    if image is None:
        raise gr.Error(f"{what}: no picture; upload one first", print_exception=False)
    if isinstance(image, Image.Image):
        image = np.asarray(to_rgb(image, what))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or min(arr.shape[:2]) < 1:
        raise gr.Error(f"{what}: not a picture (shape {arr.shape})", print_exception=False)
    height, width = arr.shape[:2]
    if max(height, width) > MAX_SIDE:
        raise gr.Error(f"{what}: {width}x{height} pixels is too large (at most {MAX_SIDE} a "
                       "side); shrink it first", print_exception=False)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[-1] == 4:  # transparency onto black, as everywhere else in the toolkit
        arr = np.asarray(to_rgb(Image.fromarray(arr, "RGBA"), what))
    return np.ascontiguousarray(arr)


def uploaded_picture(payload: dict[str, Any] | None, what: str) -> np.ndarray:
    """An image component's upload (its file data, not decoded by Gradio) -> uint8 (H, W, 3),
    read by `images.read_image` so that a bad file is a one-line message."""
    from cogview.images import read_image

    path = (payload or {}).get("path")
    if not path:
        raise gr.Error(f"{what}: no picture; upload one first", print_exception=False)
    with _messages():
        try:
            image = read_image(path)
        except UserError as e:  # the message names Gradio's cache file: name the upload
            name = (payload or {}).get("orig_name") or "the upload"
            raise UserError(f"{what}: {name}: {str(e).split(': ', 1)[-1]}") from None
    return picture_array(image, what)


def uploaded_editor(component: gr.ImageEditor, payload: dict[str, Any] | None
                    ) -> dict[str, Any] | None:
    """The inpainting editor's upload decoded by the editor itself, its failures (a file that
    is not an image) a one-line message."""
    if not payload:
        return None
    try:
        return component.preprocess(component.data_model.model_validate(payload))
    except gr.Error:
        raise
    except Exception as e:  # Pillow's errors of a file that is not a picture
        raise gr.Error(f"inpainting picture: not an image Pillow can read "
                       f"({e.__class__.__name__})", print_exception=False) from None


def painted_mask(layers: list[Any], size: tuple[int, int]) -> np.ndarray:
    """The union of the editor's painted layers -> bool (H, W) = size: a pixel is masked where
    any layer is at least half opaque (as `images.mask_from_image` reads a transparent mask)."""
    mask = np.zeros(size, dtype=bool)
    for layer in layers:
        arr = np.asarray(layer)
        if arr.ndim != 3 or arr.shape[-1] != 4:
            continue  # a layer without alpha holds no strokes
        painted = arr[..., 3] >= 128
        if painted.shape != size:
            painted = resize_mask(painted, size)
        mask |= painted
    return mask


def enlarge(picture: np.ndarray, side: int = EDIT_SIDE) -> np.ndarray:
    """A small picture enlarged by a whole factor (nearest neighbour) to at most about `side`
    pixels on its longer side; a large one unchanged."""
    factor = max(1, side // max(picture.shape[:2]))
    return picture.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else picture


def editor_value(picture: np.ndarray) -> dict[str, Any]:
    """What the inpainting editor shows for a picture: enlarged, no strokes yet."""
    big = enlarge(picture)
    return {"background": big, "layers": [], "composite": big}


def read_editor(editor: dict[str, Any] | None, original: np.ndarray | None) -> Loaded:
    """The picture and the painted mask of the inpainting editor.

    When the editor shows `original` enlarged (a gallery picture or a small upload), the mask is
    brought back to the original's size and the original is what gets inpainted; otherwise the
    editor's background is the picture.
    """
    if not editor or editor.get("background") is None:
        raise gr.Error("inpainting: no picture; upload one or take one from the gallery",
                       print_exception=False)
    shown = picture_array(editor["background"], "inpainting picture")
    mask = painted_mask(editor.get("layers") or [], shown.shape[:2])
    picture = shown
    if original is not None and np.array_equal(shown, enlarge(original)):
        picture = original
        mask = resize_mask(mask, original.shape[:2])
    if not mask.any():
        raise gr.Error("the mask is empty: paint over the part to regenerate with the brush",
                       print_exception=False)
    return Loaded(picture, mask)


def check_prompt(prompt: str | None) -> str:
    """The prompt without surrounding spaces; an empty one is refused."""
    text = (prompt or "").strip()
    if not text:
        raise gr.Error("the prompt is empty: type what to draw", print_exception=False)
    return text


def _count(value: Any, what: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{what} must be a whole number, got {value!r}",
                       print_exception=False) from None
    if not low <= number <= high or number != value:
        raise gr.Error(f"{what} must be a whole number from {low} to {high}, got {value!r}",
                       print_exception=False)
    return number


def _progress(bar: gr.Progress, total: int, what: str) -> Callable[[int], None]:
    """A `CogView` progress callback (candidates finished per batch) that moves the page's bar."""
    done = 0

    def step(k: int) -> None:
        nonlocal done
        done += k
        bar((min(done, total), total), desc=what, unit=what)

    return step


def _say_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        if issubclass(w.category, PromptTruncatedWarning):
            gr.Warning(str(w.message))


# ---------------------------------------------------------------------------------------------
# the page's functions


class Page:
    """The functions behind the page's buttons, on one loaded `CogView` (and its SR model)."""

    def __init__(self, pipe: CogView) -> None:
        self.pipe = pipe
        self.sr_note = ""
        self.sr = pipe.sr
        if self.sr is None:
            try:
                self.sr = pipe.load_sr()
            except UserError as e:  # an SR model that does not read this model's codes
                self.sr_note = str(e)
                self.sr = _standalone_sr()
        self.rerank = max(1, pipe.rerank_default)
        self.rerank_by = pipe.rerank_by_default
        # how candidates may be scored: "contrastive" and "both" need a contrastive head
        self.rerankers = RERANKERS if pipe.has_contrastive_head else ("caption",)
        self.inpaint_rerank = min(max(1, pipe.inpaint_rerank_default), MAX_RERANK)
        self.temperature = float(pipe.sampling_config().temperature)

    def warm(self) -> float:
        """Run each model once on a small job, so that the first click pays no start-up cost
        (lazy initialisation inside torch); seconds taken."""
        start = time.perf_counter()
        out = self.pipe.generate("a red circle", 1, rerank=2, seed=0)  # reranking included
        if self.sr is not None:
            from cogview.api import superres_image

            superres_image(self.sr, out.arrays[0], steps=1)
        self.pipe.caption(out.arrays[0], 1, max_len=2)
        return time.perf_counter() - start

    def generate(self, prompt: str, n: float, seed: float, temperature: float, rerank: float,
                 superres: bool, rerank_by: str | None = None,
                 progress: gr.Progress = PROGRESS) -> tuple[list, str]:
        """Text-to-image: the gallery's pictures (real size) and a status line; `rerank_by`
        as for `CogView.generate` (None: the model's default)."""
        text = check_prompt(prompt)
        n = _count(n, "number of images", 1, MAX_N)
        seed = _count(seed, "seed", 0, 2**31 - 1)
        rerank = _count(rerank, "reranking", 1, MAX_RERANK)
        if superres and self.pipe.sr is None:
            raise gr.Error(f"super-resolution is off for this model: {self.sr_note}",
                           print_exception=False)
        with _messages():
            by = self.pipe.reranker(rerank_by or None)
        start = time.perf_counter()
        with _messages(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptTruncatedWarning)
            out = self.pipe.generate(text, n, rerank=rerank, seed=seed, superres=superres,
                                     temperature=float(temperature), rerank_by=by,
                                     progress=_progress(progress, n * rerank, "candidates"))
            arrays = out.arrays
        _say_warnings(caught)
        took = time.perf_counter() - start
        side = arrays.shape[1]
        floor, most = self.pipe.rerank_rounds(rerank)
        more = f" (up to {most} where unsure)" if floor is not None and most > rerank else ""
        how = (f"each the best of {rerank}{more} by {RERANKED_BY[by]}" if rerank > 1
               else "no reranking")
        status = f"{n} image(s) of {side} px in {took:.2f} s ({how}, seed {seed})"
        return [(Image.fromarray(a), f"{i}") for i, a in enumerate(arrays)], status

    def inpaint(self, editor: dict[str, Any] | None, original: np.ndarray | None, prompt: str,
                n: float, seed: float, rerank: float,
                progress: gr.Progress = PROGRESS) -> tuple[Image.Image, list, str]:
        """Inpainting: the picture inpainted (real size), its versions and a status line."""
        loaded = read_editor(editor, original)
        text = check_prompt(prompt)
        n = _count(n, "number of versions", 1, MAX_N)
        seed = _count(seed, "seed", 0, 2**31 - 1)
        rerank = _count(rerank, "reranking", 1, MAX_RERANK)
        start = time.perf_counter()
        with _messages(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptTruncatedWarning)
            out = self.pipe.inpaint(loaded.picture, loaded.mask, text, n, rerank=rerank,
                                    seed=seed,
                                    progress=_progress(progress, n * rerank, "candidates"))
        _say_warnings(caught)
        took = time.perf_counter() - start
        cells = resize_mask(loaded.mask, self.pipe.grid)
        height, width = loaded.picture.shape[:2]
        status = (f"{n} version(s) of {width}x{height} px in {took:.2f} s; {int(cells.sum())} of "
                  f"{cells.size} token cells regenerated, every unmasked pixel kept")
        versions = [(Image.fromarray(a), f"{i}") for i, a in enumerate(out.arrays)]
        return Image.fromarray(loaded.picture), versions, status

    def caption(self, image: Any, n: float, seed: float) -> list[list[Any]]:
        """Captions of a picture, best first: rows of (score, caption)."""
        picture = picture_array(image, "captioning picture")
        n = _count(n, "number of captions", 1, MAX_N)
        seed = _count(seed, "seed", 0, 2**31 - 1)
        with _messages():
            caps = self.pipe.caption(picture, n, seed=seed)
        return [[round(s, 3), t] for s, t in zip(caps.scores, caps.texts, strict=True)]

    def superres(self, image: Any, direct: bool, seed: float) -> tuple[Image.Image, Image.Image]:
        """Super-resolution: the picture at the SR model's input size and its SR output."""
        from cogview.api import superres_image
        from cogview.images import fit

        if self.sr is None:
            raise gr.Error("no super-resolution model in this install", print_exception=False)
        picture = picture_array(image, "super-resolution picture")
        seed = _count(seed, "seed", 0, 2**31 - 1)
        with _messages():
            small = fit(picture, self.sr.low_res_size)
            big = superres_image(self.sr, small, steps=1 if direct else None,
                                 generator=self.pipe.generator(seed))
        return Image.fromarray(small), big

    def take_from_gallery(self, gallery: list | None, index: int | None
                          ) -> tuple[dict[str, Any], np.ndarray, Any]:
        """The gallery's selected picture (or its first) into the inpainting editor."""
        if not gallery:
            raise gr.Error("the gallery is empty: generate first", print_exception=False)
        item = gallery[index if index is not None and 0 <= index < len(gallery) else 0]
        image = item[0] if isinstance(item, (list, tuple)) else item
        if isinstance(image, dict):  # Gradio's file data of a gallery item
            image = image.get("path")
        if isinstance(image, str):
            with Image.open(image) as im:
                image = im.convert("RGB")
        picture = picture_array(image, "gallery picture")
        return editor_value(picture), picture, gr.Tabs(selected="inpaint")

    def uploaded(self, editor: dict[str, Any] | None, original: np.ndarray | None
                 ) -> tuple[Any, np.ndarray | None]:
        """A picture put into the editor: enlarged there when small, kept as the original (the
        editor also reports a picture the page put there: then the original stays)."""
        if not editor or editor.get("background") is None:
            return gr.skip(), None
        picture = picture_array(editor["background"], "inpainting picture")
        if original is not None and np.array_equal(picture, enlarge(original)):
            return gr.skip(), original
        if enlarge(picture) is picture:
            return gr.skip(), picture
        return editor_value(picture), picture


def _standalone_sr() -> Any:
    """The shipped SR model on its own (for the super-resolution section), or None."""
    from cogview.defaults import default_model_path
    from cogview.superres import load_sr

    path = default_model_path("sr")
    return load_sr(path) if path is not None else None


# ---------------------------------------------------------------------------------------------
# the page


def build_page(pipe: CogView, page: Page | None = None) -> gr.Blocks:
    """The Gradio page of a loaded `CogView`: four sections, one job at a time."""
    page = page or Page(pipe)
    name = os.path.basename(str(pipe.meta.get("path", "model")))
    jobs = {"concurrency_limit": 1, "concurrency_id": MODEL_JOBS}
    quick = {"queue": False, "api_visibility": "private", "show_progress": "hidden"}
    size = pipe.image_size
    # real outputs as PNG (lossless), shown enlarged without smoothing
    result = {"format": "png", "buttons": SAVE, "interactive": False, "height": 300,
              "elem_classes": ["pixelated", "fill"]}
    results = {"format": "png", "buttons": SAVE, "object_fit": "contain", "height": 300,
               "elem_classes": ["pixelated"]}
    upload = {"format": "png", "sources": ("upload", "clipboard"), "height": 300,
              "elem_classes": ["pixelated", "fill"]}
    with gr.Blocks(title="CogView", analytics_enabled=False) as blocks:
        gr.Markdown(
            f"# CogView\nModel `{name}`: {size} px pictures as {pipe.grid[0]}x{pipe.grid[1]} "
            "codes. Pictures are shown enlarged, pixel for pixel; a download is the real "
            "output. One job runs at a time; others wait in line."
        )
        original = gr.State(None)  # the real pixels of what the inpainting editor shows
        selected = gr.State(None)  # the gallery picture last clicked
        with gr.Tabs() as tabs:
            with gr.Tab("Text to image", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        prompt = gr.Textbox(label="Prompt", value="a red circle at the top left",
                                            elem_id="prompt")
                        n = gr.Slider(1, MAX_N, value=4, step=1, label="Number of images")
                        seed = gr.Number(0, precision=0, label="Seed", minimum=0, elem_id="seed")
                        temperature = gr.Slider(0.1, 1.5, value=page.temperature, step=0.05,
                                                label="Temperature")
                        rerank = gr.Slider(
                            1, MAX_RERANK, value=page.rerank, step=1, label="Reranking",
                            info=f"each image the best of this many candidates by "
                                 f"self-reranking (the model's default: {page.rerank}; 1 = off)")
                        rerank_by = gr.Radio(
                            list(page.rerankers), value=page.rerank_by, label="Rerank by",
                            visible=len(page.rerankers) > 1,
                            info="the model's caption likelihood, its contrastive head's "
                                 "cosine, or both")
                        superres = gr.Checkbox(
                            False, label="Super-resolution", interactive=pipe.sr is not None,
                            info=page.sr_note or "64 px through the SR model")
                        go = gr.Button("Generate", variant="primary", elem_id="generate-button")
                    with gr.Column(scale=2):
                        gallery = gr.Gallery(label="Images", columns=4, elem_id="gallery",
                                             **{**results, "height": 420})
                        status = gr.Markdown(elem_id="generate-status")
                        to_edit = gr.Button("Inpaint the selected image", elem_id="to-inpaint")
            with gr.Tab("Inpainting", id="inpaint"):
                with gr.Row():
                    with gr.Column(scale=1):
                        editor = gr.ImageEditor(
                            label="Picture: paint the part to regenerate",
                            type="numpy", image_mode="RGBA", sources=("upload", "clipboard"),
                            brush=gr.Brush(default_size=16, colors=["#ffffff"],
                                           color_mode="fixed"),
                            eraser=gr.Eraser(default_size=16), layers=False,
                            transforms=(), format="png", elem_id="editor",
                            elem_classes=["pixelated"], height=460)
                        edit_prompt = gr.Textbox(label="Prompt: what goes in the mask",
                                                 value="a small yellow triangle",
                                                 elem_id="inpaint-prompt")
                        with gr.Row():
                            edit_n = gr.Slider(1, MAX_N, value=4, step=1,
                                               label="Number of versions")
                            edit_seed = gr.Number(0, precision=0, label="Seed", minimum=0)
                        edit_rerank = gr.Slider(1, MAX_RERANK, value=page.inpaint_rerank, step=1,
                                                label="Reranking")
                        edit_go = gr.Button("Inpaint", variant="primary", elem_id="inpaint-button")
                    with gr.Column(scale=1):
                        with gr.Row():
                            shown = gr.Image(label="Original", **result)
                            versions = gr.Gallery(label="Inpainted", columns=2, scale=2,
                                                  elem_id="inpainted", **results)
                        edit_status = gr.Markdown(elem_id="inpaint-status")
            with gr.Tab("Captioning", id="caption"):
                with gr.Row():
                    with gr.Column():
                        cap_image = gr.Image(label="Picture", elem_id="caption-image", **upload)
                        cap_n = gr.Slider(1, MAX_N, value=3, step=1, label="Number of captions")
                        cap_seed = gr.Number(0, precision=0, label="Seed", minimum=0)
                        cap_go = gr.Button("Caption", variant="primary", elem_id="caption-button")
                    captions = gr.Dataframe(headers=["score", "caption"], label="Captions, best "
                                            "first (mean log-likelihood per token)",
                                            interactive=False, elem_id="captions")
            with gr.Tab("Super-resolution", id="superres"):
                with gr.Row():
                    with gr.Column():
                        sr_image = gr.Image(label="Picture", elem_id="superres-image", **upload)
                        sr_direct = gr.Checkbox(False, label="Direct (one pass)",
                                                info="off: iterative LoPAR, one pass per order")
                        sr_seed = gr.Number(0, precision=0, label="Seed", minimum=0)
                        sr_go = gr.Button("Super-resolve", variant="primary",
                                          elem_id="superres-button")
                    sr_small = gr.Image(label="Input at the SR model's size", **result)
                    sr_big = gr.Image(label="Super-resolved", elem_id="sr-out", **result)

        go.click(page.generate, [prompt, n, seed, temperature, rerank, superres, rerank_by],
                 [gallery, status], api_name="generate", **jobs)
        prompt.submit(page.generate, [prompt, n, seed, temperature, rerank, superres, rerank_by],
                      [gallery, status], api_visibility="private", **jobs)
        gallery.select(_index, None, selected, **quick)
        to_edit.click(page.take_from_gallery, [gallery, selected], [editor, original, tabs],
                      **quick)
        raw = {"preprocess": False}  # uploads decoded by the functions: bad files get a message

        def inpaint(payload: dict[str, Any] | None, kept: np.ndarray | None, text: str,
                    count: float, seed_: float, group: float,
                    progress: gr.Progress = PROGRESS) -> tuple[Image.Image, list, str]:
            return page.inpaint(uploaded_editor(editor, payload), kept, text, count, seed_,
                                group, progress)

        def caption(payload: dict[str, Any] | None, count: float, seed_: float) -> list:
            return page.caption(uploaded_picture(payload, "captioning picture"), count, seed_)

        def superres_(payload: dict[str, Any] | None, direct: bool, seed_: float) -> tuple:
            return page.superres(uploaded_picture(payload, "super-resolution picture"), direct,
                                 seed_)

        def upload(payload: dict[str, Any] | None, kept: np.ndarray | None
                   ) -> tuple[Any, np.ndarray | None]:
            return page.uploaded(uploaded_editor(editor, payload), kept)

        editor.upload(upload, [editor, original], [editor, original], **quick, **raw)
        edit_go.click(inpaint, [editor, original, edit_prompt, edit_n, edit_seed, edit_rerank],
                      [shown, versions, edit_status], api_name="inpaint", **jobs, **raw)
        cap_go.click(caption, [cap_image, cap_n, cap_seed], captions, api_name="caption",
                     **jobs, **raw)
        sr_go.click(superres_, [sr_image, sr_direct, sr_seed], [sr_small, sr_big],
                    api_name="superres", **jobs, **raw)
    blocks.queue(default_concurrency_limit=1)
    return blocks


def _index(event: gr.SelectData) -> int:
    return int(event.index)


# ---------------------------------------------------------------------------------------------
# serving


def launch(blocks: gr.Blocks, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
           block: bool = True) -> gr.Blocks:
    """Start serving `blocks`; offline (no share link, no analytics, no SSR node server)."""
    blocks.launch(server_name=host, server_port=port, share=False, quiet=True,
                  inbrowser=False, show_error=False, max_file_size=MAX_FILE, ssr_mode=False,
                  prevent_thread_lock=not block, theme=gr.themes.Default(), css=CSS,
                  footer_links=[])
    return blocks


def serve(blocks: gr.Blocks, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve until interrupted, after saying where on stderr."""
    launch(blocks, host, port, block=False)
    print(where(host, port), file=sys.stderr, flush=True)
    try:
        blocks.block_thread()
    finally:
        blocks.close()
