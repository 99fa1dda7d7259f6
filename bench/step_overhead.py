"""How much a sampler iteration costs beyond the bare network forward.

One SlotBatch iteration = the network forward + per-slot noise + the sampler update + mask
blending. Prints, for each network and batch size, the median time of each and the overhead
as a fraction of the forward (goal: <= 5 %).

    python -m bench.step_overhead [--configs tiny-32 church-256] [--batches 1 8] [--reps 5]
        [--masks off on]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.networks import CONFIGS, random_vp_model
from jobs.rules import SamplingParameters
from models.sdedit import Slot, SlotBatch


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def measure(name: str, batch: int, reps: int, masked: bool, device: str) -> tuple[float, float]:
    model = random_vp_model(name, device)
    size = model.resolution
    x = torch.randn(batch, 3, size, size, device=device)
    levels = torch.full((batch,), 500)
    forward = median_seconds(lambda: model.network(x, levels.to(device)), reps)
    slots = SlotBatch(model)
    mask = torch.zeros(1, size, size)
    mask[:, : size // 2] = 1
    for i in range(batch):
        # t0 = 1 with every level: the slots never finish during the measurement.
        slots.add(Slot(guide=torch.rand(3, size, size), params=SamplingParameters(t0=1.0), seed=i,
                       mask=mask if masked else None))
    step = median_seconds(slots.step, reps)
    return forward, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--masks", nargs="+", choices=["off", "on"], default=["off", "on"],
                        help="measure without and/or with a mask")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'network':<12} {'batch':>5} {'mask':>5} {'forward ms':>11} {'step ms':>9} "
          f"{'step/forward':>13} {'overhead':>9}")
    for name in args.configs:
        reps = args.reps
        for batch in args.batches:
            for masked in [m == "on" for m in args.masks]:
                forward, step = measure(name, batch, reps, masked, args.device)
                print(f"{name:<12} {batch:>5} {masked!s:>5} {forward * 1e3:>11.1f} "
                      f"{step * 1e3:>9.1f} {step / forward:>13.3f} "
                      f"{(step - forward) / forward:>9.1%}", flush=True)


if __name__ == "__main__":
    main()
