"""Score networks behind one convention: VP networks give eps, VE networks give the score.

`ScoreModel` pairs a network with its SDE. Its `predict(x, levels)` takes model-space samples
and per-sample integer levels and hides each checkpoint's quirks: the time input (a DDPM
timestep index, or sigma for Fourier-embedded VE networks, pitfall 2), the prediction type
(epsilon, sample or v_prediction are all turned into eps), learned-variance channels, and the
network's dtype (schedules stay float32 around a half-precision network, pitfall 7).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from models.sde import SDE, VESDE

# The network's raw call: (x in model space, time input of shape (B,)) -> raw output.
NetworkFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


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

    def predict(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """eps for VP models, the score for VE models (diffusers' Fourier UNet divides by sigma)."""
        out = self.raw(x, levels)
        if isinstance(self.sde, VESDE) or self.prediction_type == "epsilon":
            return out
        a = self.sde.abar_at(levels.cpu()).to(x.device, torch.float32).view(-1, 1, 1, 1)
        if self.prediction_type == "sample":
            return (x - a.sqrt() * out) / (1.0 - a).sqrt()
        return a.sqrt() * out + (1.0 - a).sqrt() * x  # v_prediction


def diffusers_network(unet: torch.nn.Module) -> NetworkFn:
    """Wrap a diffusers UNet2DModel as a plain (x, t) -> tensor function."""

    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x, t, return_dict=False)[0]

    return forward

