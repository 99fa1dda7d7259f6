"""Where a POST /v1/edits spends its time, in process: the app under cProfile over ASGI.

The embedded Redis, the model's spec published as a worker would, a 24x24 PNG multipart
submission; prints milliseconds per accepted submission and the top functions by own time.

    python -m bench.submit_profile [--submits 500] [--top 25]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import tempfile
import time

import httpx
from PIL import Image

from jobs.queue import JobQueue
from jobs.rules import ModelSpec
from jobs.settings import Settings
from service.app import create_app


async def run(submits: int, top: int) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), (3, 120, 200)).save(buffer, "PNG")
    files, data = {"image": ("g.png", buffer.getvalue())}, {"t0": "0.5", "steps": "10"}
    settings = Settings(data_dir=tempfile.mkdtemp(), models=["emoji"], auth_disabled=True,
                        max_queue_depth=10**7, access_log=False)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        JobQueue(app.state.queue.connection, settings).publish(
            ModelSpec(name="emoji", family="vp", levels=1000, resolution=32, channels=3,
                      max_batch=16), alive_ttl_s=3600)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            for _ in range(50):  # warm-up
                await client.post("/v1/edits", data=data, files=files)
            profile = cProfile.Profile()
            start = time.perf_counter()
            profile.enable()
            for _ in range(submits):
                assert (await client.post("/v1/edits", data=data, files=files)).status_code == 202
            profile.disable()
            elapsed = time.perf_counter() - start
    print(f"{elapsed / submits * 1e3:.2f} ms per accepted submission (in process, under cProfile)")
    pstats.Stats(profile).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=500)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    asyncio.run(run(args.submits, args.top))


if __name__ == "__main__":
    main()
