"""Statistical tests with analytic scores: Gaussian data has an exact score, so samplers can be judged."""

from __future__ import annotations

import pytest
import torch

from models.sde import VESDE
from models.sdedit import sdedit
from tests.conftest import gaussian_ve_model, gaussian_vp_model

# Data N(mu, std^2) per pixel, chosen well inside the image range so clamping is negligible.
VP_MU, VP_STD = 0.1, 0.2  # model space [-1, 1]
VE_MU, VE_STD = 0.55, 0.1  # model space [0, 1]
N = 256  # samples; with 64 pixels each the moments are known to well under 1 %


def moments(images: torch.Tensor, to_model) -> tuple[float, float]:
    x = to_model(images)
    return float(x.mean()), float(x.std())


# Both samplers under-disperse with few steps on data this narrow (discretisation error), so
# they are judged with every level here and for convergence below.
@pytest.mark.parametrize("sampler,steps", [("ancestral", None), ("ddim", None)])
def test_vp_from_t0_1_matches_the_data_distribution(sampler, steps):
    model = gaussian_vp_model(VP_MU, VP_STD)
    guide = torch.full((N, 1, 8, 8), 0.9)  # far from the data: t0 = 1 must forget it
    out = sdedit(model, guide, t0=1.0, sampler=sampler, steps=steps, seed=0)
    mean, std = moments(out, model.sde.to_model)
    assert mean == pytest.approx(VP_MU, abs=0.01)
    assert std == pytest.approx(VP_STD, rel=0.03)


def test_ddim_converges_to_the_data_std_as_steps_grow():
    model = gaussian_vp_model(VP_MU, VP_STD)
    guide = torch.full((N, 1, 8, 8), 0.9)
    errors = [abs(moments(sdedit(model, guide, t0=1.0, sampler="ddim", steps=steps, seed=0),
                          model.sde.to_model)[1] - VP_STD) for steps in (10, 50, 200)]
    assert errors == sorted(errors, reverse=True), errors


def test_ve_from_t0_1_matches_the_data_distribution():
    model = gaussian_ve_model(VE_MU, VE_STD)
    guide = torch.full((N, 1, 8, 8), 0.05)
    out = sdedit(model, guide, t0=1.0, seed=0)
    mean, std = moments(out, model.sde.to_model)
    assert mean == pytest.approx(VE_MU, abs=0.01)
    assert std == pytest.approx(VE_STD, rel=0.05)


def test_ve_with_too_few_steps_is_still_a_valid_sampler():
    """Strided VE steps use the variance between visited levels, not grid neighbours (pitfall 5)."""
    model = gaussian_ve_model(VE_MU, VE_STD)
    out = sdedit(model, torch.full((N, 1, 8, 8), 0.05), t0=1.0, steps=100, seed=1)
    mean, std = moments(out, model.sde.to_model)
    assert mean == pytest.approx(VE_MU, abs=0.01)
    assert std == pytest.approx(VE_STD, rel=0.08)


def _distance_models():
    # With Gaussian data, Langevin correction at snr 0.16 mixes the whole distribution within a
    # few dozen steps and forgets any guide; the VE case is therefore judged on its predictor.
    ve = VESDE(sigma_min=0.01, sigma_max=50.0, n=1000, snr=0.16, correct_steps=0)
    return [gaussian_vp_model(0.0, 0.5), gaussian_ve_model(0.5, 0.25, sde=ve)]


@pytest.mark.parametrize("model", _distance_models(), ids=["vp", "ve"])
def test_distance_to_the_guide_grows_with_t0(model):
    noise = torch.randn((32, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    guide = (0.5 + 0.25 * noise).clamp(0, 1)  # a plausible sample of the data
    distances = []
    for t0 in (0.02, 0.1, 0.2, 0.35, 0.5):
        # At most 60 steps; t0 = 0.02 has only 20 levels to visit, so it visits them all.
        out = sdedit(model, guide, t0=t0, steps=60 if t0 > 0.06 else None, seed=3)
        distances.append(float((out - guide).pow(2).mean().sqrt()))
    assert distances == sorted(distances), distances
    assert distances[0] < 0.06  # small t0 stays faithful
    assert distances[-1] > 5 * distances[0]
