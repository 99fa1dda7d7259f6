"""Prometheus metrics of a worker process (served on SDEDIT_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATCH_OCCUPANCY = Histogram("sdedit_worker_batch_occupancy", "slots (samples) per network forward",
                            ["model"], buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64))
STEP_SECONDS = Histogram("sdedit_worker_step_seconds", "one engine iteration (forward + update)",
                         ["model"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                                             30))
JOB_SECONDS = Histogram("sdedit_worker_job_seconds", "job run time, start to result",
                        ["model"], buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
QUEUE_WAIT_SECONDS = Histogram("sdedit_worker_queue_wait_seconds", "enqueue to start",
                               ["model"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
JOBS = Counter("sdedit_worker_jobs_total", "jobs that ended, by outcome", ["model", "outcome"])
FAILURES = Counter("sdedit_worker_failures_total", "failed jobs by reason", ["model", "reason"])
MODEL_LOAD_SECONDS = Gauge("sdedit_worker_model_load_seconds", "time to load and warm up",
                           ["model"])
ACTIVE_JOBS = Gauge("sdedit_worker_active_jobs", "jobs running in the engine")
OUT_OF_MEMORY = Counter("sdedit_worker_out_of_memory_total",
                        "forwards that ran out of memory and were retried at half the size")
FORWARDS = Counter("sdedit_worker_forwards_total", "network forwards (engine iterations)",
                   ["model"])
JOBS_WAITING = Gauge("sdedit_worker_jobs_waiting", "jobs queued for the model (each >= 1 slot)",
                     ["model"])
SLOTS_WAITING = Gauge("sdedit_worker_slots_waiting",
                      "samples the queued jobs will need (first 1000 queued jobs)", ["model"])
FIRST_STEP_SECONDS = Histogram("sdedit_worker_time_to_first_step_seconds",
                               "enqueue to the job's first network forward", ["model"],
                               buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
REDIS_OUTAGES = Counter("sdedit_worker_redis_outages_total",
                        "main-loop iterations that found Redis unreachable (then retried)")
WAIT_BOUND_ADMISSIONS = Counter("sdedit_worker_wait_bound_admissions_total",
                                "jobs let into a full batch after waiting SDEDIT_MAX_WAIT_S",
                                ["model"])


# Per priority (interactive, batch): see worker.priorities.
SLOTS_RUNNING = Gauge("sdedit_worker_slots_running", "slots in the engine, by job priority",
                      ["model", "priority"])
JOBS_WAITING_BY_PRIORITY = Gauge("sdedit_worker_jobs_waiting_by_priority",
                                 "jobs queued for the model, by priority", ["model", "priority"])
JOB_LATENCY_SECONDS = Histogram("sdedit_worker_job_latency_seconds",
                                "submission to the job's end (finished, failed or canceled), "
                                "by priority", ["model", "priority"],
                                buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
                                         14400, 86400))
BATCH_HELD_ITERATIONS = Counter("sdedit_worker_batch_held_iterations_total",
                                "iterations in which batch jobs sat out for interactive ones",
                                ["model"])


def start_at_zero(model: str) -> None:
    """Create a served model's counters at zero, so rate() and increase() see the first events
    (a series born non-zero loses its first increments)."""
    for outcome in ("finished", "failed", "canceled"):
        JOBS.labels(model, outcome)
    FORWARDS.labels(model)
    WAIT_BOUND_ADMISSIONS.labels(model)
    BATCH_HELD_ITERATIONS.labels(model)
