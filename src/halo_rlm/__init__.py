"""HALO: find out why AI agents fail in production, from their OpenTelemetry traces."""

__version__ = "0.1.0"
