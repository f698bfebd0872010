"""HALO: find out why AI agents fail in production, from their OpenTelemetry traces.

The public API. Names load on first use, so `import halo_rlm` (and `halo --version`) stays instant:

    from halo_rlm import TraceStore, TraceFilters      # the trace store
    from halo_rlm.engine import run_engine, EngineConfig  # the LLM analysis
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from halo_rlm.__about__ import __version__

if TYPE_CHECKING:
    from halo_rlm.detect import Thresholds, analyze
    from halo_rlm.report import Finding, Report
    from halo_rlm.store import StoreError, TraceFilters, TraceStore

__all__ = [
    "Finding",
    "Report",
    "StoreError",
    "Thresholds",
    "TraceFilters",
    "TraceStore",
    "__version__",
    "analyze",
]

_EXPORTS = {
    "Finding": "halo_rlm.report",
    "Report": "halo_rlm.report",
    "StoreError": "halo_rlm.store",
    "Thresholds": "halo_rlm.detect",
    "TraceFilters": "halo_rlm.store",
    "TraceStore": "halo_rlm.store",
    "analyze": "halo_rlm.detect",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'halo_rlm' has no attribute {name!r}")
