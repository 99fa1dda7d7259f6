"""The RQ task of an edit job, runnable by any RQ worker one job at a time.

`sdedit worker` (worker.main) batches these jobs instead of calling this function; a plain
`rq worker --serializer rq.serializers.JSONSerializer sdedit:emoji` runs them one by one here.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from rq import get_current_job

from jobs.contract import EditJob
from jobs.queue import JobQueue
from jobs.settings import get_settings
from models.loader import load_model
from models.network import ScoreModel
from models.sdedit import sdedit
from worker.jobio import ProgressWriter, load_plan, store_results


@lru_cache(maxsize=4)
def cached_model(name: str) -> ScoreModel:
    return load_model(name)


def run_edit(job: dict[str, Any]) -> dict[str, Any]:
    edit = EditJob.model_validate(job)
    settings = get_settings()
    queue = JobQueue(get_current_job().connection, settings)
    model = cached_model(edit.model)
    plan = load_plan(queue, edit, model, settings.max_samples)
    progress = ProgressWriter(queue, settings.progress_interval_s)
    results = sdedit(model, plan.guides, plan.masks, samples=edit.samples, seed=edit.seed,
                     progress=lambda done, total: progress.update(edit.id, done, total),
                     **edit.sampling().model_dump()) if len(plan.guides) else []
    return store_results(queue, edit, plan.finish(list(results)))
