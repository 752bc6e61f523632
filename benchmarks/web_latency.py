"""How long the web page takes to answer: from a click on Generate to the pictures.

    .venv/bin/python benchmarks/web_latency.py [--model shapes] [--runs 5] [--browser]

The script starts `cogview serve` on a free loopback port the way a user does (model loading
and the warm-up run included; `--no-warm` measures a server without it), waits for its log
line, then asks for text-to-image with the page's defaults (n = 4, seed 0, the model's
temperature and reranking, no super-resolution) through `gradio_client`: the first request
after start-up, then `--runs` more with other seeds. A request's time runs from the call to
the pictures downloaded from the server, so it holds the queue, sampling, reranking, PNG
encoding and the transfer.

With `--browser` it also loads the page in headless Chromium (Playwright driving the system's
`chromium`) and times a click on Generate until four pictures are in the gallery: once as the
first generation of a fresh server (the browser goes first, before any client request), then
`--runs` times more.

The server runs with torch's default threads unless `--threads` says otherwise; figures depend
on what else runs on the machine (the JSON records the load average at the start).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, port: int, warm: bool, threads: int | None
                 ) -> tuple[subprocess.Popen, float]:
    """`cogview serve` on `port`; seconds until it says where it serves."""
    cmd = [sys.executable, "-m", "cogview", "serve", "--port", str(port)]
    if threads:
        cmd += ["--threads", str(threads)]
    if model:
        cmd += ["--model", model]
    if not warm:
        cmd.append("--no-warm")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    while True:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise SystemExit(f"cogview serve exited with status {proc.returncode}")
        if line:
            print(f"  server: {line.rstrip()}", file=sys.stderr)
        if "serving on" in line:
            return proc, time.perf_counter() - start


def page_defaults(client) -> dict:
    """The Generate inputs by name as the page shows them (its defaults), from the API
    description, in the endpoint's order."""
    info = client.view_api(print_info=False, return_format="dict")
    params = info["named_endpoints"]["/generate"]["parameters"]
    return {p["parameter_name"]: p["parameter_default"] for p in params}


def by_client(url: str, runs: int) -> dict:
    from gradio_client import Client

    client = Client(url, verbose=False)
    defaults = page_defaults(client)
    times = []
    for k in range(runs + 1):
        args = [k if name == "seed" else value for name, value in defaults.items()]
        start = time.perf_counter()
        images, status = client.predict(*args, api_name="/generate")
        times.append(time.perf_counter() - start)
        print(f"  client request {k}: {times[-1]:.2f} s ({status})", file=sys.stderr)
    return {"defaults": defaults,
            "first_s": times[0], "median_s": statistics.median(times[1:]), "times_s": times}


def by_browser(url: str, runs: int) -> dict:
    from playwright.sync_api import sync_playwright

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise SystemExit("--browser: no chromium on PATH (make setup installs it)")
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url)
            page.wait_for_selector("#generate-button")
            for k in range(runs + 1):
                seed = page.locator("#seed input")
                seed.fill(str(k))
                seed.press("Tab")  # the page reads the box when it loses focus
                start = time.perf_counter()
                page.click("#generate-button")
                # four pictures loaded, and the status line of this click's seed
                page.wait_for_function(
                    "(k) => { const g = document.querySelector('#gallery');"
                    " const s = document.querySelector('#generate-status').innerText;"
                    " const imgs = [...g.querySelectorAll('img')];"
                    " return s.includes(`seed ${k})`) && !s.includes('processing')"
                    " && imgs.length >= 4 && imgs.every(i => i.complete); }",
                    arg=k, timeout=120_000, polling=20)
                times.append(time.perf_counter() - start)
                status = page.inner_text("#generate-status")
                print(f"  browser click {k}: {times[-1]:.2f} s ({status})", file=sys.stderr)
        finally:
            browser.close()
    return {"first_s": times[0], "median_s": statistics.median(times[1:]), "times_s": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a shipped model name or a folder (default: "
                    "the shipped shapes model)")
    ap.add_argument("--runs", type=int, default=5, help="requests after the first (default 5)")
    ap.add_argument("--browser", action="store_true",
                    help="also time clicks in headless Chromium (goes first)")
    ap.add_argument("--no-warm", action="store_true", help="serve without the warm-up run")
    ap.add_argument("--threads", type=int, help="the server's torch threads (default: torch's "
                    "choice)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc, startup = start_server(args.model, port, warm=not args.no_warm, threads=args.threads)
    report: dict = {"startup_s": startup, "warm": not args.no_warm, "threads": args.threads,
                    "cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
    try:
        if args.browser:
            report["browser"] = by_browser(url, args.runs)
        report["client"] = by_client(url, args.runs)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    print(f"server start-up (load, warm-up): {startup:.1f} s")
    if "browser" in report:
        b = report["browser"]
        print(f"browser, click to 4 pictures shown: first {b['first_s']:.2f} s, then median "
              f"{b['median_s']:.2f} s over {args.runs}")
    c = report["client"]
    first = "first" if "browser" not in report else "first client request"
    print(f"gradio_client, request to 4 pictures downloaded: {first} {c['first_s']:.2f} s, "
          f"then median {c['median_s']:.2f} s over {args.runs}")
    print(f"page defaults: {json.dumps(c['defaults'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
