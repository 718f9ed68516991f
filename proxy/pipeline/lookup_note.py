"""What a notification's first claim files for ``wxgate lookup``: its trace id and its lookup aliases.

An operator knows a notification by an id (``MsgId``, ``out_trade_no``, ``FromUserName`` + ``CreateTime``…) that
the dedup key may not hold, so the claim that creates a dedup record also files it under each group of the
protocol's ``lookup_fields`` the message carries, hashed like the key (:func:`~proxy.pipeline.claims.store_key`):
ids never reach the store in clear. Costs one sha256 per alias and, in the same store call as the claim, one
small write each (only when the record is created).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from proxy.observability.tracing import hex_ids
from proxy.pipeline.claims import store_key
from proxy.protocols import idempotency
from proxy.protocols.base import Verified
from proxy.stores.base import Note

if TYPE_CHECKING:
    from proxy.pipeline.routes import RouteRuntime


def alias_key(route: str, pairs: Sequence[tuple[str, str]]) -> str:
    """The store key of the alias made of these field values on ``route`` (what ``wxgate lookup`` asks for)."""
    return store_key(route, idempotency.lookup_alias(pairs))


def lookup_aliases(route: RouteRuntime, message: Mapping[str, str]) -> tuple[str, ...]:
    """The store keys ``message`` is filed under on ``route``."""
    raw = idempotency.lookup_aliases(message, route.protocol.lookup_fields)
    return tuple(store_key(route.name, alias) for alias in raw)


def lookup_note(route: RouteRuntime, verified: Verified, span: Any) -> Note:
    """The note for ``store.claim``: ``span`` is the request's server span (``None`` without tracing)."""
    return Note(hex_ids(span)[0], lookup_aliases(route, verified.message))
