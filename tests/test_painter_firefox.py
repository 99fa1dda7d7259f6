"""The web painter in Firefox (Debian's firefox-esr, driven over Marionette with real input)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
if FIREFOX is None and os.environ.get("CI"):
    raise RuntimeError("CI must install Firefox (see .ci/run): the painter tests cannot be skipped")
pytestmark = pytest.mark.skipif(FIREFOX is None, reason="Firefox is not installed")


@pytest.fixture()
def firefox(running_service, tmp_path: Path):
    from marionette_driver.marionette import Marionette

    port = free_port()
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "user.js").write_text(
        f'user_pref("marionette.port", {port});\n'
        'user_pref("browser.shell.checkDefaultBrowser", false);\n'
        'user_pref("app.update.enabled", false);\n')
    browser = subprocess.Popen([FIREFOX, "--headless", "--marionette", "--no-remote",
                                "--profile", str(profile)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Marionette(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.start_session()
            break
        except Exception:  # Firefox is still starting; the client raises several types
            if time.monotonic() > deadline:
                browser.kill()
                raise
            time.sleep(0.5)
    client.set_window_rect(width=1280, height=800)
    url, _ = running_service
    client.navigate(url)
    yield client
    client.delete_session()
    browser.terminate()
    browser.wait(timeout=30)


def wait_for(client, script: str, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = client.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {script}")


def drag(client, points: list[tuple[float, float]]) -> None:
    """Real pointer input through the stage, points as fractions of it."""
    rect = client.execute_script("const r = document.getElementById('stage')"
                                 ".getBoundingClientRect(); return [r.left, r.top, r.width];")
    left, top, width = rect
    at = [(int(left + fx * width), int(top + fy * width)) for fx, fy in points]
    sequence = client.actions.sequence("pointer", "mouse", {"pointerType": "mouse"})
    sequence.pointer_move(*at[0]).pointer_down()
    for x, y in at[1:]:
        sequence.pointer_move(x, y, duration=100)
    sequence.pointer_up().perform()


PAINTED = ("(() => { const d = document.getElementById('{canvas}').getContext('2d')"
           ".getImageData(0, 0, 16, 16).data; let n = 0; for (let i = 0; i < d.length; i += 4)"
           " if ({test}) n++; return n; })()")


def test_paint_mask_submit_and_see_results_in_firefox(firefox):
    wait_for(firefox, "document.querySelector('#model').options.length > 0 && "
                      "document.querySelector('#base').width === 16")
    drag(firefox, [(0.2, 0.2), (0.8, 0.5), (0.5, 0.9)])
    assert firefox.execute_script("return " + PAINTED.replace("{canvas}", "base")
                                  .replace("{test}", "d[i + 1] !== 255")) > 0
    firefox.execute_script("document.getElementById('mask-mode').click()")
    drag(firefox, [(0.1, 0.1), (0.3, 0.1)])
    assert firefox.execute_script("return " + PAINTED.replace("{canvas}", "mask")
                                  .replace("{test}", "d[i + 3] > 0")) > 0
    firefox.execute_script("document.querySelector('details').open = true;"
                           "document.getElementById('steps').value = '10';"
                           "document.getElementById('samples').value = '2';"
                           "document.getElementById('submit').click();")
    widths = wait_for(firefox, "(() => { const imgs = [...document.querySelectorAll('.job img')];"
                               " return imgs.length === 2 && imgs.every(i => i.complete) &&"
                               " imgs.map(i => i.naturalWidth); })()")
    assert widths == [16, 16]
    assert firefox.execute_script("return document.querySelector('.job progress').value") > 0
