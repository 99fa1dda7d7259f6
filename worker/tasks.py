"""The RQ task of an edit job, runnable by any RQ worker one job at a time.

`sdedit worker` (worker.main) batches these jobs instead of calling this function; a plain
`rq worker --serializer rq.serializers.JSONSerializer sdedit:emoji` runs them one by one here.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from rq import get_current_job

from models.loader import load_model
from models.network import ScoreModel
from models.sdedit import sdedit
from service.contract import EditJob
from service.settings import get_settings
from worker.jobio import ProgressWriter, load_inputs, store_results


@lru_cache(maxsize=4)
def cached_model(name: str) -> ScoreModel:
    return load_model(name)


def run_edit(job: dict[str, Any]) -> dict[str, Any]:
    contract = EditJob.model_validate(job)
    settings = get_settings()
    connection = get_current_job().connection
    model = cached_model(contract.model)
    guide, mask = load_inputs(connection, contract, model)
    progress = ProgressWriter(connection, settings.result_ttl_s, settings.progress_interval_s)
    images = sdedit(model, guide, mask, t0=contract.t0, steps=contract.steps,
                    sampler=contract.sampler, eta=contract.eta, repeats=contract.repeats,
                    samples=contract.samples, seed=contract.seed,
                    progress=lambda done, total: progress.update(contract.id, done, total))
    return store_results(connection, contract, list(images), settings.result_ttl_s)
