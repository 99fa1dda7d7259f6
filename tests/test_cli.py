"""The `sdedit edit` command: outputs on disk and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from cli.main import main


@pytest.fixture()
def guide_file(tmp_path):
    path = tmp_path / "guide.png"
    Image.new("RGB", (24, 24), (200, 30, 30)).save(path)
    return path


@pytest.mark.parametrize("region,size", [("full", (16, 16)), ("auto", (24, 24))])
def test_edit_writes_samples_at_model_or_input_resolution(vp_dir, guide_file, tmp_path, region,
                                                          size):
    mask = tmp_path / "mask.png"
    Image.new("L", (24, 24), 255).save(mask)
    out = tmp_path / "out"
    code = main(["edit", str(guide_file), "--mask", str(mask), "--t0", "0.2", "--steps", "5",
                 "-n", "2", "--seed", "3", "--model", str(vp_dir), "--region", region,
                 "-o", str(out)])
    assert code == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["guide-0.png", "guide-1.png"]
    with Image.open(out / "guide-0.png") as image:
        assert image.size == size and image.mode == "RGB"


def test_a_masked_edit_of_a_large_photo_keeps_its_size_and_its_unmasked_pixels(vp_dir, tmp_path):
    """1600x1200 in, 1600x1200 out; only the small masked region changes (crop-and-stitch)."""
    import numpy as np

    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(photo)
    mask = Image.new("L", (1600, 1200), 0)
    mask.paste(255, (700, 500, 780, 560))
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "out"
    assert main(["edit", str(photo), "--mask", str(tmp_path / "mask.png"), "--t0", "0.3",
                 "--steps", "3", "--model", str(vp_dir), "-o", str(out)]) == 0
    before = np.asarray(Image.open(photo))
    after = np.asarray(Image.open(out / "photo-0.png"))
    assert after.shape == before.shape
    changed = np.any(after != before, axis=2)
    assert changed[500:560, 700:780].any()
    changed[500:560, 700:780] = False
    assert not changed.any()


@pytest.mark.parametrize("args,message", [
    (["MISSING"], "no such file"),
    (["NOT_IMAGE"], "not a readable image"),
    (["GUIDE", "--mask", "SMALL_MASK"], "mask size 8x8 does not match guide size 24x24"),
    (["GUIDE", "--model", "no-such-model"], "no model 'no-such-model'"),
    # The model's own rules (jobs.rules.check), with the API's messages:
    (["GUIDE", "--sampler", "pc"], "sampler: 'pc' does not apply to a VP model"),
    (["GUIDE", "--t0", "0.0004"], "t0: 0.0004 rounds to zero noise levels for a model with 1000"),
    (["GUIDE", "--t0", "0.01", "--steps", "11"], "steps: at most 10 for t0=0.01 on this model"),
    (["GUIDE", "--samples", "0"], "samples: Input should be greater than or equal to 1"),
    (["GUIDE", "--eta", "1.5"], "eta: Input should be less than or equal to 1"),
    (["GUIDE", "--region", "masked"], "region: 'masked' edits the regions of a mask; send a mask"),
    (["GUIDE", "--feather", "100"], "feather: Input should be less than or equal to 64"),
])
def test_bad_inputs_give_one_line_errors(vp_dir, guide_file, tmp_path, capsys, args, message):
    not_image = tmp_path / "x.png"
    not_image.write_text("hello")
    small = tmp_path / "small.png"
    Image.new("L", (8, 8)).save(small)
    names = {"MISSING": str(tmp_path / "missing.png"), "NOT_IMAGE": str(not_image),
             "GUIDE": str(guide_file), "SMALL_MASK": str(small)}
    argv = ["edit", *[names.get(a, a) for a in args], "-o", str(tmp_path / "o")]
    if "--model" not in args:
        argv += ["--model", str(vp_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sdedit: error:") and message in err[-1]


@pytest.mark.parametrize("t0,message", [
    ("0", "t0: Input should be greater than 0"),
    ("1.5", "t0: Input should be less than or equal to 1"),
    ("abc", "argument --t0: invalid float value: 'abc'"),
])
def test_t0_outside_the_unit_interval_is_rejected(guide_file, tmp_path, t0, message):
    result = subprocess.run([sys.executable, "-m", "cli", "edit", str(guide_file), "--t0", t0,
                             "-o", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]
