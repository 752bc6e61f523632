"""`cogview serve`: the local web page (`cogview.web`) on a model, loopback by default."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any

from cogview.errors import UserError


def run_serve(args: argparse.Namespace) -> int:
    from cogview.cli import with_threads

    return with_threads(args.threads, _serve, args)


def _serve(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be from 1 to 65535, got {args.port}")
    check_address(args.host, args.port)  # before minutes of loading, not after
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # nothing leaves the machine
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError:
        raise UserError("the web page needs Gradio: pip install -e '.[web]' (or make serve)"
                        ) from None
    from cogview.api import CogView
    from cogview.web.page import Page, build_page, serve

    start = time.perf_counter()
    pipe = CogView.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    page = Page(pipe)
    warm = page.warm() if not args.no_warm else 0.0
    print(f"loaded {pipe.meta.get('path')} in {time.perf_counter() - start:.1f} s "
          f"(warm-up {warm:.1f} s)", file=sys.stderr)
    if page.sr_note:
        print(f"note: super-resolution of generated images is off: {page.sr_note}",
              file=sys.stderr)
    try:
        serve(build_page(pipe, page), host=args.host, port=args.port)
    except OSError as e:
        raise UserError(f"--host {args.host} --port {args.port}: cannot serve ({e})") from None
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def check_address(host: str, port: int) -> None:
    """A UserError naming the flags when `host:port` cannot be listened on (taken, or not an
    address of this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: not an address ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise UserError(f"--host {host} --port {port}: cannot listen there "
                            f"({e.strerror})") from None


def register(subparsers: Any) -> None:
    from cogview.web import DEFAULT_HOST, DEFAULT_PORT

    p = subparsers.add_parser(
        "serve",
        help="a local web page: generate, paint a mask and inpaint, caption, super-resolve",
        description="Serve a web page (Gradio, the `web` extra) on a model: text-to-image, "
        "inpainting with a mask painted on the picture, captioning and super-resolution. It "
        "listens on the loopback address unless --host says otherwise; one job runs at a "
        "time and the others wait in line.",
        allow_abbrev=False,
    )
    p.add_argument("--model", default=None, metavar="NAME|DIR",
                   help="a shipped model (shapes, fashion) or a model folder (default: shapes)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only; "
                   "0.0.0.0 lets other machines in)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--device", default="cpu", metavar="DEV", help="torch device (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the transformer's weights (default float32)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's choice; 1 is faster on a busy "
                   "machine)")
    p.add_argument("--no-warm", action="store_true",
                   help="skip the warm-up run at start (the first click then pays it)")
    p.set_defaults(func=run_serve)
