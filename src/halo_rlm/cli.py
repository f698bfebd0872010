"""The `halo` command line."""

from __future__ import annotations

import click

from halo_rlm import __version__


class DefaultGroup(click.Group):
    """A group that runs `default_command` when the first argument is not a subcommand,
    so `halo traces.jsonl -p "..."` works beside `halo stats ...`."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="halo")
def cli() -> None:
    """HALO finds out why your AI agents fail, from their OpenTelemetry traces."""


def main() -> None:
    cli()
