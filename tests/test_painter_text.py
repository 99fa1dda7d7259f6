"""The painter's prompt box, in a real headless Chromium against `sdedit up` serving a pixel model
and a Stable Diffusion folder (the tiny random pipeline): shown for text-guided models only, and
what is typed in it reaches the API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.sd_configs import make_sd_folder
from tests.conftest import free_port
from tests.test_painter import ARGS, CHROMIUM, draw, results

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")


@pytest.fixture(scope="module")
def text_service(vp_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    sd_dir = make_sd_folder(tmp_path_factory.mktemp("sd"))
    folder = tmp_path_factory.mktemp("up")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDEDIT_")}
    env.update({"SDEDIT_MODELS": json.dumps([str(vp_dir), f"sd={sd_dir}"]),
                "SDEDIT_PORT": str(port), "SDEDIT_DATA_DIR": str(folder / "data"),
                "SDEDIT_METRICS_PORT": "0", "OMP_NUM_THREADS": "1"})
    process = subprocess.Popen([sys.executable, "-m", "cli", "up"], env=env, cwd=folder,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("sdedit up did not become ready: " + process.stdout.read())
    yield url
    process.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.communicate(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_the_prompt_box_appears_for_a_text_model_and_its_text_reaches_the_api(text_service,
                                                                             vp_dir):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(text_service)
        page.wait_for_function("document.querySelector('#model').options.length === 2")
        page.select_option("#model", vp_dir.name)
        assert page.locator("#text-row").is_hidden()
        page.select_option("#model", "sd")
        page.wait_for_function("document.querySelector('#base').width === 64")
        assert page.locator("#text-row").is_visible()
        assert page.input_value("#guidance-scale") == "7.5"  # the model's published default
        draw(page, [(0.2, 0.2), (0.8, 0.6)])
        page.fill("#prompt", "a red cat")
        page.fill("#negative-prompt", "blurry")
        page.fill("#guidance-scale", "4")
        page.click("summary")
        page.fill("#steps", "2")
        page.fill("#samples", "1")
        with page.expect_response("**/v1/edits") as response:
            page.click("#submit")
        job = response.value.json()["id"]
        sent = httpx.get(f"{text_service}/v1/edits/{job}").json()["parameters"]
        assert (sent["prompt"], sent["negative_prompt"], sent["guidance_scale"]) == (
            "a red cat", "blurry", 4.0)
        images = results(page)
        assert len(images) == 1 and images[0].shape == (64, 64, 3)
        browser.close()
