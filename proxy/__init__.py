"""wxgate: a sidecar proxy that verifies, deduplicates and answers WeChat callbacks."""

__version__ = "0.1.0"
