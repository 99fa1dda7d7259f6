"""Stable Diffusion folders as latent models: golden tests against diffusers' img2img pipeline,
text-guided slots in mixed batches, masks, caches and precision, on the tiny random pipeline of
diffusers' own tests (built and saved here; the tokenizer's files are written, no hub)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.sd_configs import make_sd_folder
from jobs.rules import RuleViolation, SamplingParameters
from models.loader import load_model
from models.sde import CLEAN, strength_to_t0
from models.sdedit import Slot, SlotBatch, sdedit
from models.stable_diffusion import LatentModel
from worker.engine import Engine

PROMPT = "a red cat"
GOLDEN = dict(rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SD 1.x's own convention: the last step stops at level 0 (set_alpha_to_one=False)."""
    return make_sd_folder(tmp_path_factory.mktemp("sd-eps"))


@pytest.fixture(scope="module")
def sd_v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SD 2.x-style v prediction, stepping into clean data (set_alpha_to_one=True)."""
    return make_sd_folder(tmp_path_factory.mktemp("sd-v"), prediction_type="v_prediction",
                          set_alpha_to_one=True)


@pytest.fixture(scope="module")
def sd_model(sd_dir: Path) -> LatentModel:
    model = load_model(str(sd_dir))
    assert isinstance(model, LatentModel)
    return model


def guide_image(seed: int = 3) -> torch.Tensor:
    return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(seed))


def pipeline_output(folder: Path, guide: torch.Tensor, strength: float, steps: int,
                    guidance_scale: float, seed: int, negative_prompt: str | None = None,
                    prompt: str = PROMPT) -> torch.Tensor:
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(prompt, image=guide[None], strength=strength, num_inference_steps=steps,
                    guidance_scale=guidance_scale, negative_prompt=negative_prompt, eta=0.0,
                    generator=torch.Generator().manual_seed(seed), output_type="pt").images[0]


def test_a_stable_diffusion_folder_loads_as_a_text_guided_latent_model(sd_model, sd_v_dir):
    assert sd_model.text and sd_model.resolution == 64 and sd_model.channels == 3
    assert sd_model.latent_scale == 2 and sd_model.sde.num_levels == 1000
    assert sd_model.final_level == 0 and sd_model.prediction_type == "epsilon"
    v_model = load_model(str(sd_v_dir))
    assert v_model.final_level == CLEAN and v_model.prediction_type == "v_prediction"


def test_strength_maps_to_t0_and_steps_on_diffusers_timesteps():
    # diffusers: 10 steps at strength 0.5 visit timesteps 401, 301, 201, 101, 1.
    t0, steps = strength_to_t0(0.5, 10)
    assert (t0, steps) == (0.402, 5)
    assert strength_to_t0(0.75, 8) == (0.627, 6)  # r = 125: 626, 501, ..., 1
    with pytest.raises(ValueError, match="runs no step"):
        strength_to_t0(0.05, 10)


@pytest.mark.parametrize("folder, strength, steps, guidance, negative", [
    ("sd_dir", 0.5, 10, 7.5, None),
    ("sd_dir", 0.75, 8, 1.0, None),  # no guidance: the prompt row only
    ("sd_dir", 0.3, 20, 3.0, "blurry"),
    ("sd_v_dir", 0.5, 10, 7.5, "blurry"),
    ("sd_v_dir", 1.0, 4, 5.0, None),
])
def test_one_job_alone_equals_diffusers_img2img_pipeline(request, folder, strength, steps,
                                                          guidance, negative):
    folder = request.getfixturevalue(folder)
    model = load_model(str(folder))
    guide = guide_image()
    reference = pipeline_output(folder, guide, strength, steps, guidance, seed=5,
                                negative_prompt=negative)
    t0, count = strength_to_t0(strength, steps)
    ours = sdedit(model, guide, t0=t0, steps=count, sampler="ddim", seed=5, prompt=PROMPT,
                  negative_prompt=negative, guidance_scale=guidance)[0]
    torch.testing.assert_close(ours, reference, **GOLDEN)


def test_the_same_job_inside_a_mixed_batch_equals_diffusers(sd_model, sd_dir):
    """Other prompts, strengths, step counts, guidance scales, samplers and a mask share every
    forward; some join after the job has started, some finish before it."""
    guide = guide_image()
    reference = pipeline_output(sd_dir, guide, 0.5, 10, 7.5, seed=5)
    t0, steps = strength_to_t0(0.5, 10)
    engine = Engine({"sd": sd_model}, max_batch=8)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 16:48, 8:40] = 1.0
    engine.admit("early", "sd", torch.stack([guide_image(7), guide_image(8)]), mask,
                 SamplingParameters(t0=0.8, steps=7, sampler="ancestral", prompt="a dog",
                                    guidance_scale=4.0), samples=1, seed=1)
    engine.admit("short", "sd", guide_image(9),
                 None, SamplingParameters(t0=0.3, steps=2, prompt="a house"), samples=1, seed=2)
    done = {}

    def step() -> None:
        done.update({edit.id: edit.results for edit in engine.step()})

    step()
    engine.admit("job", "sd", guide, None, SamplingParameters(
        t0=t0, steps=steps, sampler="ddim", prompt=PROMPT, guidance_scale=7.5), samples=1, seed=5)
    step()
    engine.admit("late", "sd", guide_image(10), None,
                 SamplingParameters(t0=0.6, steps=3, sampler="ddim", prompt=PROMPT,
                                    negative_prompt="blurry", guidance_scale=1.0),
                 samples=2, seed=3)
    while engine.busy:
        step()
    assert set(done) == {"early", "short", "job", "late"}
    torch.testing.assert_close(done["job"][0], reference, **GOLDEN)


def test_a_slot_alone_equals_the_same_slot_in_a_batch_with_the_ancestral_sampler(sd_model):
    params = SamplingParameters(t0=0.6, steps=4, sampler="ancestral", prompt=PROMPT,
                                guidance_scale=6.0)
    alone = sdedit(sd_model, guide_image(), t0=0.6, steps=4, sampler="ancestral", seed=11,
                   prompt=PROMPT, guidance_scale=6.0)[0]
    batch = SlotBatch(sd_model)
    slot = batch.add(Slot(guide=guide_image(), params=params, seed=11))
    for k in range(3):
        batch.add(Slot(guide=guide_image(20 + k), seed=k, params=SamplingParameters(
            t0=0.9, steps=6, prompt=f"other {k}", guidance_scale=1.0 + k)))
    while batch.active:
        batch.step(max_forward=3)  # chunks split guided and unguided samples differently
    torch.testing.assert_close(slot.result, alone, rtol=0, atol=1e-5)
    other_seed = sdedit(sd_model, guide_image(), t0=0.6, steps=4, sampler="ancestral", seed=12,
                        prompt=PROMPT, guidance_scale=6.0)[0]
    assert not torch.allclose(other_seed, alone, atol=1e-3)


def test_prompt_and_guidance_change_the_output(sd_model):
    run = dict(t0=0.7, steps=3, sampler="ddim", seed=4)
    base = sdedit(sd_model, guide_image(), prompt=PROMPT, guidance_scale=7.5, **run)
    assert not torch.allclose(base, sdedit(sd_model, guide_image(), prompt="a dog",
                                           guidance_scale=7.5, **run), atol=1e-4)
    assert not torch.allclose(base, sdedit(sd_model, guide_image(), prompt=PROMPT,
                                           guidance_scale=2.0, **run), atol=1e-4)


def test_masked_edit_keeps_pixels_exactly_and_blends_latents_at_the_level_reached(sd_model):
    guide = guide_image()
    mask = torch.zeros(1, 64, 64)
    mask[:, 20:44, 20:44] = 1.0
    params = SamplingParameters(t0=0.5, steps=3, sampler="ddim", prompt=PROMPT)
    batch = SlotBatch(sd_model)
    slot = batch.add(Slot(guide=guide, mask=mask, params=params, seed=1))
    latent_mask = slot.model_mask
    assert latent_mask.shape == (1, 32, 32) and latent_mask.sum() == 12 * 12
    batch.step()
    level = slot.phases[0][2]  # the level the first step reached
    abar = float(sd_model.sde.abar_at(torch.tensor([level])))
    expected = abar**0.5 * slot.source + (1 - abar) ** 0.5 * slot.z_keep
    keep = latent_mask[0] == 0
    torch.testing.assert_close(slot.x[:, keep], expected[:, keep], rtol=0, atol=1e-6)
    while batch.active:
        batch.step()
    kept = mask[0] == 0
    assert torch.equal(slot.result[:, kept], guide[:, kept])
    assert not torch.allclose(slot.result[:, ~kept], guide[:, ~kept], atol=1e-2)


def test_repeats_re_encode_each_pass_and_keep_the_masked_region(sd_model):
    guide = guide_image()
    mask = torch.zeros(1, 64, 64)
    mask[:, :32] = 1.0
    once = sdedit(sd_model, guide, mask, t0=0.5, steps=2, seed=3, prompt=PROMPT)[0]
    twice = sdedit(sd_model, guide, mask, t0=0.5, steps=2, seed=3, prompt=PROMPT, repeats=2)[0]
    assert not torch.allclose(once, twice, atol=1e-4)
    assert torch.equal(twice[:, 32:], guide[:, 32:])


def test_prompt_embeddings_are_cached_and_a_guide_is_encoded_once_per_job(sd_dir, monkeypatch):
    model = load_model(str(sd_dir))
    calls = {"text": 0, "vae": 0}
    text_forward, encode = model.text_encoder.forward, model.vae.encode

    def counting_text(*args, **kwargs):
        calls["text"] += 1
        return text_forward(*args, **kwargs)

    def counting_encode(*args, **kwargs):
        calls["vae"] += 1
        return encode(*args, **kwargs)

    monkeypatch.setattr(model.text_encoder, "forward", counting_text)
    monkeypatch.setattr(model.vae, "encode", counting_encode)
    engine = Engine({"sd": model}, max_batch=8)
    for i in range(3):  # a batch job: the same prompt again and again
        engine.admit(f"j{i}", "sd", guide_image(), None,
                     SamplingParameters(t0=0.3, steps=1, prompt=PROMPT), samples=2, seed=i)
    assert calls == {"text": 2, "vae": 1}  # prompt and "" (guided); one guide
    engine.admit("other", "sd", guide_image(4), None,
                 SamplingParameters(t0=0.3, steps=1, prompt="a dog", guidance_scale=1.0),
                 samples=1, seed=0)
    assert calls == {"text": 3, "vae": 2}


def test_text_fields_are_refused_for_a_pixel_model_and_accepted_by_a_text_model(vp_model,
                                                                                 sd_model):
    with pytest.raises(RuleViolation, match="^prompt: this model takes no text"):
        SlotBatch(vp_model).add(Slot(guide=torch.rand(3, 16, 16), seed=0,
                                     params=SamplingParameters(t0=0.3, prompt="a cat")))
    with pytest.raises(RuleViolation, match="^guidance_scale: this model takes no text"):
        sdedit(vp_model, torch.rand(3, 16, 16), t0=0.3, guidance_scale=3.0)
    with pytest.raises(RuleViolation, match="^sampler: 'pc' does not apply"):
        sdedit(sd_model, guide_image(), t0=0.3, sampler="pc", prompt=PROMPT)
    # No prompt at all is an edit guided by the empty prompt, as in diffusers.
    assert sdedit(sd_model, guide_image(), t0=0.2, steps=1).shape == (1, 3, 64, 64)


def test_the_api_serves_text_guided_edits_from_a_folder_named_in_the_models_setting(
        sd_dir, vp_dir, tmp_path):
    """SDEDIT_MODELS entries name=path and a plain folder; /v1/models says which take text;
    text fields to a pixel model are a 422; a prompt to the SD model runs end to end."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from jobs.settings import Settings
    from service.app import create_app
    from worker.main import EditRunner, build_engine
    from worker.rq_adapter import BatchWorker

    settings = Settings(data_dir=tmp_path / "redis", models=[f"sd={sd_dir}", str(vp_dir)],
                        auth_disabled=True, max_samples=2, max_batch=4, metrics_port=0)
    assert settings.models == ["sd", vp_dir.name]
    buffer = io.BytesIO()
    Image.new("RGB", (80, 80), (200, 40, 40)).save(buffer, "PNG")
    with TestClient(create_app(settings)) as client:
        runner = EditRunner(build_engine(settings), client.app.state.queue, settings)
        runner.publish()
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert models["sd"]["text"] is True and models["sd"]["resolution"] == 64
        assert models["sd"]["defaults"]["guidance_scale"] == 7.5
        assert models[vp_dir.name]["text"] is False
        assert "prompt" not in models[vp_dir.name]["defaults"]

        def post(**fields: str):
            return client.post("/v1/edits", data=fields,
                               files={"image": ("guide.png", buffer.getvalue(), "image/png")})

        refused = post(model=vp_dir.name, t0="0.3", prompt="a cat")
        assert refused.status_code == 422
        assert refused.json()["error"]["message"].startswith("prompt: this model takes no text")
        assert post(model="sd", t0="0.3", guidance_scale="60").status_code == 422
        accepted = post(model="sd", t0="0.5", steps="2", prompt="a cat", negative_prompt="dog",
                        guidance_scale="5", samples="2", output_size="input")
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()["id"]
        BatchWorker(settings.models, runner, connection=runner.queue.connection).work(burst=True)
        status = client.get(f"/v1/edits/{job}").json()
        assert status["status"] == "finished", status
        image = Image.open(io.BytesIO(client.get(f"/v1/edits/{job}/images/1").content))
        assert image.size == (80, 80)


