"""A screenshot of the web painter with real results, for the README (needs Chromium).

Starts `sdedit up` on a free port, loads a stroke painting as the base, generates, waits for
the results and saves the page at 1280 x 800.

    python -m bench.painter_screenshot [--guide examples/heart.png] [--out docs/images/painter.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guide", type=Path, default=Path("examples/heart.png"))
    parser.add_argument("--out", type=Path, default=Path("docs/images/painter.png"))
    parser.add_argument("--t0", default="0.55")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "SDEDIT_PORT": str(port), "SDEDIT_METRICS_PORT": "0",
           "SDEDIT_DATA_DIR": tempfile.mkdtemp(prefix="sdedit-shot-")}
    service = subprocess.Popen([sys.executable, "-m", "cli", "up"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium"),
                args=["--headless=new", "--no-sandbox", "--disable-gpu",
                      "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            page.wait_for_function("document.querySelector('#model').options.length > 0")
            page.set_input_files("#load-base", str(args.guide))
            page.evaluate(f"document.querySelector('#t0').value = '{args.t0}';"
                          "document.querySelector('#t0').dispatchEvent(new Event('input'))")
            page.fill("#samples", "6")
            page.click("#submit")
            page.wait_for_function("document.querySelectorAll('.job img').length === 6",
                                   timeout=120_000)
            page.wait_for_timeout(300)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
    finally:
        service.send_signal(signal.SIGINT)
        service.wait(timeout=60)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
