"""UNet configurations the benchmarks use, built with random weights (no download needed)."""

from __future__ import annotations

import torch

from models.network import ScoreModel, diffusers_network
from models.sde import VPSDE

# google/ddpm-church-256's config.json (the same as ddpm-cat-256 and ddpm-bedroom-256).
CHURCH_256 = dict(
    sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D",
                      "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D",
                    "UpBlock2D"),
    attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    norm_eps=1e-6, norm_num_groups=32, center_input_sample=False, act_fn="silu",
)

# A small 32 px network, about the size of the bundled default.
TINY_32 = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=16, attention_head_dim=16,
)

CONFIGS = {"tiny-32": TINY_32, "church-256": CHURCH_256}


def random_vp_model(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> ScoreModel:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**CONFIGS[name]).to(device=device, dtype=dtype,
                                           memory_format=torch.channels_last)
    unet.eval().requires_grad_(False)
    return ScoreModel(network=diffusers_network(unet), sde=VPSDE.linear(),
                      resolution=unet.config.sample_size, dtype=dtype,
                      device=torch.device(device), name=name)
