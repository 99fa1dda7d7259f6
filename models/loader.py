"""Load score models: diffusers UNet2DModel folders or hub ids, the bundled default, and
Stable Diffusion pipeline folders (text-guided latent models, models/stable_diffusion.py).

The SDE family and its parameters come from the checkpoint's scheduler_config.json:
DDPM-style discrete schedulers (DDPMScheduler, DDIMScheduler, PNDMScheduler and the other
samplers of the same trained schedule) mean a VP model, and ScoreSdeVeScheduler means a VE
model. `clip_sample` is ignored on purpose: the paper's sampler does not clip (pitfall 6).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.network import PREDICTION_TYPES, ScoreModel, diffusers_network
from models.sde import SDE, VESDE, VPSDE
from models.stable_diffusion import LatentModel, is_stable_diffusion_folder, load_stable_diffusion

BUNDLED_DIR = Path(__file__).parent / "weights"
# Any of these describes the discrete VP schedule the network was trained with (Stable
# Diffusion folders ship several of them); which sampler the config names does not matter.
VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DDPMParallelScheduler",
                 "DDIMParallelScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
                 "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
                 "UniPCMultistepScheduler", "HeunDiscreteScheduler")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
VE_SCHEDULERS = ("ScoreSdeVeScheduler",)


class ModelLoadError(ValueError):
    """A checkpoint that cannot be used, with a message that says why."""


def network_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The dtype networks run in: `auto` is float16 on CUDA and float32 elsewhere (CPUs gain
    little from half precision); the schedule maths stays float32/64 whatever this is."""
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}; expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


def bundled_models() -> dict[str, Path]:
    """Names of the models shipped inside the package, mapped to their folders."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_DIR.iterdir())
            if (p / "config.json").is_file() and (p / "scheduler_config.json").is_file()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def sde_from_scheduler_config(config: dict) -> tuple[SDE, str]:
    """The SDE and the network's prediction type described by a diffusers scheduler config."""
    kind = config.get("_class_name")
    if kind in VP_SCHEDULERS:
        from diffusers import DDPMScheduler

        prediction_type = config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ModelLoadError(f"unsupported prediction_type {prediction_type!r} in scheduler config")
        # diffusers computes the betas of every beta_schedule it knows; we take them from it.
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
        try:
            scheduler = DDPMScheduler(**{k: config[k] for k in keys if config.get(k) is not None})
        except (NotImplementedError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"unsupported VP noise schedule: {exc}") from exc
        return VPSDE(tuple(scheduler.betas.double().tolist())), prediction_type
    if kind in VE_SCHEDULERS:
        # A key the config omits takes VESDE's default (diffusers' default too).
        names = {"sigma_min": ("sigma_min", float), "sigma_max": ("sigma_max", float),
                 "num_train_timesteps": ("n", int), "snr": ("snr", float),
                 "correct_steps": ("correct_steps", int)}
        return VESDE(**{field: cast(config[key]) for key, (field, cast) in names.items()
                        if config.get(key) is not None}), "score"
    raise ModelLoadError(
        f"unknown scheduler type {kind!r}: expected one of {VP_SCHEDULERS + VE_SCHEDULERS}")


def _find_parts(folder: Path) -> tuple[Path, Path]:
    """The UNet folder and the scheduler config, flat or in a pipeline's unet/ and scheduler/."""
    for unet_dir, sched in ((folder, folder / "scheduler_config.json"),
                            (folder / "unet", folder / "scheduler" / "scheduler_config.json")):
        if (unet_dir / "config.json").is_file() and sched.is_file():
            return unet_dir, sched
    raise ModelLoadError(f"{folder} is not a diffusers UNet2DModel folder: expected config.json and "
                         "scheduler_config.json (flat, or in unet/ and scheduler/)")


def resolve(name_or_path: str) -> Path:
    """A local folder for a bundled name, a path, or a hub id (downloaded where reachable)."""
    bundled = bundled_models()
    if name_or_path in bundled:
        return bundled[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; expected a model folder")
        return path
    repo_id, _, revision = name_or_path.partition("@")  # org/name@revision pins a version
    if repo_id.count("/") == 1 and not repo_id.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=[
                "*.json", "*.safetensors", "unet/*", "scheduler/*", "tokenizer/*"]))
        except Exception as exc:  # the hub client raises many types; all mean "not available"
            raise ModelLoadError(f"cannot download {name_or_path!r} from the model hub: "
                                 f"{type(exc).__name__}: {exc}") from exc
    known = ", ".join(bundled) or "none installed"
    raise ModelLoadError(f"no model {name_or_path!r}: not a bundled model ({known}), "
                         "a folder, or a hub id")


def load_model(name_or_path: str, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> ScoreModel | LatentModel:
    """Load a UNet2DModel checkpoint with its SDE, or a Stable Diffusion folder, in eval mode."""
    from diffusers import UNet2DModel

    folder = resolve(name_or_path)
    if is_stable_diffusion_folder(folder):
        return _load_latent(folder, str(name_or_path), torch.device(device), dtype)
    unet_dir, sched_path = _find_parts(folder)
    sde, prediction_type = sde_from_scheduler_config(_read_json(sched_path))
    unet_config = _read_json(unet_dir / "config.json")
    if unet_config.get("_class_name") not in ("UNet2DModel", None):
        raise ModelLoadError(f"{unet_dir} holds a {unet_config['_class_name']}; "
                             "expected a UNet2DModel")
    fourier = unet_config.get("time_embedding_type") == "fourier"
    if isinstance(sde, VESDE) != fourier:
        raise ModelLoadError(f"{folder}: a {sde.family.upper()} scheduler with a "
                             f"{unet_config.get('time_embedding_type')!r} time embedding; "
                             "VE models need a Fourier (sigma) embedding and VP models a "
                             "positional one")
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, torch_dtype=dtype, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the UNet in {unet_dir}: {exc}") from exc
    device = torch.device(device)
    unet = unet.to(device=device, memory_format=torch.channels_last).eval().requires_grad_(False)
    size = unet.config.sample_size
    resolution = size if isinstance(size, int) else int(size[0])
    return ScoreModel(
        network=diffusers_network(unet),
        sde=sde,
        resolution=resolution,
        channels=int(unet.config.in_channels),
        prediction_type="epsilon" if prediction_type == "score" else prediction_type,
        dtype=dtype,
        device=device,
        name=str(name_or_path),
    )


def _load_latent(folder: Path, name: str, device: torch.device, dtype: torch.dtype) -> LatentModel:
    sde, prediction_type = sde_from_scheduler_config(
        _read_json(folder / "scheduler" / "scheduler_config.json"))
    if not isinstance(sde, VPSDE):
        raise ModelLoadError(f"{folder}: a Stable Diffusion folder needs a VP (DDPM-style) "
                             "scheduler config")
    try:
        return load_stable_diffusion(folder, sde, prediction_type, device, dtype, name)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the Stable Diffusion folder {folder}: {exc}") from exc
