"""Score networks behind one convention: VP networks give eps, VE networks give the score.

`ScoreModel` pairs a network with its SDE. Its `predict(x, levels)` takes model-space samples
and per-sample integer levels and hides each checkpoint's quirks: the time input (a DDPM
timestep index, or sigma for Fourier-embedded VE networks, pitfall 2), the prediction type
(epsilon, sample or v_prediction are all turned into eps), learned-variance channels, and the
network's dtype (schedules stay float32 around a half-precision network, pitfall 7).

Every model kind (this pixel-space `ScoreModel`, and `models.stable_diffusion.LatentModel`) has
the same face towards `SlotBatch`: `encode` a guide into the network's space, `predict` there
under an optional per-sample condition, `decode` back to images, and `space_mask` to carry a
mask into that space. For a pixel model the first and last are just the SDE's data range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from jobs.rules import SamplingParameters
from models.sde import CLEAN, SDE, VESDE

# The network's raw call: (x in model space, time input of shape (B,)) -> raw output.
NetworkFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def to_eps(out: torch.Tensor, x: torch.Tensor, abar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """A VP network's raw output as eps; abar: (B,) float64 at each sample's level."""
    if prediction_type == "epsilon":
        return out
    a = abar.to(x.device, torch.float32).view(-1, 1, 1, 1)
    if prediction_type == "sample":
        return (x - a.sqrt() * out) / (1.0 - a).sqrt()
    return a.sqrt() * out + (1.0 - a).sqrt() * x  # v_prediction


@dataclass
class ScoreModel:
    """A network and the SDE it was trained with, predicting in the SDE's own convention."""

    network: NetworkFn
    sde: SDE
    resolution: int
    channels: int = 3
    prediction_type: str = "epsilon"  # VP only: what the raw network returns
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    name: str = "model"

    text: ClassVar[bool] = False  # takes no prompt
    # The paper's sampler: every pass visits levels down to 0, then steps to clean data.
    lowest_level: ClassVar[int] = 0
    final_level: ClassVar[int] = CLEAN

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}; "
                             f"expected one of {PREDICTION_TYPES}")

    def time_input(self, levels: torch.Tensor) -> torch.Tensor:
        """What the network takes as its time argument at these levels."""
        if isinstance(self.sde, VESDE):
            return self.sde.sigma_at(levels.cpu()).to(self.device, torch.float32)
        return levels.to(self.device, torch.long)

    def raw(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """One network forward at per-sample levels, float32 out."""
        out = self.network(x.to(self.dtype), self.time_input(levels)).float()
        if out.shape[1] == 2 * self.channels:
            # Learned-variance checkpoints: keep the mean part; SDEdit uses the fixed variance.
            out = out[:, : self.channels]
        return out

    def predict(self, x: torch.Tensor, levels: torch.Tensor,
                conditions: Sequence[Any] | None = None) -> torch.Tensor:
        """eps for VP models, the score for VE models (diffusers' Fourier UNet divides by sigma).
        A pixel model is unconditional: `conditions` (one per sample) are all None."""
        out = self.raw(x, levels)
        if isinstance(self.sde, VESDE):
            return out
        return to_eps(out, x, self.sde.abar_at(levels.cpu()), self.prediction_type)

    def condition(self, params: SamplingParameters) -> None:
        """What a sample is conditioned on: nothing (the rules refuse prompts for this model)."""
        return None

    def encode(self, guide: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A guide (C, H, W) in [0, 1] in the network's space; draws no random numbers."""
        return self.sde.to_model(guide)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples (B, C, H, W) in the network's space as images in [0, 1]."""
        return self.sde.from_model(x).clamp(0.0, 1.0)

    def space_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A mask (1, H, W) in the network's space: the pixels themselves."""
        return mask


def diffusers_network(unet: torch.nn.Module) -> NetworkFn:
    """Wrap a diffusers UNet2DModel as a plain (x, t) -> tensor function."""

    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x, t, return_dict=False)[0]

    return forward