# bfloat16 against float32 on the CPU, images in [0, 1], 4 steps from t0 = 0.6. Measured on the
# tiny models: largest pixel difference 0.034 (VE), 0.033 (VP), 0.022 (SD); mean 0.0011,
# 0.0010, 0.0032.
BFLOAT16_MAX, BFLOAT16_MEAN = 0.06, 0.01


@pytest.mark.parametrize("kind", ["vp", "ve", "sd"])
def test_bfloat16_networks_stay_within_a_stated_bound_of_float32(request, kind):
    folder = request.getfixturevalue(f"{kind}_dir")
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(str(folder), dtype=dtype)
        guide = torch.rand(3, model.resolution, model.resolution,
                           generator=torch.Generator().manual_seed(3))
        text = {"prompt": PROMPT} if model.text else {}
        runs[dtype] = sdedit(model, guide, t0=0.6, steps=4, seed=1, **text)
        assert runs[dtype].dtype == torch.float32  # the schedule maths stays float32
    difference = (runs[torch.float32] - runs[torch.bfloat16]).abs()
    assert 0 < difference.max() <= BFLOAT16_MAX and difference.mean() <= BFLOAT16_MEAN


def test_network_dtype_setting():
    from models.loader import ModelLoadError, network_dtype

    assert network_dtype("auto", "cpu") == torch.float32
    assert network_dtype("auto", "cuda") == torch.float16
    assert network_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        network_dtype("float8", "cpu")


