"""Correctness checks that need a reduced-precision network: fp16 (bf16) output against fp32.

The same SDEdit edit (church-256 configuration with random weights, or any `--network`) runs
with the network in float32 and in a half precision, schedule maths in float64/float32 around
it either way; the script prints the largest and mean absolute differences of the edited images
(in [0, 1]) and of one eps prediction, and fails if they exceed the stated bounds.

    python -m bench.gpu_checks --device cuda --dtype float16          # the GPU check
    python -m bench.gpu_checks --device cpu --dtype bfloat16 --network tiny-32 --steps 5
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench.networks import random_vp_model
from models.sdedit import sdedit

# Bounds on images in [0, 1]: a half-precision network moves a pixel by far less than one
# 8-bit level on average, and no pixel by more than a few levels.
MEAN_BOUND = {"float16": 2e-3, "bfloat16": 1e-2}
MAX_BOUND = {"float16": 0.05, "bfloat16": 0.15}


def compare(network: str, device: str, dtype: str, steps: int, t0: float) -> dict[str, float]:
    reference = random_vp_model(network, device, torch.float32)
    half = random_vp_model(network, device, getattr(torch, dtype))
    res = reference.resolution
    guide = torch.rand((2, 3, res, res), generator=torch.Generator().manual_seed(0))
    x = torch.randn((2, 3, res, res), generator=torch.Generator().manual_seed(1)).to(device)
    levels = torch.tensor([100, 600])
    with torch.inference_mode():
        eps32, eps16 = reference.predict(x, levels), half.predict(x, levels)
    out32 = sdedit(reference, guide, t0=t0, steps=steps, seed=3)
    out16 = sdedit(half, guide, t0=t0, steps=steps, seed=3)
    diff = (out16 - out32).abs()
    return {"image_max_abs": float(diff.max()), "image_mean_abs": float(diff.mean()),
            "eps_rel_l2": float((eps16 - eps32).norm() / eps32.norm())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="church-256", choices=["tiny-32", "church-256"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--t0", type=float, default=0.5)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_checks: no CUDA device is visible (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    figures = compare(args.network, args.device, args.dtype, args.steps, args.t0)
    ok = (figures["image_mean_abs"] <= MEAN_BOUND[args.dtype]
          and figures["image_max_abs"] <= MAX_BOUND[args.dtype])
    print(f"{args.network} {args.dtype} vs float32 on {args.device}, t0={args.t0}, "
          f"{args.steps} steps: image max |diff| {figures['image_max_abs']:.4f} (bound "
          f"{MAX_BOUND[args.dtype]}), mean {figures['image_mean_abs']:.5f} (bound "
          f"{MEAN_BOUND[args.dtype]}), eps relative L2 {figures['eps_rel_l2']:.2e}: "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
