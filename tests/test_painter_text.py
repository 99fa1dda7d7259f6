"""The painter's prompt box, in a real headless Chromium against `sdedit up` serving a pixel model
and a Stable Diffusion folder (the tiny random pipeline): shown for text-guided models only, and
what is typed in it reaches the API."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bench.sd_configs import make_sd_folder
from tests.conftest import sdedit_up
from tests.test_painter import ARGS, CHROMIUM, draw, results

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")


@pytest.fixture(scope="module")
def text_service(vp_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    sd_dir = make_sd_folder(tmp_path_factory.mktemp("sd"))
    with sdedit_up([str(vp_dir), f"sd={sd_dir}"], tmp_path_factory.mktemp("up"),
                   timeout=120) as (url, _):
        yield url


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
