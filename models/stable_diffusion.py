"""Stable Diffusion folders as latent models: SDEdit in a VAE's latent space, guided by text.

A diffusers Stable Diffusion folder (SD 1.x / 2.x layout: `unet/` UNet2DConditionModel, `vae/`
AutoencoderKL, `text_encoder/` CLIPTextModel, `tokenizer/`, `scheduler/`) becomes a
`LatentModel` with the face `SlotBatch` expects of every model (`models.network`):

- `encode`: the guide through the VAE encoder, a sample of its posterior drawn with the slot's
  own generator, times the VAE's scaling factor (as diffusers' img2img pipeline does, so the
  same seed gives the same latent);
- `predict`: eps at per-sample levels with classifier-free guidance per sample: the
  unconditional (negative prompt) and conditional rows of every guided sample go through ONE
  UNet forward, and eps = eps_neg + w (eps_prompt - eps_neg); w = 1 runs the prompt row only;
- `decode`: the VAE decoder back to [0, 1] pixels;
- `space_mask`: a latent pixel may change if any of the image pixels it covers may (max pooling).

The noise schedule is the scheduler config's VP schedule (any discrete DDPM-style scheduler, eps
or v prediction), so the SDEdit maths is exactly that of pixel VP models, on the level grid
Stable Diffusion is sampled on: diffusers' SD pipelines (like the original CompVis sampler) visit
levels down to 1, never 0 (they force steps_offset = 1), and then step to clean data when the
scheduler config says `set_alpha_to_one`, or else to level 0 (abar_0 ~ 0.999, the CompVis
convention: SD 1.x and 2.x configs say false). Prompt embeddings are cached per prompt (batch
jobs repeat prompts), and the last guides' posterior moments are kept so the samples of one
guide encode it once.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from jobs.rules import SamplingParameters, resolve_text
from models.network import PREDICTION_TYPES, to_eps
from models.sde import CLEAN, VPSDE

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
EMBEDDING_CACHE = 256  # prompts; an SD 1.x embedding is 77 x 768 values
MOMENT_CACHE = 4  # guides


def is_stable_diffusion_folder(folder: Path) -> bool:
    """A diffusers pipeline folder with a text encoder: model_index.json and the parts above."""
    return (folder / "model_index.json").is_file() and all((folder / p).is_dir() for p in PARTS)


def final_level(scheduler_config: dict) -> int:
    """Where a pass ends: clean data, or level 0 where the config says set_alpha_to_one=False
    (diffusers' DDIM and PNDM then end at abar_0; a config without the key ends clean)."""
    return CLEAN if scheduler_config.get("set_alpha_to_one", True) else 0


@dataclass(frozen=True)
class TextCondition:
    """What one sample is guided by: prompt embeddings and the guidance weight."""

    text: torch.Tensor  # (L, D) embedding of the prompt
    negative: torch.Tensor | None  # (L, D) of the negative prompt; None: no guidance (w = 1)
    guidance_scale: float


@dataclass(eq=False)
class LatentModel:
    """A text-guided latent diffusion model: UNet, VAE and text encoder loaded once."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: Any
    sde: VPSDE
    prediction_type: str = "epsilon"
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    name: str = "model"
    channels: int = 3  # of the images it edits
    final_level: int = 0  # CLEAN when the scheduler config says set_alpha_to_one
    _embeddings: OrderedDict[str, torch.Tensor] = field(default_factory=OrderedDict, repr=False)
    _moments: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list,
                                                                             repr=False)

    text: ClassVar[bool] = True
    lowest_level: ClassVar[int] = 1  # diffusers' SD pipelines force steps_offset = 1

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}; "
                             f"expected one of {PREDICTION_TYPES}")

    @property
    def latent_scale(self) -> int:
        """Image pixels per latent pixel along a side (8 for Stable Diffusion)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        size = self.unet.config.sample_size
        return (size if isinstance(size, int) else int(size[0])) * self.latent_scale

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    # --- text ------------------------------------------------------------------------------

    @torch.no_grad()
    def embed(self, prompt: str) -> torch.Tensor:
        """The text encoder's last hidden state for one prompt (L, D), cached per prompt.

        Tokenised as diffusers' pipelines do: padded to the tokenizer's full length, truncated
        beyond it, so every embedding has the same shape and samples batch together.
        """
        cached = self._embeddings.get(prompt)
        if cached is not None:
            self._embeddings.move_to_end(prompt)
            return cached
        tokens = self.tokenizer(prompt, padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        embedding = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0][0]
        embedding = embedding.to(self.dtype)
        self._embeddings[prompt] = embedding
        if len(self._embeddings) > EMBEDDING_CACHE:
            self._embeddings.popitem(last=False)
        return embedding

    def condition(self, params: SamplingParameters) -> TextCondition:
        prompt, negative, scale = resolve_text(params)
        # diffusers guides only when w > 1: at w = 1 the formula is the prompt's eps anyway.
        return TextCondition(self.embed(prompt), self.embed(negative) if scale > 1.0 else None,
                             scale)

    # --- pixels <-> latents ----------------------------------------------------------------

    @torch.no_grad()
    def _posterior(self, guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(latent | guide), float32, unscaled; the last few
        guides are remembered (a job's samples share their guide)."""
        for seen, mean, std in self._moments:
            if seen.shape == guide.shape and torch.equal(seen, guide):
                return mean, std
        pixels = (guide[None] * 2.0 - 1.0).to(self.dtype)
        posterior = self.vae.encode(pixels).latent_dist
        mean, std = posterior.mean[0].float(), posterior.std[0].float()
        self._moments = [(guide, mean, std), *self._moments[: MOMENT_CACHE - 1]]
        return mean, std

    def encode(self, guide: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A posterior sample of the guide's latent, scaled: the generator's first draw, as in
        diffusers' img2img pipeline (which then draws the perturbation noise, as SlotBatch does)."""
        mean, std = self._posterior(guide)
        eps = torch.randn(mean.shape, generator=generator, device=self.device)
        return self.scaling_factor * (mean + std * eps)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode((x / self.scaling_factor).to(self.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0.0, 1.0)

    def space_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(mask[None], self.latent_scale)[0]

    # --- the network -----------------------------------------------------------------------

    def predict(self, x: torch.Tensor, levels: torch.Tensor,
                conditions: Sequence[TextCondition] | None = None) -> torch.Tensor:
        """eps with classifier-free guidance per sample, in one UNet forward: rows are the
        negative prompts of the guided samples, then every sample's prompt."""
        if conditions is None or len(conditions) != len(x):
            raise ValueError("a text-guided model needs one condition per sample")
        guided = [i for i, c in enumerate(conditions) if c.negative is not None]
        context = torch.stack([conditions[i].negative for i in guided]
                              + [c.text for c in conditions])
        rows = torch.cat([x[guided], x])
        times = torch.cat([levels[guided], levels]).to(self.device, torch.long)
        out = self.unet(rows.to(self.dtype), times, encoder_hidden_states=context,
                        return_dict=False)[0].float()
        negative, out = out[: len(guided)], out[len(guided):]
        if guided:
            scale = torch.tensor([conditions[i].guidance_scale for i in guided],
                                 device=out.device).view(-1, 1, 1, 1)
            # Guidance on the raw output, as diffusers does; eps, v and x0 are all linear in it.
            out = out.clone()
            out[guided] = negative + scale * (out[guided] - negative)
        return to_eps(out, x, self.sde.abar_at(levels.cpu()), self.prediction_type)


def load_stable_diffusion(folder: Path, sde: VPSDE, prediction_type: str,
                          device: torch.device, dtype: torch.dtype, name: str) -> LatentModel:
    """The parts of a Stable Diffusion folder, in eval mode on `device` in `dtype`; the caller
    read the schedule from its scheduler config. ValueError when a part is not SD 1.x / 2.x."""
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    if unet_config.get("_class_name") != "UNet2DConditionModel":
        raise ValueError(f"{folder}/unet holds a {unet_config.get('_class_name')}; expected a "
                         "UNet2DConditionModel")
    if unet_config.get("addition_embed_type") or unet_config.get("time_cond_proj_dim"):
        raise ValueError(f"{folder}: a UNet with extra conditioning (SDXL, LCM) is not a "
                         "Stable Diffusion 1.x / 2.x UNet")
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    if unet_config.get("in_channels", 4) != vae_config.get("latent_channels", 4):
        raise ValueError(f"{folder}: the UNet takes {unet_config.get('in_channels')} channels but "
                         f"the VAE makes {vae_config.get('latent_channels')} (an inpainting UNet "
                         "is not supported: SDEdit inpaints with any model)")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype,
                                                low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype, low_cpu_mem_usage=False)
    # bandit B615: local folders (models.loader.resolve downloads, pinned by org/name@revision).
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype)  # nosec B615
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")  # nosec B615
    # channels_last is faster on GPUs; on the CPU the contiguous layout is as fast and keeps
    # the golden comparison with diffusers' pipeline (contiguous) at float32 rounding.
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    for part in (unet, vae, text_encoder):
        part.to(device=device).eval().requires_grad_(False)
    unet.to(memory_format=memory_format)
    return LatentModel(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                       sde=sde, prediction_type=prediction_type, dtype=dtype, device=device,
                       name=name,
                       final_level=final_level(scheduler))
