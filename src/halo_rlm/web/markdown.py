"""Model-written markdown as safe HTML, with `[trace:…]` and `[span:…:…]` citations as links that open
the trace at that span.

The text is the model's, and the model read untrusted traces: raw HTML is escaped (markdown-it's
`html` option is off), links may not use `javascript:`, `vbscript:`, `file:` or non-image `data:`
URLs (markdown-it's link validation), and links leaving the app open without a referrer. The page's
Content-Security-Policy stops remote images and any script besides the app's own.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from markupsafe import Markup, escape

ID = r"[0-9A-Za-z_.-]{1,128}"
CITATION = re.compile(rf"\[(?:trace:(?P<trace>{ID})|span:(?P<span_trace>{ID}):(?P<span>{ID}))\]")


def citation_url(trace_id: str, span_id: str | None = None) -> str:
    url = f"/traces/{quote(trace_id, safe='')}"
    return f"{url}?span={quote(span_id, safe='')}" if span_id else url


def _citation_token(state: Any, match: re.Match[str]) -> Token:
    token = state.push("citation", "", 0) if isinstance(state, StateInline) else Token("citation", "", 0)
    token.meta = {"trace": match["trace"] or match["span_trace"], "span": match["span"], "text": match[0]}
    return token


def _inline_citation(state: StateInline, silent: bool) -> bool:
    if state.src[state.pos] != "[":
        return False
    match = CITATION.match(state.src, state.pos)
    if match is None:
        return False
    if not silent:
        _citation_token(state, match)
    state.pos = match.end()
    return True


def _code_citations(state: StateCore) -> None:
    """`[span:…]` written as inline code is a citation too (models often quote their tags)."""
    for block in state.tokens:
        for i, token in enumerate(block.children or []):
            if token.type == "code_inline" and (match := CITATION.fullmatch(token.content)):
                block.children[i] = _citation_token(state, match)  # type: ignore[index]


def _render_citation(
    self: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    meta = tokens[idx].meta
    return str(
        Markup('<a class="cite" href="{}">{}</a>').format(
            citation_url(meta["trace"], meta["span"]), meta["text"]
        )
    )


def _render_link_open(
    self: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    token = tokens[idx]
    href = str(token.attrGet("href") or "")
    if not href.startswith(("/", "#")):
        token.attrSet("rel", "noopener noreferrer nofollow")
        token.attrSet("target", "_blank")
    return self.renderToken(tokens, idx, options, env)


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.inline.ruler.before("link", "citation", _inline_citation)
    md.core.ruler.push("code_citations", _code_citations)
    md.add_render_rule("citation", _render_citation)
    md.add_render_rule("link_open", _render_link_open)
    return md


_MD = _parser()


def render(text: str | None) -> Markup:
    """HTML for a page (already safe: markdown-it escapes everything it does not produce itself)."""
    return Markup(_MD.render(text or ""))


def citations(text: str | None) -> list[tuple[str, str | None]]:
    """The (trace id, span id) pairs a text cites, in order, once each."""
    found = [(m["trace"] or m["span_trace"], m["span"]) for m in CITATION.finditer(text or "")]
    return list(dict.fromkeys(found))


__all__ = ["CITATION", "citation_url", "citations", "escape", "render"]
