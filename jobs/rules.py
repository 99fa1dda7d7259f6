"""The edit rules, defined once: parameter names, ranges, defaults, samplers per SDE family, and
how t0 and steps map to the noise levels of a model with N levels.

The API's request model, the OpenAPI schema, the CLI's checks and the engine's validation all
come from here, so a parameter the worker would reject is rejected by the API first, with the
same message. Pydantic only: no torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Family = Literal["vp", "ve"]
Sampler = Literal["ancestral", "ddim", "pc"]
OutputFormat = Literal["png", "webp"]
Region = Literal["auto", "masked", "full"]
OutputSize = Literal["model", "input"]

SAMPLERS: dict[str, tuple[str, ...]] = {"vp": ("ancestral", "ddim"), "ve": ("pc",)}
DEFAULT_SAMPLER: dict[str, str] = {"vp": "ancestral", "ve": "pc"}
ALL_SAMPLERS: tuple[str, ...] = ("ancestral", "ddim", "pc")
OUTPUT_FORMATS: tuple[str, ...] = ("png", "webp")
DEFAULT_MODEL = "emoji"
MAX_STEPS = 2000
MAX_REPEATS = 10
MAX_PROMPT_CHARS = 2000  # far beyond what a text encoder reads (CLIP: 77 tokens)
MAX_GUIDANCE_SCALE = 50.0
# Text-guided models: what a slot uses when the edit leaves a text field out (diffusers' own
# defaults: no prompt, no negative prompt, classifier-free guidance at 7.5).
TEXT_DEFAULTS: dict[str, object] = {"prompt": "", "negative_prompt": "", "guidance_scale": 7.5}
TEXT_FIELDS: tuple[str, ...] = tuple(TEXT_DEFAULTS)


class RuleViolation(ValueError):
    """A parameter that breaks a rule for a particular model, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SamplingParameters(BaseModel):
    """How one sample is edited: the part of an edit the sampler sees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    t0: float = Field(0.5, gt=0.0, le=1.0, allow_inf_nan=False,
                      description="noise strength in (0, 1]: small = faithful to the guide, "
                                  "large = realistic")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS,
                              description="reverse steps; default: every level from t0 down (the "
                                          "paper); at most the levels between t0 and 0")
    sampler: Sampler | None = Field(
        None, description="ancestral or ddim (VP models), pc (VE models); default per model")
    eta: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="DDIM noise")
    repeats: int = Field(1, ge=1, le=MAX_REPEATS,
                         description="K sequential SDEdit passes (the official code uses 3)")
    # Text-guided models only (ModelSpec.text); None = the model's default, and for any other
    # model None is the only accepted value.
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS,
                               description="text-guided models: what the edit should show")
    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS,
        description="text-guided models: what it should not show (the unconditional half of "
                    "classifier-free guidance; default empty)")
    guidance_scale: float | None = Field(
        None, ge=1.0, le=MAX_GUIDANCE_SCALE, allow_inf_nan=False,
        description="text-guided models: classifier-free guidance weight w, eps = eps(neg) + "
                    "w (eps(prompt) - eps(neg)); 1 = no guidance (default 7.5)")


class EditParameters(SamplingParameters):
    """The user-facing knobs of one edit: what the API accepts and the CLI offers."""

    model: str = Field(DEFAULT_MODEL, min_length=1, max_length=200,
                       description="name of a served model (see GET /v1/models)")
    samples: int = Field(1, ge=1, description="output images (the limit is a setting)")
    seed: int = Field(0, ge=0, lt=2**63, description="sample k uses seed + k")
    output_format: OutputFormat = Field("png", description="result image format")
    region: Region = Field(
        "auto", description="auto: with a mask, edit crops around its regions at the model's "
                            "resolution and stitch them back into the image at its own size "
                            "(pixels outside the mask bit-identical); without one, the whole "
                            "image. masked: crop-and-stitch (a mask is required). full: fit the "
                            "whole image to the model's resolution",
        examples=["auto"])
    output_size: OutputSize = Field(
        "model", description="for whole-image edits (region full, or no mask): results at the "
                             "model's resolution, or resized back to the input's size",
        examples=["input"])
    padding: float = Field(0.25, ge=0.0, le=4.0, allow_inf_nan=False,
                           description="crop-and-stitch: context around each mask region, per "
                                       "side, as a fraction of the region's longer side (at "
                                       "least 8 px)")
    feather: int = Field(4, ge=0, le=64, description="crop-and-stitch: pixels inside the mask "
                                                    "edge over which the edit blends in")

    def sampling(self) -> SamplingParameters:
        return SamplingParameters(**self.model_dump(include=set(SamplingParameters.model_fields)))


PARAMETER_FIELDS: tuple[str, ...] = tuple(EditParameters.model_fields)


def describe(error: ValidationError) -> str:
    """One line per broken field, 'field: message', as the API and the CLI report it."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse(kind: type[SamplingParameters], /, **values: object) -> SamplingParameters:
    """Build parameters from Python values; ValueError with one 'field: message' line per
    broken field (pydantic's own message spans several lines and a URL)."""
    try:
        return kind(**values)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None


