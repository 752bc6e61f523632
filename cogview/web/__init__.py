"""A local web page on top of `CogView`: text-to-image, inpainting with a painted mask,
captioning and super-resolution (`cogview serve`; Gradio, the optional `web` extra).

    from cogview import CogView
    from cogview.web.page import Page, build_page, serve

    pipe = CogView.from_pretrained("shapes")
    page = Page(pipe)
    page.warm()                                  # the first click pays no start-up cost
    serve(build_page(pipe, page))                # http://127.0.0.1:7860 until Ctrl-C

Every button calls the same `CogView` methods as the command line. One job runs at a time (one
concurrency group for everything that runs the model); the others wait with their place in
line shown. Nothing is fetched from the internet: analytics are off, there is no share link,
and the default theme's fonts ship inside Gradio. This module imports no Gradio, so the command
line can name the defaults without it.
"""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def where(host: str, port: int) -> str:
    """The log line of a server: its address, and whether other machines can reach it."""
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    if host in LOOPBACK:
        return f"serving on {url} (loopback: this machine only)"
    return (f"serving on {url}: reachable from other machines on the network, as --host "
            f"{host} asks (anyone who can reach it can use the page)")
