"""Reverse-SDE updates between two noise levels, batched with per-sample levels.

Each function is one step of one sampler in the formulas of sdedit-math.md. Coefficients are
(B,) tensors (one value per sample) so samples at different levels share a call; the noise z
is passed in, so callers own the random streams (per-sample generators) and tests can feed the
same noise to a reference implementation.
"""

from __future__ import annotations

import torch


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) float64 coefficients as (B, 1, 1, 1) in the dtype and device of `like`."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


def ancestral_step(x: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor,
                   abar_prev: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The paper's DDPM step ("fixed small" variance, no clipping) from level t to level prev.

    With a sub-sequence of levels, alpha' = abar_t / abar_prev replaces alpha_t, which keeps the
    step exact for any stride (as DDPMScheduler does). Noise is added unless prev is clean.
    """
    alpha = abar_t / abar_prev
    beta = 1.0 - alpha
    # The posterior variance with abar_prev = 1 is 0: no noise into the clean level.
    var = (beta * (1.0 - abar_prev) / (1.0 - abar_t)).clamp(min=1e-20)
    var = torch.where(abar_prev >= 1.0, torch.zeros_like(var), var)
    mean = (x - _per_sample(beta / (1.0 - abar_t).sqrt(), x) * eps) / _per_sample(alpha.sqrt(), x)
    return mean + _per_sample(var.sqrt(), x) * z


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor,
              eta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """DDIM (Song et al. 2021) from level t to level prev; eta = 0 is deterministic."""
    x0_hat = (x - _per_sample((1.0 - abar_t).sqrt(), x) * eps) / _per_sample(abar_t.sqrt(), x)
    sigma = eta * ((1.0 - abar_prev) / (1.0 - abar_t)).sqrt() * (1.0 - abar_t / abar_prev).sqrt()
    direction = (1.0 - abar_prev - sigma**2).clamp(min=0.0).sqrt()
    return (_per_sample(abar_prev.sqrt(), x) * x0_hat + _per_sample(direction, x) * eps
            + _per_sample(sigma, x) * z)


def ve_predictor_step(x: torch.Tensor, score: torch.Tensor, sigma: torch.Tensor,
                      sigma_prev: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse-diffusion predictor from sigma to sigma_prev; returns (x, x_mean).

    g^2 is the variance between the two levels actually visited, so a strided sequence of levels
    stays a correct discretisation (the reference uses grid neighbours only).
    """
    g2 = sigma**2 - sigma_prev**2
    x_mean = x + _per_sample(g2, x) * score
    return x_mean + _per_sample(g2.sqrt(), x) * z, x_mean


def ve_corrector_step(x: torch.Tensor, score: torch.Tensor, snr: torch.Tensor,
                      z: torch.Tensor) -> torch.Tensor:
    """Langevin corrector with step 2 (snr ||z|| / ||s||)^2.

    The reference averages the norms over the batch, which couples samples; here each sample
    uses its own norms, so an edit does not depend on its batch mates (identical at batch 1).
    """
    z_norm = z.flatten(1).norm(dim=1).double()
    s_norm = score.flatten(1).norm(dim=1).double()
    step = 2.0 * (snr * z_norm / s_norm) ** 2
    return x + _per_sample(step, x) * score + _per_sample((2.0 * step).sqrt(), x) * z
