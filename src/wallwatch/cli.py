"""The one `wallwatch` command.

Each part of the house owns its subcommands in its own `cli.py` and exposes
`register(app)`; this module only stitches them together, so that adding a
subcommand never means editing someone else's file.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from wallwatch import __version__

app = typer.Typer(
    name="wallwatch",
    help="See, prove and understand network censorship of messaging apps and VPNs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"wallwatch {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print wallwatch's version and exit.")] = False,
) -> None:
    """See, prove and understand network censorship of messaging apps and VPNs."""

# Modules that contribute subcommands. A module that is not written yet is
# skipped, so the command keeps working while the house grows.
_PARTS = (
    "wallwatch.lab.cli",
    "wallwatch.censor.cli",
    "wallwatch.probe.cli",
    "wallwatch.helper.cli",
    "wallwatch.analysis.cli",
    "wallwatch.lab.demo",
    "wallwatch.web.cli",
)


def _register_parts() -> None:
    for module_name in _PARTS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(app)


_register_parts()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
