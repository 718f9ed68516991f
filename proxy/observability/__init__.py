"""What an operator sees: Prometheus metrics (:mod:`.metrics`), OpenTelemetry spans (:mod:`.tracing`, with the
``OTEL_*`` environment read by :mod:`.otel_env`), the JSON access log (:mod:`.logs`), health probes
(:mod:`.probes`), the store wrapped with spans and timings (:mod:`.instrumented_store`), the admin server
(:mod:`.admin`; :mod:`.worker_admin` for ``workers: N``) and the per-request record they all read
(:mod:`.outcome`).

The public surface is these modules (``from proxy.observability.metrics import Metrics``): the package re-exports
no names, so importing one module never loads the others. Never imports the pipeline, addons or
tools (tests/test_layout.py)."""

__all__ = [
    "admin",
    "instrumented_store",
    "logs",
    "metrics",
    "otel_env",
    "outcome",
    "probes",
    "tracing",
    "worker_admin",
]
