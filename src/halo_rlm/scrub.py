"""Credentials out of trace text: the one scrubber HALO uses wherever text leaves it.

`scrub_text` replaces what looks like a credential (API keys, bearer tokens, AWS keys, passwords in
`key=value` text, `user:password@` in URLs) with `[REDACTED]`; `scrub_attributes` also blanks whole
values of secret-looking keys (`api_key`, `authorization`, `*_token`, `password`, `cookie`, ...);
`scrub_span` does both to a flat span (name, status message, attributes, resource, events, links).
`halo_rlm.tracing` scrubs HALO's own and an agent's spans with it, `halo collect` the spans it
receives.

Running the patterns over every string of every span is slow, so `lines_to_scrub` first asks, for a
batch of JSON lines at once, which contain any of the words the patterns need (with RE2, through
pyarrow): one search over all of them, and one per line only when that finds a word. Lines it clears
are left as they are; the others are scrubbed properly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

REDACTED = "[REDACTED]"
# Attribute keys whose whole value is a credential.
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
# A superset of the above for `lines_to_scrub` (RE2 syntax): every text a pattern changes, and every
# secret key, contains one of these words. Python's case-insensitive matching also takes "İ" and "ı"
# for "i" (RE2 folds "ſ" and the Kelvin sign itself), so a line with either is always scrubbed.
_HINTS = (
    r"(?i)bearer|sk-|gh[opsu]_|github_pat_|xox[abprs]-|aiza|akia|api[-_.]?key|"
    r"(?:auth|access|refresh|id|session)[-_.]?token|secret|passw|authorization|cookie|credential|"
    r"private[-_.]?key|://[^/\s@]*@|[İı]"
)
# The same over bytes that are not all text (a character class would match single bytes of them).
_BYTE_HINTS = _HINTS.removesuffix("|[İı]") + "|İ|ı|ſ|\u212a"  # the last: the Kelvin sign


def scrub_text(text: str) -> str:
    """`text` with anything that looks like a credential replaced by `[REDACTED]`."""
    for pattern, replacement in SECRETS_IN_TEXT:
        text = pattern.sub(replacement, text)
    return text


def scrub_attributes(
    attributes: Mapping[str, Any] | None, scrub: Callable[[str], str] = scrub_text
) -> dict[str, Any]:
    """Attributes with the values of secret-looking keys replaced whole and `scrub` applied to every
    other string, inside lists and nested mappings too."""
    return {
        key: REDACTED if SECRET_KEY.search(key) else _scrub_value(value, scrub)
        for key, value in (attributes or {}).items()
    }


def scrub_span(span: Mapping[str, Any], scrub: Callable[[str], str] = scrub_text) -> dict[str, Any]:
    """A flat span (`formats.spans.flat_span`'s shape) with credentials scrubbed from its name,
    status message, attributes, resource attributes, events and links."""
    out = dict(span)
    if isinstance(span.get("name"), str):
        out["name"] = scrub(span["name"])
    status = span.get("status")
    if isinstance(status, Mapping) and isinstance(status.get("message"), str):
        out["status"] = {**status, "message": scrub(status["message"])}
    if isinstance(span.get("attributes"), Mapping):
        out["attributes"] = scrub_attributes(span["attributes"], scrub)
    resource = span.get("resource")
    if isinstance(resource, Mapping) and isinstance(resource.get("attributes"), Mapping):
        out["resource"] = {**resource, "attributes": scrub_attributes(resource["attributes"], scrub)}
    for key in ("events", "links"):
        items = span.get(key)
        if isinstance(items, list):
            out[key] = [_scrub_value(item, scrub) if isinstance(item, Mapping) else item for item in items]
    return out


def lines_to_scrub(lines: Sequence[bytes]) -> list[int]:
    """Which of these UTF-8 lines (e.g. JSON spans) might hold something `scrub_span` would change:
    their indexes, a fast over-estimate made for all of them at once. The others need no scrubbing."""
    if not lines:
        return []
    import pyarrow as pa  # here: heavy, and only the collector needs it
    import pyarrow.compute as pc

    # Most batches hold no credential at all, and one search over all of them says so (a line's match
    # is a match in the joined text) in a third of the time of a search per line.
    try:
        joined = pa.array([b"\n".join(lines)], pa.large_binary()).cast(pa.large_string())
    except pa.ArrowInvalid:  # not UTF-8: scrub them all the slow way
        return list(range(len(lines)))
    if not pc.any(pc.match_substring_regex(joined, _HINTS)).as_py():
        return []
    texts = pa.array(lines, pa.large_binary()).cast(pa.large_string())
    return pc.indices_nonzero(pc.match_substring_regex(texts, _HINTS)).to_pylist()


def may_hold_secrets(data: bytes) -> bool:
    """Whether the UTF-8 texts held whole inside `data` (the strings of a protobuf message) might hold
    something `scrub_span` would change: a fast over-estimate, one search over the bytes (a third of
    a request's lines: no JSON keys, no resource repeated per span). Any such text contains one of
    `lines_to_scrub`'s words; the characters Python's case-insensitive matching takes for "s", "k"
    and "i" are searched for as themselves."""
    import pyarrow as pa  # here: heavy, and only the collector needs it
    import pyarrow.compute as pc

    return bool(pc.any(pc.match_substring_regex(pa.array([data], pa.large_binary()), _BYTE_HINTS)).as_py())


def _scrub_value(value: Any, scrub: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and SECRET_KEY.search(key) else _scrub_value(item, scrub)
            for key, item in value.items()
        }
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_scrub_value(item, scrub) for item in value]
    return value


__all__ = [
    "REDACTED",
    "SECRETS_IN_TEXT",
    "SECRET_KEY",
    "lines_to_scrub",
    "may_hold_secrets",
    "scrub_attributes",
    "scrub_span",
    "scrub_text",
]
