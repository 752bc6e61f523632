"""The web page (`cogview serve`): each function through `gradio_client` against a server on a
free loopback port, bad input as messages, one job at a time, and the page in headless Chromium.

One server on the shipped models serves the whole module. `COGVIEW_SCREENSHOTS=DIR` makes the
browser test also write its screenshots to DIR (`make web-screenshots`: docs/web/).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="no Gradio: the web extra (pip install -e '.[web]')")
gradio_client = pytest.importorskip("gradio_client")

from cogview.api import CogView  # noqa: E402
from cogview.cli import main  # noqa: E402
from cogview.defaults import ROOT  # noqa: E402
from cogview.images import resize_mask  # noqa: E402
from cogview.web import where  # noqa: E402
from cogview.web.page import (  # noqa: E402
    MODEL_JOBS,
    Page,
    build_page,
    editor_value,
    enlarge,
    launch,
    read_editor,
)

# Gradio's queue calls pandas in ways pandas 3 deprecates: not this project's to fix
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

SCENE = ROOT / "demo" / "scene.png"  # 64 px, two objects
MASK = ROOT / "demo" / "mask.png"  # white = regenerate
PROMPT = "a red circle at the top left"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Tracked:
    """A callable that counts how many calls run at once (the most, over its life)."""

    def __init__(self, fn):
        self.fn, self.now, self.most, self.lock = fn, 0, 0, threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return self.fn(*args, **kwargs)
        finally:
            with self.lock:
                self.now -= 1


@pytest.fixture(scope="module")
def pipe():
    return CogView.from_pretrained("shapes")


@pytest.fixture(scope="module")
def server(pipe):
    """(URL, port, tracked generate, blocks) of one page on the shipped models, closed at the
    end."""
    page = Page(pipe)
    page.warm()
    tracked = Tracked(pipe.generate)
    pipe.generate = tracked  # the page calls it; the test counts concurrent calls
    port = free_port()
    blocks = launch(build_page(pipe, page), port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/", port, tracked, blocks
    finally:
        blocks.close()
        del pipe.generate
        for _ in range(50):  # the server lets go of its port
            if not port_open(port):
                break
            time.sleep(0.1)
        assert not port_open(port), "the server still listens after close()"


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server[0], verbose=False, download_files=True)


def layer_of(mask: np.ndarray, path: Path) -> Path:
    """An editor layer: the mask painted opaque white on transparency."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = 255
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def read(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# each function through gradio_client


def test_generate_returns_the_api_images(client, pipe):
    images, status = client.predict(PROMPT, 2, 3, 0.7, 2, False, api_name="/generate")
    got = np.stack([read(item["image"]) for item in images])
    assert got.shape == (2, 32, 32, 3)  # the real output, not the enlarged view
    direct = pipe.generate.fn(PROMPT, 2, rerank=2, seed=3, temperature=0.7).arrays
    np.testing.assert_array_equal(got, direct)  # the same sampling code as the CLI
    assert "2 image(s) of 32 px" in status and "best of 2" in status


def test_generate_superres(client):
    images, status = client.predict(PROMPT, 1, 0, 0.7, 1, True, api_name="/generate")
    assert read(images[0]["image"]).shape == (64, 64, 3)
    assert "no reranking" in status


def test_inpaint_keeps_unmasked_pixels(client, tmp_path):
    scene = read(str(SCENE))
    with Image.open(MASK) as im:
        mask = np.asarray(im.convert("L")) >= 128
    editor = {"background": gradio_client.handle_file(str(SCENE)),
              "layers": [gradio_client.handle_file(str(layer_of(mask, tmp_path / "l.png")))],
              "composite": None}
    original, versions, status = client.predict(
        editor, "a small yellow triangle at the bottom right", 3, 0, 2, api_name="/inpaint")
    np.testing.assert_array_equal(read(original), scene)
    assert len(versions) == 3
    for item in versions:
        out = read(item["image"])
        assert out.shape == scene.shape
        np.testing.assert_array_equal(out[~mask], scene[~mask])  # exact, bit for bit
    changed = [(read(item["image"])[mask] != scene[mask]).any() for item in versions]
    assert any(changed)
    assert "every unmasked pixel kept" in status


def test_caption(client):
    result = client.predict(gradio_client.handle_file(str(SCENE)), 3, 0, api_name="/caption")
    rows = result["data"]
    assert len(rows) == 3
    scores = [row[0] for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(text, str) and text.strip() for _, text in rows)
    assert all(s < 0 for s in scores)  # mean log-likelihoods


def test_superres(client):
    small, big = client.predict(gradio_client.handle_file(str(SCENE)), True, 0,
                                api_name="/superres")
    assert read(small).shape == (32, 32, 3)
    assert read(big).shape == (64, 64, 3)


# ---------------------------------------------------------------------------------------------
# bad input: a message, and the server keeps serving


def bad_inputs(tmp: Path) -> list[tuple[str, tuple, str]]:
    text = tmp / "notes.png"
    text.write_text("not a picture")
    wide = tmp / "wide.png"
    Image.new("RGB", (3000, 8)).save(wide)
    empty = tmp / "empty.png"
    Image.new("RGBA", (64, 64)).save(empty)
    f = gradio_client.handle_file
    return [
        ("/generate", ("   ", 2, 0, 0.7, 2, False), "the prompt is empty"),
        ("/generate", (PROMPT, 2, 0, 0.7, 99, False), "greater than maximum value 32"),
        ("/caption", (f(str(text)), 3, 0), "notes.png: not an image"),
        ("/superres", (f(str(wide)), False, 0), "3000x8 pixels is too large"),
        ("/inpaint", ({"background": f(str(SCENE)), "layers": [f(str(empty))],
                       "composite": None}, "a red circle", 2, 0, 2), "the mask is empty"),
        ("/inpaint", ({"background": f(str(text)), "layers": [], "composite": None},
                      "a red circle", 2, 0, 2), "not an image"),
        ("/inpaint", ({"background": f(str(SCENE)), "layers": [], "composite": None},
                      "", 2, 0, 2), "the mask is empty"),
    ]


def test_bad_input_is_a_message_and_the_server_keeps_serving(client, tmp_path):
    for api, args, message in bad_inputs(tmp_path):
        with pytest.raises(gradio_client.exceptions.AppError) as err:
            client.predict(*args, api_name=api)
        text = str(err.value)
        assert message in text, (api, text)
        assert "Traceback" not in text and "\n" not in text.strip()
    images, _ = client.predict(PROMPT, 1, 0, 0.7, 1, False, api_name="/generate")
    assert read(images[0]["image"]).shape == (32, 32, 3)


def test_one_job_at_a_time_and_the_others_wait(server, client):
    tracked = server[2]
    before = tracked.most
    jobs = [client.submit(PROMPT, 2, seed, 0.7, 4, False, api_name="/generate")
            for seed in range(3)]
    ranks = []
    while not all(job.done() for job in jobs):
        ranks += [job.status().rank for job in jobs if job.status().rank is not None]
        time.sleep(0.02)
    assert all(len(job.result()[0]) == 2 for job in jobs)
    assert tracked.most == max(before, 1)  # never two model calls at once
    assert any(rank > 0 for rank in ranks)  # a job saw its place in the line


def test_every_model_function_shares_one_queue_slot(server):
    fns = {fn.api_name: fn for fn in server[3].fns.values()}
    for name in ("generate", "inpaint", "caption", "superres"):
        assert fns[name].concurrency_id == MODEL_JOBS and fns[name].concurrency_limit == 1


# ---------------------------------------------------------------------------------------------
# the editor's picture and mask, without a server


def test_editor_mask_comes_back_to_the_original_size():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    shown = editor_value(original)["background"]
    assert shown.shape == (320, 320, 3) and np.array_equal(shown, enlarge(original))
    layer = np.zeros((320, 320, 4), np.uint8)
    layer[100:130, 200:215, 3] = 255  # a painted stroke
    loaded = read_editor({"background": shown, "layers": [layer]}, original)
    assert loaded.picture is original
    want = resize_mask(layer[..., 3] >= 128, (32, 32))
    np.testing.assert_array_equal(loaded.mask, want)
    assert loaded.mask.sum() == want.sum() > 0
    # a picture that is not the enlarged original is inpainted as it is
    other = shown.copy()
    other[0, 0] ^= 1
    loaded = read_editor({"background": other, "layers": [layer]}, original)
    assert loaded.picture.shape == (320, 320, 3)
    assert loaded.mask.shape == (320, 320)


def test_log_line_says_who_can_reach_the_page():
    assert "loopback" in where("127.0.0.1", 7860)
    line = where("0.0.0.0", 7860)
    assert "reachable from other machines" in line and "--host 0.0.0.0" in line


# ---------------------------------------------------------------------------------------------
# the command


def test_serve_bad_port(capsys):
    assert main(["serve", "--port", "70000"]) == 2
    assert "--port must be from 1 to 65535" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2  # before loading any model
    assert f"--port {port}: cannot listen there" in capsys.readouterr().err
    assert main(["serve", "--host", "no.such.host.invalid"]) == 2
    assert "--host no.such.host.invalid: not an address" in capsys.readouterr().err


def test_serve_command_starts_and_stops_cleanly():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cogview", "serve", "--port", str(port), "--no-warm"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        # as from a terminal: a shell's background job would pass SIGINT on ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "serving on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "cogview serve exited early"
        assert f"serving on http://127.0.0.1:{port} (loopback: this machine only)" in line
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        images, _ = client.predict(PROMPT, 1, 0, 0.7, 1, False, api_name="/generate")
        assert read(images[0]["image"]).shape == (32, 32, 3)
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    assert rc == 0
    assert not port_open(port)


# ---------------------------------------------------------------------------------------------
# the page in a real browser


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_page_in_headless_chromium(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (the web extra)")
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no chromium on PATH (make setup installs Debian's chromium package)")
    url = server[0]
    shots = [tmp_path]
    if os.environ.get("COGVIEW_SCREENSHOTS"):
        shots.append(Path(os.environ["COGVIEW_SCREENSHOTS"]))
        shots[-1].mkdir(parents=True, exist_ok=True)

    def shot(page, name: str) -> None:
        page.wait_for_timeout(500)  # the status overlay fades out
        page.evaluate("window.scrollTo(0, 0)")
        for folder in shots:
            page.screenshot(path=str(folder / f"{name}.png"))

    outside: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith((url, "data:", "blob:")) else None)
            page.goto(url)
            # text to image: the page's defaults (n=4, the model's reranking)
            page.fill("#prompt textarea", "a large green triangle at the bottom right")
            page.click("#generate-button")
            page.wait_for_selector("#gallery img", timeout=60_000)
            assert page.locator("#gallery img").count() >= 4
            page.wait_for_timeout(300)
            assert "4 image(s) of 32 px" in page.inner_text("#generate-status")
            shot(page, "generate")
            # inpainting: the first picture into the editor, a brush stroke, inpaint
            page.click("#to-inpaint")
            page.wait_for_selector("#editor canvas", timeout=30_000)
            page.wait_for_timeout(1500)
            box = page.locator("#editor canvas").last.bounding_box()
            left, top = box["x"] + box["width"] / 2 - 190, box["y"] + 20  # the picture's corner
            for row in range(3):  # a scribble over the top left 3x3 code cells
                page.mouse.move(left + 25, top + 25 + 45 * row)
                page.mouse.down()
                page.mouse.move(left + 135, top + 25 + 45 * row, steps=2)
                page.mouse.up()
            page.fill("#inpaint-prompt textarea", "a small blue circle at the top left")
            page.click("#inpaint-button")
            page.wait_for_selector("#inpainted img", timeout=60_000)
            page.wait_for_timeout(300)
            status = page.inner_text("#inpaint-status")
            assert "of 32x32 px" in status and "every unmasked pixel kept" in status
            shot(page, "inpaint")
            # captioning and super-resolution of an uploaded picture
            page.get_by_role("tab", name="Captioning").click()
            page.locator("#caption-image input[type=file]").set_input_files(str(SCENE))
            page.wait_for_selector("#caption-image img", timeout=30_000)
            page.click("#caption-button")
            page.wait_for_function(
                "document.querySelector('#captions').innerText.includes('square')",
                timeout=60_000)
            shot(page, "caption")
            page.get_by_role("tab", name="Super-resolution").click()
            page.locator("#superres-image input[type=file]").set_input_files(str(SCENE))
            page.wait_for_selector("#superres-image img", timeout=30_000)
            page.click("#superres-button")
            page.wait_for_selector("#sr-out img", timeout=60_000)
            page.wait_for_timeout(300)
            shot(page, "superres")
        finally:
            browser.close()
    assert outside == []  # the page fetched nothing from outside the server
    for name in ("generate", "inpaint", "caption", "superres"):
        with Image.open(tmp_path / f"{name}.png") as im:
            assert im.size == (1280, 860)
