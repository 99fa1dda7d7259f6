"""A job's inputs and outputs in Redis: decode the uploaded guide and mask, store result images."""

from __future__ import annotations

import io
import math
import time

import torch
from PIL import Image
from redis import Redis

from models.imageio import prepare_guide, prepare_mask, to_image
from models.network import ScoreModel
from service.contract import EditJob, input_key, progress_key, result_key


class InputsExpired(ValueError):
    pass


def load_inputs(connection: Redis, job: EditJob,
                model: ScoreModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The job's guide and mask at the model's resolution (the API checked they decode)."""
    guide_bytes, mask_bytes = connection.mget(input_key(job.id, "guide"), input_key(job.id, "mask"))
    if guide_bytes is None or (job.has_mask and mask_bytes is None):
        raise InputsExpired(f"the inputs of job {job.id} are no longer stored (expired or deleted)")
    guide = prepare_guide(Image.open(io.BytesIO(guide_bytes)), model.resolution, model.channels)
    mask = None
    if job.has_mask:
        mask = prepare_mask(Image.open(io.BytesIO(mask_bytes)), model.resolution)
    return guide, mask


def encode(image: torch.Tensor, fmt: str) -> bytes:
    buffer = io.BytesIO()
    # WebP lossless, so the kept region of a masked edit stays bit-identical in either format.
    options = {"lossless": True} if fmt == "webp" else {}
    to_image(image).save(buffer, fmt.upper(), **options)
    return buffer.getvalue()


def store_results(connection: Redis, job: EditJob, images: list[torch.Tensor], ttl: int) -> dict:
    """Write all result images in one transaction (never a half-written result); a summary.

    The inputs stay until their TTL: if the worker dies before RQ records the success, the
    retried job still finds them.
    """
    with connection.pipeline(transaction=True) as pipeline:
        for k, image in enumerate(images):
            pipeline.set(result_key(job.id, k), encode(image, job.output_format), ex=ttl)
        pipeline.execute()
    size = images[0].shape[-1]
    return {"images": len(images), "format": job.output_format, "width": size, "height": size}


class ProgressWriter:
    """Writes a job's progress (done / total network forwards) at most every `interval` seconds."""

    def __init__(self, connection: Redis, ttl: int, interval: float) -> None:
        self.connection, self.ttl, self.interval = connection, ttl, interval
        self.last: dict[str, float] = {}

    def update(self, job_id: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last.get(job_id, -math.inf) < self.interval:
            return
        self.last[job_id] = now
        key = progress_key(job_id)
        with self.connection.pipeline(transaction=False) as pipeline:
            pipeline.hset(key, mapping={"done": done, "total": total})
            pipeline.expire(key, self.ttl)
            pipeline.execute()
        if done >= total:
            self.last.pop(job_id, None)
