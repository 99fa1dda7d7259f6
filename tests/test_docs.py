"""The README documents what users configure: every setting, every CLI subcommand."""

from __future__ import annotations

from pathlib import Path

from cli.main import COMMANDS
from jobs.settings import Settings

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme():
    missing = [f"SDEDIT_{name.upper()}" for name in Settings.model_fields
               if f"`SDEDIT_{name.upper()}`" not in README]
    assert not missing, missing


def test_every_cli_subcommand_is_in_the_readme():
    missing = [name for name in COMMANDS if f"sdedit {name}" not in README]
    assert not missing, missing