@pytest.mark.parametrize("change, message", [
    ({"in_channels": 9}, "an inpainting UNet is not supported"),
    ({"addition_embed_type": "text_time"}, "not a Stable Diffusion 1.x / 2.x UNet"),
])
def test_unsupported_stable_diffusion_unets_are_refused_with_a_message(sd_dir, tmp_path, change,
                                                                       message):
    import json
    import shutil

    from models.loader import ModelLoadError

    folder = shutil.copytree(sd_dir, tmp_path / "sd")
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(folder))


def test_the_cli_edits_with_a_prompt_and_refuses_one_for_a_pixel_model(sd_dir, vp_dir, tmp_path,
                                                                        capsys):
    from PIL import Image

    from cli.main import main

    guide = tmp_path / "guide.png"
    Image.new("RGB", (96, 80), (40, 90, 200)).save(guide)
    out = tmp_path / "out"
    assert main(["edit", str(guide), "--model", str(sd_dir), "--t0", "0.4", "--steps", "2",
                 "--prompt", PROMPT, "--negative-prompt", "blurry", "--guidance-scale", "5",
                 "--dtype", "float32", "-n", "2", "-o", str(out)]) == 0
    for k in range(2):
        with Image.open(out / f"guide-{k}.png") as image:
            assert image.size == (64, 64)
    capsys.readouterr()
    assert main(["edit", str(guide), "--model", str(vp_dir), "--prompt", PROMPT,
                 "-o", str(out)]) == 2
    assert "prompt: this model takes no text" in capsys.readouterr().err
