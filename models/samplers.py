"""Reverse-SDE updates between two noise levels, batched with per-sample levels.

Every update here has the same linear form in the sample x, the network's prediction p and
fresh noise z:

    x_mean = a x + b p        x_next = x_mean + c z

with per-sample coefficients (a, b, c). The `*_coefficients` functions give them from the
formulas of sdedit-math.md (in float64); `apply_update` is the one batched tensor update, so
samples of different samplers and levels share one call. The noise z is passed in: callers own
the random streams (per-sample generators) and tests feed the same noise to a reference.
"""

from __future__ import annotations

import torch

from models.sde import per_sample

Coefficients = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # a, b, c: each (B,)


def ancestral_coefficients(abar_t: torch.Tensor, abar_prev: torch.Tensor) -> Coefficients:
    """The paper's DDPM step ("fixed small" variance, no clipping) from level t to level prev.

    mean = (x - beta' / sqrt(1 - abar_t) eps) / sqrt(alpha'), with alpha' = abar_t / abar_prev,
    which is the official step for consecutive levels and stays exact for any stride (as
    DDPMScheduler does). var = beta' (1 - abar_prev) / (1 - abar_t); none into the clean level.
    """
    alpha = abar_t / abar_prev
    beta = 1.0 - alpha
    var = (beta * (1.0 - abar_prev) / (1.0 - abar_t)).clamp(min=1e-20)
    var = torch.where(abar_prev >= 1.0, torch.zeros_like(var), var)
    a = 1.0 / alpha.sqrt()
    return a, -a * beta / (1.0 - abar_t).sqrt(), var.sqrt()


def ddim_coefficients(abar_t: torch.Tensor, abar_prev: torch.Tensor,
                      eta: torch.Tensor) -> Coefficients:
    """DDIM (Song et al. 2021) from level t to level prev; eta = 0 is deterministic.

    x0_hat = (x - sqrt(1 - abar_t) eps) / sqrt(abar_t);
    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z.
    """
    sigma = eta * ((1.0 - abar_prev) / (1.0 - abar_t)).sqrt() * (1.0 - abar_t / abar_prev).sqrt()
    direction = (1.0 - abar_prev - sigma**2).clamp(min=0.0).sqrt()
    ratio = (abar_prev / abar_t).sqrt()
    return ratio, direction - ratio * (1.0 - abar_t).sqrt(), sigma


def ve_predictor_coefficients(sigma: torch.Tensor, sigma_prev: torch.Tensor) -> Coefficients:
    """Reverse-diffusion predictor from sigma to sigma_prev: x_mean = x + g^2 s, noise g z.

    g^2 is the variance between the two levels actually visited, so a strided sequence of levels
    stays a correct discretisation (the reference uses grid neighbours only).
    """
    g2 = sigma**2 - sigma_prev**2
    return torch.ones_like(g2), g2, g2.sqrt()


def ve_corrector_coefficients(score: torch.Tensor, z: torch.Tensor,
                              snr: torch.Tensor) -> Coefficients:
    """Langevin corrector: x + e s + sqrt(2 e) z with e = 2 (snr ||z|| / ||s||)^2.

    The reference averages the norms over the batch, which couples samples; here each sample
    uses its own norms, so an edit does not depend on its batch mates (identical at batch 1).
    """
    z_norm = z.flatten(1).norm(dim=1).double().cpu()
    s_norm = score.flatten(1).norm(dim=1).double().cpu()
    step = 2.0 * (snr * z_norm / s_norm) ** 2
    return torch.ones_like(step), step, (2.0 * step).sqrt()


def apply_update(x: torch.Tensor, prediction: torch.Tensor, z: torch.Tensor,
                 a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_next, x_mean for (B,) or already broadcast coefficients."""
    if a.dim() == 1:
        a, b, c = (per_sample(v, x) for v in (a, b, c))
    x_mean = a * x + b * prediction
    return x_mean + c * z, x_mean


def ancestral_step(x: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor,
                   abar_prev: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return apply_update(x, eps, z, *ancestral_coefficients(abar_t, abar_prev))[0]


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor,
              eta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return apply_update(x, eps, z, *ddim_coefficients(abar_t, abar_prev, eta))[0]


def ve_predictor_step(x: torch.Tensor, score: torch.Tensor, sigma: torch.Tensor,
                      sigma_prev: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (x, x_mean): the final PC output is the last predictor's x_mean."""
    return apply_update(x, score, z, *ve_predictor_coefficients(sigma, sigma_prev))


def ve_corrector_step(x: torch.Tensor, score: torch.Tensor, snr: torch.Tensor,
                      z: torch.Tensor) -> torch.Tensor:
    return apply_update(x, score, z, *ve_corrector_coefficients(score, z, snr))[0]
