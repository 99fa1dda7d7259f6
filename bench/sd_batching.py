"""Text-guided edits: step-level batching against diffusers' img2img pipeline one request at a time.

The tiny random Stable Diffusion pipeline of diffusers' tests (bench/sd_configs.py), on the CPU:
`--jobs` edits with different prompts (a few repeated, as batch jobs do), strengths and so step
counts, classifier-free guidance, DDIM with eta 0. Three ways to run them, same work:

- diffusers: StableDiffusionImg2ImgPipeline, one request after another;
- ours, one at a time: our engine given one edit at a time;
- ours, step-level: every edit admitted at once, ONE UNet forward per iteration over all slots
  (conditional and unconditional rows together), each slot at its own level.

Prints throughput (edits/s) and the ratio to diffusers, and the largest difference between our
outputs and diffusers' (the golden tests pin it below 1e-4). The three runs take turns for
`--rounds` rounds and each keeps its best time; the process's CPU time is printed beside the
wall time, since other work on a shared machine inflates wall times unevenly.

    python -m bench.sd_batching --jobs 16 --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.sd_configs import make_sd_folder
from jobs.rules import SamplingParameters
from models.loader import load_model
from models.sde import strength_to_t0
from worker.engine import Engine

PROMPTS = ["a red cat on a sofa", "a lighthouse at dusk", "a bowl of fruit", "a snowy mountain",
           "a red cat on a sofa", "a city street in the rain"]


def workload(jobs: int, steps: int, seed: int, size: int = 64) -> list[dict]:
    """Edits with prompts from PROMPTS, strengths uniform in [0.3, 0.8], random guides."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for i in range(jobs):
        strength = float(0.3 + 0.5 * torch.rand((), generator=rng))
        out.append({"prompt": PROMPTS[i % len(PROMPTS)], "strength": strength, "steps": steps,
                    "guide": torch.rand(3, size, size, generator=rng), "seed": i,
                    "guidance_scale": 7.5})
    return out


class Clock:
    """Wall and process CPU seconds since it was made (CPU time: all of the process's threads)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        synchronize()
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def synchronize() -> None:
    """Wait for the GPU's queued work, so a time measured after it is the real one."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load_pipeline(folder: Path):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(pipe, jobs: list[dict]) -> tuple[tuple[float, float], list[torch.Tensor]]:
    """diffusers' img2img pipeline, one request after another."""
    outputs = []
    clock = Clock()
    with torch.inference_mode():
        for job in jobs:
            outputs.append(pipe(job["prompt"], image=job["guide"][None], strength=job["strength"],
                                num_inference_steps=job["steps"], eta=0.0,
                                guidance_scale=job["guidance_scale"], output_type="pt",
                                generator=torch.Generator().manual_seed(job["seed"])).images[0])
    return clock.read(), outputs


def admit(engine: Engine, i: int, job: dict) -> None:
    t0, steps = strength_to_t0(job["strength"], job["steps"])
    params = SamplingParameters(t0=t0, steps=steps, sampler="ddim", prompt=job["prompt"],
                                guidance_scale=job["guidance_scale"])
    engine.admit(str(i), "sd", job["guide"], None, params, samples=1, seed=job["seed"])


def run_ours(model, jobs: list[dict],
             together: bool) -> tuple[tuple[float, float], list[torch.Tensor], int]:
    """Our engine: every edit admitted at once (step-level batching) or one after another;
    ((wall, CPU seconds), outputs, iterations)."""
    engine = Engine({"sd": model}, max_batch=max(len(jobs), 1))
    results: dict[str, torch.Tensor] = {}
    forwards = 0
    clock = Clock()
    pending = list(enumerate(jobs))
    while pending or engine.busy:
        if pending and (together or not engine.busy):
            batch = pending if together else pending[:1]
            for i, job in batch:
                admit(engine, i, job)
            pending = [] if together else pending[1:]
        for edit in engine.step():
            results[edit.id] = edit.results[0]
        forwards += 1
    return clock.read(), [results[str(i)] for i in range(len(jobs))], forwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="num_inference_steps of each edit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    jobs = workload(args.jobs, args.steps, args.seed)
    sampler_steps = sum(strength_to_t0(j["strength"], j["steps"])[1] for j in jobs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_sd_folder(Path(tmp) / "tiny-sd")
        model = load_model(str(folder))
        pipe = load_pipeline(folder)
        run_ours(model, jobs[:2], together=True)  # warm-up: lazy initialisation, caches
        run_diffusers(pipe, jobs[:1])
        best = {name: (float("inf"), float("inf")) for name in ("diffusers", "alone", "batched")}

        def keep(name: str, times: tuple[float, float]) -> None:
            best[name] = (min(best[name][0], times[0]), min(best[name][1], times[1]))

        for _ in range(args.rounds):
            times, reference = run_diffusers(pipe, jobs)
            keep("diffusers", times)
            keep("alone", run_ours(model, jobs, together=False)[0])
            times, batched, forwards = run_ours(model, jobs, together=True)
            keep("batched", times)
    worst = max(float((a - b).abs().max()) for a, b in zip(batched, reference, strict=True))
    print(f"{args.jobs} edits, {sampler_steps} DDIM steps in all (num_inference_steps "
          f"{args.steps}, strengths 0.3-0.8, guidance 7.5, {len(set(PROMPTS))} prompts), "
          f"tiny SD pipeline, CPU, {args.threads} threads, best of {args.rounds} rounds")
    print("| run | wall time | throughput | vs diffusers | CPU time | vs diffusers (CPU) |")
    print("|---|---|---|---|---|---|")
    wall, cpu = best["diffusers"]
    for name, (seconds, cpu_seconds) in (
            ("diffusers img2img, one at a time", best["diffusers"]),
            ("ours, one at a time", best["alone"]),
            (f"ours, step-level ({forwards} forwards)", best["batched"])):
        print(f"| {name} | {seconds:.2f} s | {args.jobs / seconds:.2f} edits/s | "
              f"{wall / seconds:.2f}x | {cpu_seconds:.2f} s | {cpu / cpu_seconds:.2f}x |")
    print(f"largest difference to diffusers' outputs: {worst:.2e}")


if __name__ == "__main__":
    main()
