"""Train the small bundled emoji score model: a diffusers UNet2DModel predicting eps (VP/DDPM).

Noise schedule: 1000 linear betas 1e-4..0.02; data in [-1, 1]; eps loss weighted by
clamp(SNR, floor, gamma) / SNR (min-SNR-gamma; a floor turns it into x0 loss at high noise);
AdamW with warm-up and cosine decay; EMA weights (the exported model); resumable checkpoints.

Typical use::

    python -m training.train --data data/emoji/emoji.npz --out runs/emoji32 --resolution 32 \
        --config tiny --batch-size 64 --max-steps 15000 --max-minutes 100
    python -m training.train --out runs/emoji32 --resume ...        # continue a stopped run
    python -m training.train --out runs/emoji32 --export FOLDER     # export EMA weights only
    python -m training.train --out runs/emoji32 --export FOLDER --sample 64   # plus a contact sheet
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image
from tqdm import tqdm

from models.network import ScoreModel, diffusers_network
from models.sde import VPSDE
from models.sdedit import sdedit
from training.emoji_data import load_emoji

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02
CHECKPOINT_NAME = "checkpoint.pt"

# Named UNet presets: channels per level, resnets per level, attention at these resolutions.
CONFIGS: dict[str, dict[str, Any]] = {
    # default: fastest config measured on the 2-core CPU box, see data/emoji/TRAINING_NOTES.md
    "tiny": {"channels": (16, 32, 64, 64), "layers": 1, "attn_res": (8,), "groups": 8},
    "tiny-wide": {"channels": (16, 32, 64, 128), "layers": 1, "attn_res": (8,), "groups": 8},
    "tiny-l2": {"channels": (16, 32, 64, 64), "layers": 2, "attn_res": (8,), "groups": 8},
    "small": {"channels": (32, 64, 64), "layers": 1, "attn_res": (8,), "groups": 8},
    "small4": {"channels": (32, 64, 128, 128), "layers": 1, "attn_res": (8,), "groups": 16},
    "medium": {"channels": (64, 128, 128), "layers": 1, "attn_res": (8,), "groups": 32},
}


# ----------------------------------------------------------------------------- model & schedule


def build_unet(
    resolution: int,
    channels: tuple[int, ...],
    layers: int,
    attn_res: tuple[int, ...],
    groups: int,
    head_dim: int = 32,
    dropout: float = 0.0,
) -> UNet2DModel:
    """UNet2DModel with self-attention only at the levels whose feature size is in attn_res."""
    down, up = [], []
    for i in range(len(channels)):
        attn = (resolution >> i) in attn_res
        down.append("AttnDownBlock2D" if attn else "DownBlock2D")
        up.insert(0, "AttnUpBlock2D" if attn else "UpBlock2D")
    return UNet2DModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(channels),
        layers_per_block=layers,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=groups,
        attention_head_dim=head_dim,
        dropout=dropout,
    )


def alphas_cumprod() -> torch.Tensor:
    """abar_t of the linear schedule (float32 for the loss), from the sampler's own VPSDE."""
    return VPSDE.linear(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS).abar[1:].float()


def make_scheduler() -> DDPMScheduler:
    """The scheduler shipped next to the exported weights."""
    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule="linear",
        beta_start=BETA_START,
        beta_end=BETA_END,
        clip_sample=False,
        prediction_type="epsilon",
    )


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- data


