"""The benchmark scripts that CI cannot run at full size still run, and the GPU script refuses
a machine without a GPU at once, with a message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_the_gpu_script_fails_fast_and_clearly_without_a_gpu(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)})
    assert result.returncode == 2
    assert "no CUDA GPU is visible" in result.stderr
    assert not (tmp_path / "gpu-results.md").exists()  # nothing half-written


def test_the_gpu_checks_hold_their_bound_with_bfloat16_on_the_cpu():
    from bench import gpu_checks

    assert gpu_checks.main(["--device", "cpu", "--dtype", "bfloat16", "--network", "tiny-32",
                            "--steps", "3"]) == 0


def test_the_batching_benchmark_reports_medians_and_ranges(capsys):
    from bench import batching

    batching.main(["--network", "tiny-32", "--jobs", "3", "--rounds", "2", "--probe-reps", "2",
                   "--max-batch", "4", "--load", "saturate"])
    out = capsys.readouterr().out
    assert "one-at-a-time capacity" in out and "arrivals: all at t=0" in out
    assert out.count("round ") == 6  # 3 policies x 2 rounds, interleaved
    assert "step-level / static p95 latency:" in out and "(range " in out


@pytest.mark.parametrize("load", ["0.7"])
def test_the_batching_benchmark_prints_the_offered_load_it_drew(capsys, load):
    from bench import batching

    batching.main(["--network", "tiny-32", "--jobs", "3", "--rounds", "1", "--probe-reps", "2",
                   "--max-batch", "4", "--load", load])
    assert "% of capacity" in capsys.readouterr().out
