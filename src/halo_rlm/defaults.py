"""Names and defaults the command line shows before anything heavy loads (`halo --help` must start
instantly, so these live in a leaf that imports nothing). Each is defined here once."""

from typing import Literal

__all__ = [
    "COLLECT_PORT",
    "DEFAULT_MODEL",
    "DEFAULT_PROMPT",
    "LANGFUSE_LEGACY_PAGE",
    "LANGFUSE_PAGE",
    "PHOENIX_PAGE",
    "ReasoningEffort",
    "SortKey",
]

DEFAULT_MODEL = "gpt-5.4-mini"
DEFAULT_PROMPT = "Diagnose the systemic failures in these agent traces and recommend concrete fixes."
COLLECT_PORT = 4318  # OTLP/HTTP's standard port
# The largest pages the trace sources' APIs serve (Langfuse v4+'s v2 API, its older API, Phoenix).
LANGFUSE_PAGE, LANGFUSE_LEGACY_PAGE, PHOENIX_PAGE = 1000, 100, 1000

SortKey = Literal["start", "duration", "cost", "spans", "tokens", "errors"]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
