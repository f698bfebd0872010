"""The `halo` command line: rich output for people, `--json` for scripts. Commands live in modules
by what they do (`explore`, `sources`, `analysis`); importing this package registers them all."""

from halo_rlm.cli import analysis, explore, sources
from halo_rlm.cli.base import cli

__all__ = ["cli", "main"]
_COMMANDS = (analysis, explore, sources)  # imported for their @cli.command registrations


def main() -> None:
    cli()
