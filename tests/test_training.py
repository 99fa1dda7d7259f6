"""The bundled model's data set and training script: split hygiene, resume, export through our loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.loader import load_model
from models.sde import VPSDE
from training.train import main as train_main

DATA = Path(__file__).parents[1] / "data" / "emoji" / "emoji.npz"


@pytest.mark.skipif(not DATA.is_file(), reason="prepared emoji data not in this checkout")
def test_emoji_split_is_by_base_emoji_and_excludes_categories():
    data = np.load(DATA)
    train_bases = {n.split("/")[0] for n in data["train_names"]}
    held_bases = {n.split("/")[0] for n in data["heldout_names"]}
    assert not train_bases & held_bases  # skin-tone variants never leak across the split
    assert 0.08 < len(held_bases) / (len(train_bases) + len(held_bases)) < 0.12
    categories = set(data["train_categories"]) | set(data["heldout_categories"])
    assert not categories & {"Flags", "Symbols", "Component"}
    assert data["train"].shape[1:] == (64, 64, 3) and data["train"].dtype == np.uint8
    # Alpha was composited on white: the corners are white.
    assert (data["train"][:, 0, 0] == 255).all(axis=1).mean() > 0.95


@pytest.fixture()
def tiny_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    images = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    np.savez_compressed(path, train=images[:16], heldout=images[16:])
    return path


def run(data: Path, out: Path, steps: int, resume: bool = False) -> None:
    argv = ["--data", str(data), "--out", str(out), "--resolution", "32", "--channels", "8,16",
            "--groups", "4", "--attn-res", "", "--head-dim", "8", "--batch-size", "4",
            "--max-steps", str(steps), "--threads", "1", "--eval-images", "4", "--warmup-steps", "2",
            "--device", "cpu"]
    train_main(argv + (["--resume"] if resume else []))


class StopAfter:
    """Stands in for the SIGTERM flag: raised after `steps` training steps."""

    steps = 3

    def __init__(self) -> None:
        self.polls = 0

    @property
    def stop(self) -> bool:
        self.polls += 1
        return self.polls > self.steps


def test_training_stopped_and_resumed_equals_uninterrupted_training(tiny_data, tmp_path,
                                                                      monkeypatch):
    run(tiny_data, tmp_path / "straight", 6)
    with monkeypatch.context() as patch:
        patch.setattr("training.train.StopFlag", StopAfter)
        run(tiny_data, tmp_path / "resumed", 6)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 3
    assert not (tmp_path / "resumed" / "model").exists()  # a stopped run does not export
    run(tiny_data, tmp_path / "resumed", 6, resume=True)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)


def test_exported_model_loads_through_the_public_loader(tiny_data, tmp_path):
    run(tiny_data, tmp_path / "run", 2)
    folder = tmp_path / "run" / "model"
    model = load_model(str(folder))
    assert isinstance(model.sde, VPSDE) and model.resolution == 32
    assert model.sde.betas == pytest.approx(VPSDE.linear().betas, rel=1e-6)
    ema = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["ema"]
    exported = load_file(folder / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(exported[k], ema[k]) for k in exported)


def test_sample_sheet_uses_the_sdedit_sampler(tiny_data, tmp_path):
    from training.train import ddim_sample, model_from_checkpoint

    run(tiny_data, tmp_path / "run", 1)
    ema = model_from_checkpoint(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False))
    a = ddim_sample(ema, 3, 32, torch.device("cpu"), steps=4, seed=5)
    b = ddim_sample(ema, 3, 32, torch.device("cpu"), steps=4, seed=5)
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1 and a.std() > 0


def test_init_from_an_exported_model_continues_from_its_weights(tiny_data, tmp_path):
    run(tiny_data, tmp_path / "first", 2)
    exported = load_file(tmp_path / "first" / "model" / "diffusion_pytorch_model.safetensors")
    argv = ["--data", str(tiny_data), "--out", str(tmp_path / "second"), "--init-from",
            str(tmp_path / "first" / "model"), "--batch-size", "4", "--max-steps", "1",
            "--threads", "1", "--eval-images", "4", "--warmup-steps", "2", "--device", "cpu",
            "--lr", "0"]
    train_main(argv)
    ckpt = torch.load(tmp_path / "second" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 1  # a fresh run: its own step count and optimiser
    # lr 0: one step leaves the weights as they were loaded, so model and EMA started from them.
    for key in ("model", "ema"):
        assert all(torch.equal(exported[k], ckpt[key][k]) for k in exported), key


def test_snr_weight_caps_low_noise_and_turns_into_x0_loss_at_high_noise():
    from training.train import snr_weight

    snr = torch.tensor([1000.0, 5.0, 1.0, 0.1, 1e-3])
    inf = float("inf")
    assert torch.equal(snr_weight(snr, inf), torch.ones(5))  # the plain DDPM loss
    torch.testing.assert_close(snr_weight(snr, 5.0), torch.tensor([0.005, 1, 1, 1, 1]))
    # Floor 1: below SNR 1, eps MSE / SNR, i.e. exactly the MSE of the x0 estimate.
    torch.testing.assert_close(snr_weight(snr, inf, 1.0), torch.tensor([1, 1, 1, 10, 1000.0]))
    abar = snr / (1 + snr)
    eps_error = torch.full((5,), 0.01)
    x0_error = eps_error * (1 - abar) / abar  # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
    torch.testing.assert_close((snr_weight(snr, inf, 1.0) * eps_error)[3:], x0_error[3:])
