"""Names and defaults the command line shows before anything heavy loads (`halo --help` must start
instantly, so these live in a leaf that imports nothing). Each is defined here once."""

from pathlib import Path
from typing import Literal

__all__ = [
    "BATCH_BYTES",
    "COLLECT_PORT",
    "DEFAULT_MODEL",
    "DEFAULT_PROMPT",
    "EXAMPLE_TRACES",
    "LANGFUSE_LEGACY_PAGE",
    "LANGFUSE_PAGE",
    "MAX_LINE_BYTES",
    "PHOENIX_PAGE",
    "UI_PORT",
    "ReasoningEffort",
    "SortKey",
]

DEFAULT_MODEL = "gpt-5.4-mini"
DEFAULT_PROMPT = "Diagnose the systemic failures in these agent traces and recommend concrete fixes."
COLLECT_PORT = 4318  # OTLP/HTTP's standard port
UI_PORT = 8799  # halo ui (the original app's port)
EXAMPLE_TRACES = Path(__file__).parent / "examples" / "traces.jsonl.gz"  # simulated agents, planted failures
# The largest pages the trace sources' APIs serve (Langfuse v4+'s v2 API, its older API, Phoenix).
LANGFUSE_PAGE, LANGFUSE_LEGACY_PAGE, PHOENIX_PAGE = 1000, 100, 1000

# Files that cannot load in one statement are read in batches of BATCH_BYTES; a longer line is a reject.
BATCH_BYTES = 16 << 20
MAX_LINE_BYTES = 512 << 20

SortKey = Literal["start", "duration", "cost", "spans", "tokens", "errors"]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
