"""Read-only tools over the source code of the agent that produced the traces.

With `--repo-path DIR` the engine's agents can browse, search and read that code and its git
history, so a recommendation can cite `path:line` and a short commit id. A model chooses every
argument, so every argument is untrusted:

- paths stay inside the root (symlinks resolved) and secret-like files are never listed or read;
- `.gitignore` and a fixed set of junk directories are honoured by every listing;
- git runs allow-listed subcommands with a scrubbed environment, validated refs and `--` before
  paths; ripgrep and git have a deadline, and so does a regex run in Python;
- every result fits a byte budget and says what was cut and how to narrow.

Line numbers are 1-based and the same in every tool: a line ends at "\\n" (a "\\r" before it is
dropped) and a final line without a newline counts, which is how git and ripgrep count too.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, Self

import pathspec
import regex
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import to_json

__all__ = [  # noqa: RUF022 - grouped by role: entry points, arguments, results
    "DEFAULT_MAX_RESULT_BYTES", "DEFAULT_TIMEOUT_SECONDS", "Repo", "RepoError", "ToolSpec", "tool_specs",
    "TreeArgs", "GlobArgs", "GrepArgs", "ReadArgs",
    "GitLogArgs", "GitShowArgs", "GitDiffArgs", "GitBlameArgs", "GitReadArgs",
    "ToolResult", "TreeResult", "GlobResult", "GrepResult", "FileWindow",
    "GitLogResult", "GitShowResult", "GitDiffResult", "GitBlameResult",
    "FileEntry", "GrepMatch", "CommitInfo", "ChangedFile", "BlameCommit", "BlameLine",
]  # fmt: skip

DEFAULT_MAX_RESULT_BYTES = 24 * 1024
DEFAULT_TIMEOUT_SECONDS = 20.0
MIN_RESULT_BYTES = 4096

TREE_MAX_ENTRIES = 500
READ_MAX_LINES = 2000
READ_LINE_CHARS = 2000
MATCH_LINE_CHARS = 400  # grep, blame and patch lines
MESSAGE_CHARS = 4000  # a commit message body in git_show
GREP_MAX_FILE_BYTES = 2 * 1024 * 1024  # also how far listing looks for a private key
LINE_COUNT_MAX_BYTES = 64 * 1024 * 1024  # read tools report a total line count up to this size
BINARY_SNIFF_BYTES = 8192
GIT_OUTPUT_MAX_BYTES = 16 * 1024 * 1024

_NOTE_BYTES = 600
_OUTSIDE = (
    "{!r} is outside the repository root; pass a path relative to the root, as shown by "
    "view_repo_tree or glob_files"
)
_WITHHELD = "{!r} appears to contain a private key and is never read"
_SHORT_ID = 12
# An overlong line is streamed keeping only this many bytes of its head and tail, enough for
# READ_LINE_CHARS characters even at 4 bytes per character.
_LONG_LINE_HEAD = 16 * 1024
_LONG_LINE_TAIL = 4 * 1024

EXCLUDED_DIRS = frozenset(
    {
        ".git", ".hg", ".svn", ".bzr", "node_modules", ".venv", "venv", "__pycache__",
        ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".tox", ".nox", ".eggs",
        ".gradle", ".next", ".nuxt", ".turbo", ".parcel-cache", ".cache", ".terraform",
    }
)  # fmt: skip
_SECRET_NAMES = (
    ".env", ".env.*", "*.env", ".envrc", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "credentials", "credentials.json",
    ".netrc", "_netrc", ".npmrc", ".pypirc", ".git-credentials", ".pgpass", ".htpasswd", "secrets.*",
)  # fmt: skip
_SECRET_DIRS = frozenset({".ssh", ".gnupg"})
_SECRET_NAME_RE = re.compile("|".join(fnmatch.translate(p) for p in _SECRET_NAMES))
_PRIVATE_KEY_RE = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")

_GIT_SUBCOMMANDS = frozenset({"log", "show", "diff", "blame", "rev-parse", "ls-files", "cat-file"})
# Repository config could start programs (fsmonitor, signature checks) or change output formats.
_GIT_CONFIG = (
    "-c", "core.fsmonitor=false", "-c", "core.quotepath=off", "-c", "color.ui=never",
    "-c", "log.showSignature=false",
)  # fmt: skip
_REF_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+-]*(?:[~^][0-9]*)*")
_RELATIVE_DATE_RE = re.compile(r"\d{1,4} (?:second|minute|hour|day|week|month|year)s? ago")
_BLAME_HEADER_RE = re.compile(rb"([0-9a-f]{40,64}) \d+ (\d+)(?: \d+)?")
# A pattern with these can behave differently on a whole file than on one line (lookaround,
# string anchors, inline flag removal, backtracking verbs, possessive or atomic groups); such
# patterns skip the whole-file prefilter and are run on every line.
_SPANS_LINES_RE = re.compile(r"\(\?<?[=!]|\\[AZzG]|\(\?[a-zA-Z]*-|\(\*|\(\?>|[*+?}]\+")
# POSIX classes are ASCII-only in ripgrep but Unicode in the regex module, so ripgrep could rule
# out a file that Python would match: such patterns skip the ripgrep prefilter.
_NARROWER_IN_RG_RE = re.compile(r"\[:")


def find_ripgrep() -> str | None:
    """`rg` on PATH, or beside the running Python: `pip install ripgrep` puts it in the virtualenv's
    bin folder, which is not on PATH unless the virtualenv is activated."""
    return shutil.which("rg") or shutil.which("rg", path=os.path.dirname(sys.executable))


class RepoError(Exception):
    """A refused or failed tool call; the message is meant for the model, verbatim."""


# ---------------------------------------------------------------------------------------------
# Arguments


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TreeArgs(_Args):
    path: str = Field(".", max_length=1000, description="Directory to show, relative to the root.")
    max_depth: int = Field(
        4, ge=1, le=12, description="Levels to expand; deeper directories show a file count."
    )


class GlobArgs(_Args):
    pattern: str = Field(
        min_length=1,
        max_length=500,
        description="gitignore-style glob: '*.py' matches at any depth, 'src/**/*.ts' under src, 'tests' a directory.",
    )
    max_results: int = Field(200, ge=1, le=1000)


class GrepArgs(_Args):
    regex_pattern: str = Field(min_length=1, max_length=1000, description="Regex matched against each line.")
    glob_pattern: str | None = Field(
        None, max_length=500, description="Only files matching this glob, e.g. '*.py'."
    )
    path: str = Field(".", max_length=1000, description="Only this directory or file.")
    fixed_string: bool = Field(False, description="Treat regex_pattern as literal text.")
    ignore_case: bool = False
    max_matches: int = Field(50, ge=1, le=500)


class ReadArgs(_Args):
    path: str = Field(max_length=1000, description="File path relative to the root.")
    offset: int = Field(1, ge=1, description="First line to return (1-based).")
    limit: int = Field(500, ge=1, le=READ_MAX_LINES, description="Number of lines to return.")


class GitLogArgs(_Args):
    max_commits: int = Field(50, ge=1, le=500)
    since: str | None = Field(
        None, max_length=64, description="ISO 8601 time (UTC if no offset) or e.g. '2 weeks ago'."
    )
    until: str | None = Field(
        None, max_length=64, description="ISO 8601 time (UTC if no offset) or e.g. '3 days ago'."
    )
    ref_range: str | None = Field(
        None, max_length=300, description="A ref, or 'A..B' for commits in B not in A."
    )
    path: str | None = Field(
        None, max_length=1000, description="Only commits touching this file or directory."
    )
    pickaxe_string: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        description="Commits that change the number of occurrences of this text.",
    )
    pickaxe_regex: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        description="Commits whose added or removed lines match this POSIX ERE.",
    )

    @model_validator(mode="after")
    def _one_pickaxe(self) -> GitLogArgs:
        if self.pickaxe_string is not None and self.pickaxe_regex is not None:
            raise ValueError("give pickaxe_string or pickaxe_regex, not both")
        return self


class GitShowArgs(_Args):
    ref: str = Field(max_length=300, description="Commit id, branch or tag.")
    path: str | None = Field(None, max_length=1000, description="Only changes to this file or directory.")
    include_patch: bool = Field(
        False, description="Include the diff text, not just changed files and line counts."
    )


class GitDiffArgs(_Args):
    from_ref: str = Field(max_length=300)
    to_ref: str = Field(max_length=300)
    path: str | None = Field(None, max_length=1000, description="Only changes to this file or directory.")
    stat_only: bool = Field(True, description="Only changed files and line counts; false adds the diff text.")


class GitBlameArgs(_Args):
    path: str = Field(max_length=1000)
    start_line: int = Field(ge=1)
    end_line: int = Field(ge=1, description=f"Inclusive; at most {READ_MAX_LINES} lines per call.")
    ref: str | None = Field(
        None, max_length=300, description="Blame as of this commit; default: the working tree."
    )

    @model_validator(mode="after")
    def _ordered(self) -> GitBlameArgs:
        if self.end_line < self.start_line:
            raise ValueError("end_line must be >= start_line")
        return self


class GitReadArgs(_Args):
    ref: str = Field(max_length=300, description="Commit id, branch or tag.")
    path: str = Field(max_length=1000)
    offset: int = Field(1, ge=1)
    limit: int = Field(500, ge=1, le=READ_MAX_LINES)


# ---------------------------------------------------------------------------------------------
# Results


class ToolResult(BaseModel):
    truncated: bool = False  # something asked for was cut: items, lines, long lines or depth
    has_more: bool = False  # more exists beyond what was returned: page on or narrow
    note: str | None = None  # what was cut or skipped, and how to narrow


class TreeResult(ToolResult):
    path: str
    depth: int
    file_count: int
    tree: str


class FileEntry(BaseModel):
    path: str
    size: int


class GlobResult(ToolResult):
    files: list[FileEntry]


class GrepMatch(BaseModel):
    path: str
    line: int
    text: str


class GrepResult(ToolResult):
    files_searched: int
    matches: list[GrepMatch]


class FileWindow(ToolResult):
    path: str
    commit: str | None = None  # set by git_read_file
    start_line: int
    end_line: int
    total_lines: int | None  # None when the file is too large to count
    content: str  # "{line:>6}\t{text}" per line


class CommitInfo(BaseModel):
    commit: str
    author: str
    date: str
    subject: str


class GitLogResult(ToolResult):
    commits: list[CommitInfo]


class ChangedFile(BaseModel):
    path: str
    old_path: str | None = None  # set for renames and copies
    added: int | None  # None for binary files
    deleted: int | None


class GitShowResult(ToolResult):
    commit: CommitInfo
    message: str  # the body after the subject
    files: list[ChangedFile]
    patch: str | None


class GitDiffResult(ToolResult):
    from_commit: str
    to_commit: str
    files: list[ChangedFile]
    patch: str | None


class BlameCommit(BaseModel):
    author: str
    date: str
    summary: str


class BlameLine(BaseModel):
    line: int
    commit: str
    text: str


class GitBlameResult(ToolResult):
    path: str
    commits: dict[str, BlameCommit]
    lines: list[BlameLine]


# ---------------------------------------------------------------------------------------------
# Tool specs


@dataclass(frozen=True)
class ToolSpec:
    """One tool for the engine: it becomes an OpenAI function tool."""

    name: str
    description: str
    args_model: type[BaseModel]
    call: Callable[[Any], ToolResult]

    def json_schema(self) -> dict[str, Any]:
        return self.args_model.model_json_schema()

    def run(self, arguments: str | bytes | Mapping[str, Any] | None) -> ToolResult:
        """Validate raw arguments from the model and call the tool; every failure is a RepoError."""
        try:
            if isinstance(arguments, (str, bytes)):
                args = self.args_model.model_validate_json(arguments or "{}")
            else:
                args = self.args_model.model_validate(arguments or {})
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'arguments'}: {err['msg']}" for err in e.errors()
            )
            raise RepoError(f"invalid arguments for {self.name}: {problems}") from None
        try:
            return self.call(args)
        except OSError as e:
            raise RepoError(f"{self.name} failed: {e}") from None


def tool_specs(repo: Repo) -> list[ToolSpec]:
    """The code tools, plus the git tools when the root is in a git work tree."""
    budget = f"Results are capped at about {repo.max_result_bytes // 1024} KB"
    specs = [
        ToolSpec(
            "view_repo_tree",
            "Show the repository layout as an indented tree (directories first, then files). Start here. "
            f"At most {TREE_MAX_ENTRIES} entries: when the tree is larger, deeper directories are collapsed "
            "to 'name/ (N files)'; pass path='that/dir' to expand one. Ignored files, junk directories "
            "(.git, node_modules, .venv, caches) and secret-like files are not shown.",
            TreeArgs,
            repo.view_repo_tree,
        ),
        ToolSpec(
            "glob_files",
            "List files whose path matches a gitignore-style glob, sorted, with sizes in bytes. "
            "'*.py' matches at any depth, 'src/**/*.ts' only under src, 'prompts' everything under a "
            f"directory named prompts. {budget}; has_more=true means narrow the pattern.",
            GlobArgs,
            repo.glob_files,
        ),
        ToolSpec(
            "grep_files",
            "Search file contents line by line with a regular expression; returns path, 1-based line and "
            "line text, sorted by path then line. Set fixed_string=true for text copied from a trace "
            "(error messages, prompt fragments) so regex characters are literal. Narrow with glob_pattern "
            "('*.py') or path ('src/agent'). Binary, ignored and secret-like files are skipped; files over "
            f"{GREP_MAX_FILE_BYTES // (1024 * 1024)} MiB are searched in their first "
            f"{GREP_MAX_FILE_BYTES // (1024 * 1024)} MiB only. Long lines are cut around the match. {budget}.",
            GrepArgs,
            repo.grep_files,
        ),
        ToolSpec(
            "read_file",
            "Read a window of a text file with 1-based line numbers ('    12<TAB>code'), the same numbers "
            f"grep_files and git_blame use: cite them as path:line. At most {READ_MAX_LINES} lines per call; "
            "continue with offset=end_line+1 while has_more is true. Lines over "
            f"{READ_LINE_CHARS} characters are cut in the middle. {budget}. Binary and secret-like files "
            "are refused.",
            ReadArgs,
            repo.read_file,
        ),
    ]
    if not repo.is_git:
        return specs
    return specs + [
        ToolSpec(
            "git_log",
            "List commits, newest first, with 12-character ids, author, ISO date and subject. To see what "
            "shipped while traces were recorded, pass the traces' time window as since/until. To find when a "
            "prompt fragment, tool name or error string was introduced or removed, use pickaxe_string "
            "(literal) or pickaxe_regex (POSIX ERE). Narrow with path or ref_range ('v1.2..main').",
            GitLogArgs,
            repo.git_log,
        ),
        ToolSpec(
            "git_show",
            "Show one commit: its message and changed files with added/deleted line counts; "
            "include_patch=true adds the diff (pass path to see one file's change when the patch is cut).",
            GitShowArgs,
            repo.git_show,
        ),
        ToolSpec(
            "git_diff",
            "Compare two commits (from_ref..to_ref), e.g. a good and a bad release: changed files with "
            "line counts, and the diff text when stat_only=false. Pass path to focus on one file.",
            GitDiffArgs,
            repo.git_diff,
        ),
        ToolSpec(
            "git_blame",
            "Which commit last changed each line of a file range (inclusive, at most "
            f"{READ_MAX_LINES} lines): per line the 12-character commit id and text, plus author, date and "
            "summary per commit. Default is the working tree; pass ref for the file as of a commit.",
            GitBlameArgs,
            repo.git_blame,
        ),
        ToolSpec(
            "git_read_file",
            "Read a window of a file as it was at a commit (e.g. the commit deployed when a trace was "
            "recorded), numbered like read_file.",
            GitReadArgs,
            repo.git_read_file,
        ),
    ]


# ---------------------------------------------------------------------------------------------
# The repository


@dataclass(frozen=True)
class _Listing:
    """The files the tools may show: regular, not ignored, not in a junk directory, not secret."""

    files: dict[str, int]  # path -> size in bytes, sorted by path
    binary: frozenset[str]
    withheld: frozenset[str]  # content looks like a private key


class Repo:
    """A read-only view of one source tree. Open it with `Repo.open`.

    The file list is read once and cached: a Repo is a snapshot for one analysis run.
    Methods are thread-safe, so the engine can call them from worker threads.
    """

    def __init__(
        self,
        root: Path,
        given_root: Path,
        *,
        max_result_bytes: int,
        timeout_seconds: float,
        git_exe: str | None,
        rg_exe: str | None,
    ) -> None:
        self.root = root
        self._given_root = given_root
        self.max_result_bytes = max_result_bytes
        self.timeout_seconds = timeout_seconds
        self._git_exe = git_exe
        self._rg_exe = rg_exe
        self._git_prefix = ""  # the root's path inside the git work tree, e.g. "services/agent/"
        self.is_git = git_exe is not None and self._probe_git()
        self._listing: _Listing | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        root: Path | str,
        *,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        use_ripgrep: bool = True,
    ) -> Repo:
        """Open a source tree; `use_ripgrep` lets grep use `rg` when there is one (`find_ripgrep`)."""
        if max_result_bytes < MIN_RESULT_BYTES:
            raise RepoError(f"max_result_bytes must be at least {MIN_RESULT_BYTES}")
        if timeout_seconds <= 0:
            raise RepoError("timeout_seconds must be positive")
        given = Path(os.path.abspath(os.path.expanduser(str(root))))
        if not given.exists():
            raise RepoError(f"repository path does not exist: {given}")
        if not given.is_dir():
            raise RepoError(f"repository path is not a directory: {given}")
        return cls(
            Path(os.path.realpath(given)),
            given,
            max_result_bytes=max_result_bytes,
            timeout_seconds=timeout_seconds,
            git_exe=shutil.which("git"),
            rg_exe=find_ripgrep() if use_ripgrep else None,
        )

    # -- code tools ----------------------------------------------------------------------------

    def view_repo_tree(self, args: TreeArgs) -> TreeResult:
        base = self._scope(args.path)
        listing = self._files()
        if base in listing.files:
            raise RepoError(f"{args.path!r} is a file; use read_file")
        prefix = f"{base}/" if base else ""
        tree = _Dir()
        for path in listing.files:
            if path.startswith(prefix):
                tree.add(path[len(prefix) :].split("/"))
        budget = self._budget(
            TreeResult(path=base or ".", depth=args.max_depth, file_count=tree.count, tree="")
        )
        for depth in range(args.max_depth, 0, -1):
            lines = list(tree.render(depth))
            if len(lines) <= TREE_MAX_ENTRIES and budget.fits("\n".join(lines)):
                break
        cut = 0
        if len(lines) > TREE_MAX_ENTRIES or not budget.fits("\n".join(lines)):
            kept: list[str] = []
            for line in lines[: TREE_MAX_ENTRIES - 1]:
                if not budget.take(line + "\n", reserve=40):
                    break
                kept.append(line)
            cut = len(lines) - len(kept)
            lines = kept + [f"… {cut} more entries"]
        collapsed = depth < args.max_depth and tree.height > depth
        notes = []
        if collapsed:
            notes.append(
                f"Showing {depth} level(s): deeper directories are collapsed to 'name/ (N files)' to fit "
                f"{TREE_MAX_ENTRIES} entries and the result budget; pass path='<dir>' to expand one."
            )
        if cut:
            notes.append(f"{cut} entries not shown; pass path='<dir>' or use glob_files.")
        return TreeResult(
            path=base or ".",
            depth=depth,
            file_count=tree.count,
            tree="\n".join(lines),
            truncated=collapsed or bool(cut),
            has_more=collapsed or bool(cut),
            note=_note(*notes),
        )

    def glob_files(self, args: GlobArgs) -> GlobResult:
        spec = _glob_spec(args.pattern)
        budget = self._budget(GlobResult(files=[]))
        files: list[FileEntry] = []
        has_more = truncated = False
        for path, size in self._files().files.items():
            if not spec.match_file(path):
                continue
            entry = FileEntry(path=path, size=size)
            if len(files) == args.max_results:
                has_more = True
                break
            if not budget.take(entry):
                has_more = truncated = True
                break
            files.append(entry)
        note = None
        if truncated:
            note = f"Stopped at {len(files)} files to fit the result budget; use a narrower pattern."
        elif has_more:
            note = f"More than {args.max_results} files match; use a narrower pattern or raise max_results."
        return GlobResult(files=files, truncated=truncated, has_more=has_more, note=note)

    def grep_files(self, args: GrepArgs) -> GrepResult:
        pattern = _clean(args.regex_pattern, "regex_pattern")
        source = regex.escape(pattern) if args.fixed_string else pattern
        flags = regex.IGNORECASE if args.ignore_case else 0
        try:
            line_re = regex.compile(source, flags)
            file_re = (
                None if _SPANS_LINES_RE.search(source) else regex.compile(source, flags | regex.MULTILINE)
            )
        except (regex.error, ValueError, OverflowError, RecursionError) as e:
            raise RepoError(
                f"invalid regex {args.regex_pattern!r}: {e}; set fixed_string=true to search for literal text"
            ) from None
        listing = self._files()
        base = self._scope(args.path)
        spec = _glob_spec(args.glob_pattern) if args.glob_pattern else None
        candidates = [
            p
            for p in listing.files
            if (not base or p == base or p.startswith(base + "/"))
            and (spec is None or spec.match_file(p))
            and p not in listing.binary
        ]
        budget = self._budget(GrepResult(files_searched=len(candidates), matches=[]))
        matches: list[GrepMatch] = []
        partial_files: list[str] = []
        searched = 0
        has_more = truncated = timed_out = False
        deadline = time.monotonic() + self.timeout_seconds
        try:
            prefiltered = None
            if self._rg_exe and not _NARROWER_IN_RG_RE.search(source):
                prefiltered = self._rg_files_with_matches(args, candidates, deadline)
            for path in candidates:
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                searched += 1
                if listing.files[path] > GREP_MAX_FILE_BYTES:
                    partial_files.append(path)
                if prefiltered is not None and path not in prefiltered:
                    continue
                for number, text, start in self._grep_one(path, line_re, file_re, deadline):
                    if len(matches) == args.max_matches:
                        has_more = True
                        break
                    match = GrepMatch(path=path, line=number, text=_around(text, start, MATCH_LINE_CHARS))
                    if not budget.take(match):
                        has_more = truncated = True
                        break
                    matches.append(match)
                if has_more:
                    break
        except TimeoutError:
            if not matches:
                raise RepoError(
                    f"the search ran longer than {self.timeout_seconds:g} s (catastrophic backtracking?); "
                    "avoid nested quantifiers such as (a+)+, use fixed_string=true for literal text, or "
                    "narrow with glob_pattern or path"
                ) from None
            timed_out = True
        notes = []
        if has_more:
            notes.append(
                f"Stopped at {len(matches)} matches"
                + (" to fit the result budget" if truncated else "")
                + "; narrow with glob_pattern or path, or a more specific pattern."
            )
        if timed_out:
            notes.append(
                f"Search stopped after {self.timeout_seconds:g} s; narrow with glob_pattern or path."
            )
        if partial_files:
            shown = ", ".join(partial_files[:5]) + (" …" if len(partial_files) > 5 else "")
            notes.append(
                f"Only the first {GREP_MAX_FILE_BYTES // (1024 * 1024)} MiB of {len(partial_files)} large "
                f"file(s) were searched ({shown}); read_file reads any part of them."
            )
        return GrepResult(
            files_searched=searched,
            matches=matches,
            truncated=truncated or timed_out,
            has_more=has_more or timed_out,
            note=_note(*notes),
        )

    def read_file(self, args: ReadArgs) -> FileWindow:
        rel = self._readable(args.path)
        with _open_regular(self._abs(rel)) as stream:
            return self._window(stream, rel, None, args.offset, args.limit)

    # -- git tools -----------------------------------------------------------------------------

    def git_log(self, args: GitLogArgs) -> GitLogResult:
        self._require_git()
        argv = [
            f"--max-count={args.max_commits + 1}",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--format=%H%x1f%an%x1f%aI%x1f%s",
            "-z",
        ]
        if args.since:
            argv.append(f"--since={_git_date(args.since, 'since')}")
        if args.until:
            argv.append(f"--until={_git_date(args.until, 'until')}")
        if args.pickaxe_string is not None:
            argv.append(f"-S{_clean(args.pickaxe_string, 'pickaxe_string')}")
        if args.pickaxe_regex is not None:
            argv.append(f"-G{_clean(args.pickaxe_regex, 'pickaxe_regex')}")
        argv.append("--end-of-options")
        if args.ref_range:
            argv.append(_ref_range(args.ref_range))
        argv.append("--")
        if args.path is not None:
            argv.append(self._git_path(args.path) or ".")
        elif self._git_prefix:
            argv.append(".")  # a root below the top level sees only its own history
        if not args.ref_range and not self._has_head():
            return GitLogResult(commits=[], note="The repository has no commits yet.")
        out, _ = self._git_output("log", *argv, max_bytes=4 * 1024 * 1024)
        budget = self._budget(GitLogResult(commits=[]))
        commits: list[CommitInfo] = []
        has_more = truncated = False
        for record in out.split(b"\0"):
            if not record.strip():
                continue
            if len(commits) == args.max_commits:
                has_more = True
                break
            commit = _commit_info(record.decode("utf-8", "replace").split("\x1f", 3))
            if not budget.take(commit):
                has_more = truncated = True
                break
            commits.append(commit)
        note = None
        if has_more:
            note = (
                f"Showing the newest {len(commits)} commits"
                + (" that fit the result budget" if truncated else "")
                + "; narrow with since/until, path or ref_range."
            )
        return GitLogResult(commits=commits, truncated=truncated, has_more=has_more, note=note)

    def git_show(self, args: GitShowArgs) -> GitShowResult:
        self._require_git()
        sha = self._commit(args.ref, "ref")
        path = self._git_path(args.path) if args.path is not None else None
        out, _ = self._git_output(
            "log", "--max-count=1", "--no-color", "--format=%H%x1f%an%x1f%aI%x1f%s%x1f%b", "--end-of-options", sha,
            "--", max_bytes=1024 * 1024,
        )  # fmt: skip
        fields = out.decode("utf-8", "replace").split("\x1f", 4)
        commit = _commit_info(fields[:4])
        budget = self._budget(GitShowResult(commit=commit, message="", files=[], patch=""))
        message = _fit_json(
            _shorten(fields[4].strip() if len(fields) > 4 else "", MESSAGE_CHARS), budget.left // 3
        )
        budget.left -= len(to_json(message))
        changes = self._changes(
            "show", ["--diff-merges=first-parent", "--end-of-options", sha], path, args.include_patch, budget
        )
        return GitShowResult(commit=commit, message=message, **changes)

    def git_diff(self, args: GitDiffArgs) -> GitDiffResult:
        self._require_git()
        old = self._commit(args.from_ref, "from_ref")
        new = self._commit(args.to_ref, "to_ref")
        path = self._git_path(args.path) if args.path is not None else None
        ids = {"from_commit": old[:_SHORT_ID], "to_commit": new[:_SHORT_ID]}
        budget = self._budget(GitDiffResult(**ids, files=[], patch=""))
        changes = self._changes("diff", ["--end-of-options", old, new], path, not args.stat_only, budget)
        return GitDiffResult(**ids, **changes)

    def git_blame(self, args: GitBlameArgs) -> GitBlameResult:
        self._require_git()
        path = self._git_path(args.path)
        if args.ref is not None:
            sha = self._commit(args.ref, "ref")
            with self._blob(sha, path) as proc:
                total = _count_lines(proc.stdout, _Guard(path))
                if total is not None:  # read to the end, so the exit status is known
                    proc.check()
            revision = [sha]
        else:
            path = self._readable(args.path)
            with _open_regular(self._abs(path)) as stream:
                total = _count_lines(stream, _Guard(path))
            revision = []
        if total is not None and args.start_line > total:
            raise RepoError(f"{path} has only {total} lines")
        window_end = args.start_line + READ_MAX_LINES - 1
        end = min(args.end_line, window_end, args.end_line if total is None else total)
        windowed = end == window_end < args.end_line and (total is None or total > window_end)
        # git blame rejects --end-of-options (checked with git 2.39), so the revision is validated to
        # never start with "-", and "--" still separates the path.
        out, _ = self._git_output(
            "blame",
            "--line-porcelain",
            "--no-textconv",
            "-L",
            f"{args.start_line},{end}",
            *revision,
            "--",
            path,
        )
        commits, lines = _parse_blame(out)
        budget = self._budget(GitBlameResult(path=path, commits={}, lines=[]))
        kept: list[BlameLine] = []
        kept_commits: dict[str, BlameCommit] = {}
        for line in lines:
            cost = [line] if line.commit in kept_commits else [line, line.commit, commits[line.commit]]
            if not budget.take(cost):
                break
            kept.append(line)
            kept_commits[line.commit] = commits[line.commit]
        cut = len(kept) < len(lines)
        last = kept[-1].line if kept else args.start_line - 1
        if cut:
            note = f"Stopped after line {last} to fit the result budget; continue with start_line={last + 1}."
        elif windowed:
            note = f"At most {READ_MAX_LINES} lines per call; continue with start_line={last + 1}."
        elif end < args.end_line:
            note = f"The file has only {total} lines."
        else:
            note = None
        return GitBlameResult(
            path=path,
            commits=kept_commits,
            lines=kept,
            truncated=cut or windowed,
            has_more=cut or windowed,
            note=note,
        )

    def git_read_file(self, args: GitReadArgs) -> FileWindow:
        self._require_git()
        sha = self._commit(args.ref, "ref")
        path = self._git_path(args.path)
        with self._blob(sha, path) as proc:
            window = self._window(proc.stdout, path, sha[:_SHORT_ID], args.offset, args.limit)
            if window.total_lines is not None:  # read to the end, so the exit status is known
                proc.check()
        return window

    # -- listing and paths ---------------------------------------------------------------------

    def _files(self) -> _Listing:
        with self._lock:
            if self._listing is None:
                self._listing = self._build_listing()
            return self._listing

    def _build_listing(self) -> _Listing:
        files: dict[str, int] = {}
        binary: set[str] = set()
        withheld: set[str] = set()
        real_dirs: dict[str, bool] = {}
        paths = self._git_ls_files() if self.is_git else self._walk()
        for path in sorted(set(paths)):
            if _is_secret_path(path) or _in_excluded_dir(path):
                continue
            parent = posixpath.dirname(path)
            if parent not in real_dirs:  # git lists index paths even below a directory now a symlink
                real_dirs[parent] = os.path.realpath(self._abs(parent)) == os.path.normpath(self._abs(parent))
            if not real_dirs[parent]:
                continue
            try:
                info = os.lstat(self._abs(path))
                if not stat.S_ISREG(info.st_mode):
                    continue  # symlinks, directories (submodules), deleted files, devices
                with _open_regular(self._abs(path)) as f:
                    head = f.read(GREP_MAX_FILE_BYTES)
            except (OSError, RepoError):
                continue
            if b"\0" in head[:BINARY_SNIFF_BYTES]:
                binary.add(path)
            elif _has_private_key(head):
                withheld.add(path)
                continue
            files[path] = info.st_size
        return _Listing(files, frozenset(binary), frozenset(withheld))

    def _git_ls_files(self) -> list[str]:
        out, cut = self._git_output(
            "ls-files", "--cached", "--others", "--exclude-standard", "-z", max_bytes=GIT_OUTPUT_MAX_BYTES * 4
        )
        if cut:
            raise RepoError("the repository lists too many files to analyse")
        paths = []
        for raw in out.split(b"\0"):
            try:
                path = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue  # a name that cannot be shown to the model
            if path and not path.endswith("/"):  # "dir/" is an untracked nested repository
                paths.append(path)
        return paths

    def _walk(self) -> Iterator[str]:
        """Files under the root outside git: no symlinks followed, .gitignore files honoured."""
        stack: list[tuple[str, list[tuple[str, pathspec.GitIgnoreSpec]]]] = [("", [])]
        while stack:
            rel_dir, ignores = stack.pop()
            try:
                entries = list(os.scandir(self._abs(rel_dir)))
            except OSError:
                continue
            for entry in entries:
                if entry.name == ".gitignore" and entry.is_file(follow_symlinks=False):
                    try:
                        with _open_regular(entry.path) as f:
                            lines = f.read(1024 * 1024).decode("utf-8", "replace").splitlines()
                        ignores = [*ignores, (rel_dir, pathspec.GitIgnoreSpec.from_lines(lines))]
                    except (OSError, RepoError, ValueError):
                        pass
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if not _utf8(rel) or entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in EXCLUDED_DIRS and not _ignored(ignores, rel, is_dir=True):
                        stack.append((rel, ignores))
                elif entry.is_file(follow_symlinks=False) and not _ignored(ignores, rel, is_dir=False):
                    yield rel

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else str(self.root)

    def _lexical(self, path: str) -> str:
        """A model's path as a normalised root-relative path, without touching the disk."""
        relative = _clean(path, "path")
        if os.path.isabs(relative):
            for base in (str(self.root), str(self._given_root)):
                if relative == base or relative.startswith(base.rstrip(os.sep) + os.sep):
                    relative = relative[len(base) :].lstrip(os.sep)
                    break
            else:
                raise RepoError(_OUTSIDE.format(path))
        norm = posixpath.normpath(relative.replace(os.sep, "/") or ".")
        if norm == ".." or norm.startswith("../"):
            raise RepoError(_OUTSIDE.format(path))
        return "" if norm == "." else norm

    def _resolve(self, path: str) -> tuple[str, str]:
        """A model's path, normalised and then resolved through symlinks; both must be inside the root."""
        lexical = self._lexical(path)
        real = os.path.realpath(self._abs(lexical))
        root = str(self.root)
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            raise RepoError(
                f"{path!r} resolves outside the repository root through a symlink; "
                "only files inside the root can be read"
            )
        return lexical, os.path.relpath(real, root).replace(os.sep, "/") if real != root else ""

    def _refuse_hidden(self, path: str, *names: str) -> None:
        """Refuse a path whose names (as given, or resolved) are secret-like, junk or withheld."""
        if any(_is_secret_path(name) for name in names):
            raise RepoError(f"{path!r} looks like a secret (keys, credentials, .env) and is never read")
        if any(_in_excluded_dir(name) for name in names):
            raise RepoError(
                f"{path!r} is inside an excluded directory (.git, node_modules, .venv, caches, …)"
            )
        if any(name in self._files().withheld for name in names):
            raise RepoError(_WITHHELD.format(path))

    def _readable(self, path: str) -> str:
        """The root-relative path of a listed file the tools may read, or a RepoError saying why not."""
        lexical, rel = self._resolve(path)
        self._refuse_hidden(path, lexical, rel)
        listing = self._files()
        if rel in listing.binary:
            raise RepoError(f"{path!r} is a binary file")
        if rel not in listing.files:
            target = self._abs(rel)
            if os.path.isdir(target):
                raise RepoError(f"{path!r} is a directory; use view_repo_tree(path=...) or glob_files")
            if not os.path.lexists(target):
                raise RepoError(f"no such file: {path!r}; use glob_files or view_repo_tree to find files")
            raise RepoError(f"{path!r} is ignored by .gitignore or is not a regular file, so it is not shown")
        return rel

    def _scope(self, path: str) -> str:
        """A directory or file to list or search under; it must contain listed files."""
        lexical, rel = self._resolve(path)
        self._refuse_hidden(path, lexical, rel)
        files = self._files().files
        if rel and rel not in files and not any(p.startswith(rel + "/") for p in files):
            raise RepoError(f"no listed files under {path!r} (missing or ignored); see view_repo_tree")
        return rel

    def _git_path(self, path: str) -> str:
        """A model's path for git, which may name a file that no longer exists: checked lexically."""
        rel = self._lexical(path)
        self._refuse_hidden(path, rel)
        return rel

    # -- reading -------------------------------------------------------------------------------

    def _window(self, stream: BinaryIO, path: str, commit: str | None, offset: int, limit: int) -> FileWindow:
        """Lines offset..offset+limit-1 of a stream, rendered within the budget; memory stays bounded."""
        guard = _Guard(path)
        budget = self._budget(
            FileWindow(
                path=path, commit=commit, start_line=10**9, end_line=10**9, total_lines=10**9, content=""
            )
        )
        rendered: list[str] = []
        number = 0
        clipped = budget_hit = eof = False
        while number < offset + limit - 1:
            line = _next_line(stream, guard)
            if line is None:
                eof = True
                break
            number += 1
            if number < offset:
                continue
            text, cut = _line_text(*line, limit=READ_LINE_CHARS, first=number == 1)
            entry = f"{number:>6}\t{text}"
            if not budget.take(entry):
                budget_hit = True
                break
            rendered.append(entry)
            clipped |= cut
        end = offset + len(rendered) - 1
        if eof:
            total: int | None = number
        else:
            rest = _count_lines(stream, guard)
            total = None if rest is None else number + rest
        notes = []
        if budget_hit:
            notes.append(
                f"Stopped after line {end} to fit the result budget; continue with offset={end + 1}."
            )
        elif total is not None and offset > total:
            notes.append(f"The file has only {total} lines.")
        elif total is None or end < total:
            notes.append(f"More lines follow; continue with offset={end + 1}.")
        if total is None:
            notes.append(
                f"The file is over {LINE_COUNT_MAX_BYTES // (1024 * 1024)} MiB; total lines not counted."
            )
        if clipped:
            notes.append(f"Lines over {READ_LINE_CHARS} characters are cut in the middle.")
        return FileWindow(
            path=path,
            commit=commit,
            start_line=offset,
            end_line=end,
            total_lines=total,
            content="\n".join(rendered),
            truncated=budget_hit or clipped,
            has_more=total is None or end < total,
            note=_note(*notes),
        )

    def _grep_one(
        self, path: str, line_re: regex.Pattern[str], file_re: regex.Pattern[str] | None, deadline: float
    ) -> list[tuple[int, str, int]]:
        """Matching lines of one file as (line, text, match start), from its first GREP_MAX_FILE_BYTES."""
        try:
            with _open_regular(self._abs(path)) as f:
                data = f.read(GREP_MAX_FILE_BYTES + 1)
        except (OSError, RepoError):  # gone or replaced since it was listed
            return []
        if b"\0" in data[:BINARY_SNIFF_BYTES] or _has_private_key(data):
            return []
        if len(data) > GREP_MAX_FILE_BYTES:
            data = data[: data.rfind(b"\n", 0, GREP_MAX_FILE_BYTES) + 1]
        nul = data.find(b"\0")
        if nul >= 0:  # binary data further in: search the text before it, as ripgrep does
            data = data[: data.rfind(b"\n", 0, nul) + 1]
        text = data.decode("utf-8", "replace").removeprefix("\ufeff")
        # The regex module releases the GIL while matching a str, so a slow pattern in a worker
        # thread does not stall the engine's event loop; the deadline bounds it.
        whole = text.replace("\r\n", "\n")
        if file_re is not None and not file_re.search(whole, timeout=_left(deadline)):
            return []
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        hits = []
        for number, line in enumerate(lines, 1):
            line = line.removesuffix("\r")
            match = line_re.search(line, timeout=_left(deadline))
            if match:
                hits.append((number, line, match.start()))
        return hits

    def _rg_files_with_matches(
        self, args: GrepArgs, candidates: list[str], deadline: float
    ) -> set[str] | None:
        """Ripgrep as a fast prefilter: the files that may match. None when rg cannot run the pattern.

        Python still decides the matching lines, so both paths give the same results; --crlf and
        --text make rg's answer a superset of Python's.
        """
        argv = [
            self._rg_exe or "rg",
            "--files-with-matches",
            "--null",
            "--no-config",
            "--no-ignore",
            "--hidden",
        ]
        argv += ["--text", "--crlf", "--no-messages"]
        argv += ["--ignore-case"] if args.ignore_case else []
        argv += ["--fixed-strings"] if args.fixed_string else []
        argv += ["--regexp", args.regex_pattern, "--"]
        found: set[str] = set()
        for batch in _batches(candidates, 64 * 1024):
            with _Process(argv + batch, cwd=self.root, timeout=_left(deadline), label="rg") as proc:
                out = proc.stdout.read()
                code = proc.wait()
            if code == 2 and not out:
                return None  # e.g. a pattern ripgrep does not support (lookaround, backreferences)
            if code not in (0, 1, 2):
                return None
            found.update(p.decode("utf-8", "replace") for p in out.split(b"\0") if p)
        return found

    # -- git plumbing --------------------------------------------------------------------------

    def _git(self, subcommand: str, *args: str) -> _Process:
        if subcommand not in _GIT_SUBCOMMANDS:
            raise ValueError(f"git {subcommand} is not allowed")
        argv = [self._git_exe or "git", "--no-pager", "--literal-pathspecs", *_GIT_CONFIG, subcommand, *args]
        return _Process(argv, cwd=self.root, timeout=self.timeout_seconds, label=f"git {subcommand}")

    def _git_output(
        self, subcommand: str, *args: str, max_bytes: int = GIT_OUTPUT_MAX_BYTES
    ) -> tuple[bytes, bool]:
        """Output of a git command, and whether it was cut at max_bytes."""
        with self._git(subcommand, *args) as proc:
            out = proc.stdout.read(max_bytes + 1)
            if len(out) > max_bytes:
                return out[:max_bytes], True
            proc.check()
            return out, False

    def _blob(self, sha: str, path: str) -> _Process:
        """A file's content at a commit, as a stream."""
        return self._git("cat-file", "blob", "--end-of-options", f"{sha}:{self._git_prefix}{path}")

    def _probe_git(self) -> bool:
        try:
            with self._git("rev-parse", "--is-inside-work-tree", "--show-prefix") as proc:
                out = proc.stdout.read(64 * 1024).decode("utf-8", "replace").splitlines()
                ok = proc.wait() == 0
        except RepoError:
            return False
        if not ok or not out or out[0] != "true":
            return False
        self._git_prefix = out[1] if len(out) > 1 else ""
        return True

    def _require_git(self) -> None:
        if not self.is_git:
            raise RepoError("the repository root is not a git work tree, so git tools are unavailable")

    def _has_head(self) -> bool:
        with self._git("rev-parse", "--verify", "--quiet", "HEAD") as proc:
            proc.stdout.read()
            return proc.wait() == 0

    def _commit(self, ref: str, field: str) -> str:
        """The full id of the commit a validated ref names."""
        ref = _ref(ref, field)
        with self._git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}") as proc:
            out = proc.stdout.read(1024)
            code = proc.wait()
        if code != 0:
            raise RepoError(
                f"{field} {ref!r} does not name a commit here; use a commit id from git_log, a branch or a tag"
            )
        return out.decode("ascii", "replace").strip()

    def _changes(
        self, subcommand: str, revisions: list[str], path: str | None, with_patch: bool, budget: _Budget
    ) -> dict[str, Any]:
        """Changed files (and optionally the patch) for git show/diff, with secret-like files dropped."""
        common = ["--no-color", "--no-ext-diff", "--no-textconv", "--relative"]
        if subcommand == "show":
            common.append("--format=")
        pathspec_args = ["--", path] if path is not None else ["--"]
        numstat, cut = self._git_output(subcommand, *common, "--numstat", "-z", *revisions, *pathspec_args)
        files = _parse_numstat(numstat)
        withheld_now = self._files().withheld
        kept_files = [
            f
            for f in files
            if not any(_hidden_change(p) or p in withheld_now for p in (f.path, f.old_path) if p is not None)
        ]
        withheld = len(files) - len(kept_files)
        shown: list[ChangedFile] = []
        for entry in kept_files:
            if not budget.take(entry):
                break
            shown.append(entry)
        files_cut = cut or len(shown) < len(kept_files)
        notes = []
        if files_cut:
            notes.append(f"Only {len(shown)} changed files fit; pass path to narrow.")
        patch = None
        patch_cut = False
        if with_patch:
            raw, raw_cut = self._git_output(
                subcommand, *common, "-p", "--src-prefix=a/", "--dst-prefix=b/", *revisions, *pathspec_args
            )
            sections, dropped = _patch_sections(raw)
            withheld = max(withheld, dropped)
            patch, patch_cut, first_cut = _fit_patch(sections, budget)
            patch_cut |= raw_cut
            if patch_cut:
                notes.append(
                    "The patch was cut"
                    + (f" in {first_cut}" if first_cut else "")
                    + " to fit the result budget; pass path='<file>' to see one file's change."
                )
        if withheld:
            notes.append(f"{withheld} secret-like file(s) omitted (names and changes withheld).")
        return {
            "files": shown,
            "patch": patch,
            "truncated": files_cut or patch_cut,
            "has_more": files_cut or patch_cut,
            "note": _note(*notes),
        }

    # -- budget --------------------------------------------------------------------------------

    def _budget(self, envelope: ToolResult) -> _Budget:
        """Bytes left for the payload once the envelope, flags and a full note are paid for."""
        worst = envelope.model_copy(
            update={"note": "x" * (_NOTE_BYTES - 2), "truncated": True, "has_more": True}
        )
        return _Budget(self.max_result_bytes - len(worst.model_dump_json()))


