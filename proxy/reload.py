"""Configuration reload on SIGHUP: re-read ``proxy.yaml`` and its secret and certificate files, apply live.

What applies at once: ``routes`` (with their secrets, keys and policies), ``unmatched``, ``trusted_proxies``,
``body_size_limit``, ``drain_timeout``, ``log_level`` and ``tls`` (certificate files are re-read: a rotated
certificate is served to the next handshake). The new route table is built off the event loop, then swapped in
one assignment; a request keeps the route (and secrets) it was matched with, and no connection is dropped.

What needs a restart (:data:`proxy.config.schema.RESTART_KEYS`): the listen and admin sockets, the store connection and the backend
connection pool. A reload that changes one applies everything else, keeps the running value, logs the keys and
sets ``wxgate_config_restart_required`` to 1.

An invalid file (or one whose key files cannot be read) is rejected as a whole: the running configuration stays,
the log line lists every problem with its key path, and ``wxgate_config_reloads_total{result="failure"}`` counts
it (``wxgate_config_last_reload_successful`` drops to 0 until a reload succeeds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from proxy.config import Config, ConfigError, load_config
from proxy.config.schema import RESTART_KEYS
from proxy.observability.metrics import Metrics
from proxy.pipeline.routes import RouteTable, build_route
from proxy.stores.base import Store
from proxy.tls import ServerCertificate, server_certificate

logger = logging.getLogger("wxgate")


@dataclass(frozen=True, slots=True)
class Loaded:
    """Everything a configuration needs that is built from files, ready to swap in."""

    config: Config
    table: RouteTable
    tls: ServerCertificate | None
    restart_pending: tuple[str, ...] = ()  # restart-only keys whose new value waits for a restart


def load_tls(config: Config) -> ServerCertificate | None:
    if config.tls is None:
        return None
    try:
        return server_certificate(config.tls.certified_key, config.tls.min_version)
    except ValueError as e:
        raise ConfigError(f"tls: {e}") from None


def build(config: Config) -> Loaded:
    """Build the route table (protocols with their keys) and the TLS context of ``config`` (blocking: reads key
    and certificate files). The one place these are made: for ``wxgate run``, ``wxgate check`` and a reload."""
    routes, problems = [], []
    for route in config.routes:  # every broken route is reported, not only the first
        try:
            routes.append(build_route(config, route))
        except ConfigError as e:
            problems.append(str(e))
    try:
        tls = load_tls(config)
    except ConfigError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    return Loaded(config, RouteTable(routes), tls)


def prepare(config: Config, environ: Mapping[str, str]) -> tuple[Loaded, TracerProvider | None, Store]:
    """Everything ``wxgate run`` builds from its configuration and ``OTEL_*`` environment before it opens a
    socket or the store: :func:`build`, the tracer provider and the (unopened) store. ``wxgate check`` builds
    the same and drops it; any problem is a :class:`ConfigError`."""
    from proxy.observability.otel_env import provider_from_env
    from proxy.stores import open_store

    loaded = build(config)
    try:
        store = open_store(config.store)
    except ValueError as e:
        raise ConfigError(f"store: {e}") from None
    return loaded, provider_from_env(environ), store


def merge(running: Config, new: Config) -> tuple[Config, tuple[str, ...]]:
    """``new`` with the restart-only keys kept at their running values, and which of those differ."""
    pending = tuple(k for k in RESTART_KEYS if getattr(running, k) != getattr(new, k))
    if not pending:
        return new, ()
    return new.model_copy(update={k: getattr(running, k) for k in pending}), pending


def load_for_reload(path: Path, environ: Mapping[str, str], running: Config) -> Loaded:
    config, pending = merge(running, load_config(path, environ))
    loaded = build(config)
    return Loaded(loaded.config, loaded.table, loaded.tls, pending)


class Reloader:
    """Runs one reload at a time; ``apply`` swaps a :class:`Loaded` in (it runs on the event loop, no awaits)."""

    def __init__(
        self,
        path: Path,
        environ: Mapping[str, str],
        metrics: Metrics,
        running: Callable[[], Config],
        apply: Callable[[Loaded], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path, self.environ, self.metrics = path, environ, metrics
        self.running, self.apply, self.clock = running, apply, clock
        self._lock = asyncio.Lock()

    async def reload(self) -> bool:
        async with self._lock:
            try:
                loaded = await asyncio.to_thread(load_for_reload, self.path, self.environ, self.running())
            except ConfigError as e:
                return self._rejected(str(e))
            except Exception as e:
                logger.exception("configuration reload failed unexpectedly")
                return self._rejected(f"{type(e).__name__}: {e}")
            self.apply(loaded)
            self.metrics.config_reloaded(True, self.clock(), restart_required=bool(loaded.restart_pending))
            logger.info(
                "configuration reloaded from %s: %d routes (%s)",
                self.path,
                len(loaded.table.routes),
                ", ".join(r.name for r in loaded.table.routes) or "none",
            )
            if loaded.restart_pending:
                logger.warning(
                    "configuration reloaded, but %s changed and only take%s effect after a restart; "
                    "the running value%s kept until then",
                    ", ".join(loaded.restart_pending),
                    "s" if len(loaded.restart_pending) == 1 else "",
                    " is" if len(loaded.restart_pending) == 1 else "s are",
                )
            return True

    def _rejected(self, problems: str) -> bool:
        self.metrics.config_reloaded(False, self.clock())
        logger.error(
            "configuration reload rejected, the running configuration is kept; fix %s and send SIGHUP again:\n%s",
            self.path,
            problems,
        )
        return False
