"""Step-level batching against one-at-a-time and static batching, on the same engine and model.

Replays one mixed workload (Poisson arrivals; t0 uniform in [0.3, 0.7]; 20-100 steps; a share
of masked jobs) through the worker's Engine under three admission policies:
  (a) one job at a time;
  (b) static batching: when idle, take every waiting job (up to the batch) and run them all
      to the end before taking more;
  (c) step-level batching: waiting jobs join at the next iteration whenever slots are free.

Method (so that a ratio means the same on every run):
- warm-up: a short replay of every policy before anything is timed;
- capacity of (a), measured on the same workload (all its jobs at t = 0, one at a time; the
  estimate from the median batch-1 forward times the mean steps is printed beside it);
  `--load` is a fraction of it, and the offered load the drawn arrivals really produce is
  printed;
- the policies run interleaved, `--rounds` times, in a rotated order each round, so machine
  drift lands on every policy alike; each ratio is reported as the median and the range
  (min-max) over the rounds.
`--load saturate` submits everything at t = 0. `--gpu` prints images per second against batch
size for the google/ddpm-church-256 configuration (random weights, fp16, channels_last);
`--network church-256 --device cuda` runs the comparison itself on a GPU.

    python -m bench.batching --model emoji --jobs 40 --load 0.7 --rounds 3
    python -m bench.batching --model emoji --jobs 40 --load saturate --rounds 3
    python -m bench.batching --network church-256 --device cuda --dtype float16 --jobs 48
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


POLICIES = ["single", "static", "step"]


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


def forward_seconds(model: ScoreModel, reps: int) -> float:
    """Median time of one engine iteration of a single slot (forward + update)."""
    engine = Engine({"m": model}, max_batch=1)
    res = model.resolution
    engine.admit("probe", "m", torch.rand(3, res, res), None, SamplingParameters(t0=1.0),
                  samples=1, seed=0)
    times = []
    for _ in range(reps + 3):
        start = time.perf_counter()
        engine.step()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:])  # the first few warm caches up


def pick_model(args: argparse.Namespace) -> ScoreModel:
    if args.network:
        from bench.networks import random_vp_model

        return random_vp_model(args.network, args.device, getattr(torch, args.dtype))
    return load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x (range {min(values):.2f}-{max(values):.2f})"


def compare(args: argparse.Namespace) -> None:
    model = pick_model(args)
    jobs = workload(args.jobs, None, args.seed)
    mean_steps = statistics.mean(j.steps for j in jobs)
    for policy in POLICIES:  # warm-up: every code path once, untimed
        replay(model, workload(3, None, args.seed + 1), policy, args.max_batch)
    forward = forward_seconds(model, args.probe_reps)
    # Capacity of (a) measured on this very workload, all jobs at t = 0, one at a time (the
    # forward-cost estimate alone misses the per-job costs and drifts with the machine).
    capacity = summary(replay(model, jobs, "single", args.max_batch))["throughput"]
    rate = None if args.load == "saturate" else float(args.load) * capacity
    drawn = workload(args.jobs, rate, args.seed)
    if rate is None:
        offered = "all at t=0 (saturation)"
    else:
        span = drawn[-1].arrival - drawn[0].arrival
        real_rate = (len(drawn) - 1) / span if span > 0 else float("inf")
        offered = (f"Poisson {rate:.2f} jobs/s asked, {real_rate:.2f} jobs/s drawn = "
                   f"{real_rate / capacity:.0%} of capacity")
    print(f"model={args.network or args.model} ({model.resolution} px, {args.device}, {args.dtype}) "
          f"max_batch={args.max_batch} jobs={args.jobs} threads={torch.get_num_threads()} "
          f"rounds={args.rounds}\nbatch-1 iteration {forward * 1e3:.1f} ms, mean {mean_steps:.0f} "
          f"steps/job (estimate {1 / (mean_steps * forward):.3f} jobs/s); one-at-a-time capacity "
          f"measured on this workload {capacity:.3f} jobs/s; arrivals: {offered}")
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in POLICIES}
    for round_ in range(args.rounds):
        order = POLICIES[round_ % 3:] + POLICIES[:round_ % 3]  # rotate: drift hits all alike
        for policy in order:
            result = summary(replay(model, workload(args.jobs, rate, args.seed), policy,
                                    args.max_batch))
            runs[policy].append(result)
            print(f"round {round_ + 1} {policy:>6}: {result['throughput']:.3f} jobs/s  "
                  f"p50 {result['p50']:.2f} s  p95 {result['p95']:.2f} s", flush=True)
    for policy in POLICIES:
        r = runs[policy]
        print(f"{policy:>6} median: {statistics.median(x['throughput'] for x in r):.3f} jobs/s  "
              f"p50 {statistics.median(x['p50'] for x in r):.2f} s  "
              f"p95 {statistics.median(x['p95'] for x in r):.2f} s")
    ratio = lambda a, b, key: [x[key] / y[key] for x, y in zip(runs[a], runs[b], strict=True)]  # noqa: E731
    print(f"step-level / one-at-a-time throughput: {spread(ratio('step', 'single', 'throughput'))}")
    print(f"step-level / static throughput:        {spread(ratio('step', 'static', 'throughput'))}")
    print(f"step-level / static p95 latency:       {spread(ratio('step', 'static', 'p95'))}")
    print(f"step-level / static p50 latency:       {spread(ratio('step', 'static', 'p50'))}")


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji", help="bundled name or model folder")
    parser.add_argument("--network", choices=["tiny-32", "church-256"],
                        help="a benchmark network with random weights instead of --model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--load", default="0.7", help="fraction of (a)'s capacity, or 'saturate'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probe-reps", type=int, default=30)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--gpu-steps", type=int, default=20)
    args = parser.parse_args(argv)
    gpu_mode(args) if args.gpu else compare(args)


if __name__ == "__main__":
    main()
