"""Step-level batching against one-at-a-time and static batching, on the same engine and model.

Replays one mixed workload (Poisson arrivals; t0 uniform in [0.3, 0.7]; 20-100 steps; a share
of masked jobs) through the worker's Engine under three admission policies:
  (a) one job at a time;
  (b) static batching: when idle, take every waiting job (up to the batch) and run them all
      to the end before taking more;
  (c) step-level batching: waiting jobs join at the next iteration whenever slots are free.
Prints throughput and p50 / p95 latency (arrival to result) for each, and the ratios.
`--load` sets the arrival rate as a fraction of (a)'s measured capacity; `--load saturate`
submits everything at t = 0. The GPU mode prints images per second against batch size for a
UNet with the google/ddpm-church-256 configuration (random weights, fp16, channels_last).

    python -m bench.batching --model emoji --jobs 60 --load 0.7
    python -m bench.batching --model emoji --jobs 60 --load saturate
    python -m bench.batching --gpu
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from jobs.rules import SamplingParameters
from models.loader import load_model
from models.network import ScoreModel
from worker.engine import Engine


@dataclass
class Job:
    id: str
    arrival: float  # seconds after the start
    t0: float
    steps: int
    masked: bool
    admitted: float | None = None
    finished: float | None = None


def workload(count: int, rate: float | None, seed: int) -> list[Job]:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, count) if rate else np.zeros(count)
    arrivals = np.cumsum(gaps) - (gaps[0] if rate else 0.0)
    return [Job(id=f"job{i}", arrival=float(arrivals[i]), t0=float(rng.uniform(0.3, 0.7)),
                steps=int(rng.integers(20, 101)), masked=bool(rng.random() < 0.3))
            for i in range(count)]


def replay(model: ScoreModel, jobs: list[Job], policy: str, max_batch: int) -> list[Job]:
    """Run the workload in real time; returns the jobs with admission and finish times."""
    engine = Engine({"m": model}, max_batch=max_batch)
    res = model.resolution
    guide = torch.rand((3, res, res), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, res, res)
    mask[:, res // 4: 3 * res // 4, res // 4: 3 * res // 4] = 1
    pending = sorted(jobs, key=lambda j: j.arrival)
    by_id = {j.id: j for j in jobs}
    start = time.perf_counter()
    waiting: list[Job] = []
    static_running = False
    while pending or waiting or engine.busy:
        now = time.perf_counter() - start
        while pending and pending[0].arrival <= now:
            waiting.append(pending.pop(0))
        if not engine.busy and not waiting:
            time.sleep(max(0.0, min(0.01, pending[0].arrival - now)))
            continue
        admit = []
        if policy == "single":
            admit = waiting[:1] if not engine.busy else []
        elif policy == "static":
            static_running = static_running and engine.busy
            if not static_running:
                admit = waiting[:max_batch]
                static_running = bool(admit)
        else:  # step-level
            admit = waiting[:engine.free_slots("m")]
        for job in admit:
            waiting.remove(job)
            job.admitted = time.perf_counter() - start
            engine.admit(job.id, "m", guide, mask if job.masked else None,
                         SamplingParameters(t0=job.t0, steps=job.steps), samples=1, seed=0)
        for done in engine.step():
            by_id[done.id].finished = time.perf_counter() - start
    return jobs


def summary(jobs: list[Job]) -> dict[str, float]:
    latencies = sorted(j.finished - j.arrival for j in jobs)
    makespan = max(j.finished for j in jobs) - min(j.arrival for j in jobs)
    return {"throughput": len(jobs) / makespan,
            "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]}


def cpu_mode(args: argparse.Namespace) -> None:
    model = load_model(args.model)
    # (a)'s capacity: jobs per second when jobs run one at a time back to back.
    probe = replay(model, workload(6, None, args.seed + 1), "single", args.max_batch)
    capacity = summary(probe)["throughput"]
    rate = None if args.load == "saturate" else float(args.load) * capacity
    print(f"model={args.model} ({model.resolution} px) max_batch={args.max_batch} jobs={args.jobs} "
          f"threads={torch.get_num_threads()} one-at-a-time capacity={capacity:.2f} jobs/s "
          f"arrivals={'all at t=0' if rate is None else f'Poisson {rate:.2f} jobs/s'}")
    results = {}
    for policy in ("single", "static", "step"):
        jobs = replay(model, workload(args.jobs, rate, args.seed), policy, args.max_batch)
        results[policy] = summary(jobs)
        r = results[policy]
        print(f"{policy:>7}: throughput {r['throughput']:.2f} jobs/s  latency p50 {r['p50']:.2f} s"
              f"  p95 {r['p95']:.2f} s", flush=True)
    a, b, c = results["single"], results["static"], results["step"]
    print(f"step-level / one-at-a-time throughput: {c['throughput'] / a['throughput']:.2f}x")
    print(f"step-level / static throughput: {c['throughput'] / b['throughput']:.2f}x")
    print(f"step-level / static p95 latency: {c['p95'] / b['p95']:.2f}")


def gpu_mode(args: argparse.Namespace) -> None:
    from bench.networks import random_vp_model
    from models.sdedit import Slot, SlotBatch

    model = random_vp_model("church-256", "cuda", torch.float16)
    print(f"{torch.cuda.get_device_name()} church-256 fp16 channels_last")
    for batch_size in (1, 2, 4, 8, 16, 32):
        slots = SlotBatch(model)
        for i in range(batch_size):
            slots.add(Slot(guide=torch.rand(3, 256, 256), params=SamplingParameters(t0=1.0), seed=i))
        with torch.inference_mode():
            for _ in range(3):
                slots.step()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.gpu_steps):
                slots.step()
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - start) / args.gpu_steps
        print(f"batch {batch_size:>3}: {per_step * 1e3:7.1f} ms/step  "
              f"{batch_size / per_step:8.1f} image-steps/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--load", default="0.7", help="fraction of (a)'s capacity, or 'saturate'")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--gpu-steps", type=int, default=20)
    args = parser.parse_args()
    gpu_mode(args) if args.gpu else cpu_mode(args)


if __name__ == "__main__":
    main()
