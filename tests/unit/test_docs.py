"""The docs match the code: every setting and every CLI command is documented."""

from __future__ import annotations

from pathlib import Path

import click

from modelmarket.cli.main import cli
from modelmarket.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
ARCHITECTURE = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    for name, field in Settings.model_fields.items():
        env = f"MODELMARKET_{name.upper()}"
        assert env in README, f"{env} is not in README.md"
        assert field.description, f"setting {name} has no description"


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    out = []
    for name, command in group.commands.items():
        out.append(f"{prefix}{name}")
        if isinstance(command, click.Group):
            out.extend(_commands(command, f"{prefix}{name} "))
    return out


def test_every_cli_command_appears_in_the_readme_and_has_help() -> None:
    for command in _commands(cli):
        leaf = command.split()[-1]
        assert f"modelmarket {command}" in README or f" {leaf}" in README, f"`{command}` is not in README.md"
    for name, command in cli.commands.items():
        assert command.help, f"`modelmarket {name}` has no help text"


def test_architecture_names_every_package() -> None:
    src = ROOT / "src" / "modelmarket"
    for pkg in sorted(p.name for p in src.iterdir() if (p / "__init__.py").exists()):
        assert f"`{pkg}/`" in ARCHITECTURE, f"package {pkg} is missing from docs/ARCHITECTURE.md"
