"""The worker's batching engine: jobs share forwards, join mid-way, cancel, survive out-of-memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from jobs.rules import SamplingParameters
from models.sdedit import sdedit
from worker.engine import Engine

GUIDE = torch.rand((3, 16, 16), generator=torch.Generator().manual_seed(0))


def run_to_end(engine: Engine) -> dict[str, list[torch.Tensor]]:
    done = {}
    while engine.busy:
        for job in engine.step():
            done[job.id] = job.results
    return done


def test_jobs_admitted_at_different_times_match_running_alone(vp_model):
    engine = Engine({"m": vp_model}, max_batch=8)
    engine.admit("a", "m", GUIDE, None, SamplingParameters(t0=0.2, steps=6), samples=2, seed=1)
    engine.step()
    engine.step()
    engine.admit("b", "m", GUIDE, None, SamplingParameters(t0=0.4, steps=9, sampler="ddim"), samples=3,
                 seed=5)
    done = run_to_end(engine)
    alone_a = sdedit(vp_model, GUIDE, t0=0.2, steps=6, samples=2, seed=1)
    alone_b = sdedit(vp_model, GUIDE, t0=0.4, steps=9, sampler="ddim", samples=3, seed=5)
    torch.testing.assert_close(torch.stack(done["a"]), alone_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack(done["b"]), alone_b, rtol=0, atol=1e-5)


def test_cancel_frees_the_slots_at_the_next_step(vp_model):
    engine = Engine({"m": vp_model}, max_batch=8)
    engine.admit("a", "m", GUIDE, None, SamplingParameters(t0=0.5, steps=50), samples=4, seed=0)
    engine.admit("b", "m", GUIDE, None, SamplingParameters(t0=0.1, steps=3), samples=1, seed=0)
    engine.step()
    assert engine.free_slots("m") == 3
    assert engine.cancel("a") and not engine.cancel("a")
    assert engine.free_slots("m") == 7
    assert set(run_to_end(engine)) == {"b"}


def test_out_of_memory_halves_the_forward_and_every_job_finishes(vp_model):
    calls = []

    def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        if len(x) > 2:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return vp_model.network(x, t)

    small_memory = dataclasses.replace(vp_model, network=network)
    engine = Engine({"m": small_memory}, max_batch=8)
    for i, t0 in enumerate((0.1, 0.2, 0.3)):
        engine.admit(f"j{i}", "m", GUIDE, None, SamplingParameters(t0=t0, steps=4), samples=2, seed=i)
    done = run_to_end(engine)
    assert engine.oom_events == 2 and engine.max_forward["m"] == 1  # 6 slots: 3 fails, then 1
    assert max(calls[2:]) <= 2
    for i, t0 in enumerate((0.1, 0.2, 0.3)):
        alone = sdedit(vp_model, GUIDE, t0=t0, steps=4, samples=2, seed=i)
        torch.testing.assert_close(torch.stack(done[f"j{i}"]), alone, rtol=0, atol=1e-5)


def test_a_job_too_big_or_for_another_model_is_refused(vp_model):
    engine = Engine({"m": vp_model}, max_batch=2)
    with pytest.raises(ValueError, match="exceed the worker's batch of 2"):
        engine.admit("a", "m", GUIDE, None, SamplingParameters(), samples=3, seed=0)
    with pytest.raises(ValueError, match="not loaded by this worker"):
        engine.admit("a", "other", GUIDE, None, SamplingParameters(), samples=1, seed=0)
    with pytest.raises(ValueError, match="sampler: 'pc' does not apply to a VP model"):
        engine.admit("a", "m", GUIDE, None, SamplingParameters(sampler="pc"), samples=2, seed=0)
    with pytest.raises(ValueError, match="steps: at most 100 for t0=0.1"):
        engine.admit("a", "m", GUIDE, None, SamplingParameters(t0=0.1, steps=101), samples=2,
                     seed=0)
    assert not engine.busy and not engine.edits


def test_models_in_one_worker_take_turns_at_every_iteration(vp_model, ve_model):
    engine = Engine({"vp": vp_model, "ve": ve_model}, max_batch=4)
    params = SamplingParameters(t0=0.5, steps=5)
    vp_edit = engine.admit("a", "vp", GUIDE, None, params, samples=1, seed=0)
    ve_edit = engine.admit("b", "ve", GUIDE, None, params, samples=1, seed=0)
    seen = []
    engine.step(on_forward=lambda model, slots, seconds: seen.append(model))
    assert seen == ["vp", "ve"]
    # Progress counts sampler steps: a VE step is its corrector forward, then its predictor's.
    assert (vp_edit.done, ve_edit.done) == (1, 0) and vp_edit.total == ve_edit.total == 5
    engine.step()
    assert (vp_edit.done, ve_edit.done) == (2, 1)


def test_slots_beyond_max_batch_run_as_extra_forwards_and_match_running_alone(vp_model):
    sizes = []

    def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        return vp_model.network(x, t)

    engine = Engine({"m": dataclasses.replace(vp_model, network=network)}, max_batch=2)
    engine.admit("a", "m", GUIDE, None, SamplingParameters(t0=0.3, steps=4), samples=2, seed=0)
    engine.admit("b", "m", GUIDE, None, SamplingParameters(t0=0.2, steps=3), samples=1, seed=7)
    assert engine.free_slots("m") == -1  # the worker let "b" in over a full batch
    engine.step()
    assert sizes == [2, 1]  # never more than max_batch samples in one forward
    done = run_to_end(engine)
    alone = sdedit(vp_model, GUIDE, t0=0.2, steps=3, samples=1, seed=7)
    torch.testing.assert_close(torch.stack(done["b"]), alone, rtol=0, atol=1e-5)
