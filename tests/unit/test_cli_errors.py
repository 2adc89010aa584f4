"""The CLI's edge: each kind of expected failure becomes one `lethe: ...` line and its
exit code, and the command modules never import the entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bot.cli.common import exit_code
from bot.cli.main import Lethe
from bot.config import ConfigError
from bot.engine.store import StoreError
from bot.errors import CheckFailed, HomeserverError, LetheError, SetupError, UsageError
from bot.matrix.api import HomeserverUnavailable
from bot.matrix.credentials import LoginFailed
from bot.matrix.crosssigning import IdentityError
from bot.runlock import AlreadyRunning

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("error", "code"), [
    (CheckFailed("x"), 1),
    (IdentityError("x"), 1),
    (LetheError("x"), 1),
    (UsageError("x"), 2),
    (ConfigError("x"), 3),
    (StoreError("x"), 3),
    (AlreadyRunning("x"), 3),
    (SetupError("x"), 3),
    (LoginFailed("x"), 4),
    (HomeserverUnavailable("x"), 4),
    (HomeserverError("x"), 4),
])
def test_each_kind_of_failure_has_its_exit_code(error: LetheError, code: int) -> None:
    assert exit_code(error) == code


def test_a_failure_is_one_line_and_its_exit_code() -> None:
    @click.group(cls=Lethe)
    def group() -> None:
        pass

    @group.command()
    def room() -> None:
        raise UsageError("unknown room #nowhere:example.org: no such alias")

    result = CliRunner().invoke(group, ["room"])
    assert result.exit_code == 2
    assert result.stderr == "lethe: unknown room #nowhere:example.org: no such alias\n"
    assert result.stdout == ""


def test_the_commands_import_neither_the_entry_point_nor_nio() -> None:
    """bot/cli/main.py loads the commands by name; they share bot/cli/common.py. They
    read the saved login without nio (bot/matrix/credentials.py), which costs them
    nothing to import."""
    commands = sorted(p.stem for p in (ROOT / "bot" / "cli").glob("*.py")
                      if p.stem not in ("__init__", "__main__", "main"))
    code = "; ".join([
        "import sys",
        *(f"import bot.cli.{name}" for name in commands),
        "import bridge.cli",
        "assert 'bot.cli.main' not in sys.modules, 'imported bot.cli.main'",
        "assert 'nio' not in sys.modules, 'imported nio'",
    ])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_only_the_edge_knows_click_exceptions() -> None:
    """Service code raises bot/errors.py kinds; Lethe.invoke turns them into exits."""
    raising = [
        str(path.relative_to(ROOT))
        for folder in ("bot", "bridge") for path in sorted((ROOT / folder).rglob("*.py"))
        if any(name in path.read_text(encoding="utf-8")
               for name in ("ClickException", "click.UsageError", "click.BadParameter"))
    ]
    assert raising == []
