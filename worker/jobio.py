"""An edit's images in the worker: decode the uploaded guide and mask into the edit's plan
(crop-and-stitch or whole image), encode and store the output images."""

from __future__ import annotations

import io
import math
import time

from PIL import Image
from redis.exceptions import RedisError

from jobs.contract import EditJob
from jobs.queue import JobQueue
from models.network import ScoreModel
from models.regions import EditPlan, plan_edit

# Modes each format stores as they are; anything else is converted (the pixels outside a mask
# stay exactly PIL's conversion of the input's).
NATIVE_MODES = {"png": ("1", "L", "LA", "P", "RGB", "RGBA"), "webp": ("RGB", "RGBA")}


class InputsExpired(ValueError):
    pass


def load_plan(queue: JobQueue, edit: EditJob, model: ScoreModel, max_slots: int) -> EditPlan:
    """The edit's plan from its stored inputs (the API checked they decode). A crop-and-stitch
    edit gets at most max_slots // samples regions (nearby regions are merged), so a job never
    needs more engine slots than the largest job the worker admits."""
    guide_bytes, mask_bytes = queue.inputs(edit)
    if guide_bytes is None or (edit.has_mask and mask_bytes is None):
        raise InputsExpired(f"the inputs of job {edit.id} are no longer stored (expired or deleted)")
    image = Image.open(io.BytesIO(guide_bytes))
    mask = Image.open(io.BytesIO(mask_bytes)) if edit.has_mask else None
    return plan_edit(image, mask, model.resolution, model.channels, samples=edit.samples,
                     region=edit.region, output_size=edit.output_size, padding=edit.padding,
                     feather=edit.feather, max_regions=max(1, max_slots // edit.samples))


def encode(image: Image.Image, fmt: str) -> bytes:
    if image.mode not in NATIVE_MODES[fmt]:
        alpha = image.mode in ("LA", "PA") or "transparency" in image.info
        image = image.convert("RGBA" if alpha else "RGB")
    buffer = io.BytesIO()
    # WebP lossless, so the kept region of a masked edit stays bit-identical in either format.
    options = {"lossless": True, "exact": True} if fmt == "webp" else {}
    image.save(buffer, fmt.upper(), **options)
    return buffer.getvalue()


def store_results(queue: JobQueue, edit: EditJob, images: list[Image.Image]) -> dict:
    """Encode and store every output image at once; the job's result summary."""
    queue.store_results(edit, [encode(image, edit.output_format) for image in images])
    width, height = images[0].size
    return {"images": len(images), "format": edit.output_format, "width": width, "height": height}


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
        try:
            self.queue.write_progress(job_id, done, total)
        except RedisError:  # progress is advisory: a Redis outage must not stop the sampling
            self.last.pop(job_id, None)
            return
        if done >= total:
            self.last.pop(job_id, None)
