"""A tracer provider from the standard ``OTEL_*`` environment variables.

Off by default: without ``OTEL_TRACES_EXPORTER=otlp`` (or ``console``), or an ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` with ``OTEL_TRACES_EXPORTER`` unset, :func:`provider_from_env` returns
``None``; the composition root then builds no :class:`~proxy.observability.tracing.Tracing`, adds no tracing
addon, and no span object is created on the hot path. Only OTLP over HTTP/protobuf is shipped
(``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``). The environment is an injected mapping (tests never touch
``os.environ``) and the provider is passed in, never installed as the global one.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.semconv.attributes import service_attributes
from opentelemetry.util.re import parse_env_headers
from opentelemetry.util.types import AttributeValue

from proxy import __version__
from proxy.config import ConfigError
from proxy.observability.tracing import STORE_SPAN_MIN


class TracingConfigError(ConfigError):
    """An ``OTEL_*`` variable wxgate cannot honour; the message names it and says what to set instead."""


# -- provider from the environment -------------------------------------------------------------------------


def provider_from_env(environ: Mapping[str, str]) -> TracerProvider | None:
    """A provider exporting as the ``OTEL_*`` variables say, or ``None`` when tracing is off (the default)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = _exporter_names(environ)
    if not exporters:
        return None
    store_span_min_from_env(environ)  # checked here, so `wxgate check` reports it
    provider = TracerProvider(
        sampler=sampler_from_env(environ),
        resource=resource_from_env(environ),
        shutdown_on_exit=False,
        span_limits=span_limits_from_env(environ),
    )
    for name in exporters:
        provider.add_span_processor(
            BatchSpanProcessor(
                _exporter(name, environ),
                max_queue_size=_int(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048),
                schedule_delay_millis=_int(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000),
                max_export_batch_size=_int(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
                export_timeout_millis=_int(environ, "OTEL_BSP_EXPORT_TIMEOUT", 30000),
            )
        )
    return provider


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip() for n in raw.split(",") if n.strip() and n.strip() != "none"]
    for n in names:
        if n not in ("otlp", "console"):
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={n!r} is not supported; use otlp, console or none"
            )
    return names


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    protocol = _signal(environ, "PROTOCOL") or "http/protobuf"
    if protocol != "http/protobuf":
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: wxgate ships the OTLP/HTTP exporter; "
            "set http/protobuf and point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's port 4318"
        )
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint:
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
        endpoint = base.rstrip("/") + "/v1/traces"
    compression = _signal(environ, "COMPRESSION") or "none"
    if compression not in ("gzip", "none"):
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_COMPRESSION={compression!r}: use gzip or none")
    timeout_ms = _signal(environ, "TIMEOUT")
    return OTLPSpanExporter(
        endpoint=endpoint,
        headers=dict(parse_env_headers(_signal(environ, "HEADERS"), liberal=True)),
        timeout=_float(timeout_ms, "OTEL_EXPORTER_OTLP_TIMEOUT") / 1000 if timeout_ms else 10.0,
        compression=Compression.Gzip if compression == "gzip" else Compression.NoCompression,
        certificate_file=_signal(environ, "CERTIFICATE") or None,
        client_key_file=_signal(environ, "CLIENT_KEY") or None,
        client_certificate_file=_signal(environ, "CLIENT_CERTIFICATE") or None,
    )


def _signal(environ: Mapping[str, str], suffix: str) -> str:
    """The traces-specific variable, else the generic one (OTLP exporter spec)."""
    return (
        environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{suffix}")
        or environ.get(f"OTEL_EXPORTER_OTLP_{suffix}")
        or ""
    ).strip()


def sampler_from_env(environ: Mapping[str, str]) -> sampling.Sampler:
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    ratio = _float(arg, "OTEL_TRACES_SAMPLER_ARG") if arg else 1.0
    samplers: dict[str, sampling.Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "parentbased_always_on": sampling.DEFAULT_ON,
        "parentbased_always_off": sampling.DEFAULT_OFF,
    }
    if name in samplers:
        return samplers[name]
    if name == "traceidratio":
        return sampling.TraceIdRatioBased(ratio)
    if name == "parentbased_traceidratio":
        return sampling.ParentBasedTraceIdRatio(ratio)
    raise TracingConfigError(
        f"OTEL_TRACES_SAMPLER={name!r} is not supported; use one of {', '.join(samplers)}"
    )


STORE_SPAN_MIN_VAR = "WXGATE_STORE_SPAN_MIN_MS"


def store_span_min_from_env(environ: Mapping[str, str]) -> float:
    """Seconds a successful store call must take to get a span of its own (``WXGATE_STORE_SPAN_MIN_MS``,
    default 50 ms; 0: every store call of a traced request gets one)."""
    raw = environ.get(STORE_SPAN_MIN_VAR, "").strip()
    if not raw:
        return STORE_SPAN_MIN
    value = _float(raw, STORE_SPAN_MIN_VAR)
    if not 0 <= value <= 60_000:
        raise TracingConfigError(f"{STORE_SPAN_MIN_VAR}={raw!r}: expected milliseconds from 0 to 60000")
    return value / 1000


def span_limits_from_env(environ: Mapping[str, str]) -> SpanLimits:
    """Attribute value length limits from the injected environment (the SDK would read ``os.environ``)."""
    length = _limit(environ, "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    span_length = _limit(environ, "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    return SpanLimits(
        max_attribute_length=length,
        max_span_attribute_length=span_length if span_length != SpanLimits.UNSET else length,
    )


def _limit(environ: Mapping[str, str], name: str) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return SpanLimits.UNSET  # no limit (the specification's default)
    value = int(_float(raw, name))
    if value < 0:
        raise TracingConfigError(f"{name}={raw!r}: expected a length of 0 or more")
    return value


def resource_from_env(environ: Mapping[str, str]) -> Resource:
    attrs: dict[str, AttributeValue] = {
        service_attributes.SERVICE_NAME: "wxgate",
        service_attributes.SERVICE_VERSION: __version__,
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
    }
    for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attrs[key.strip()] = unquote(value.strip())
    if environ.get("OTEL_SERVICE_NAME", "").strip():
        attrs[service_attributes.SERVICE_NAME] = environ["OTEL_SERVICE_NAME"].strip()
    return Resource(attrs)


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    return int(_float(raw, name)) if raw else default


def _float(raw: str, name: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise TracingConfigError(f"{name}={raw!r} is not a number") from None
