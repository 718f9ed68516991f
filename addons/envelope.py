"""Envelope: re-encrypt replies for senders that encrypt (Official Account safe mode, WeCom).

Decryption is part of verification (``msg_signature`` is computed over the ciphertext, so the two cannot be
split); with ``decrypt_for_backend`` the backend receives the plaintext the protocol produced. On the way out this
addon seals the plaintext reply the chain chose — including a reply replayed from the dedup cache — with a fresh
random prefix and its own signature, so a plaintext legacy backend serves a safe-mode account unchanged.
"""

from __future__ import annotations

from mitmproxy import http

from proxy.pipeline.exchange import exchange
from proxy.pipeline.replies import seal


class Envelope:
    def response(self, flow: http.HTTPFlow) -> None:
        ex = exchange(flow)
        if ex is not None and ex.reply is not None:
            seal(flow, ex)
