"""The `halo` command line: rich output for people, `--json` for scripts. Commands live in modules
by what they do (`explore`, `sources`, `analysis`, `runs`, `compare`, `loop`, `evaluate`); importing this
package registers them all."""

from halo_rlm.cli import analysis, compare, evaluate, explore, loop, runs, sources
from halo_rlm.cli.base import cli

__all__ = ["cli", "main"]
# imported for their @cli.command registrations
_COMMANDS = (analysis, compare, evaluate, explore, loop, runs, sources)


def main() -> None:
    cli()
