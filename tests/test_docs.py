"""Documentation that cannot drift (in the spirit of sqlite-utils' test_docs.py):
every command is in the README, every option in the generated CLI reference,
and every --help shows each option's default."""

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hgmcli.cli import app
from hgmcli.clidoc import reference

REPO = Path(__file__).resolve().parents[1]
GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)


def visible_options(name: str) -> list:
    return [p for p in GROUP.commands[name].params if p.opts and not getattr(p, "hidden", False)]


def test_the_cli_reference_is_current():
    """docs/cli.md is what `python -m hgmcli.clidoc` writes today (run `make docs` after changing an option)."""
    assert (REPO / "docs" / "cli.md").read_text() == reference() + "\n"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_in_the_readme(name):
    assert f"hgm {name}" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_is_in_the_reference(name):
    text = (REPO / "docs" / "cli.md").read_text()
    section = text.split(f"## hgm {name}\n", 1)[1].split("\n## ", 1)[0]
    for p in visible_options(name):
        assert f"`{p.opts[0]}`" in section, f"{name} {p.opts[0]}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_help_shows_each_default(name):
    r = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "240"})
    assert r.exit_code == 0
    shown = len(re.findall(r"\[default: ", r.stdout))
    assert shown == len(visible_options(name)), r.stdout
    assert "Random seed ." not in r.stdout  # rich markup used to swallow the bracketed defaults
