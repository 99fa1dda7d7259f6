"""Loading diffusers checkpoints: SDE inference from the scheduler config and clear failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from models.loader import ModelLoadError, load_model, sde_from_scheduler_config
from models.network import ScoreModel
from models.sde import VESDE, VPSDE
from tests.conftest import make_vp_checkpoint


def test_ddpm_folder_loads_as_vp_and_ignores_clip_sample(vp_model, vp_dir):
    assert json.loads((vp_dir / "scheduler_config.json").read_text())["clip_sample"] is True
    assert isinstance(vp_model.sde, VPSDE)
    assert vp_model.resolution == 16 and vp_model.channels == 3
    assert vp_model.sde.num_levels == 1000
    assert vp_model.sde.betas[0] == pytest.approx(1e-4) and vp_model.sde.betas[-1] == pytest.approx(0.02)
    # The folder's own scheduler clips x0_hat; the paper's sampler (ours) must not.
    from diffusers import DDPMScheduler

    from models.samplers import ancestral_step

    x = torch.full((1, 3, 16, 16), 0.5)
    eps = torch.full_like(x, -300.0)  # x0_hat = 3.5, far outside [-1, 1]
    sde = vp_model.sde
    # The last step (level 0 to clean) adds no noise, so the schedulers are deterministic here.
    ours = ancestral_step(x, eps, sde.abar_at(torch.tensor([0])),
                          sde.abar_at(torch.tensor([-1])), torch.randn_like(x))
    clipping = DDPMScheduler.from_pretrained(vp_dir)
    clipping.alphas_cumprod = torch.cumprod(1.0 - clipping.betas.double(), 0)
    clipped = clipping.step(eps, 0, x).prev_sample
    clipping.register_to_config(clip_sample=False)
    unclipped = clipping.step(eps, 0, x).prev_sample
    torch.testing.assert_close(ours, unclipped)
    assert (ours - clipped).abs().max() > 1e-3


def test_score_sde_ve_folder_loads_as_ve_with_its_parameters(ve_model):
    assert isinstance(ve_model.sde, VESDE)
    assert (ve_model.sde.sigma_min, ve_model.sde.sigma_max) == (0.01, 50.0)
    assert ve_model.sde.snr == 0.16 and ve_model.sde.n == 2000 and ve_model.sde.correct_steps == 1
    assert ve_model.sde.data_range == (0.0, 1.0)


def test_pipeline_layout_with_unet_and_scheduler_subfolders(vp_dir, tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "scheduler").mkdir()
    for f in vp_dir.iterdir():
        target = "scheduler" if f.name == "scheduler_config.json" else "unet"
        shutil.copy(f, tmp_path / target / f.name)
    assert isinstance(load_model(str(tmp_path)).sde, VPSDE)


def test_cosine_schedule_comes_from_diffusers(tmp_path):
    folder = make_vp_checkpoint(tmp_path / "cos", beta_schedule="squaredcos_cap_v2")
    model = load_model(str(folder))
    from diffusers import DDPMScheduler

    expected = DDPMScheduler(beta_schedule="squaredcos_cap_v2").betas
    torch.testing.assert_close(torch.tensor(model.sde.betas).float(), expected)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_other_prediction_types_are_turned_into_eps(prediction_type):
    sde = VPSDE.linear()
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    eps = torch.randn(2, 3, 4, 4)
    levels = torch.tensor([100, 700])
    a = sde.abar_at(levels).float().view(-1, 1, 1, 1)
    x = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = x0 if prediction_type == "sample" else a.sqrt() * eps - (1 - a).sqrt() * x0
    model = ScoreModel(network=lambda _x, _t: target, sde=sde, resolution=4,
                       prediction_type=prediction_type)
    torch.testing.assert_close(model.predict(x, levels), eps, rtol=1e-4, atol=1e-4)


def test_learned_variance_channels_are_dropped():
    model = ScoreModel(network=lambda x, t: torch.cat([x, x * 0 + 7], 1), sde=VPSDE.linear(),
                       resolution=4)
    x = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(model.predict(x, torch.tensor([5])), x)


@pytest.mark.parametrize("config,message", [
    # Flow matching (SD 3) is not a VP schedule.
    ({"_class_name": "FlowMatchEulerDiscreteScheduler"},
     "unknown scheduler type 'FlowMatchEulerDiscreteScheduler'"),
    ({}, "unknown scheduler type None"),
    ({"_class_name": "DDPMScheduler", "prediction_type": "flow"}, "unsupported prediction_type"),
    ({"_class_name": "DDPMScheduler", "beta_schedule": "wiggly"}, "unsupported VP noise schedule"),
])
def test_bad_scheduler_configs_are_rejected(config, message):
    with pytest.raises(ModelLoadError, match=message):
        sde_from_scheduler_config(config)


def test_missing_and_broken_folders_say_why(vp_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="no model 'no-such-model'"):
        load_model("no-such-model")
    with pytest.raises(ModelLoadError, match="not a diffusers UNet2DModel folder"):
        load_model(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(vp_dir, broken)
    (broken / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(str(broken))
    mismatched = tmp_path / "mismatched"
    shutil.copytree(vp_dir, mismatched)
    (mismatched / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "ScoreSdeVeScheduler"}))
    with pytest.raises(ModelLoadError, match="VE models need a Fourier"):
        load_model(str(mismatched))


def test_unreachable_hub_id_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="cannot download 'google/ddpm-church-256'"):
        load_model("google/ddpm-church-256")


def test_half_precision_network_keeps_float32_outputs(vp_dir):
    model = load_model(str(vp_dir), dtype=torch.bfloat16)
    out = model.predict(torch.randn(1, 3, 16, 16), torch.tensor([500]))
    assert out.dtype == torch.float32
    assert isinstance(Path(vp_dir), Path)