# ---------------------------------------------------------------------------------------------
# Helpers


class _Budget:
    def __init__(self, room: int) -> None:
        self.left = room

    def fits(self, value: Any) -> bool:
        return len(to_json(value)) <= self.left

    def take(self, value: Any, reserve: int = 0) -> bool:
        """Pay for `value` (plus a separator) if it fits, keeping `reserve` bytes back."""
        cost = len(to_json(value)) + 1
        if cost + reserve > self.left:
            return False
        self.left -= cost
        return True


@dataclass
class _Dir:
    dirs: dict[str, _Dir] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, parts: list[str]) -> None:
        self.count += 1
        if len(parts) == 1:
            self.files.append(parts[0])
        else:
            self.dirs.setdefault(parts[0], _Dir()).add(parts[1:])

    @property
    def height(self) -> int:
        return 1 + max((d.height for d in self.dirs.values()), default=0)

    def render(self, depth: int, indent: str = "") -> Iterator[str]:
        for name in sorted(self.dirs):
            child = self.dirs[name]
            if depth > 1:
                yield f"{indent}{name}/"
                yield from child.render(depth - 1, indent + "  ")
            else:
                yield f"{indent}{name}/ ({child.count} file{'s' if child.count != 1 else ''})"
        for name in sorted(self.files):
            yield f"{indent}{name}"