def load_images(path: Path, resolution: int, split: str = "train") -> torch.Tensor:
    """(N, 3, R, R) float32 in [-1, 1]; downsampled with PIL's area (BOX) filter if needed."""
    train, heldout = load_emoji(path)
    arr = train if split == "train" else heldout
    if arr.shape[1] != resolution:
        arr = np.stack(
            [
                np.asarray(
                    Image.fromarray(im).resize((resolution, resolution), Image.Resampling.BOX)
                )
                for im in arr
            ]
        )
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def augment(x: torch.Tensor, p_geom: float = 0.5, max_scale: float = 0.1) -> torch.Tensor:
    """Random horizontal flip; with prob p_geom a small zoom and an integer-pixel shift.

    Pixels coming in from outside the frame are white (+1).
    """
    b, _, h, w = x.shape
    flip = torch.rand(b) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    geom = torch.rand(b) < p_geom
    if not bool(geom.any()):
        return x
    max_shift = max(1, h // 16)
    scale = torch.empty(b).uniform_(1.0 - max_scale, 1.0 + max_scale)
    shift = torch.randint(-max_shift, max_shift + 1, (b, 2)).float() * (2.0 / h)
    scale = torch.where(geom, scale, torch.ones(b))
    shift = shift * geom[:, None]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = 1.0 / scale
    theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sample (x - 1) with zero padding so that out-of-frame pixels come back as +1 (white).
    out = F.grid_sample(x - 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.where(geom[:, None, None, None], out + 1.0, x)


# ----------------------------------------------------------------------------- training pieces


def snr_weight(snr: torch.Tensor, gamma: float, floor: float = 0.0) -> torch.Tensor:
    """Weight of the eps MSE per level: clamp(SNR, floor, gamma) / SNR.

    gamma caps the low-noise levels (min-SNR-gamma, Hang et al. 2023). The floor matters at
    high noise: the x0 estimate's error is the eps error / SNR, so a plain eps loss hardly
    trains the levels that decide a sample's layout (SNR 1e-3 at level 800). With floor s,
    levels with SNR < s are trained on s x the x0 MSE ("truncated SNR" for s = 1, Salimans &
    Ho 2022)."""
    return snr.clamp(min=floor, max=gamma) / snr


def min_snr_loss(
    model: torch.nn.Module,
    x0: torch.Tensor,
    abar: torch.Tensor,
    gamma: float,
    autocast: contextlib.AbstractContextManager[Any],
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    floor: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (weighted as in `snr_weight`, plain) eps-prediction MSE."""
    b = x0.shape[0]
    if t is None:
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), device=x0.device)
    if noise is None:
        noise = torch.randn_like(x0)
    a = abar[t].view(b, 1, 1, 1)
    xt = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
    with autocast:
        pred = model(xt, t).sample
    mse = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
    snr = abar[t] / (1.0 - abar[t])
    return snr_weight(snr, gamma, floor) * mse, mse


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_p = [p for p in ema.parameters()]
    src_p = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, src_p, 1.0 - decay)


def ema_decay(step: int, max_decay: float) -> float:
    """EMA decay with warm-up: (1 + step) / (10 + step), capped at max_decay."""
    return min(max_decay, (1.0 + step) / (10.0 + step))


def lr_factor(step: int, progress: float, warmup: int, final: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 to `final` over progress 0..1."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    cos = final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return warm * cos


@torch.no_grad()
def eval_loss(
    model: torch.nn.Module,
    x0: torch.Tensor,
    abar: torch.Tensor,
    gamma: float,
    autocast: contextlib.AbstractContextManager[Any],
    batch: int = 128,
    n_t: int = 8,
    floor: float = 0.0,
) -> tuple[float, float]:
    """Deterministic (weighted, plain) loss over x0 at n_t fixed timesteps with fixed noise."""
    gen = torch.Generator().manual_seed(1234)
    ts = torch.linspace(0, NUM_TRAIN_TIMESTEPS - 1, n_t + 2)[1:-1].round().long()
    was_training = model.training
    model.eval()
    tot_w = tot = 0.0
    for t_val in ts.tolist():
        for i in range(0, x0.shape[0], batch):
            xb = x0[i : i + batch]
            noise = torch.randn(xb.shape, generator=gen).to(xb.device)
            t = torch.full((xb.shape[0],), t_val, device=xb.device, dtype=torch.long)
            w, m = min_snr_loss(model, xb, abar, gamma, autocast, t=t, noise=noise, floor=floor)
            tot_w += float(w.sum())
            tot += float(m.sum())
    model.train(was_training)
    n = x0.shape[0] * len(ts)
    return tot_w / n, tot / n


def ddim_sample(
    model: UNet2DModel,
    n: int,
    resolution: int,
    device: torch.device,
    steps: int = 50,
    seed: int = 0,
) -> torch.Tensor:
    """Unconditional samples with the project's own sampler: SDEdit from t0 = 1, DDIM (eta = 0).

    At t0 = 1 the guide is scaled by sqrt(abar_999) < 0.007, so a grey guide leaves pure noise.
    Returns (n, 3, R, R) in [-1, 1].
    """
    was_training = model.training
    score_model = ScoreModel(network=diffusers_network(model.eval()), sde=VPSDE.linear(),
                             resolution=resolution, device=device, name="ema")
    grey = torch.full((3, resolution, resolution), 0.5)
    images = sdedit(score_model, grey, t0=1.0, steps=steps, sampler="ddim", samples=n, seed=seed)
    model.train(was_training)
    return images * 2.0 - 1.0


def save_contact_sheet(images: torch.Tensor, path: Path, pad: int = 2) -> None:
    """Grid of images in [-1, 1] on a light-grey background."""
    n, _, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 200, np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y : y + h, x : x + w] = arr[k]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic save: write a temp file next to it, then os.replace."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(ckpt: dict[str, Any], key: str = "ema") -> UNet2DModel:
    model = UNet2DModel.from_config(ckpt["model_config"])
    model.load_state_dict(ckpt[key])
    return model


def export(ema: UNet2DModel, folder: Path) -> None:
    """Save the EMA UNet (fp32 safetensors) and the matching DDPMScheduler into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    ema = copy.deepcopy(ema).cpu()  # always kept in fp32; only layout may differ
    for p in ema.parameters():
        p.data = p.data.contiguous()
    ema.save_pretrained(folder, safe_serialization=True)
    for f in folder.glob("*.safetensors"):
        f.chmod(0o644)  # safetensors writes 0600; the weights get bundled
    make_scheduler().save_pretrained(folder)


# ----------------------------------------------------------------------------- main loop


class StopFlag:
    """Set by SIGTERM / SIGINT so the loop can checkpoint and exit cleanly."""

    def __init__(self) -> None:
        self.stop = False
        signal.signal(signal.SIGTERM, self._handler)
        signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        self.stop = True


def batches(data: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    n = data.shape[0]
    while True:
        yield data[torch.randint(0, n, (batch_size,))]


def make_autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def log_line(log_path: Path | None, record: dict[str, Any]) -> None:
    if log_path is None:
        return
    with log_path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def tune_glibc_malloc() -> bool:
    """Keep freed memory in the process instead of mmap/munmap-ing every big tensor.

    With glibc defaults each training step re-faults its activation memory from the kernel;
    on the 2-core CPU box this more than doubled the step time (mostly system time).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
    ok &= libc.mallopt(m_trim_threshold, 1 << 40) == 1
    ok &= libc.mallopt(m_top_pad, 1 << 28) == 1
    return bool(ok)


def train(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    malloc_tuned = tune_glibc_malloc() if device.type == "cpu" else False
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    bench = args.bench_steps > 0
    log_path = None if bench else out / "log.jsonl"
    bf16 = device.type == "cuda" or args.cpu_bf16
    autocast = make_autocast(device, bf16)
    abar = alphas_cumprod().to(device)

    ckpt = load_checkpoint(ckpt_path) if args.resume and ckpt_path.exists() else None
    if args.resume and ckpt is None:
        print(f"--resume: no checkpoint at {ckpt_path}, starting fresh", file=sys.stderr)
    if ckpt is not None:
        model = model_from_checkpoint(ckpt, "model")
        resolution = int(model.config.sample_size)
    elif args.init_from is not None:
        # Continue training an exported model (weights only: the optimiser state and the step
        # count start afresh, so the learning rate warms up and anneals again).
        torch.manual_seed(args.seed)
        model = UNet2DModel.from_pretrained(args.init_from)
        resolution = int(model.config.sample_size)
    else:
        torch.manual_seed(args.seed)
        resolution = args.resolution
        preset = dict(CONFIGS[args.config])
        if args.channels:
            preset["channels"] = tuple(int(c) for c in args.channels.split(","))
        if args.layers:
            preset["layers"] = args.layers
        if args.groups:
            preset["groups"] = args.groups
        if args.attn_res is not None:
            preset["attn_res"] = tuple(int(r) for r in args.attn_res.split(",") if r)
        model = build_unet(resolution, head_dim=args.head_dim, dropout=args.dropout, **preset)
    model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    if args.channels_last is None:
        args.channels_last = device.type == "cuda"
    memfmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=memfmt)
    opt = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay
    )
    step, train_seconds = 0, 0.0
    if ckpt is not None:
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        step, train_seconds = int(ckpt["step"]), float(ckpt["train_seconds"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"])
        print(f"resumed from {ckpt_path} at step {step} ({train_seconds / 60:.1f} min)")
    ema.to(device)

    data = load_images(args.data, resolution).to(device)
    eval_sets: dict[str, torch.Tensor] = {}
    if not bench and args.eval_images > 0:
        gen = torch.Generator().manual_seed(0)
        held = load_images(args.data, resolution, "heldout")
        sub = torch.randperm(data.shape[0], generator=gen)[: min(args.eval_images, len(held))]
        eval_sets = {"heldout": held[: args.eval_images].to(device), "train": data[sub]}

    run_model: torch.nn.Module = model
    if args.compile:
        run_model = torch.compile(model)

    n_params = count_params(model)
    info = {
        "event": "start",
        "step": step,
        "params": n_params,
        "resolution": resolution,
        "train_images": int(data.shape[0]),
        "device": str(device),
        "bf16": bf16,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "malloc_tuned": malloc_tuned,
        "torch": torch.__version__,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    log_line(log_path, info)
    print(json.dumps({k: v for k, v in info.items() if k != "args"}))

    def state() -> dict[str, Any]:
        cfg = {k: v for k, v in model.config.items() if not k.startswith("_")}
        return {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "train_seconds": train_seconds,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
            "model_config": json.loads(json.dumps(cfg)),
            "args": info["args"],
        }

    def evaluate() -> dict[str, float]:
        res: dict[str, float] = {}
        for name, x in eval_sets.items():
            w, m = eval_loss(ema, x, abar, args.snr_gamma, autocast, floor=args.snr_floor)
            res[f"eval_{name}_weighted"], res[f"eval_{name}_mse"] = round(w, 5), round(m, 5)
        return res

    max_seconds = args.max_minutes * 60 if args.max_minutes else math.inf
    max_steps: int | None = args.max_steps
    if bench:
        max_steps = step + args.bench_steps + args.bench_warmup
    stopper = StopFlag()
    it = batches(data, args.batch_size)
    model.train()

    def done() -> bool:
        return (max_steps is not None and step >= max_steps) or train_seconds >= max_seconds

    interactive = sys.stderr.isatty()
    pbar = tqdm(
        total=max_steps,
        initial=step,
        dynamic_ncols=True,
        mininterval=0.5 if interactive else 60.0,
        disable=bench,
    )
    last_ckpt_wall = time.monotonic()
    next_ckpt = args.first_ckpt_minutes * 60
    loss_acc, n_acc, log_t0, log_step0 = 0.0, 0, time.monotonic(), step
    t_prev = time.monotonic()
    bench_t0 = None
    steps_this_run = 0
    while not done() and not stopper.stop:
        progress = max(
            step / max_steps if max_steps else 0.0,
            train_seconds / max_seconds if math.isfinite(max_seconds) else 0.0,
        )
        lr = args.lr * lr_factor(step, progress, args.warmup_steps, args.final_lr_fraction)
        for g in opt.param_groups:
            g["lr"] = lr
        x0 = augment(next(it)) if args.augment else next(it)
        x0 = x0.contiguous(memory_format=memfmt)
        try:
            w, _ = min_snr_loss(run_model, x0, abar, args.snr_gamma, autocast,
                                floor=args.snr_floor)
            loss = w.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        except Exception as exc:  # torch.compile failures surface on the first call
            if run_model is model:
                raise
            print(f"torch.compile failed ({type(exc).__name__}: {exc}); using eager mode")
            log_line(log_path, {"event": "compile_failed", "error": str(exc)[:500]})
            run_model = model
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        steps_this_run += 1
        ema_update(ema, model, ema_decay(step, args.ema_decay))
        loss_acc += float(loss.detach())
        n_acc += 1
        now = time.monotonic()
        train_seconds += now - t_prev
        t_prev = now
        pbar.update(1)
        if bench and steps_this_run == args.bench_warmup:
            bench_t0 = time.monotonic()
        if step % args.log_every == 0 and not bench:
            sps = (step - log_step0) / (now - log_t0)
            rec = {
                "step": step,
                "loss": round(loss_acc / n_acc, 5),
                "steps_per_s": round(sps, 3),
                "lr": float(f"{lr:.3e}"),
                "minutes": round(train_seconds / 60, 2),
            }
            log_line(log_path, rec)
            pbar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{sps:.2f}")
            loss_acc, n_acc, log_t0, log_step0 = 0.0, 0, now, step
        if not bench and now - last_ckpt_wall >= next_ckpt:
            save_checkpoint(ckpt_path, state())
            rec = {"event": "checkpoint", "step": step, "minutes": round(train_seconds / 60, 2)}
            rec.update(evaluate())
            log_line(log_path, rec)
            pbar.write(json.dumps(rec))
            last_ckpt_wall = time.monotonic()
            log_t0, log_step0 = last_ckpt_wall, step  # logged steps/s excludes ckpt/eval time
            next_ckpt = args.ckpt_minutes * 60
    pbar.close()

    if bench:
        assert bench_t0 is not None
        sps = args.bench_steps / (time.monotonic() - bench_t0)
        print(
            json.dumps(
                {
                    "bench": args.config,
                    "resolution": resolution,
                    "batch": args.batch_size,
                    "params": n_params,
                    "fp32_MB": round(n_params * 4 / 1e6, 2),
                    "bf16": bf16,
                    "channels_last": args.channels_last,
                    "compile": args.compile and run_model is not model,
                    "steps_per_s": round(sps, 3),
                    "images_per_s": round(sps * args.batch_size, 1),
                }
            )
        )
        return

    if steps_this_run:
        save_checkpoint(ckpt_path, state())
    rec = {"event": "stopped" if stopper.stop else "finished", "step": step}
    rec["minutes"] = round(train_seconds / 60, 2)
    rec.update(evaluate())
    log_line(log_path, rec)
    print(json.dumps(rec))
    if not stopper.stop:
        export(ema, out / "model")
        print(f"exported EMA model to {out / 'model'}")
        if args.sample:
            sample_sheet(ema, args, device, args.sample_out or out / "samples.png")


def sample_sheet(
    ema: UNet2DModel, args: argparse.Namespace, device: torch.device, path: Path
) -> None:
    imgs = ddim_sample(
        ema, args.sample, int(ema.config.sample_size), device, args.sample_steps, args.sample_seed
    )
    save_contact_sheet(imgs, path)
    print(f"wrote {args.sample} samples to {path}")


def export_only(args: argparse.Namespace) -> None:
    ckpt_path = args.out / CHECKPOINT_NAME
    ckpt = load_checkpoint(ckpt_path)
    ema = model_from_checkpoint(ckpt, "ema").eval()
    export(ema, args.export)
    print(f"exported EMA weights of step {ckpt['step']} from {ckpt_path} to {args.export}")
    if args.sample:
        device = torch.device(args.device)
        if device.type == "cpu":
            torch.set_num_threads(args.threads)
        path = args.sample_out or args.export / "samples.png"
        sample_sheet(ema.to(device), args, device, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data/emoji/emoji.npz"))
    p.add_argument("--out", type=Path, default=Path("runs/emoji32"), help="run folder")
    p.add_argument("--resolution", type=int, default=32, choices=(32, 64))
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS), help="UNet preset")
    p.add_argument("--channels", default=None, help="override preset, e.g. 32,64,64")
    p.add_argument("--layers", type=int, default=None, help="override resnets per level")
    p.add_argument("--groups", type=int, default=None, help="override GroupNorm groups")
    p.add_argument("--attn-res", default=None, help="override attention resolutions, e.g. 8")
    p.add_argument("--head-dim", type=int, default=32, help="attention head dim")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument(
        "--final-lr-fraction",
        type=float,
        default=0.1,
        help="cosine decay to lr*this at the end (progress = max of step and time fractions)",
    )
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR-gamma weighting")
    p.add_argument("--snr-floor", type=float, default=0.0,
                   help="below this SNR, weight the x0 error instead (1 = truncated SNR)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock budget in minutes (incl. checkpoints/eval), summed over resumes",
    )
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from an exported model folder (e.g. models/weights/emoji) instead of random",
    )
    p.add_argument("--first-ckpt-minutes", type=float, default=2.0)
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--eval-images", type=int, default=256, help="held-out/train images for eval")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on CPU (slower here)")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on for CUDA, off for CPU where it is slower)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the training model")
    p.add_argument("--export", type=Path, default=None, help="export EMA from checkpoint, exit")
    p.add_argument("--sample", type=int, default=0, help="write a sheet of N DDIM samples")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--sample-out", type=Path, default=None)
    p.add_argument("--bench-steps", type=int, default=0, help="only time this many steps")
    p.add_argument("--bench-warmup", type=int, default=5)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.export is not None:
        export_only(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
