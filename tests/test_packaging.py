"""The wheel carries what serving needs (and the bundled weights), not training; the API installs
without torch."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_wheel_holds_the_runtime_and_the_bundled_model_but_not_training(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(ROOT)], check=True)
    wheel = zipfile.ZipFile(next(tmp_path.glob("sdedit-*.whl")))
    names = set(wheel.namelist())
    for needed in ("jobs/rules.py", "jobs/queue.py", "service/routes/edits.py", "worker/engine.py",
                   "models/sdedit.py", "cli/main.py", "service/static/painter.js",
                   "models/weights/emoji/diffusion_pytorch_model.safetensors",
                   "models/weights/emoji/scheduler_config.json"):
        assert needed in names, needed
    tops = {name.split("/")[0] for name in names if not name.startswith("sdedit-")}
    assert tops == {"jobs", "service", "worker", "models", "cli"}, tops
    metadata = wheel.read(next(n for n in names if n.endswith("/METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [line for line in requires if "extra ==" not in line]
    assert base and not any(heavy in line for line in base
                            for heavy in ("torch", "diffusers", "transformers", "numpy"))
    assert any(line.startswith("Requires-Dist: torch") and "extra == \"worker\"" in line
               for line in requires)
