"""The reliability suite at CI size (bench/reliability.py runs the full sizes): real
redis-server with AOF, API and worker processes, real HTTP; nothing accepted is lost."""

from __future__ import annotations

import shutil

import pytest

from bench import reliability

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs Debian's redis-server (.ci/run installs it)")


def test_a_redis_restart_under_load_loses_nothing_and_needs_no_restart(vp_dir, tmp_path):
    figures = reliability.redis_restart(tmp_path, str(vp_dir), jobs=12, down_s=3.0)
    (down,) = figures["while_down"]
    assert down == {"submit": 503, "retry_after": down["retry_after"], "json": True, "readyz": 503}
    assert down["retry_after"]
    assert figures["finished"] == 12 and figures["lost"] == figures["stuck"] == 0
    assert figures["run_twice_to_completion"] == 0
    assert figures["worker_alive_throughout"] and figures["api_alive_throughout"]


def test_killed_workers_lose_no_job(vp_dir, tmp_path):
    figures = reliability.killed_workers(tmp_path, str(vp_dir), jobs=24, kills=2, steps=300)
    assert figures["lost"] == figures["stuck"] == 0
    assert figures["finished"] + figures["failed"] == 24 and figures["kills"] == 2
    assert all("AbandonedJobError" in reason for reason in figures["failure_reasons"])


def test_a_killed_api_leaves_no_half_created_job(vp_dir, tmp_path):
    figures = reliability.killed_api(tmp_path, str(vp_dir), submissions=150, kill_after=0.4)
    assert figures["cut_off"] > 0 and figures["acknowledged"] > 0  # it died mid-way
    assert figures["jobs_without_inputs"] == figures["inputs_without_job"] == 0
    assert figures["queued_without_record"] == figures["acknowledged_but_missing"] == 0


def test_a_burst_beyond_the_queue_limit_gets_429s_and_every_accepted_job_ends(vp_dir, tmp_path):
    figures = reliability.burst(tmp_path, str(vp_dir), submissions=120, clients=16,
                                queue_limit=60)
    assert 60 <= figures["accepted"] < 120 and figures["refused_429"] == 120 - figures["accepted"]
    assert figures["refused_otherwise"] == 0
    assert figures["finished"] == figures["accepted"] and figures["lost"] == figures["stuck"] == 0


def test_one_keys_backlog_delays_another_keys_single_job_by_about_one_job(vp_dir, tmp_path):
    figures = reliability.fairness(tmp_path, str(vp_dir), jobs=40, steps=200)
    assert figures["single_job_queue_position"] <= 1
    assert figures["backlog_queued_when_it_arrived"] >= 20
    # Of the backlog still queued, at most what the worker admits in one round (its room of
    # SDEDIT_MAX_SAMPLES slots) ends before it: not the whole backlog.
    assert figures["of_those_ended_before_it"] <= 8
