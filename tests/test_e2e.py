"""`sdedit up` as a user runs it: embedded Redis, real HTTP, a worker process, Ctrl-C stops all."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from PIL import Image

from cli.main import main as cli_main
from service.client import SDEditClient
from tests.conftest import free_port

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_up_serves_edits_and_stops_cleanly_on_ctrl_c(running_service, vp_dir, tmp_path, capsys):
    url, process = running_service
    with SDEditClient(url) as client:
        job = client.submit(EXAMPLES / "smiley.png", EXAMPLES / "smiley-mouth-mask.png",
                            model=vp_dir.name, t0=0.4, steps=8, samples=2, seed=1)
        state = client.wait(job, timeout=60, progress=False)
        assert state["status"] == "finished" and state["progress"]["step"] == 8
        paths = client.download(job, tmp_path / "client", stem="smiley")
    assert [p.name for p in paths] == ["smiley-0.png", "smiley-1.png"]
    with Image.open(paths[0]) as image, Image.open(EXAMPLES / "smiley.png") as guide:
        assert image.size == guide.size  # a masked edit comes back at the input's size

    out = tmp_path / "cli"
    code = cli_main(["submit", str(EXAMPLES / "heart.png"), "--model", vp_dir.name, "--url", url,
                     "--t0", "0.3", "--steps", "4", "--wait", "-o", str(out)])
    assert code == 0 and (out / "heart-0.png").is_file()
    # The model's own rules reach the CLI through the API's 422, before any job exists.
    code = cli_main(["submit", str(EXAMPLES / "heart.png"), "--model", vp_dir.name, "--url", url,
                     "--sampler", "pc"])
    assert code == 2
    assert capsys.readouterr().err.endswith(
        "sdedit: error: sampler: 'pc' does not apply to a VP model; choose one of ancestral, ddim "
        "(HTTP 422)\n")

    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    output = process.log.read_text()
    assert process.returncode == 0, output
    assert "auth is OFF" in output and "embedded Redis" in output
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz")


def test_a_large_photo_with_a_small_mask_comes_back_at_its_size(running_service, vp_dir, tmp_path):
    """Through real HTTP and a worker process: 1600x1200 in, 1600x1200 out, only the mask
    changed (crop-and-stitch), in PNG and in lossless WebP."""
    import io

    import numpy as np

    url, _ = running_service
    rng = np.random.default_rng(1)
    before = rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    photo, mask = io.BytesIO(), io.BytesIO()
    Image.fromarray(before).save(photo, "PNG")
    mask_image = Image.new("L", (1600, 1200), 0)
    mask_image.paste(255, (1200, 100, 1290, 170))
    mask_image.save(mask, "PNG")
    with SDEditClient(url, timeout=120) as client:
        for output_format in ("png", "webp"):
            job = client.submit(photo.getvalue(), mask.getvalue(), model=vp_dir.name, t0=0.3,
                                steps=3, output_format=output_format)
            assert client.wait(job, timeout=120, progress=False)["status"] == "finished"
            with Image.open(io.BytesIO(client.image(job, 0))) as result:
                after = np.asarray(result.convert("RGB"))
            assert after.shape == before.shape
            changed = np.any(after != before, axis=2)
            assert changed[100:170, 1200:1290].any()
            changed[100:170, 1200:1290] = False
            assert not changed.any()


def test_submit_reports_an_unreachable_service(tmp_path, capsys):
    port = free_port()
    code = cli_main(["submit", str(EXAMPLES / "heart.png"), "--url", f"http://127.0.0.1:{port}"])
    assert code == 2
    assert "cannot reach" in capsys.readouterr().err
