"""`sdedit up` as a user runs it: embedded Redis, real HTTP, a worker process, Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from cli.main import main as cli_main
from service.client import SDEditClient

EXAMPLES = Path(__file__).parents[1] / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def running_service(vp_dir: Path, tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDEDIT_")}
    env.update({"SDEDIT_MODELS": f'["{vp_dir}"]', "SDEDIT_PORT": str(port),
                "SDEDIT_DATA_DIR": str(tmp_path / "data"), "SDEDIT_METRICS_PORT": "0",
                "OMP_NUM_THREADS": "1"})
    process = subprocess.Popen([sys.executable, "-m", "cli", "up"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("sdedit up did not become ready: " + process.stdout.read())
    yield url, process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_up_serves_edits_and_stops_cleanly_on_ctrl_c(running_service, vp_dir, tmp_path):
    url, process = running_service
    with SDEditClient(url) as client:
        job = client.submit(EXAMPLES / "smiley.png", EXAMPLES / "smiley-mouth-mask.png",
                            model=str(vp_dir), t0=0.4, steps=8, samples=2, seed=1)
        state = client.wait(job, timeout=60, progress=False)
        assert state["status"] == "finished" and state["progress"]["step"] == 8
        paths = client.download(job, tmp_path / "client", stem="smiley")
    assert [p.name for p in paths] == ["smiley-0.png", "smiley-1.png"]
    with Image.open(paths[0]) as image:
        assert image.size == (16, 16)

    out = tmp_path / "cli"
    code = cli_main(["submit", str(EXAMPLES / "heart.png"), "--model", str(vp_dir), "--url", url,
                     "--t0", "0.3", "--steps", "4", "--wait", "-o", str(out)])
    assert code == 0 and (out / "heart-0.png").is_file()

    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "auth is OFF" in output and "embedded Redis" in output
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz")


def test_submit_reports_an_unreachable_service(tmp_path, capsys):
    port = free_port()
    code = cli_main(["submit", str(EXAMPLES / "heart.png"), "--url", f"http://127.0.0.1:{port}"])
    assert code == 2
    assert "cannot reach" in capsys.readouterr().err
