"""HALO: find out why AI agents fail in production, from their OpenTelemetry traces."""

from halo_rlm.models import TraceFilters
from halo_rlm.store import StoreError, TraceStore

__version__ = "0.1.0"
__all__ = ["StoreError", "TraceFilters", "TraceStore", "__version__"]
