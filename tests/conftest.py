"""Shared fixtures: tiny random diffusers checkpoints saved with save_pretrained, and analytic models."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from models.network import ScoreModel
from models.sde import VESDE, VPSDE

TINY = 16  # pixels: big enough for two UNet levels, small enough for fast tests


def make_vp_checkpoint(folder: Path, **scheduler_overrides: object) -> Path:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=TINY, in_channels=3, out_channels=3,
                       block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
    unet.save_pretrained(folder)
    # google/ddpm-* configs set clip_sample=True; the loader must ignore it.
    config = {"clip_sample": True, **scheduler_overrides}
    DDPMScheduler(**config).save_pretrained(folder)
    return folder


def make_ve_checkpoint(folder: Path) -> Path:
    from diffusers import ScoreSdeVeScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=TINY, in_channels=3, out_channels=3,
                       block_out_channels=(32, 64), layers_per_block=1,
                       time_embedding_type="fourier", flip_sin_to_cos=True, freq_shift=1,
                       mid_block_scale_factor=2**0.5, norm_eps=1e-6, norm_num_groups=None,
                       attention_head_dim=None,
                       down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
                       up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"))
    unet.save_pretrained(folder)
    ScoreSdeVeScheduler(sigma_max=50.0, snr=0.16).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def vp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vp_checkpoint(tmp_path_factory.mktemp("vp"))


@pytest.fixture(scope="session")
def ve_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ve_checkpoint(tmp_path_factory.mktemp("ve"))


@pytest.fixture(scope="session")
def vp_model(vp_dir: Path) -> ScoreModel:
    from models.loader import load_model

    return load_model(str(vp_dir))


@pytest.fixture(scope="session")
def ve_model(ve_dir: Path) -> ScoreModel:
    from models.loader import load_model

    return load_model(str(ve_dir))


def gaussian_vp_model(mu: float, std: float, resolution: int = 8,
                      sde: VPSDE | None = None) -> ScoreModel:
    """Exact eps of N(mu, std^2) data (model space) under the VP SDE: no network at all."""
    sde = sde or VPSDE.linear()

    def eps(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        a = sde.abar_at(levels.cpu()).float().view(-1, 1, 1, 1)
        var = a * std**2 + (1 - a)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / var

    return ScoreModel(network=eps, sde=sde, resolution=resolution, channels=1, name="gauss-vp")


def gaussian_ve_model(mu: float, std: float, resolution: int = 8,
                      sde: VESDE | None = None) -> ScoreModel:
    """Exact score of N(mu, std^2) data under the VE SDE; the time input is sigma."""
    sde = sde or VESDE(sigma_min=0.01, sigma_max=50.0, n=1000, snr=0.16)

    def score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, 1, 1, 1)
        return -(x - mu) / (std**2 + s**2)

    return ScoreModel(network=score, sde=sde, resolution=resolution, channels=1, name="gauss-ve")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def sdedit_up(models: list[str], folder: Path, timeout: float = 90, **settings: str):
    """`sdedit up` as a user runs it, in `folder`: yields (url, process) once ready, then stops it
    as a user would (Ctrl-C) and makes sure nothing of it is left."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDEDIT_")}
    env.update({"SDEDIT_MODELS": json.dumps(models), "SDEDIT_PORT": str(port),
                "SDEDIT_DATA_DIR": str(folder / "data"), "SDEDIT_METRICS_PORT": "0",
                "OMP_NUM_THREADS": "1", **settings})
    # Output to a file, not a pipe: a pipe nobody reads fills up (64 KiB of access log) and
    # then blocks the API's event loop on its next log line.
    log = folder / "sdedit-up.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "cli", "up"], env=env, cwd=folder,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    process.log = log  # tests read what it printed here
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            assert process.poll() is None, log.read_text()
            time.sleep(0.3)
        else:
            process.kill()
            pytest.fail("sdedit up did not become ready: " + log.read_text())
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture()
def running_service(vp_dir: Path, tmp_path: Path, request: pytest.FixtureRequest):
    """`sdedit up` with the tiny model; indirect parameters add SDEDIT_* settings."""
    with sdedit_up([str(vp_dir)], tmp_path, **getattr(request, "param", {})) as running:
        yield running


def api_client(settings, key: str | None = None):
    """The API on `settings` (an embedded Redis under its data_dir) as a TestClient, sending
    `key`; a test module's `service` fixture yields from it, and the fixtures below use it."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as client:
        if key is not None:
            client.headers["Authorization"] = f"Bearer {key}"
        yield client, settings


@pytest.fixture()
def client(service):
    """The module's API client, on an empty Redis."""
    client, _ = service
    client.app.state.queue.connection.flushall()
    return client


@pytest.fixture()
def settings(service):
    return service[1]


@pytest.fixture(scope="module")
def runner(service):
    """A worker's engine on the same Redis, driven in-process (burst) by the tests."""
    from worker.main import EditRunner, build_engine

    client, settings = service
    return EditRunner(build_engine(settings), client.app.state.queue, settings)


def run_worker(runner, settings) -> None:
    """Run every queued job to its end with an in-process worker (RQ burst mode)."""
    from worker.rq_adapter import BatchWorker

    BatchWorker(settings.models, runner, connection=runner.queue.connection).work(burst=True)
