"""docs/cli.md is generated from the click commands; this fails when a command changed and the file
was not regenerated (python -m halo_rlm.cli.docs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from halo_rlm.cli.docs import DOCS, reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_reference_is_current() -> None:
    assert DOCS == ROOT / "docs" / "cli.md"
    assert DOCS.read_text() == reference(), "docs/cli.md is stale: run python -m halo_rlm.cli.docs"


def test_the_reference_has_every_command_and_option() -> None:
    text = reference()
    for heading in ("## `halo stats`", "## `halo import langfuse`", "## `halo report schema`"):
        assert heading in text
    assert "--min-share SHARE" in text and "--since TIME" in text


def test_check_mode_passes_from_any_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "halo_rlm.cli.docs", "--check"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
