"""An edit's images in the worker: decode the uploaded guide and mask, encode and store results."""

from __future__ import annotations

import io
import math
import time

import torch
from PIL import Image

from jobs.contract import EditJob
from jobs.queue import JobQueue
from models.imageio import prepare_guide, prepare_mask, to_image
from models.network import ScoreModel


class InputsExpired(ValueError):
    pass


def load_inputs(queue: JobQueue, edit: EditJob,
                model: ScoreModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The edit's guide and mask at the model's resolution (the API checked they decode)."""
    guide_bytes, mask_bytes = queue.inputs(edit)
    if guide_bytes is None or (edit.has_mask and mask_bytes is None):
        raise InputsExpired(f"the inputs of job {edit.id} are no longer stored (expired or deleted)")
    guide = prepare_guide(Image.open(io.BytesIO(guide_bytes)), model.resolution, model.channels)
    mask = None
    if edit.has_mask:
        mask = prepare_mask(Image.open(io.BytesIO(mask_bytes)), model.resolution)
    return guide, mask


def encode(image: torch.Tensor, fmt: str) -> bytes:
    buffer = io.BytesIO()
    # WebP lossless, so the kept region of a masked edit stays bit-identical in either format.
    options = {"lossless": True} if fmt == "webp" else {}
    to_image(image).save(buffer, fmt.upper(), **options)
    return buffer.getvalue()


def store_results(queue: JobQueue, edit: EditJob, images: list[torch.Tensor]) -> dict:
    """Encode and store every result image at once; the job's result summary."""
    queue.store_results(edit, [encode(image, edit.output_format) for image in images])
    size = images[0].shape[-1]
    return {"images": len(images), "format": edit.output_format, "width": size, "height": size}


class ProgressWriter:
    """Writes an edit's progress (sampler steps done / total) at most every `interval` seconds."""

    def __init__(self, queue: JobQueue, interval: float) -> None:
        self.queue, self.interval = queue, interval
        self.last: dict[str, float] = {}

    def update(self, job_id: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last.get(job_id, -math.inf) < self.interval:
            return
        self.last[job_id] = now
        self.queue.write_progress(job_id, done, total)
        if done >= total:
            self.last.pop(job_id, None)
