"""What an operator sees: Prometheus metrics (:mod:`.metrics`), OpenTelemetry spans (:mod:`.tracing`, with the
``OTEL_*`` environment read by :mod:`.otel_env`), the JSON access log (:mod:`.logs`), health probes
(:mod:`.probes`), the store wrapped with spans and timings (:mod:`.instrumented_store`) and the admin server
(:mod:`.admin`). Reads the per-request :class:`~.outcome.Outcome`; never imports the pipeline, addons or tools."""
