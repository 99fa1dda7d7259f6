"""GPU benchmark of text-guided edits: Stable Diffusion 1.5's configuration with random weights in
float16 at 512 px, images per second against batch size, step-level batching against one
request at a time (ours, and diffusers' img2img pipeline).

For each batch size B, B edits (prompts, strengths in [0.3, 0.8] and so step counts all
different, guidance 7.5, DDIM) run three ways: admitted together into our engine (one UNet
forward per iteration over all of them, conditional and unconditional rows together), given to
our engine one at a time, and through StableDiffusionImg2ImgPipeline one at a time. Random
weights cost what trained ones do; no download is needed.

    python -m bench.gpu_sd --batches 1 2 4 8 16 --steps 25

Needs a CUDA GPU and stops at once with a message without one (on the CPU: bench.sd_batching).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bench.sd_batching import run_diffusers, run_ours, workload
from bench.sd_configs import build_pipeline, latent_model
from models.sde import strength_to_t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=25, help="num_inference_steps of each edit")
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench.gpu_sd needs a CUDA GPU and torch.cuda.is_available() is False; on the CPU "
              "run python -m bench.sd_batching", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    pipe = build_pipeline("sd15", device="cuda", dtype=dtype)
    model = latent_model(pipe)
    print(f"SD 1.5 configuration, random weights, {args.dtype}, 512 px, "
          f"{torch.cuda.get_device_name()}; built in {time.perf_counter() - start:.1f} s",
          flush=True)
    warm = workload(2, args.steps, seed=99, size=model.resolution)
    run_ours(model, warm, together=True)
    run_diffusers(pipe, warm[:1])
    print("| batch | DDIM steps | step-level (ours) | one at a time (ours) | one at a time "
          "(diffusers) | step-level vs diffusers |")
    print("|---|---|---|---|---|---|")
    for batch in args.batches:
        jobs = workload(batch, args.steps, seed=batch, size=model.resolution)
        steps = sum(strength_to_t0(j["strength"], j["steps"])[1] for j in jobs)
        t_batched = run_ours(model, jobs, together=True)[0][0]  # wall seconds
        t_alone = run_ours(model, jobs, together=False)[0][0]
        t_diffusers = run_diffusers(pipe, jobs)[0][0]
        print(f"| {batch} | {steps} | {batch / t_batched:.2f} img/s | {batch / t_alone:.2f} img/s "
              f"| {batch / t_diffusers:.2f} img/s | {t_diffusers / t_batched:.2f}x |", flush=True)
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
