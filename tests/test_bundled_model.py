"""The bundled default model: shipped in the package, loaded by name, fast and deterministic on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cli.edit import DEFAULT_MODEL
from models.imageio import open_image, prepare_guide
from models.loader import bundled_models, load_model
from models.sde import VPSDE
from models.sdedit import sdedit

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_bundled_model_is_the_cli_default_and_loads_by_name():
    assert DEFAULT_MODEL in bundled_models()
    folder = bundled_models()[DEFAULT_MODEL]
    weights = folder / "diffusion_pytorch_model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 25 * 2**20
    config = json.loads((folder / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDPMScheduler" and config["clip_sample"] is False
    model = load_model(DEFAULT_MODEL)
    assert isinstance(model.sde, VPSDE) and model.sde.num_levels == 1000
    assert model.resolution in (32, 64) and model.channels == 3


def test_bundled_model_edits_at_20_steps_deterministically_per_seed():
    model = load_model(DEFAULT_MODEL)
    guide = prepare_guide(open_image(EXAMPLES / "heart.png"), model.resolution)
    a = sdedit(model, guide, t0=0.5, steps=20, samples=2, seed=3)
    b = sdedit(model, guide, t0=0.5, steps=20, samples=2, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    # The edit keeps the guide's layout: closer to its own guide than to a blank canvas.
    assert (a - guide).abs().mean() < (a - 1.0).abs().mean()
