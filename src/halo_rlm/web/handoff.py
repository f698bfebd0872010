""" "Act on this report": a ready prompt pointing at the report file on disk, and links that open it in
Claude Code, Cursor or Codex through their URL schemes, offered only where the tool is installed.

A report is too long for a URL, so the prompt names the report's path. Nothing runs by itself: the
browser asks the user before handing a custom-scheme link to the tool.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import quote

PROMPT = (
    "Read the HALO trace-analysis report at {path} and act on its findings in this codebase: fix the "
    "identified failures and implement the recommended improvements."
)


@dataclass(frozen=True)
class Tool:
    key: str
    name: str
    scheme: str
    link: str  # with {prompt} for the URL-encoded prompt
    binaries: tuple[str, ...]
    mac_apps: tuple[str, ...]


TOOLS = (
    Tool(
        "claude",
        "Claude Code",
        "claude-cli",
        "claude-cli://open?q={prompt}",
        ("claude",),
        ("Claude Code URL Handler.app", "Claude.app"),
    ),
    Tool(
        "cursor",
        "Cursor",
        "cursor",
        "cursor://anysphere.cursor-deeplink/prompt?text={prompt}",
        ("cursor",),
        ("Cursor.app",),
    ),
    Tool("codex", "Codex", "codex", "codex://new?prompt={prompt}", ("codex",), ("Codex.app",)),
)


@dataclass(frozen=True)
class Handoff:
    key: str
    name: str
    url: str
    installed: bool


def prompt_for(report: Path) -> str:
    return PROMPT.format(path=report)


def handoffs(report: Path) -> list[Handoff]:
    text = quote(prompt_for(report), safe="")
    return [Handoff(t.key, t.name, t.link.format(prompt=text), installed(t.key)) for t in TOOLS]


@cache
def installed(key: str) -> bool:
    """Whether the tool is on this machine: its command on PATH, or (by OS) a handler for its scheme."""
    tool = next(t for t in TOOLS if t.key == key)
    if any(shutil.which(binary) for binary in tool.binaries):
        return True
    system = platform.system()
    if system == "Darwin":
        folders = [Path("/Applications"), Path.home() / "Applications"]
        return any((folder / app).exists() for folder in folders for app in tool.mac_apps)
    if system == "Windows":
        return _windows_handler(tool.scheme)
    return _xdg_handler(tool.scheme)


def _xdg_handler(scheme: str) -> bool:
    if not shutil.which("xdg-mime"):
        return False
    try:
        found = subprocess.run(
            ["xdg-mime", "query", "default", f"x-scheme-handler/{scheme}"],
            capture_output=True,
            text=True,
            timeout=3,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(found.stdout.strip())


def _windows_handler(scheme: str) -> bool:
    try:
        import winreg  # type: ignore[import-not-found,unused-ignore]

        with winreg.OpenKey(winreg.HKEY_CLASSES_ROOT, scheme):  # type: ignore[attr-defined,unused-ignore]
            return True
    except OSError:
        return False


__all__ = ["PROMPT", "TOOLS", "Handoff", "handoffs", "installed", "prompt_for"]
