"""Stable Diffusion pipelines with random weights, built offline: the tiny configuration of
diffusers' own pipeline tests, and SD 1.5's full-size configuration for GPU benchmarks.

No hub is reachable, so the CLIP tokenizer's files are written here: a byte-level BPE vocab
(every byte, alone and word-final) with a few merges. Real prompts tokenise into valid ids; the
text encoder has random weights anyway.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

# diffusers' tests/pipelines/stable_diffusion (get_dummy_components): 64 px images, 32 px latents.
TINY = {
    "unet": dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                 out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32),
    "vae": dict(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * 2,
                up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4),
    "text": dict(bos_token_id=0, eos_token_id=1, hidden_size=32, intermediate_size=37,
                 layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5, pad_token_id=1,
                 vocab_size=1000),
}

# runwayml/stable-diffusion-v1-5's unet/, vae/ and text_encoder/ config.json.
SD15 = {
    "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                 "CrossAttnUpBlock2D"),
                 cross_attention_dim=768, attention_head_dim=8),
    "vae": dict(block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
                sample_size=512, scaling_factor=0.18215),
    "text": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                 projection_dim=768, bos_token_id=0, eos_token_id=1, pad_token_id=1),
}

CONFIGS = {"tiny": TINY, "sd15": SD15}

# The schedule of SD 1.x and 2.x (their configs also say set_alpha_to_one=False: the last step
# stops at level 0; True steps to clean data), as a DDIM config.
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, steps_offset=1)

MERGES = [("a", "t</w>"), ("c", "at</w>"), ("d", "o"), ("do", "g</w>"), ("r", "e"), ("re", "d</w>")]


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order (byte-level BPE)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    stand_in, extra = {}, 0
    for byte in range(256):
        if byte in kept:
            stand_in[byte] = chr(byte)
        else:
            stand_in[byte] = chr(256 + extra)
            extra += 1
    return [stand_in[b] for b in range(256)]


def write_tokenizer_files(folder: Path) -> Path:
    """vocab.json and merges.txt of a small CLIP tokenizer (ids 0 and 1 are its specials)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_alphabet()
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars),
              *("".join(pair) for pair in MERGES)]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    return folder


def build_pipeline(config: str = "tiny", prediction_type: str = "epsilon",
                   set_alpha_to_one: bool = False, seed: int = 0,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """A StableDiffusionImg2ImgPipeline with random weights (seeded) and a DDIM scheduler."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    parts = CONFIGS[config]
    with torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**parts["unet"])
        torch.manual_seed(seed)
        vae = AutoencoderKL(**parts["vae"])
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**parts["text"]))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer_files(Path(tmp)),
                                                  model_max_length=77)
    scheduler = DDIMScheduler(**SCHEDULER, prediction_type=prediction_type,
                              set_alpha_to_one=set_alpha_to_one)
    pipe = StableDiffusionImg2ImgPipeline(unet=unet, vae=vae, text_encoder=text_encoder,
                                          tokenizer=tokenizer, scheduler=scheduler,
                                          safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype)


def make_sd_folder(folder: Path, config: str = "tiny", prediction_type: str = "epsilon",
                   set_alpha_to_one: bool = False, seed: int = 0) -> Path:
    """A diffusers Stable Diffusion folder on disk (save_pretrained), as users have them."""
    build_pipeline(config, prediction_type, set_alpha_to_one, seed).save_pretrained(folder)
    return folder


def latent_model(pipe: Any, name: str = "sd") -> Any:
    """Our LatentModel over an in-memory pipeline's parts (no save and load: the GPU benchmark
    builds SD 1.5 on the device in float16), with the schedule its scheduler config gives."""
    from models.loader import sde_from_scheduler_config
    from models.stable_diffusion import LatentModel, final_level

    # A saved config names its class; an in-memory one does not.
    config = {"_class_name": type(pipe.scheduler).__name__, **pipe.scheduler.config}
    sde, prediction_type = sde_from_scheduler_config(config)
    return LatentModel(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
                       tokenizer=pipe.tokenizer, sde=sde, prediction_type=prediction_type,
                       dtype=pipe.unet.dtype, device=pipe.unet.device, name=name,
                       final_level=final_level(config))
