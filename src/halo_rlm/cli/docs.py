"""The CLI reference, docs/cli.md, generated from the click commands so it cannot drift from them:
every command's `--help` as click prints it, at a fixed width.

    python -m halo_rlm.cli.docs            write docs/cli.md
    python -m halo_rlm.cli.docs --check    exit 1 when docs/cli.md is not what the commands say
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

__all__ = ["reference"]

WIDTH = 100  # help text is wrapped at this width whatever the terminal, so the file is the same everywhere
DOCS = Path(__file__).resolve().parents[3] / "docs" / "cli.md"


def reference() -> str:
    """docs/cli.md: a contents list, then each command's help."""
    from halo_rlm.cli import cli

    commands = list(_walk(cli, "halo", None))
    lines = [
        "# `halo` command reference",
        "",
        "Every command's `--help`, generated from the code by `python -m halo_rlm.cli.docs`",
        "(a test fails when this file is stale). Start with `halo --help`; the README shows the",
        "commands at work.",
        "",
    ]
    lines += [f"- [`{path}`](#{_anchor(path)})" for path, _ in commands]
    for path, help_text in commands:
        lines += ["", f"## `{path}`", "", "```text", help_text.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _walk(command: click.Command, path: str, parent: click.Context | None) -> Iterator[tuple[str, str]]:
    # As a command line makes it (context settings such as `-h` included), parsing nothing.
    ctx = command.make_context(
        path.rsplit(" ", 1)[-1],
        [],
        parent=parent,
        resilient_parsing=True,
        terminal_width=WIDTH,
        max_content_width=WIDTH,
    )
    yield path, command.get_help(ctx)
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, f"{path} {name}", ctx)


def _anchor(path: str) -> str:
    """GitHub's anchor for a `## \\`halo x y\\`` heading."""
    return path.replace(" ", "-")


def main(argv: list[str]) -> int:
    text = reference()
    if "--check" in argv:
        if DOCS.exists() and DOCS.read_text() == text:
            return 0
        print(f"{DOCS} is stale: run python -m halo_rlm.cli.docs", file=sys.stderr)
        return 1
    DOCS.write_text(text)
    print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
