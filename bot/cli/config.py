"""`lethe config ...`: the example config that ships with Lethe, and checking a file.

The example is package data (bot/config.example.yaml, a link to the repository's
config.example.yaml), so an installed Lethe can print it.
"""

from __future__ import annotations

from importlib.resources import files

import click

from bot.cli.common import config_option, config_path
from bot.cli.output import say
from bot.config import load_config, read_config_file


def example_config() -> str:
    """The commented example config, as shipped with the package."""
    return files("bot").joinpath("config.example.yaml").read_text(encoding="utf-8")


@click.group()
def config() -> None:
    """The config file: an example to start from, and a check."""


@config.command()
def example() -> None:
    """Print the commented example config (`lethe config example > lethe.yaml`)."""
    click.echo(example_config(), nl=False)


@config.command()
@config_option
@click.pass_context
def check(ctx: click.Context) -> None:
    """Load the config as `lethe run` (and, with a bridge section, `lethe bridge run`)
    would; exit 3 naming the key when something is wrong."""
    path = config_path(ctx, "lethe config check -c CONFIG")
    sections = read_config_file(path).data
    checked = []
    if "bridge" in sections:
        from bridge.config import load_bridge_config  # only for a bridge section

        load_bridge_config(path)
        checked.append("the bridge")
    if "bot" in sections or not checked:
        load_config(path)
        checked.insert(0, "the bot")
    say(f"{path}: valid for {' and '.join(checked)}")