class _Process:
    """A child process read as a stream: killed at its deadline, or on exit when not finished."""

    def __init__(self, argv: list[str], *, cwd: Path, timeout: float, label: str) -> None:
        self._label = label
        self._timeout = timeout
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        try:
            self._proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=_subprocess_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
            )
        except OSError as e:
            self._stderr.close()
            raise RepoError(f"could not run {label}: {e}") from None
        self.timed_out = False
        self._timer = threading.Timer(max(timeout, 0.001), self._kill_at_deadline)
        self._timer.daemon = True
        self._timer.start()

    @property
    def stdout(self) -> BinaryIO:
        assert self._proc.stdout is not None
        return self._proc.stdout  # type: ignore[return-value]

    def _kill_at_deadline(self) -> None:
        self.timed_out = True
        self._proc.kill()

    def wait(self) -> int:
        code = self._proc.wait()
        if self.timed_out:
            raise RepoError(f"{self._label} timed out after {self._timeout:g} s; narrow the request")
        return code

    def check(self) -> None:
        """Raise a RepoError with the command's own explanation if it failed."""
        if self.wait() != 0:
            self._stderr.seek(0)
            stderr = self._stderr.read(4096).decode("utf-8", "replace")
            lines = [
                line.removeprefix("fatal: ").removeprefix("error: ").strip()
                for line in stderr.splitlines()
                if line.strip() and not line.startswith(("usage:", "hint:", " "))
            ]
            raise RepoError(
                f"{self._label} failed: " + _shorten("; ".join(lines[:3]) or "unknown error", 400)
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self.stdout.close()
        self._stderr.close()


class _Guard:
    """Checks every byte a read tool streams: binary data early on, or a private key anywhere."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.read = 0
        self._carry = b""

    def check(self, chunk: bytes) -> None:
        if self.read < BINARY_SNIFF_BYTES and b"\0" in chunk[: BINARY_SNIFF_BYTES - self.read]:
            raise RepoError(f"{self.path!r} is a binary file")
        window = self._carry + chunk
        if _has_private_key(window):
            raise RepoError(_WITHHELD.format(self.path))
        self._carry = window[-80:]
        self.read += len(chunk)


def _next_line(stream: BinaryIO, guard: _Guard) -> tuple[bytes, bytes, int] | None:
    """The next line as (head, tail, hidden byte count), terminator included; None at the end.

    A line longer than _LONG_LINE_HEAD keeps its head and its last _LONG_LINE_TAIL bytes only.
    """
    head = stream.readline(_LONG_LINE_HEAD)
    if not head:
        return None
    guard.check(head)
    if head.endswith(b"\n") or len(head) < _LONG_LINE_HEAD:
        return head, b"", 0
    tail, hidden = b"", 0
    while piece := stream.readline(_LONG_LINE_HEAD):
        guard.check(piece)
        joined = tail + piece
        hidden += max(0, len(joined) - _LONG_LINE_TAIL)
        tail = joined[-_LONG_LINE_TAIL:]
        if piece.endswith(b"\n"):
            break
    return head, tail, hidden


def _count_lines(stream: BinaryIO, guard: _Guard) -> int | None:
    """Lines left in a stream (a final line without newline counts); None past LINE_COUNT_MAX_BYTES."""
    count, last = 0, b"\n"
    while guard.read < LINE_COUNT_MAX_BYTES:
        block = stream.read(1024 * 1024)
        if not block:
            return count + (last != b"\n")
        guard.check(block)
        count += block.count(b"\n")
        last = block[-1:]
    return None


def _line_text(head: bytes, tail: bytes, hidden: int, *, limit: int, first: bool) -> tuple[str, bool]:
    """A streamed line decoded without its terminator and cut to `limit` characters."""
    if tail:
        tail = tail.removesuffix(b"\n").removesuffix(b"\r")
    else:
        head = head.removesuffix(b"\n").removesuffix(b"\r")
    if first:
        head = head.removeprefix(b"\xef\xbb\xbf")
    text = head.decode("utf-8", "replace")
    if not tail and not hidden and len(text) <= limit:
        return text, False
    return _shorten(text, limit, tail.decode("utf-8", "replace"), hidden), True


def _shorten(text: str, limit: int, tail: str = "", hidden: int = 0) -> str:
    """`text` + `hidden` unread bytes + `tail`, cut to about `limit` characters, head and tail kept."""
    if not tail and not hidden:
        if len(text) <= limit:
            return text
        split = len(text) - limit // 4
        text, tail = text[:split], text[split:]
    keep_head, keep_tail = limit * 3 // 4, limit // 4
    dropped = text[keep_head:] + tail[: max(0, len(tail) - keep_tail)]
    hidden += len(dropped.encode("utf-8", "replace"))
    return f"{text[:keep_head]} …[{hidden} bytes cut]… {tail[len(tail) - min(len(tail), keep_tail) :]}"


def _around(line: str, start: int, limit: int) -> str:
    """A long line cut to a window of `limit` characters that shows the match at `start`."""
    if len(line) <= limit:
        return line
    begin = max(0, min(start - limit // 4, len(line) - limit))
    end = begin + limit
    text = line[begin:end]
    if begin:
        text = f"…[{len(line[:begin].encode('utf-8', 'replace'))} bytes cut]… {text}"
    if end < len(line):
        text = f"{text} …[{len(line[end:].encode('utf-8', 'replace'))} bytes cut]…"
    return text


def _open_regular(path: str) -> BinaryIO:
    """Open a regular file for reading without following a final symlink or blocking on a FIFO."""
    name = os.path.basename(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise RepoError(f"cannot open {name!r}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RepoError(f"{name!r} is not a regular file")
    return os.fdopen(fd, "rb")


def _is_secret_path(rel: str) -> bool:
    parts = rel.lower().split("/")
    return bool(_SECRET_NAME_RE.match(parts[-1])) or any(part in _SECRET_DIRS for part in parts[:-1])


def _in_excluded_dir(rel: str) -> bool:
    return any(part in EXCLUDED_DIRS for part in rel.split("/")[:-1]) or rel.split("/")[-1] in EXCLUDED_DIRS


def _hidden_change(path: str) -> bool:
    return _is_secret_path(path) or _in_excluded_dir(path)


def _has_private_key(data: bytes) -> bool:
    return b"PRIVATE KEY" in data and _PRIVATE_KEY_RE.search(data) is not None


def _ignored(ignores: list[tuple[str, pathspec.GitIgnoreSpec]], rel: str, *, is_dir: bool) -> bool:
    """Whether .gitignore files (outermost first) ignore `rel`; the deepest file that decides wins."""
    for base, spec in reversed(ignores):
        sub = rel[len(base) + 1 :] if base else rel
        decision = spec.check_file(sub + "/" if is_dir else sub).include
        if decision is not None:
            return decision
    return False


def _glob_spec(pattern: str) -> pathspec.GitIgnoreSpec:
    pattern = _clean(pattern, "pattern").strip()
    if not pattern or pattern.startswith("!"):
        raise RepoError("glob pattern must be non-empty and must not start with '!'")
    try:
        return pathspec.GitIgnoreSpec.from_lines([pattern])
    except (ValueError, TypeError) as e:
        raise RepoError(f"invalid glob pattern {pattern!r}: {e}") from None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean(value: str, field: str) -> str:
    """A model's string that may reach a command line or a file name: no NUL, valid UTF-8."""
    if "\0" in value:
        raise RepoError(f"{field} must not contain a NUL byte")
    if not _utf8(value):
        raise RepoError(f"{field} is not valid text")
    return value


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _note(*parts: str) -> str | None:
    text = " ".join(p for p in parts if p)
    return _fit_json(text, _NOTE_BYTES) if text else None


def _fit_json(text: str, max_bytes: int) -> str:
    """`text`, cut in the middle until its JSON string form takes at most `max_bytes`."""
    fitted = text
    while fitted and (size := len(to_json(fitted))) > max_bytes:
        limit = len(fitted) * max_bytes // size - 30
        fitted = _shorten(text, limit) if limit > 0 else ""
    return fitted


def _batches(paths: list[str], max_chars: int) -> Iterator[list[str]]:
    """Split paths into argument lists that stay well under the OS command-line limit."""
    batch: list[str] = []
    size = 0
    for path in paths:
        if batch and size + len(path) + 1 > max_chars:
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += len(path) + 1
    if batch:
        yield batch


def _subprocess_env() -> dict[str, str]:
    """A fresh environment: nothing inherited can redirect git (GIT_DIR, GIT_CONFIG_*, …) or
    load user or system config, and nothing can prompt or page."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.devnull,  # no ~/.gitconfig or ripgrep config; git treats the path as absent
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_OPTIONAL_LOCKS": "0",  # never write the index, even opportunistically
        "GIT_PAGER": "cat",
        "PAGER": "cat",
    }


def _ref(value: str, field: str) -> str:
    if len(value) > 256 or ".." in value or not _REF_RE.fullmatch(value) or value.endswith(("/", ".")):
        raise RepoError(
            f"{field} {value!r} is not an accepted ref: use a commit id from git_log, a branch or a tag, "
            "optionally followed by ~N or ^N (e.g. 'HEAD~3', 'v1.2.0', 'origin/main')"
        )
    return value


def _ref_range(value: str) -> str:
    match = re.fullmatch(r"(.+?)(\.\.\.?)(.+)", value)
    if match is None:
        return _ref(value, "ref_range")
    return _ref(match[1], "ref_range") + match[2] + _ref(match[3], "ref_range")


def _git_date(value: str, field: str) -> str:
    """An ISO 8601 time (UTC when it has no offset) or 'N units ago', in a form git parses."""
    value = value.strip()
    if _RELATIVE_DATE_RE.fullmatch(value) or value in ("yesterday", "today", "now"):
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RepoError(
            f"{field} {value!r} is not a time: use ISO 8601 such as '2024-05-01T12:00:00Z' or "
            "a relative time such as '2 weeks ago'"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat(timespec="seconds")


def _commit_info(fields: list[str]) -> CommitInfo:
    """From "%H %an %aI %s" fields."""
    full, author, date, subject = (fields + ["", "", ""])[:4]
    return CommitInfo(
        commit=full.strip()[:_SHORT_ID],
        author=_shorten(author, 100),
        date=date,
        subject=_shorten(subject, 300),
    )


def _parse_numstat(data: bytes) -> list[ChangedFile]:
    """`--numstat -z`: "added\\tdeleted\\tpath\\0", or "added\\tdeleted\\t\\0old\\0new\\0" for a rename."""
    fields = data.split(b"\0")
    files: list[ChangedFile] = []
    i = 0
    while i < len(fields):
        record = fields[i].lstrip(b"\n")
        i += 1
        if not record:
            continue
        added, deleted, path = (record.split(b"\t", 2) + [b"", b""])[:3]
        old = None
        if not path and i + 1 < len(fields):
            old, path = fields[i].decode("utf-8", "replace"), fields[i + 1]
            i += 2
        files.append(
            ChangedFile(
                path=path.decode("utf-8", "replace"),
                old_path=old,
                added=int(added) if added.isdigit() else None,
                deleted=int(deleted) if deleted.isdigit() else None,
            )
        )
    return files


def _patch_sections(raw: bytes) -> tuple[list[tuple[str, list[str]]], int]:
    """A patch split per file as (path, lines), without secret-like files; also how many were dropped."""
    chunks = re.split(rb"(?m)^(?=diff --git )", raw)
    sections: list[tuple[str, list[str]]] = []
    dropped = 0
    for chunk in chunks:
        if not chunk.startswith(b"diff --git "):
            continue
        lines = chunk.decode("utf-8", "replace").split("\n")
        if lines[-1] == "":
            lines.pop()
        paths = _patch_paths(lines)
        if any(_hidden_change(p) for p in paths) or _has_private_key(chunk):
            dropped += 1
            continue
        sections.append((paths[0], [_shorten(line, MATCH_LINE_CHARS) for line in lines]))
    return sections, dropped


def _patch_paths(lines: list[str]) -> list[str]:
    """The paths a patch section names, its best name first. A name with spaces is ambiguous in
    the header, so every reading is included: a secret-like name in any of them hides the section.
    Quoted names keep git's escapes; secret patterns look at the end of a name, which escapes
    (control characters, quotes, backslashes) rarely touch."""
    named = []
    header = lines[0].removeprefix("diff --git ")
    half = (len(header) - 1) // 2
    if header.startswith("a/") and header[half : half + 3] == " b/" and header[2:half] == header[half + 3 :]:
        named.append(header[2:half])
    for line in lines[1:]:
        if line.startswith("@@"):
            break
        for prefix in ("+++ b/", "--- a/", "rename to ", "rename from ", "copy to ", "copy from "):
            if line.startswith(prefix):
                named.append(line[len(prefix) :].rstrip("\t").strip('"'))
    tokens = [token.strip('"').removeprefix("a/").removeprefix("b/") for token in header.split(" ")]
    return [p for p in named + tokens if p] or ["?"]


def _fit_patch(sections: list[tuple[str, list[str]]], budget: _Budget) -> tuple[str, bool, str | None]:
    """Whole file sections while they fit, then as many lines of the next as fit."""
    out: list[str] = []
    for path, lines in sections:
        for index, line in enumerate(lines):
            if not budget.take(line):
                out.append(f"… [cut: {len(lines) - index} more lines of {path}]")
                return "\n".join(out), True, path
            out.append(line)
    return "\n".join(out), False, None


def _parse_blame(out: bytes) -> tuple[dict[str, BlameCommit], list[BlameLine]]:
    """Parse `git blame --line-porcelain`; ids may be SHA-1 (40) or SHA-256 (64) hex digits."""
    commits: dict[str, BlameCommit] = {}
    lines: list[BlameLine] = []
    sha, number = "", 0
    info: dict[str, Any] = {}
    for raw in out.split(b"\n"):
        if raw.startswith(b"\t"):
            text, _ = _line_text(raw[1:], b"", 0, limit=MATCH_LINE_CHARS, first=number == 1)
            short = sha[:_SHORT_ID]
            if short not in commits:
                commits[short] = BlameCommit(
                    author=_shorten(info.get("author", ""), 100),
                    date=_blame_date(info.get("author-time", "0"), info.get("author-tz", "+0000")),
                    summary=_shorten(info.get("summary", ""), 300),
                )
            lines.append(BlameLine(line=number, commit=short, text=text))
            continue
        header = _BLAME_HEADER_RE.fullmatch(raw)
        if header:
            sha, number, info = header[1].decode(), int(header[2]), {}
        elif b" " in raw:
            key, _, value = raw.decode("utf-8", "replace").partition(" ")
            info[key] = value
    return commits, lines


def _blame_date(epoch: str, tz: str) -> str:
    try:
        sign = -1 if tz.startswith("-") else 1
        offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[3:5])) * sign
        return datetime.fromtimestamp(int(epoch), timezone(offset)).isoformat()
    except (ValueError, OverflowError):
        return ""
