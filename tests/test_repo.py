"""Tests for the read-only code and git tools, on real temporary git repositories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from halo_rlm.repo import (
    GitBlameArgs,
    GitDiffArgs,
    GitLogArgs,
    GitReadArgs,
    GitShowArgs,
    GlobArgs,
    GrepArgs,
    ReadArgs,
    Repo,
    RepoError,
    TreeArgs,
    _subprocess_env,
    find_ripgrep,
    tool_specs,
)

# Built by concatenation so this file does not itself look like it holds a private key.
PEM = (
    "-----BEGIN "
    + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAfakefakefake\nZm9vYmFy\n-----END "
    + "RSA PRIVATE KEY-----\n"
)
FAKE_KEY = "sk-test-FAKE-0123456789"
HOSTILE_REFS = [
    "--output=/tmp/pwned",
    "-p",
    "HEAD; rm -rf /",
    "$(id)",
    "`id`",
    "HEAD:.env",
    "HEAD\nHEAD",
    "@{-1}",
]
HOSTILE_PATHS = ["../../etc/passwd", "/etc/passwd", "a\0b", "src/../../outside.txt"]
SECRET_NAMES = [
    ".env", ".env.local", "prod.env", "server.pem", "tls.key", "cert.p12", "cert.pfx", "id_rsa", "id_rsa.pub",
    "id_ed25519", "app.keystore", "credentials", "credentials.json", ".netrc", ".npmrc", ".pypirc",
    "secrets.yaml", "Secrets.JSON", ".ssh/config", "deploy/.ssh/known_hosts",
]  # fmt: skip


def git(cwd: Path, *args: str, date: str | None = None) -> str:
    env = dict(os.environ)
    if date:
        env.update(GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
    result = subprocess.run(
        ["git", "-c", "user.name=Test Author", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false",
         *args],
        cwd=cwd, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return result.stdout


def write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


MAIN_V1 = "import os\n\n\ndef main():\n    return os.getcwd()\n"
MAIN_V2 = MAIN_V1 + "\n\ndef handle_timeout(seconds):\n    raise TimeoutError(seconds)\n"
MAIN_V3 = MAIN_V2 + "\nretry_limit = 3\n"


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository with history, secrets, junk, symlinks, binaries and odd files."""
    root = tmp_path_factory.mktemp("fixture") / "agent"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(root, "README.md", "# Agent\n\nCalls tools.\n")
    write(root, ".gitignore", "ignored.log\nbuild/\n")
    write(root, "src/app/main.py", MAIN_V1)
    write(root, "src/app/util.py", "def helper():\n    return 'Hello World'\n")
    write(
        root,
        "src/app/long.py",
        "".join(f"value_{i} = {i}  # padding padding padding\n" for i in range(1, 3001)),
    )
    write(root, "docs/guide.md", "Guide\n")
    write(root, "crlf.txt", b"alpha\r\nbeta\r\n\r\ngamma")
    write(root, "ünïcode/日本語.py", "print('こんにちは')\n")
    write(root, "minified.js", "x" * 6000 + "NEEDLE" + "y" * 6000 + "\n")
    write(root, "bin.dat", b"\x00\x01\x02 NEEDLE binary\n" * 10)
    write(root, "node_modules/pkg/index.js", "module.exports = 'NEEDLE'\n")
    git(root, "add", "-A")
    git(root, "add", "-f", "node_modules/pkg/index.js")
    git(root, "commit", "-q", "-m", "Initial agent", date="2024-01-10T10:00:00+00:00")
    write(root, "src/app/main.py", MAIN_V2)
    git(root, "commit", "-q", "-am", "Add timeout handling", date="2024-02-15T10:00:00+00:00")
    write(root, "src/app/main.py", MAIN_V3)
    write(root, ".env", f"API_KEY={FAKE_KEY}\n")
    write(root, "id_rsa", f"fake ssh key {FAKE_KEY}\n")
    write(root, "config.txt", f"name = agent\n{PEM}timeout = 30\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Add config and retry limit\n\nThe retry limit caps tool retries.",
        date="2024-03-20T10:00:00+00:00")  # fmt: skip
    # Working-tree only: ignored, secret, junk, large and symlinked files.
    write(root, "ignored.log", "NEEDLE in an ignored file\n")
    write(root, "build/out.txt", "NEEDLE in an ignored directory\n")
    write(root, "secrets.yaml", f"token: {FAKE_KEY}\n")
    write(root, "certs/server.pem", PEM)
    write(root, ".ssh/config", "Host *\n")
    write(root, ".venv/lib/site.py", "NEEDLE = 1\n")
    write(root, "__pycache__/x.pyc", "NEEDLE")
    with open(root / "big.txt", "w") as f:
        f.write("NEEDLE_AT_START\n")
        line = "filler " * 14 + "\n"
        f.write(line * (5 * 1024 * 1024 // len(line)))
        f.write("NEEDLE_AT_END\n")
    os.symlink("/etc", root / "etc_link")
    os.symlink("src/app/main.py", root / "link_inside.py")
    return root


@pytest.fixture(scope="module")
def repo(repo_dir: Path) -> Repo:
    return Repo.open(repo_dir, use_ripgrep=False)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory outside git with nested .gitignore files, junk, secrets and a symlink out."""
    root = tmp_path_factory.mktemp("plain")
    write(root, ".gitignore", "*.log\n!keep.log\ngenerated/\n")
    write(root, "a.py", "print('Hello World')\n")
    write(root, "x.log", "ignored\n")
    write(root, "keep.log", "kept Hello\n")
    write(root, "generated/g.py", "Hello\n")
    write(root, "sub/.gitignore", "local.txt\n")
    write(root, "sub/local.txt", "Hello\n")
    write(root, "sub/b.py", "Hello = 2\n")
    write(root, "sub/deeper/c.py", "hello again\n")
    write(root, ".env", f"KEY={FAKE_KEY}\n")
    write(root, "node_modules/m.js", "Hello\n")
    write(root, ".git/config", "[core]\n")  # a stray .git directory, not a repository
    os.symlink("/etc/passwd", root / "passwd_link")
    return root


def result_json(result) -> str:
    return result.model_dump_json()


# -- opening -----------------------------------------------------------------------------------


def test_open_refuses_missing_and_non_directories(tmp_path: Path) -> None:
    with pytest.raises(RepoError, match="does not exist"):
        Repo.open(tmp_path / "missing")
    write(tmp_path, "file.txt", "x")
    with pytest.raises(RepoError, match="not a directory"):
        Repo.open(tmp_path / "file.txt")
    with pytest.raises(RepoError, match="max_result_bytes"):
        Repo.open(tmp_path, max_result_bytes=100)


def test_git_tools_are_offered_only_for_git_work_trees(repo: Repo, plain_dir: Path) -> None:
    assert repo.is_git
    assert [s.name for s in tool_specs(repo)] == [
        "view_repo_tree", "glob_files", "grep_files", "read_file",
        "git_log", "git_show", "git_diff", "git_blame", "git_read_file",
    ]  # fmt: skip
    plain = Repo.open(plain_dir)
    assert not plain.is_git
    assert [s.name for s in tool_specs(plain)] == ["view_repo_tree", "glob_files", "grep_files", "read_file"]
    with pytest.raises(RepoError, match="not a git work tree"):
        plain.git_log(GitLogArgs())
    for spec in tool_specs(repo):
        assert spec.json_schema()["type"] == "object"
        assert len(spec.description) > 80


# -- listing -----------------------------------------------------------------------------------


def test_tree_shows_source_and_hides_ignored_junk_secrets_and_symlinks(repo: Repo) -> None:
    result = repo.view_repo_tree(TreeArgs())
    lines = result.tree.splitlines()
    for shown in [
        "src/",
        "  app/",
        "    main.py",
        "ünïcode/",
        "  日本語.py",
        "crlf.txt",
        "big.txt",
        "bin.dat",
    ]:
        assert shown in lines
    names = {line.strip().rstrip("/") for line in lines}
    for hidden in ["ignored.log", "build", ".env", "id_rsa", "config.txt", "secrets.yaml", "certs", ".ssh",
                   ".venv", "node_modules", "__pycache__", ".git", "etc_link", "link_inside.py"]:  # fmt: skip
        assert hidden not in names
    assert lines[:2] == ["docs/", "  guide.md"] and lines.index("src/") < lines.index(".gitignore")
    assert result.file_count == 11
    assert not result.truncated


def test_tree_collapses_deep_levels_to_fit_and_expands_a_path(tmp_path: Path) -> None:
    for d in range(30):
        for f in range(20):
            write(tmp_path, f"pkg{d:02}/mod{f:02}.py", "x\n")
    write(tmp_path, "top.py", "x\n")
    repo = Repo.open(tmp_path)
    result = repo.view_repo_tree(TreeArgs())
    assert result.depth == 1 and result.truncated and result.has_more
    assert "pkg00/ (20 files)" in result.tree.splitlines()
    assert "path=" in (result.note or "")
    inner = repo.view_repo_tree(TreeArgs(path="pkg03"))
    assert inner.tree.splitlines() == [f"mod{f:02}.py" for f in range(20)] and not inner.truncated
    with pytest.raises(RepoError, match="is a file"):
        repo.view_repo_tree(TreeArgs(path="top.py"))


def test_glob_matches_gitignore_style_and_cannot_reach_excluded_files(repo: Repo) -> None:
    py = repo.glob_files(GlobArgs(pattern="*.py"))
    assert [f.path for f in py.files] == [
        "src/app/long.py",
        "src/app/main.py",
        "src/app/util.py",
        "ünïcode/日本語.py",
    ]
    assert py.files[1].size == len(MAIN_V3)
    assert [f.path for f in repo.glob_files(GlobArgs(pattern="src/**/m*.py")).files] == ["src/app/main.py"]
    assert [f.path for f in repo.glob_files(GlobArgs(pattern="docs")).files] == ["docs/guide.md"]
    for pattern in ["node_modules/**", ".git/**", "**/.env", "id_rsa", ".venv", "*.pyc", "ignored.log",
                    "config.txt", "etc_link/**", "link_inside.py", "**/*.pem"]:  # fmt: skip
        assert repo.glob_files(GlobArgs(pattern=pattern)).files == [], pattern
    two = repo.glob_files(GlobArgs(pattern="*", max_results=2))
    assert len(two.files) == 2 and two.has_more and "narrower" in (two.note or "")
    with pytest.raises(RepoError, match="must not start with '!'"):
        repo.glob_files(GlobArgs(pattern="!*.py"))


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_like_files_are_never_listed_searched_or_read(tmp_path: Path, name: str) -> None:
    write(tmp_path, name, f"NEEDLE {FAKE_KEY}\n")
    write(tmp_path, "ok.txt", "NEEDLE\n")
    repo = Repo.open(tmp_path)
    assert [f.path for f in repo.glob_files(GlobArgs(pattern="*")).files] == ["ok.txt"]
    assert [m.path for m in repo.grep_files(GrepArgs(regex_pattern="NEEDLE")).matches] == ["ok.txt"]
    with pytest.raises(RepoError, match="secret"):
        repo.read_file(ReadArgs(path=name))


def test_non_git_directory_honours_nested_gitignore_and_exclusions(plain_dir: Path) -> None:
    repo = Repo.open(plain_dir)
    listed = [f.path for f in repo.glob_files(GlobArgs(pattern="*")).files]
    assert listed == [".gitignore", "a.py", "keep.log", "sub/.gitignore", "sub/b.py", "sub/deeper/c.py"]
    hello = repo.grep_files(GrepArgs(regex_pattern="hello", ignore_case=True))
    assert [(m.path, m.line) for m in hello.matches] == [
        ("a.py", 1), ("keep.log", 1), ("sub/b.py", 1), ("sub/deeper/c.py", 1)
    ]  # fmt: skip
    with pytest.raises(RepoError, match="ignored"):
        repo.read_file(ReadArgs(path="sub/local.txt"))
    with pytest.raises(RepoError, match="excluded"):
        repo.read_file(ReadArgs(path=".git/config"))
    with pytest.raises(RepoError, match="outside the repository root through a symlink"):
        repo.read_file(ReadArgs(path="passwd_link"))


# -- grep --------------------------------------------------------------------------------------


def test_grep_returns_sorted_matches_with_line_numbers(repo: Repo) -> None:
    result = repo.grep_files(GrepArgs(regex_pattern=r"def \w+\("))
    assert [(m.path, m.line, m.text) for m in result.matches] == [
        ("src/app/main.py", 4, "def main():"),
        ("src/app/main.py", 8, "def handle_timeout(seconds):"),
        ("src/app/util.py", 1, "def helper():"),
    ]
    assert result.files_searched > 5 and not result.has_more
    assert (
        repo.grep_files(GrepArgs(regex_pattern="hello world", ignore_case=True)).matches[0].path
        == "src/app/util.py"
    )
    literal = repo.grep_files(GrepArgs(regex_pattern="TimeoutError(seconds)", fixed_string=True))
    assert [(m.path, m.line) for m in literal.matches] == [("src/app/main.py", 9)]
    scoped = repo.grep_files(GrepArgs(regex_pattern="def", path="src/app/util.py"))
    assert [m.path for m in scoped.matches] == ["src/app/util.py"]
    globbed = repo.grep_files(GrepArgs(regex_pattern="print", glob_pattern="*.py"))
    assert [(m.path, m.text) for m in globbed.matches] == [("ünïcode/日本語.py", "print('こんにちは')")]
    capped = repo.grep_files(GrepArgs(regex_pattern="value_", max_matches=3))
    assert (
        [m.line for m in capped.matches] == [1, 2, 3] and capped.has_more and "narrow" in (capped.note or "")
    )


def test_grep_skips_secrets_binaries_ignored_and_junk(repo: Repo) -> None:
    needle = repo.grep_files(GrepArgs(regex_pattern="NEEDLE"))
    assert {m.path for m in needle.matches} == {"big.txt", "minified.js"}
    assert repo.grep_files(GrepArgs(regex_pattern=FAKE_KEY, fixed_string=True)).matches == []
    assert repo.grep_files(GrepArgs(regex_pattern="PRIVATE KEY|MIIEow")).matches == []
    with pytest.raises(RepoError, match="secret"):
        repo.grep_files(GrepArgs(regex_pattern="x", path=".env"))


def test_grep_reads_only_the_head_of_large_files_and_says_so(repo: Repo) -> None:
    start = repo.grep_files(GrepArgs(regex_pattern="NEEDLE_AT_(START|END)"))
    assert [(m.path, m.line, m.text) for m in start.matches] == [("big.txt", 1, "NEEDLE_AT_START")]
    assert "big.txt" in (start.note or "") and "2 MiB" in (start.note or "")


def test_grep_cuts_long_lines_around_the_match(repo: Repo) -> None:
    [match] = repo.grep_files(GrepArgs(regex_pattern="NEEDLE", path="minified.js")).matches
    assert "NEEDLE" in match.text and len(match.text) < 500
    assert match.text.startswith("…[") and match.text.endswith("bytes cut]…")


def test_grep_rejects_invalid_regex_clearly(repo: Repo) -> None:
    with pytest.raises(RepoError, match=r"invalid regex '\(unclosed'.*fixed_string"):
        repo.grep_files(GrepArgs(regex_pattern="(unclosed"))


def test_grep_catastrophic_backtracking_times_out_instead_of_hanging(tmp_path: Path) -> None:
    write(tmp_path, "evil.txt", "a" * 5000 + "b\n")
    repo = Repo.open(tmp_path, timeout_seconds=0.5, use_ripgrep=False)
    started = time.monotonic()
    with pytest.raises(RepoError, match="catastrophic backtracking"):
        repo.grep_files(GrepArgs(regex_pattern="(a+)+$"))
    assert time.monotonic() - started < 10


def test_a_slow_regex_in_a_worker_thread_does_not_starve_other_threads(tmp_path: Path) -> None:
    write(tmp_path, "evil.txt", "a" * 5000 + "b\n")
    repo = Repo.open(tmp_path, timeout_seconds=1.0, use_ripgrep=False)
    worker = threading.Thread(
        target=lambda: pytest.raises(RepoError, repo.grep_files, GrepArgs(regex_pattern="(a+)+$"))
    )
    worker.start()
    ticks = 0
    while worker.is_alive():
        time.sleep(0.01)
        ticks += 1
    assert ticks > 20  # holding the GIL for the whole second would allow about one


def test_grep_with_lookaround_checks_every_line(tmp_path: Path) -> None:
    # A lookahead could see the next line in a whole-file search; per-line semantics must hold.
    write(tmp_path, "f.txt", "foo\nbar\nfoo bar\n")
    repo = Repo.open(tmp_path)
    result = repo.grep_files(GrepArgs(regex_pattern=r"foo(?!\s)"))
    assert [m.line for m in result.matches] == [1]
    assert [m.line for m in repo.grep_files(GrepArgs(regex_pattern=r"\Abar")).matches] == [2]


@pytest.mark.skipif(find_ripgrep() is None, reason="ripgrep is not installed")
@pytest.mark.parametrize(
    "args",
    [
        GrepArgs(regex_pattern="NEEDLE"),
        GrepArgs(regex_pattern=r"def \w+\("),
        GrepArgs(regex_pattern="hello world", ignore_case=True),
        GrepArgs(regex_pattern="(seconds)", fixed_string=True),
        GrepArgs(regex_pattern="^gamma$"),
        GrepArgs(regex_pattern=r"foo(?=bar)"),  # ripgrep refuses lookaround: falls back to Python
        GrepArgs(regex_pattern="value_", max_matches=5),
        GrepArgs(regex_pattern=".", glob_pattern="*.py", max_matches=500),
    ],
)
def test_ripgrep_and_python_paths_agree(repo_dir: Path, args: GrepArgs) -> None:
    python = Repo.open(repo_dir, use_ripgrep=False).grep_files(args)
    ripgrep = Repo.open(repo_dir, use_ripgrep=True).grep_files(args)
    assert ripgrep == python


FAKE_RG = """\
import re, sys
args = sys.argv[1:]
open(sys.argv[0] + ".log", "a").write(repr(args) + "\\n")
pattern, files = args[args.index("--regexp") + 1], args[args.index("--") + 1 :]
if "(?=" in pattern:
    sys.exit(2)  # like ripgrep, which has no lookaround
if "--fixed-strings" in args:
    pattern = re.escape(pattern)
rx = re.compile(pattern, re.MULTILINE | (re.IGNORECASE if "--ignore-case" in args else 0))
hits = [f for f in files if rx.search(open(f, encoding="utf-8", errors="replace").read().replace("\\r\\n", "\\n"))]
sys.stdout.write("".join(f + "\\0" for f in hits))
sys.exit(0 if hits else 1)
"""


def test_ripgrep_prefilter_plumbing_with_a_stand_in(
    repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = write(tmp_path, "rg", f"#!{sys.executable}\n{FAKE_RG}")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    python = Repo.open(repo_dir, use_ripgrep=False)
    stand_in = Repo.open(repo_dir, use_ripgrep=True)
    for args in [
        GrepArgs(regex_pattern="NEEDLE"),
        GrepArgs(regex_pattern="HELLO world", ignore_case=True),
        GrepArgs(regex_pattern="(seconds)", fixed_string=True),
        GrepArgs(regex_pattern="^gamma$"),
        GrepArgs(regex_pattern="foo(?=bar)"),
        GrepArgs(regex_pattern="value_", max_matches=5),
        GrepArgs(regex_pattern="[[:alpha:]]ん"),  # never sent to rg: its POSIX classes are ASCII-only
    ]:
        assert stand_in.grep_files(args) == python.grep_files(args)
    calls = (tmp_path / "rg.log").read_text().splitlines()
    assert len(calls) == 6 and all("'--files-with-matches'" in call and "'--crlf'" in call for call in calls)


# -- reading -----------------------------------------------------------------------------------


def test_read_file_returns_a_numbered_window(repo: Repo) -> None:
    result = repo.read_file(ReadArgs(path="src/app/main.py", offset=8, limit=2))
    assert result.content == "     8\tdef handle_timeout(seconds):\n     9\t    raise TimeoutError(seconds)"
    assert (result.start_line, result.end_line, result.total_lines) == (8, 9, 11)
    assert result.has_more and "offset=10" in (result.note or "")
    tail = repo.read_file(ReadArgs(path="src/app/main.py", offset=11))
    assert tail.content == "    11\tretry_limit = 3" and not tail.has_more
    past = repo.read_file(ReadArgs(path="src/app/main.py", offset=50))
    assert past.content == "" and past.end_line == 49 and "only 11 lines" in (past.note or "")
    assert repo.read_file(ReadArgs(path="ünïcode/日本語.py")).content == "     1\tprint('こんにちは')"


def test_line_numbers_agree_across_read_grep_blame_and_git_read(repo: Repo) -> None:
    expected = [(1, "alpha"), (2, "beta"), (3, ""), (4, "gamma")]
    read = repo.read_file(ReadArgs(path="crlf.txt"))
    assert [tuple(line.split("\t")) for line in read.content.split("\n")] == [
        (f"{n:>6}", t) for n, t in expected
    ]
    assert read.total_lines == 4
    grep = repo.grep_files(GrepArgs(regex_pattern="^(alpha|beta|gamma)$", path="crlf.txt"))
    assert [(m.line, m.text) for m in grep.matches] == [e for e in expected if e[1]]
    blame = repo.git_blame(GitBlameArgs(path="crlf.txt", start_line=1, end_line=4))
    assert [(line.line, line.text) for line in blame.lines] == expected
    at_head = repo.git_read_file(GitReadArgs(ref="HEAD", path="crlf.txt"))
    assert at_head.content == read.content and at_head.total_lines == 4


def test_read_file_refuses_escapes_with_actionable_messages(repo: Repo) -> None:
    cases = {
        "../../etc/passwd": "outside the repository root; pass a path relative",
        "/etc/passwd": "outside the repository root",
        "src/../../outside.txt": "outside the repository root",
        "etc_link/passwd": "outside the repository root through a symlink",
        "etc_link": "outside the repository root through a symlink",
        "a\0b": "NUL",
        ".env": "secret",
        "id_rsa": "secret",
        "certs/server.pem": "secret",
        ".ssh/config": "secret",
        "config.txt": "private key",
        "bin.dat": "binary",
        "ignored.log": "ignored",
        "build/out.txt": "ignored",
        ".git/config": "excluded directory",
        ".venv/lib/site.py": "excluded directory",
        "node_modules/pkg/index.js": "excluded directory",
        "src": "is a directory",
        "missing.py": "no such file",
    }
    for path, message in cases.items():
        with pytest.raises(RepoError, match=message):
            repo.read_file(ReadArgs(path=path))


def test_read_file_follows_symlinks_that_stay_inside(repo: Repo, repo_dir: Path) -> None:
    result = repo.read_file(ReadArgs(path="link_inside.py", limit=1))
    assert result.path == "src/app/main.py" and result.content == "     1\timport os"
    absolute = repo.read_file(ReadArgs(path=str(repo_dir / "README.md"), limit=1))
    assert absolute.path == "README.md"


def test_root_may_itself_be_a_symlink(repo_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "link_to_repo"
    os.symlink(repo_dir, link)
    repo = Repo.open(link)
    assert repo.is_git and repo.root == repo_dir.resolve()
    assert repo.read_file(ReadArgs(path=str(link / "README.md"), limit=1)).content == "     1\t# Agent"
    assert repo.read_file(ReadArgs(path="README.md", limit=1)).path == "README.md"
    with pytest.raises(RepoError, match="symlink"):
        repo.read_file(ReadArgs(path=str(link / "etc_link" / "passwd")))
    assert repo.git_blame(GitBlameArgs(path="README.md", start_line=1, end_line=1)).lines[0].text == "# Agent"


def test_read_file_streams_huge_files_and_long_lines(tmp_path: Path) -> None:
    with open(tmp_path / "huge.txt", "wb") as f:
        f.write(b"first line\n" + b"x" * 10_000 + b"\n")
        f.truncate(1 << 30)  # sparse 1 GiB: NUL bytes after the first 8 KB
    write(tmp_path, "one_line.txt", "START" + "z" * (3 * 1024 * 1024) + "END")
    repo = Repo.open(tmp_path)
    tracemalloc.start()
    try:
        huge = repo.read_file(ReadArgs(path="huge.txt", limit=2))
        long = repo.read_file(ReadArgs(path="one_line.txt"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024
    assert huge.content.startswith("     1\tfirst line\n     2\txxx") and "bytes cut]…" in huge.content
    assert huge.total_lines is None and huge.has_more and "not counted" in (huge.note or "")
    assert long.total_lines == 1 and long.truncated
    assert long.content.startswith("     1\tSTARTzz") and long.content.endswith("zzEND")
    assert len(long.content) < 2100


def test_every_result_fits_the_byte_budget(repo_dir: Path) -> None:
    budget = 4096
    repo = Repo.open(repo_dir, max_result_bytes=budget, use_ripgrep=False)
    results = [
        repo.view_repo_tree(TreeArgs(max_depth=12)),
        repo.glob_files(GlobArgs(pattern="*", max_results=1000)),
        repo.grep_files(GrepArgs(regex_pattern="value", max_matches=500)),
        repo.read_file(ReadArgs(path="src/app/long.py", limit=2000)),
        repo.read_file(ReadArgs(path="minified.js")),
        repo.git_log(GitLogArgs(max_commits=500)),
        repo.git_show(GitShowArgs(ref="HEAD~2", include_patch=True)),
        repo.git_diff(GitDiffArgs(from_ref="HEAD~2", to_ref="HEAD", stat_only=False)),
        repo.git_blame(GitBlameArgs(path="src/app/long.py", start_line=1, end_line=2000)),
        repo.git_read_file(GitReadArgs(ref="HEAD", path="src/app/long.py", limit=2000)),
    ]
    for result in results:
        assert len(result_json(result).encode()) <= budget, type(result).__name__
    for cut in [results[2], results[3], results[6], results[8], results[9]]:
        assert cut.truncated and cut.has_more and cut.note, type(cut).__name__
    assert "offset=" in (results[3].note or "") and "start_line=" in (results[8].note or "")


def test_byte_budget_holds_for_multibyte_text(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    names = [f"{'名前' * 20}_{i}.txt" for i in range(40)]
    for name in names:
        write(tmp_path, f"データ/{name}", "漢字の行\n" * 300)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "件名\n\n" + "本文" * 10_000)
    budget = 4096
    repo = Repo.open(tmp_path, max_result_bytes=budget)
    name = f"データ/{names[0]}"
    results = [
        repo.view_repo_tree(TreeArgs()),
        repo.glob_files(GlobArgs(pattern="*.txt", max_results=1000)),
        repo.grep_files(GrepArgs(regex_pattern="漢字", max_matches=500)),
        repo.read_file(ReadArgs(path=name, limit=2000)),
        repo.git_show(GitShowArgs(ref="HEAD", include_patch=True)),
        repo.git_blame(GitBlameArgs(path=name, start_line=1, end_line=300)),
        repo.git_read_file(GitReadArgs(ref="HEAD", path=name, limit=2000)),
    ]
    for result in results:
        assert len(result_json(result).encode()) <= budget, type(result).__name__
        assert result.truncated, type(result).__name__
    show = results[4]
    assert show.message.startswith("本文") and "bytes cut" in show.message


# -- git ---------------------------------------------------------------------------------------


def test_git_log_lists_newest_first_with_fixed_short_ids(repo: Repo) -> None:
    log = repo.git_log(GitLogArgs())
    assert [c.subject for c in log.commits] == [
        "Add config and retry limit",
        "Add timeout handling",
        "Initial agent",
    ]
    assert all(len(c.commit) == 12 for c in log.commits)
    assert log.commits[0].author == "Test Author" and log.commits[0].date == "2024-03-20T10:00:00+00:00"
    one = repo.git_log(GitLogArgs(max_commits=1))
    assert len(one.commits) == 1 and one.has_more
    window = repo.git_log(GitLogArgs(since="2024-02-01T00:00:00Z", until="2024-03-01"))
    assert [c.subject for c in window.commits] == ["Add timeout handling"]
    assert [c.subject for c in repo.git_log(GitLogArgs(pickaxe_string="handle_timeout")).commits] == [
        "Add timeout handling"
    ]
    assert [c.subject for c in repo.git_log(GitLogArgs(pickaxe_regex="retry_limit = [0-9]+")).commits] == [
        "Add config and retry limit"
    ]
    assert len(repo.git_log(GitLogArgs(path="src/app/main.py")).commits) == 3
    assert [c.subject for c in repo.git_log(GitLogArgs(ref_range="HEAD~1..HEAD")).commits] == [
        "Add config and retry limit"
    ]
    blame_id = repo.git_blame(GitBlameArgs(path="src/app/main.py", start_line=8, end_line=8)).lines[0].commit
    assert blame_id == log.commits[1].commit  # short ids agree verbatim across tools
    with pytest.raises(RepoError, match="not a time"):
        repo.git_log(GitLogArgs(since="last tuesday-ish; rm -rf /"))


def test_git_log_of_an_empty_repository_is_empty(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    write(tmp_path, "a.py", "x\n")
    log = Repo.open(tmp_path).git_log(GitLogArgs())
    assert log.commits == [] and not log.has_more


def test_git_show_gives_stat_by_default_and_hides_secret_files(repo: Repo) -> None:
    show = repo.git_show(GitShowArgs(ref="HEAD"))
    assert show.commit.subject == "Add config and retry limit"
    assert show.message == "The retry limit caps tool retries."
    assert [(f.path, f.added, f.deleted) for f in show.files] == [("src/app/main.py", 2, 0)]
    assert show.patch is None
    assert "3 secret-like file(s) omitted" in (show.note or "")
    patched = repo.git_show(GitShowArgs(ref="HEAD", include_patch=True))
    assert "+retry_limit = 3" in (patched.patch or "")
    text = result_json(patched)
    for leak in [FAKE_KEY, "PRIVATE KEY", "MIIEow", ".env", "id_rsa", "config.txt"]:
        assert leak not in text
    binary = repo.git_show(GitShowArgs(ref="HEAD~2"))
    assert ("bin.dat", None, None) in [(f.path, f.added, f.deleted) for f in binary.files]
    assert "node_modules/pkg/index.js" not in result_json(binary)


def test_git_diff_between_commits_hides_secret_hunks(repo: Repo) -> None:
    diff = repo.git_diff(GitDiffArgs(from_ref="HEAD~2", to_ref="HEAD", stat_only=False))
    assert diff.from_commit == repo.git_log(GitLogArgs()).commits[2].commit
    assert [f.path for f in diff.files] == ["src/app/main.py"]
    assert "+def handle_timeout(seconds):" in (diff.patch or "")
    text = result_json(diff)
    assert FAKE_KEY not in text and "PRIVATE KEY" not in text and "secret-like" in (diff.note or "")
    scoped = repo.git_diff(GitDiffArgs(from_ref="HEAD~1", to_ref="HEAD", path="src/app/main.py"))
    assert [(f.path, f.added) for f in scoped.files] == [("src/app/main.py", 2)] and scoped.patch is None


def test_git_blame_attributes_lines_to_commits(repo: Repo) -> None:
    log = repo.git_log(GitLogArgs()).commits
    blame = repo.git_blame(GitBlameArgs(path="src/app/main.py", start_line=4, end_line=11))
    by_line = {line.line: line for line in blame.lines}
    assert by_line[4].commit == log[2].commit and by_line[4].text == "def main():"
    assert by_line[8].commit == log[1].commit and by_line[11].commit == log[0].commit
    assert blame.commits[log[1].commit].summary == "Add timeout handling"
    assert blame.commits[log[1].commit].date == "2024-02-15T10:00:00+00:00"
    old = repo.git_blame(GitBlameArgs(path="src/app/main.py", start_line=1, end_line=100, ref="HEAD~2"))
    assert [line.line for line in old.lines] == [1, 2, 3, 4, 5] and old.note == "The file has only 5 lines."
    assert not old.truncated and not old.has_more
    with pytest.raises(RepoError, match="has only 11 lines"):
        repo.git_blame(GitBlameArgs(path="src/app/main.py", start_line=12, end_line=20))


def test_git_read_file_reads_code_as_it_ran(repo: Repo) -> None:
    old = repo.git_read_file(GitReadArgs(ref="HEAD~2", path="src/app/main.py"))
    assert "handle_timeout" not in old.content and old.total_lines == 5
    assert old.commit == repo.git_log(GitLogArgs()).commits[2].commit
    with pytest.raises(RepoError, match="binary"):
        repo.git_read_file(GitReadArgs(ref="HEAD", path="bin.dat"))
    with pytest.raises(RepoError, match="private key"):
        repo.git_read_file(GitReadArgs(ref="HEAD", path="config.txt"))
    with pytest.raises(RepoError, match="secret"):
        repo.git_read_file(GitReadArgs(ref="HEAD", path=".env"))
    with pytest.raises(RepoError, match="git cat-file failed"):
        repo.git_read_file(GitReadArgs(ref="HEAD~2", path="src/app/nope.py"))


def calls_with_ref(repo: Repo, ref: str) -> list:
    return [
        lambda: repo.git_log(GitLogArgs(ref_range=ref)),
        lambda: repo.git_log(GitLogArgs(ref_range=f"HEAD..{ref}")),
        lambda: repo.git_show(GitShowArgs(ref=ref)),
        lambda: repo.git_diff(GitDiffArgs(from_ref="HEAD", to_ref=ref)),
        lambda: repo.git_diff(GitDiffArgs(from_ref=ref, to_ref="HEAD")),
        lambda: repo.git_blame(GitBlameArgs(path="README.md", start_line=1, end_line=1, ref=ref)),
        lambda: repo.git_read_file(GitReadArgs(ref=ref, path="README.md")),
    ]


def calls_with_path(repo: Repo, path: str) -> list:
    return [
        lambda: repo.git_log(GitLogArgs(path=path)),
        lambda: repo.git_show(GitShowArgs(ref="HEAD", path=path, include_patch=True)),
        lambda: repo.git_diff(GitDiffArgs(from_ref="HEAD~2", to_ref="HEAD", path=path, stat_only=False)),
        lambda: repo.git_blame(GitBlameArgs(path=path, start_line=1, end_line=1)),
        lambda: repo.git_blame(GitBlameArgs(path=path, start_line=1, end_line=1, ref="HEAD")),
        lambda: repo.git_read_file(GitReadArgs(ref="HEAD", path=path)),
    ]


def test_hostile_refs_are_refused_and_have_no_effect(repo: Repo, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    tmp_pwned_before = Path("/tmp/pwned").exists()
    for ref in [*HOSTILE_REFS, f"--output={marker}"]:
        for call in calls_with_ref(repo, ref):
            with pytest.raises(RepoError, match="not an accepted ref"):
                call()
    assert not marker.exists() and Path("/tmp/pwned").exists() == tmp_pwned_before
    with pytest.raises(RepoError, match="does not name a commit"):
        repo.git_show(GitShowArgs(ref="no-such-branch"))


def test_hostile_and_secret_paths_are_refused_by_git_tools(repo: Repo) -> None:
    for path in [*HOSTILE_PATHS, ".env", "id_rsa", ".git/config", "config.txt"]:
        for call in calls_with_path(repo, path):
            with pytest.raises(
                RepoError, match="outside the repository root|NUL|secret|private key|excluded"
            ):
                call()


def test_git_ignores_a_hostile_environment(
    repo: Repo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_WORK_TREE", str(tmp_path))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "index"))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'core.pager'='touch pwned'")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "diff.external")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", f"touch {tmp_path / 'pwned'}")
    assert len(repo.git_log(GitLogArgs()).commits) == 3
    assert "+retry_limit" in (repo.git_show(GitShowArgs(ref="HEAD", include_patch=True)).patch or "")
    assert not (tmp_path / "pwned").exists()
    env = _subprocess_env()
    assert not {k for k in env if k.startswith("GIT_")} - {
        "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL", "GIT_TERMINAL_PROMPT", "GIT_OPTIONAL_LOCKS", "GIT_PAGER"
    }  # fmt: skip
    assert (
        env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_TERMINAL_PROMPT"] == "0" and env["HOME"] == os.devnull
    )


def test_only_read_only_git_subcommands_can_run(repo: Repo) -> None:
    for subcommand in ["push", "config", "checkout", "reset", "gc", "fetch", "-c", "--exec-path=/tmp"]:
        with pytest.raises(ValueError, match="not allowed"):
            repo._git(subcommand)


def test_repository_config_cannot_make_git_run_programs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    root = tmp_path / "trap"
    root.mkdir()
    git(root, "init", "-q")
    write(root, ".gitattributes", "*.py diff=trap\n")
    write(root, "a.py", "one\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one")
    write(root, "a.py", "one\ntwo\n")
    git(root, "commit", "-q", "-am", "two")
    write(root, "a.py", "one\ntwo\nthree\n")  # uncommitted, so diffs touch the working tree
    for key, value in [
        ("diff.external", f"touch {marker}"),
        ("diff.trap.textconv", f"touch {marker}; cat"),
        ("core.fsmonitor", f"touch {marker}"),
        ("core.pager", f"touch {marker}; cat"),
        ("log.showSignature", "true"),
        ("gpg.program", f"touch {marker}"),
    ]:
        git(root, "config", key, value)
    repo = Repo.open(root)
    repo.view_repo_tree(TreeArgs())
    repo.grep_files(GrepArgs(regex_pattern="two"))
    repo.git_log(GitLogArgs(pickaxe_regex="two"))
    assert "+two" in (repo.git_show(GitShowArgs(ref="HEAD", include_patch=True)).patch or "")
    repo.git_diff(GitDiffArgs(from_ref="HEAD~1", to_ref="HEAD", stat_only=False))
    assert [line.text for line in repo.git_blame(GitBlameArgs(path="a.py", start_line=1, end_line=3)).lines] == [
        "one", "two", "three"
    ]  # fmt: skip
    repo.git_read_file(GitReadArgs(ref="HEAD", path="a.py"))
    assert not marker.exists()


def test_git_commands_have_a_deadline(repo_dir: Path, tmp_path: Path) -> None:
    slow_git = write(tmp_path, "git", f"#!/bin/sh\nexec {sys.executable} -c 'import time; time.sleep(30)'\n")
    slow_git.chmod(0o755)
    repo = Repo.open(repo_dir, timeout_seconds=0.5)
    repo._git_exe = str(slow_git)
    started = time.monotonic()
    with pytest.raises(RepoError, match="timed out after 0.5 s"):
        repo.git_log(GitLogArgs())
    assert time.monotonic() - started < 10


def test_root_below_the_git_top_level_is_confined_to_its_subtree(repo_dir: Path) -> None:
    repo = Repo.open(repo_dir / "src")
    assert repo.is_git
    assert [f.path for f in repo.glob_files(GlobArgs(pattern="*.py")).files] == [
        "app/long.py", "app/main.py", "app/util.py"
    ]  # fmt: skip
    assert len(repo.git_log(GitLogArgs()).commits) == 3
    assert "handle_timeout" not in repo.git_read_file(GitReadArgs(ref="HEAD~2", path="app/main.py")).content
    first = repo.git_show(GitShowArgs(ref="HEAD~2"))
    assert [f.path for f in first.files] == ["app/long.py", "app/main.py", "app/util.py"]
    assert repo.git_blame(GitBlameArgs(path="app/util.py", start_line=1, end_line=1)).lines[0].line == 1
    with pytest.raises(RepoError, match="outside the repository root"):
        repo.read_file(ReadArgs(path="../README.md"))


def test_git_blame_parses_sha256_repositories(tmp_path: Path) -> None:
    try:
        git(tmp_path, "init", "-q", "--object-format=sha256")
    except subprocess.CalledProcessError:
        pytest.skip("this git cannot create SHA-256 repositories")
    write(tmp_path, "a.py", "x = 1\ny = 2\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "sha256 commit")
    repo = Repo.open(tmp_path)
    [commit] = repo.git_log(GitLogArgs()).commits
    blame = repo.git_blame(GitBlameArgs(path="a.py", start_line=1, end_line=2, ref="HEAD"))
    assert [(line.line, line.commit, line.text) for line in blame.lines] == [
        (1, commit.commit, "x = 1"), (2, commit.commit, "y = 2")
    ]  # fmt: skip
    assert blame.commits[commit.commit].summary == "sha256 commit"


# -- the engine's entry point ------------------------------------------------------------------


def test_tool_spec_run_turns_every_failure_into_a_repo_error(repo: Repo) -> None:
    specs = {spec.name: spec for spec in tool_specs(repo)}
    assert specs["read_file"].run('{"path": "README.md", "limit": 1}').content == "     1\t# Agent"
    assert specs["grep_files"].run({"regex_pattern": "def main"}).matches[0].line == 4
    cases = [
        (
            "read_file",
            '{"path": "README.md", "limit": 5000}',
            "limit: Input should be less than or equal to 2000",
        ),
        ("read_file", '{"path": "README.md", "mode": "w"}', "mode: Extra inputs are not permitted"),
        ("read_file", "{not json", "invalid arguments for read_file"),
        ("grep_files", "{}", "regex_pattern: Field required"),
        ("git_log", '{"pickaxe_string": "a", "pickaxe_regex": "b"}', "not both"),
        (
            "git_blame",
            '{"path": "README.md", "start_line": 5, "end_line": 1}',
            "end_line must be >= start_line",
        ),
        ("read_file", '{"path": "../../etc/passwd"}', "outside the repository root"),
    ]
    for name, arguments, message in cases:
        with pytest.raises(RepoError, match=message):
            specs[name].run(arguments)
    error = pytest.raises(RepoError, specs["git_show"].run, {"ref": "-p"}).value
    assert "Traceback" not in str(error) and json.dumps(str(error))
