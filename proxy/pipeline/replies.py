"""Setting the answer on a flow: the one place where a reply becomes an HTTP response."""

from __future__ import annotations

import base64
import json
import logging
import time

from mitmproxy import http
from mitmproxy.net.http import status_codes

from proxy.pipeline.exchange import Exchange
from proxy.protocols.base import Reply

logger = logging.getLogger("wxgate")


def respond(flow: http.HTTPFlow, ex: Exchange, reply: Reply) -> None:
    """Answer ``flow`` with the plaintext ``reply``; the envelope addon seals it on the way out."""
    ex.reply = reply
    ex.outcome.reply_kind = reply.kind
    if reply.normalized:
        ex.outcome.normalized = reply.normalized
    _set_response(flow, reply)


def seal(flow: http.HTTPFlow, ex: Exchange) -> None:
    """Replace the plaintext reply on ``flow`` with its wire form (safe-mode re-encryption)."""
    if ex.reply is None or ex.route is None or ex.verified is None or ex.reply.kind not in ("passive", "ack"):
        return
    try:
        wire = ex.route.protocol.seal(ex.reply, ex.verified)
    except Exception:
        # Our own keys failed us: a plaintext passive reply would be refused by a safe-mode sender anyway,
        # so answer with the protocol's plain acknowledgement.
        logger.exception("sealing the reply failed on route %s", ex.route.name)
        wire = ex.route.protocol.success_reply(ex.verified)
        ex.outcome.normalized = "seal_error"
    if wire is not ex.reply:
        _set_response(flow, wire)


def _set_response(flow: http.HTTPFlow, wire: Reply) -> None:
    # Not Response.make: it converts a header dict field by field and re-encodes the body through the
    # content setter; a reply is a finished body with a known length (~10 µs a request).
    fields = [(k.encode(), v.encode()) for k, v in wire.headers]
    if wire.content_type and not any(k.lower() == "content-type" for k, _ in wire.headers):
        fields.insert(0, (b"content-type", wire.content_type.encode()))
    fields.append((b"content-length", str(len(wire.body)).encode()))
    now = time.time()
    reason = status_codes.RESPONSES.get(wire.status, "").encode()
    flow.response = http.Response(
        b"HTTP/1.1", wire.status, reason, http.Headers(fields), wire.body, None, now, now
    )


def reject(flow: http.HTTPFlow, ex: Exchange, reason: str, status: int) -> None:
    """Refuse ``flow`` in the protocol's failure form (or a bare status when no route matched)."""
    ex.outcome.verdict = "rejected"
    ex.outcome.reason = reason
    if ex.route is None:
        respond(flow, ex, Reply(status, b"", "text/plain; charset=utf-8", "reject"))
    else:
        respond(flow, ex, ex.route.protocol.failure_reply(reason, status))


def encode_reply(reply: Reply) -> bytes:
    """The cached form of a plaintext reply (what the dedup store keeps for replays)."""
    return json.dumps(
        {
            "s": reply.status,
            "c": reply.content_type,
            "k": reply.kind,
            "b": base64.b64encode(reply.body).decode(),
            "h": [list(h) for h in reply.headers],
        },
        separators=(",", ":"),
    ).encode()


def decode_reply(blob: bytes) -> Reply:
    d = json.loads(blob)
    return Reply(
        int(d["s"]),
        base64.b64decode(d["b"]),
        str(d["c"]),
        d["k"],
        headers=tuple((str(k), str(v)) for k, v in d["h"]),
    )
