"""Standard Webhooks (standardwebhooks.com): ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``.

Signed content is ``{webhook-id}.{webhook-timestamp}.{raw body}``; the signature is base64(HMAC-SHA256) under the
secret, which is written ``whsec_<base64>`` (the prefix is stripped, the rest base64-decoded). The signature header
is a space-separated list of ``v<version>,<base64>``; any ``v1`` entry that matches passes (senders list several
while rotating secrets), other versions are ignored. The timestamp must be within the window both ways.

``webhook-id`` is the same on every retry of a message (that is what makes it the idempotency key), so it is the
dedup key, while the replay key is ``webhook-id`` + ``webhook-timestamp``: a sender signs each attempt anew, and a
replay key of the id alone would refuse every legitimate retry as a replay before dedup could answer it.

Replies: a backend 2xx passes through unchanged (any 2xx is success in the spec); wxgate's own acknowledgement is
200 with an empty body; rejection 401/400 with ``{"error":"invalid webhook"}`` whatever the reason; backend
failure 502.

Reasons: ``missing_header``, ``bad_signature``, timestamp reasons.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Sequence

from proxy.protocols.base import Inbound, Protocol, Rejected, Reply, Verified, check_timestamp

HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format prefix, not a secret
FAIL_JSON = b'{"error":"invalid webhook"}'


def decode_secret(secret: str) -> bytes:
    """``whsec_<base64>`` (or bare base64) -> key bytes; ValueError (without echoing it) if malformed."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64") from None
    if not key:
        raise ValueError("a Standard Webhooks secret must not be empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """base64(HMAC-SHA256(key, ``{id}.{timestamp}.{body}``))."""
    content = f"{msg_id}.{timestamp}.".encode("utf-8", "surrogatepass") + body
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def _v1_signatures(header: str) -> list[bytes]:
    out = []
    for entry in header.split():
        version, _, value = entry.partition(",")
        if version == "v1" and value:
            try:
                out.append(base64.b64decode(value.encode("ascii"), validate=True))
            except (binascii.Error, ValueError):
                continue
    return out


class StandardWebhooks(Protocol):
    """One route of a Standard Webhooks sender (Svix and compatible)."""

    name = "standard-webhooks"

    def __init__(
        self,
        secrets: Sequence[tuple[str, str]],
        timestamp_window: float = 300.0,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        super().__init__(*(() if random_bytes is None else (random_bytes,)))
        if not secrets:
            raise ValueError("a standard-webhooks route needs a secret")
        self.keys = tuple((key_id, decode_secret(secret)) for key_id, secret in secrets)
        self.window = timestamp_window

    def signing_keys(self) -> tuple[bytes, ...]:
        """Decoded: ``whsec_`` or not, and base64 with other padding bits, are spellings of one key."""
        return tuple(key for _, key in self.keys)

    def verify(self, req: Inbound, now: float) -> Verified:
        h = req.headers
        for name in HEADERS:
            if not h.get(name):
                raise Rejected("missing_header", 401, name)
        msg_id, ts = h["webhook-id"], h["webhook-timestamp"]
        given = _v1_signatures(h["webhook-signature"])
        matched = ""
        for key_id, key in self.keys:
            expected = base64.b64decode(sign(key, msg_id, ts, req.body))
            hit = False
            for candidate in given:
                hit |= hmac.compare_digest(expected, candidate)
            if hit and not matched:
                matched = key_id
        if not matched:
            raise Rejected("bad_signature", 401)
        try:
            check_timestamp(ts, now, self.window)
        except Rejected as e:
            raise Rejected(e.reason, 401) from None
        return Verified(
            message={"webhook-id": msg_id},
            replay_key=f"sw:{msg_id}:{ts}",
            replay_ttl=2 * self.window,
            key_id=matched,
        )

    def dedup_key(self, verified: Verified) -> str | None:
        return verified.message.get("webhook-id") or None

    def success_reply(self, verified: Verified | None = None) -> Reply:
        return Reply(200, b"", "text/plain; charset=utf-8", "ack")

    def failure_reply(self, reason: str, status: int) -> Reply:
        return Reply(status, FAIL_JSON, "application/json", "reject")

    def backend_failure_reply(self, verified: Verified | None = None) -> Reply:
        return Reply(502, b"", "text/plain; charset=utf-8", "failure")

    def normalize(self, status: int, content_type: str, body: bytes, verified: Verified) -> Reply:
        return Reply(status, body, content_type, "ack")
