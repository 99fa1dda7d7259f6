"""Noise schedules of the two SDE families SDEdit uses: variance-preserving and variance-exploding.

Both are discrete grids of noise levels indexed 0..N-1 (0 = least noise). Level -1 means clean
data, so the last reverse step of any sequence goes from level 0 to level -1. Per-sample levels
are integer tensors, so one call handles a batch whose samples sit at different levels.
Schedules are computed in float64 and handed out in float32 (pitfall 7 of sdedit-math.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from jobs.rules import start_level

CLEAN = -1  # the level index of noise-free data


def level_sequence(start: int, steps: int, lowest: int = 0) -> list[int]:
    """Descending levels from `start` to `lowest` (0, or 1 for Stable Diffusion models) in at
    most `steps` reverse steps.

    With steps >= start - lowest + 1 every level is visited (the paper's sampler). Fewer steps
    take an evenly spaced sub-sequence that still starts exactly at `start`, so t0 is honoured
    exactly (diffusers' img2img "strength" rounding loses this; diffusers issue 7651).
    """
    if start < 0:
        raise ValueError(f"start level must be >= 0, got {start}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lowest = min(lowest, start)
    if steps >= start - lowest + 1:
        return list(range(start, lowest - 1, -1))
    grid = np.round(np.linspace(start, lowest, steps)).astype(int)
    return sorted({int(v) for v in grid}, reverse=True)


def strength_to_t0(strength: float, num_inference_steps: int, num_levels: int = 1000,
                   steps_offset: int = 1) -> tuple[float, int]:
    """Our (t0, steps) for diffusers' img2img (strength, num_inference_steps).

    With r = N // M and k = min(int(M * strength), M), diffusers' img2img pipeline (timestep
    spacing "leading"; its Stable Diffusion pipelines force steps_offset = 1) visits the levels
    (k-1) r + o, ..., r + o, o and then its final level. That is our sequence for a model whose
    lowest level is o (Stable Diffusion models: 1) with steps = k and
    t0 = ((k-1) r + o + 1) / N (start level n0 - 1 = (k-1) r + o). t0 != strength: diffusers
    rounds the start down to its grid of M steps.
    """
    if not 0.0 < strength <= 1.0 or num_inference_steps < 1:
        raise ValueError(f"need strength in (0, 1] and num_inference_steps >= 1, got "
                         f"{strength!r} and {num_inference_steps!r}")
    stride = num_levels // num_inference_steps
    k = min(int(num_inference_steps * strength), num_inference_steps)
    if k < 1:
        raise ValueError(f"strength {strength} of {num_inference_steps} steps runs no step")
    return ((k - 1) * stride + steps_offset + 1) / num_levels, k


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values of shape (B,) as (B, 1, 1, 1) in the dtype and device of `like`."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class VPSDE:
    """Variance-preserving (DDPM) schedule: x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) z."""

    betas: tuple[float, ...]

    family = "vp"
    data_range = (-1.0, 1.0)

    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02, n: int = 1000) -> VPSDE:
        return cls(tuple(np.linspace(beta_start, beta_end, n, dtype=np.float64).tolist()))

    @property
    def num_levels(self) -> int:
        return len(self.betas)

    @cached_property
    def abar(self) -> torch.Tensor:
        """abar with a leading 1 for the clean level: abar_with_clean[level + 1]."""
        betas = torch.tensor(self.betas, dtype=torch.float64)
        return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])

    def start_level(self, t0: float) -> int:
        """The official code's n0 = round(t0 * N) noise levels, i.e. start at index n0 - 1."""
        return start_level(self.family, self.num_levels, t0)

    def abar_at(self, levels: torch.Tensor) -> torch.Tensor:
        """abar at integer levels (CLEAN gives 1), float64, shape of `levels`."""
        return self.abar.to(levels.device)[levels.long() + 1]

    def perturb(self, x0: torch.Tensor, levels: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        a = per_sample(self.abar_at(levels), x0)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * z

    def to_model(self, image: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] to the network's data range [-1, 1]."""
        return image * 2.0 - 1.0

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1.0) / 2.0


@dataclass(frozen=True)
class VESDE:
    """Variance-exploding (NCSN++) schedule: x = x_0 + sigma z on a geometric grid of N sigmas.

    The defaults are diffusers' ScoreSdeVeScheduler defaults, so a scheduler config that omits a
    key means the same here as in diffusers.
    """

    sigma_min: float = 0.01
    sigma_max: float = 1348.0
    n: int = 2000
    snr: float = 0.15
    correct_steps: int = 1

    family = "ve"
    data_range = (0.0, 1.0)

    @property
    def num_levels(self) -> int:
        return self.n

    @cached_property
    def sigmas(self) -> torch.Tensor:
        """Grid sigma_k = sigma_min (sigma_max / sigma_min)^(k / (N-1)) with a leading 0 for CLEAN."""
        k = torch.arange(self.n, dtype=torch.float64)
        grid = torch.exp(math.log(self.sigma_min) + k / (self.n - 1)
                         * (math.log(self.sigma_max) - math.log(self.sigma_min)))
        return torch.cat([torch.zeros(1, dtype=torch.float64), grid])

    def start_level(self, t0: float) -> int:
        """The grid index of sigma(t0), t on the grid k / (N - 1)."""
        return start_level(self.family, self.num_levels, t0)

    def sigma_at(self, levels: torch.Tensor) -> torch.Tensor:
        return self.sigmas.to(levels.device)[levels.long() + 1]

    def perturb(self, x0: torch.Tensor, levels: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return x0 + per_sample(self.sigma_at(levels), x0) * z

    def to_model(self, image: torch.Tensor) -> torch.Tensor:
        """VE networks take [0, 1] data and centre it themselves."""
        return image

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        return x


SDE = VPSDE | VESDE