def start_level(family: str, levels: int, t0: float) -> int:
    """The level index a pass starts at, for a model with `levels` noise levels (0 = least noise).

    VP: the official code's n0 = round(t0 * N) noise levels, i.e. index n0 - 1; a t0 that rounds
    to zero levels is an error. VE: the grid index of sigma(t0), t on the grid k / (N - 1).
    """
    if not 0.0 < t0 <= 1.0:
        raise RuleViolation("t0", f"must be in (0, 1], got {t0!r}")
    if family == "ve":
        return round(t0 * (levels - 1))
    n0 = round(t0 * levels)
    if n0 < 1:
        raise RuleViolation("t0", f"{t0:g} rounds to zero noise levels for a model with {levels} "
                                  f"levels; use t0 >= {0.5 / levels:g}")
    return n0 - 1


def resolve_sampler(params: SamplingParameters, family: str) -> str:
    """The sampler a slot runs: the requested one, or the family's default."""
    return params.sampler or DEFAULT_SAMPLER[family]


def resolve_text(params: SamplingParameters) -> tuple[str, str, float]:
    """(prompt, negative prompt, guidance scale) a slot of a text-guided model runs with."""
    values = {name: getattr(params, name) for name in TEXT_FIELDS}
    prompt, negative, scale = ((TEXT_DEFAULTS[k] if v is None else v) for k, v in values.items())
    return str(prompt), str(negative), float(scale)


def check(params: SamplingParameters, family: str, levels: int, text: bool = False) -> None:
    """Raise RuleViolation for parameters that a model of this family and size cannot run;
    text: whether the model takes a prompt."""
    if not text:
        sent = [name for name in TEXT_FIELDS if getattr(params, name) is not None]
        if sent:
            raise RuleViolation(sent[0], "this model takes no text; prompt, negative_prompt and "
                                         "guidance_scale apply to text-guided models only (see "
                                         "GET /v1/models, field 'text')")
    if params.sampler is not None and params.sampler not in SAMPLERS[family]:
        raise RuleViolation("sampler", f"{params.sampler!r} does not apply to a {family.upper()} "
                                       f"model; choose one of {', '.join(SAMPLERS[family])}")
    start = start_level(family, levels, params.t0)
    if params.steps is not None and params.steps > start + 1:
        raise RuleViolation("steps", f"at most {start + 1} for t0={params.t0:g} on this model "
                                     f"(the levels from t0 down to 0 of its {levels})")


def check_mask(params: EditParameters, has_mask: bool) -> None:
    """Rules that depend on whether a mask came with the edit."""
    if params.region == "masked" and not has_mask:
        raise RuleViolation("region", "'masked' edits the regions of a mask; send a mask, or use "
                                      "region 'auto' or 'full'")


class ModelSpec(BaseModel):
    """What a worker publishes about a model it serves; the API checks edits against it."""

    name: str
    family: Family
    levels: int = Field(description="noise levels N of the model's SDE")
    resolution: int
    channels: int
    max_batch: int
    text: bool = Field(False, description="takes a prompt (prompt, negative_prompt, "
                                          "guidance_scale): a text-guided latent model")

    @property
    def samplers(self) -> tuple[str, ...]:
        return SAMPLERS[self.family]

    def public(self, available: bool) -> dict:
        """The /v1/models entry: the spec plus its samplers and defaults."""
        defaults = SamplingParameters().model_dump(exclude=set(TEXT_FIELDS))
        defaults["sampler"] = DEFAULT_SAMPLER[self.family]
        if self.text:
            defaults.update(TEXT_DEFAULTS)
        return {**self.model_dump(), "available": available, "samplers": list(self.samplers),
                "default_sampler": DEFAULT_SAMPLER[self.family], "defaults": defaults}
