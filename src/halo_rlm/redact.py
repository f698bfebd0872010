"""Credentials out of text: what HALO scrubs from its own telemetry, from everything it sends to a model,
and from every report it writes (unless told to keep them: `--keep-secrets`).

Two rules: the whole value of a secret-looking key (`api_key`, `authorization`, `password`...), and
credential-shaped text anywhere (provider keys, bearer tokens, AWS keys, `password=...`, user:password@
in URLs). A leaf: imports nothing of HALO's.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

__all__ = ["REDACTED", "SECRETS_IN_TEXT", "SECRET_KEY", "scrub", "scrub_text"]

REDACTED = "[REDACTED]"
# Keys (attribute names, JSON keys) whose whole value is a credential.
SECRET_KEY = re.compile(
    r"(?i)(api[-_.]?key|authorization|(auth|access|refresh|id|session)[-_.]?token|bearer|secret|passw(or)?d|"
    r"cookie|credential|private[-_.]?key)"
)
# Credentials inside text, and what replaces them.
SECRETS_IN_TEXT = [
    (
        re.compile(r"(?i)\bbearer\s+(?=[a-z._~+/-]*\d)[a-z0-9._~+/-]{8,}=*"),
        "Bearer " + REDACTED,
    ),  # has a digit
    (
        re.compile(
            r"(?i)\bsk-[a-z0-9_-]{16,}"  # OpenAI and Anthropic keys (sk-..., sk-proj-..., sk-ant-...)
            r"|\b(?:ghp|gho|ghs|ghu|github_pat)_[a-z0-9_]{20,}"
            r"|\bxox[abprs]-[a-z0-9-]{10,}"
            r"|\bAIza[0-9a-z_-]{35}"
            r"|(?-i:\bAKIA[0-9A-Z]{16}\b)"
        ),
        REDACTED,
    ),
    # `api_key=...`, `"password": "..."`, `?access_token=...`, `Authorization: Basic ...`
    (
        re.compile(
            r"(?i)(\b(?:api[-_]?key|access[-_]?token|auth[-_]?token|client[-_]?secret|secret|password|"
            r"authorization)[\"']?\s*[:=]\s*[\"']?(?:(?:basic|bearer|token)\s+)?)[^\s\"',;&]{4,}"
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(://)[^/\s:@]+:[^/\s@]+@"), r"\1" + REDACTED + "@"),  # user:password@ in URLs
]


CACHED_CHARS = 65_536  # texts up to this long are memoised


def scrub_text(text: str) -> str:
    """`text` with anything that looks like a credential replaced by `[REDACTED]`."""
    return _scrub_recurring(text) if len(text) <= CACHED_CHARS else _scrub(text)


def _scrub(text: str) -> str:
    for pattern, replacement in SECRETS_IN_TEXT:
        text = pattern.sub(replacement, text)
    return text


# An agent resends its whole conversation with every model call, so most texts recur.
_scrub_recurring = lru_cache(maxsize=4_096)(_scrub)


def scrub(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with credentials redacted: the whole value of a
    secret-looking key, and credential-shaped text in every string (keys included)."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {
            scrub_text(k) if isinstance(k, str) else k: (
                REDACTED if isinstance(k, str) and SECRET_KEY.search(k) and isinstance(v, str) else scrub(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value
