"""A notification's dedup key, as the store keeps it.

The raw key is the route's ``dedup.fields`` when the message has every one of them (JSON-encoded with their
names), else the digest of the whole authenticated message; without ``fields``, the protocol's recipe (a
documented unique id, else that digest: :mod:`proxy.protocols.idempotency`). The store, the backend
(``X-Wxgate-Dedup-Key``) and the logs only ever see it hashed and prefixed with the route (:func:`store_key`), so
``wxgate lookup`` rebuilds the same key from the ids an operator has.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from proxy.protocols import idempotency
from proxy.protocols.base import Verified

if TYPE_CHECKING:
    from proxy.pipeline.routes import RouteRuntime


def raw_key(route: RouteRuntime, verified: Verified) -> str | None:
    """The un-hashed key of a verified message on ``route``, or ``None`` if it cannot be deduplicated."""
    fields = route.config.dedup.fields
    if fields:
        return idempotency.fields_key(verified.message, fields) or idempotency.digest_key(verified)
    return route.protocol.dedup_key(verified)


def store_key(route: str, raw: str) -> str:
    """The form the store keeps: the route name and the first 128 bits of the raw key's SHA-256."""
    return f"{route}:{hashlib.sha256(raw.encode()).hexdigest()[:32]}"
