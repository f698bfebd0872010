"""Model-written markdown on the report page: citations become links to the span, and whatever the
model copied from hostile traces stays text."""

from __future__ import annotations

from halo_rlm.web.markdown import citations, render


def test_citations_link_to_the_trace_at_the_span() -> None:
    html = render("See [span:ab12:cd34], `[trace:ff00]` and [trace:aa].\n\n| a |\n|---|\n| [span:x1:y2] |")
    assert '<a class="cite" href="/traces/ab12?span=cd34">[span:ab12:cd34]</a>' in html
    assert '<a class="cite" href="/traces/ff00">[trace:ff00]</a>' in html
    assert '<a class="cite" href="/traces/x1?span=y2">' in html
    assert citations("[span:a:b] [trace:c] [span:a:b]") == [("a", "b"), ("c", None)]
    assert "<code>[trace:not a tag]</code>" in render("`[trace:not a tag]`")


def test_hostile_markdown_stays_text() -> None:
    html = render(
        "<script>alert(1)</script> <img src=x onerror=alert(1)> [x](javascript:alert(1)) "
        "[y](vbscript:x) [z](data:text/html,<script>alert(1)</script>) <svg onload=alert(1)>"
        " [span:<script>:x] [ok](https://example.com)"
    )
    assert "<script" not in html and "<img" not in html and "<svg" not in html
    assert 'href="javascript:' not in html and 'href="vbscript:' not in html and 'href="data:' not in html
    assert "&lt;script&gt;" in html
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow" target="_blank">ok</a>' in html
