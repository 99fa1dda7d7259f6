"""Golden tests: our steps equal diffusers' schedulers and the official SDEdit loop, given the same noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, ScoreSdeVeScheduler, UNet2DModel

from models.samplers import ancestral_step, ddim_step, ve_corrector_step, ve_predictor_step
from models.sde import CLEAN, level_sequence
from models.sdedit import sdedit

TOL = dict(rtol=1e-5, atol=1e-5)


def noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def at(values: list[int]) -> torch.Tensor:
    return torch.tensor(values)


def float64_schedule(scheduler):
    """diffusers keeps abar in float32, which loses ~1e-4 of 1 - abar near level 0; the official
    code and ours use float64. Compare the step formulas on the same float64 schedule."""
    scheduler.alphas_cumprod = torch.cumprod(1.0 - scheduler.betas.double(), 0)
    return scheduler


@pytest.fixture(scope="module")
def unet(vp_dir):
    return UNet2DModel.from_pretrained(vp_dir, low_cpu_mem_usage=False).eval()


def test_schedule_equals_diffusers_betas(vp_model, vp_dir):
    betas = DDPMScheduler.from_pretrained(vp_dir).betas
    abar = vp_model.sde.abar_at(torch.arange(1000))
    torch.testing.assert_close(abar.float(), torch.cumprod(1 - betas, 0), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(vp_model.sde.betas).float(), betas, rtol=0, atol=0)


@pytest.mark.parametrize("t", [999, 500, 1, 0])
def test_ancestral_step_equals_ddpm_scheduler_consecutive(vp_model, vp_dir, unet, t):
    scheduler = float64_schedule(DDPMScheduler.from_pretrained(vp_dir, clip_sample=False))
    x = noise((2, 3, 16, 16), 1)
    with torch.no_grad():
        eps = vp_model.predict(x, at([t, t]))
        torch.testing.assert_close(eps, unet(x, t).sample, **TOL)
    ref = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    sde = vp_model.sde
    ours = ancestral_step(x, eps, sde.abar_at(at([t, t])), sde.abar_at(at([t - 1, t - 1])),
                          noise(x.shape, 7))
    torch.testing.assert_close(ours, ref, **TOL)


def test_ancestral_step_equals_ddpm_scheduler_on_a_subsequence(vp_model, vp_dir):
    levels = level_sequence(599, 12)
    scheduler = float64_schedule(DDPMScheduler.from_pretrained(vp_dir, clip_sample=False))
    scheduler.set_timesteps(timesteps=levels)
    sde = vp_model.sde
    x = noise((1, 3, 16, 16), 2)
    for i, (t, prev) in enumerate(zip(levels, levels[1:] + [CLEAN], strict=True)):
        eps = noise(x.shape, 100 + i)
        ref = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        ours = ancestral_step(x, eps, sde.abar_at(at([t])), sde.abar_at(at([prev])),
                              noise(x.shape, i))
        torch.testing.assert_close(ours, ref, **TOL)
        x = ref


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_equals_ddim_scheduler(vp_model, vp_dir, eta):
    scheduler = float64_schedule(
        DDIMScheduler.from_pretrained(vp_dir, clip_sample=False, set_alpha_to_one=True))
    scheduler.set_timesteps(20)
    sde = vp_model.sde
    x = noise((3, 3, 16, 16), 3)
    stride = 1000 // 20
    for i, t in enumerate(scheduler.timesteps.tolist()):
        eps = noise(x.shape, 200 + i)
        z = noise(x.shape, 300 + i)
        ref = scheduler.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        prev = t - stride if t - stride >= 0 else CLEAN
        ours = ddim_step(x, eps, sde.abar_at(at([t] * 3)), sde.abar_at(at([prev] * 3)),
                         torch.full((3,), eta, dtype=torch.float64), z)
        torch.testing.assert_close(ours, ref, **TOL)
        x = ref


def ve_reference(ve_dir):
    scheduler = ScoreSdeVeScheduler.from_pretrained(ve_dir)
    n = scheduler.config.num_train_timesteps
    scheduler.set_timesteps(n)
    scheduler.set_sigmas(n)
    # Same float64 grid as ours (diffusers builds it in float32; see float64_schedule).
    sigmas = torch.exp(torch.linspace(np.log(scheduler.config.sigma_min),
                                      np.log(scheduler.config.sigma_max), n, dtype=torch.float64))
    torch.testing.assert_close(sigmas.float(), scheduler.discrete_sigmas, rtol=1e-5, atol=0)
    scheduler.discrete_sigmas = sigmas
    return scheduler


@pytest.mark.parametrize("i", [0, 700, 1500, 1999])
def test_ve_predictor_equals_score_sde_ve_scheduler(ve_model, ve_dir, i):
    scheduler = ve_reference(ve_dir)
    t = scheduler.timesteps[i]
    k = int((t * (len(scheduler.timesteps) - 1)).long())
    sde = ve_model.sde
    x = noise((2, 3, 16, 16), 4) * float(sde.sigma_at(at([k])))
    with torch.no_grad():
        score = ve_model.predict(x, at([k, k]))
        # The network's time input is sigma at our level (pitfall 2: not t).
        unet = UNet2DModel.from_pretrained(ve_dir, low_cpu_mem_usage=False).eval()
        raw = unet(x, scheduler.discrete_sigmas[k].float().repeat(2)).sample
        # Relative to the score's size (~1/sigma): our copy runs channels_last.
        size = raw.abs().max()
        torch.testing.assert_close(score / size, raw / size, **TOL)
    out = scheduler.step_pred(score, t, x, generator=torch.Generator().manual_seed(5))
    ours, ours_mean = ve_predictor_step(x, score, sde.sigma_at(at([k, k])),
                                        sde.sigma_at(at([k - 1, k - 1])), noise(x.shape, 5))
    # Compared in units of sigma: at sigma = 50 an absolute 1e-5 is below float32 resolution.
    scale = float(sde.sigma_at(at([k])))
    torch.testing.assert_close(ours_mean / scale, out.prev_sample_mean.float() / scale, **TOL)
    torch.testing.assert_close(ours / scale, out.prev_sample.float() / scale, **TOL)


def test_ve_corrector_equals_score_sde_ve_scheduler_per_sample(ve_dir):
    scheduler = ve_reference(ve_dir)
    x = noise((3, 3, 16, 16), 6) * 5
    score = noise(x.shape, 7) * torch.tensor([0.1, 1.0, 10.0]).view(-1, 1, 1, 1)
    z = noise(x.shape, 8)
    ours = ve_corrector_step(x, score, torch.full((3,), scheduler.config.snr,
                                                  dtype=torch.float64), z)
    # The reference averages norms over its batch; ours must equal it run one sample at a time.
    for b in range(3):
        gen = torch.Generator().manual_seed(0)
        zb = torch.randn((1, 3, 16, 16), generator=gen)
        assert torch.equal(zb, noise((1, 3, 16, 16), 0))
        ref = scheduler.step_correct(score[b:b + 1], x[b:b + 1],
                                     generator=torch.Generator().manual_seed(0)).prev_sample
        mine = ve_corrector_step(x[b:b + 1], score[b:b + 1],
                                 torch.full((1,), scheduler.config.snr, dtype=torch.float64), zb)
        torch.testing.assert_close(mine, ref, **TOL)
        zb_batch = ve_corrector_step(x[b:b + 1], score[b:b + 1],
                                     torch.full((1,), scheduler.config.snr, dtype=torch.float64),
                                     z[b:b + 1])
        torch.testing.assert_close(ours[b:b + 1], zb_batch, **TOL)


def official_sdedit_vp(unet, guide01: torch.Tensor, t0: float, seed: int) -> torch.Tensor:
    """ermongroup/SDEdit's VP loop (K = 1, no mask) written from its formulas, float64 schedule."""
    betas = torch.from_numpy(np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    a = (1.0 - betas).cumprod(0)
    gen = torch.Generator().manual_seed(seed)
    x0 = (guide01 * 2 - 1)[None]
    n0 = round(t0 * 1000)
    e = torch.randn(x0.shape, generator=gen)
    x = x0 * a[n0 - 1].sqrt().float() + e * (1.0 - a[n0 - 1]).sqrt().float()
    for i in reversed(range(n0)):
        with torch.no_grad():
            eps = unet(x, torch.tensor([i])).sample
        mean = (x - (betas[i] / (1 - a[i]).sqrt()).float() * eps) / (1 - betas[i]).sqrt().float()
        a_prev = a[i - 1] if i > 0 else torch.tensor(1.0, dtype=torch.float64)
        var = (betas[i] * (1 - a_prev) / (1 - a[i])).clamp(min=1e-20)
        z = torch.randn(x.shape, generator=gen)
        x = mean + (i > 0) * var.sqrt().float() * z
    return ((x[0] + 1) / 2).clamp(0, 1)


def test_sdedit_equals_official_vp_loop(vp_model, unet):
    guide = torch.rand((3, 16, 16), generator=torch.Generator().manual_seed(9))
    ours = sdedit(vp_model, guide, t0=0.06, seed=11)[0]
    torch.testing.assert_close(ours, official_sdedit_vp(unet, guide, 0.06, seed=11), **TOL)
