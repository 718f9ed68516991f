"""Admission: what may reach verification at all.

Strips client-sent ``X-Wxgate-*`` headers from every request (they are trusted by the backend; ``X_Wxgate_*``
too, which CGI, WSGI and PHP read as the same header) and rewrites ``X-Forwarded-For`` per ``trusted_proxies``
(:meth:`Admission.sanitize`), then checks the route's request head (400 for a line
break or NUL inside a header value, 431 above :data:`MAX_HEAD`), method (405), body size (413, early from
Content-Length when present), source address allowlist (403, trusted-proxy aware), repeated query parameters
(400) and content type/encoding (415). Owns ``methods``, ``max_body``, ``allow_cidrs``, ``trusted_proxies``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from mitmproxy import http

from proxy.pipeline.exchange import exchange, param_name, request_query
from proxy.pipeline.replies import reject
from proxy.reload import Loaded

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# A request head (names and values) this large is no callback: WeChat's are under 1 KiB; nginx allows 32 KiB.
MAX_HEAD = 64 * 1024


def spoofed(name: bytes) -> bool:
    """A client's copy of a header only wxgate may set, however it spells it."""
    return name.lower().replace(b"_", b"-").startswith(b"x-wxgate-")


def head_problem(fields: Sequence[tuple[bytes, bytes]]) -> tuple[str, int] | None:
    """``(reason, status)`` for a head wxgate must not forward: mitmproxy keeps an obsolete line fold (CR LF
    inside a value) and NULs, which a backend would read as a second header or cut short."""
    size = 0
    for name, value in fields:
        if b"\r" in value or b"\n" in value or b"\0" in value:
            return "malformed_header", 400
        size += len(name) + len(value) + 4
    return ("headers_too_large", 431) if size > MAX_HEAD else None


# Forwarding headers only a trusted proxy may set (X-Forwarded-For is rewritten, not dropped).
# X-Original-URL and X-Rewrite-URL re-route a request inside IIS URL Rewrite, Symfony and Laminas backends.
_UNTRUSTED_FORWARDING = frozenset({b"forwarded", b"x-real-ip", b"x-original-url", b"x-rewrite-url"})


def _trusted(peer: str, trusted: Sequence[IpNetwork]) -> bool:
    addr = _ip(peer)
    return addr is not None and any(addr in net for net in trusted)


def client_ip(peer: str, forwarded_for: str, trusted: Sequence[IpNetwork]) -> str:
    """The caller's address: the peer, or (only behind a trusted proxy) the right-most untrusted XFF hop."""
    if not _trusted(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        hop_ip = _ip(hop)
        if hop_ip is None:
            return hop
        if not any(hop_ip in net for net in trusted):
            return hop
    return peer


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Admission:
    def __init__(self, trusted_proxies: Sequence[IpNetwork] = ()) -> None:
        self.trusted = tuple(trusted_proxies)

    def reconfigure(self, loaded: Loaded) -> None:
        self.trusted = tuple(loaded.config.trusted_proxies)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        peer = flow.client_conn.peername[0] if flow.client_conn.peername else ""
        forwarded_for = self.sanitize(flow.request.headers, peer)
        if flow.response or flow.error or not flow.live:
            return
        ex = exchange(flow)
        if ex is None:
            return
        if problem := head_problem(flow.request.headers.fields):
            # Passed through too: a backend would read a folded line as a header of its own.
            return reject(flow, ex, *problem)
        if ex.route is None:
            return
        cfg = ex.route.config
        if flow.request.method not in ex.route.methods:
            return reject(flow, ex, "method_not_allowed", 405)
        length = flow.request.headers.get("content-length", "")
        if length.isdigit() and int(length) > cfg.max_body:
            return reject(flow, ex, "body_too_large", 413)
        ex.client = client_ip(peer, forwarded_for, self.trusted)
        if cfg.allow_cidrs is not None:
            ip = _ip(ex.client)
            if ip is None or not any(ip in net for net in cfg.allow_cidrs):
                return reject(flow, ex, "source_not_allowed", 403)
        return None

    def sanitize(self, headers: http.Headers, peer: str) -> str:
        """Make the head safe to forward, in one pass over the raw fields, on every request (routed or passed
        through); returns the client's ``X-Forwarded-For`` as it arrived (all its fields, comma-joined).

        Drops every ``X-Wxgate-*`` name however it is spelled (case, ``_`` for ``-``: the backend trusts them).
        ``X-Forwarded-For`` is what a reverse proxy makes it: the peer appended when the peer is a trusted
        proxy, else the peer alone (a client's own list is never forwarded as written), and ``Forwarded``,
        ``X-Real-IP``, ``X-Original-URL`` and ``X-Rewrite-URL`` from an untrusted peer are dropped (the first two
        would say the same thing unchecked; the last two re-route the request inside the backend)."""
        fields = headers.fields
        trusted_peer = self.trusted and _trusted(peer, self.trusted)
        kept: list[tuple[bytes, bytes]] = []
        xff: list[bytes] = []
        for name, value in fields:
            lower = name.lower()
            if lower == b"x-forwarded-for":
                xff.append(value)
            elif spoofed(lower) or (not trusted_peer and lower in _UNTRUSTED_FORWARDING):
                continue
            else:
                kept.append((name, value))
        arrived = b", ".join(xff).decode("latin-1")
        if peer:
            hops = f"{arrived}, {peer}" if trusted_peer and arrived.strip() else peer
            kept.append((b"x-forwarded-for", hops.encode("latin-1", "replace")))
        if len(kept) != len(fields) or xff:
            headers.fields = tuple(kept)
        return arrived

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        ex = exchange(flow)
        if ex is None or ex.route is None:
            return
        if len(flow.request.raw_content or b"") > ex.route.config.max_body:
            return reject(flow, ex, "body_too_large", 413)
        names = [param_name(k) for k, _ in request_query(flow, ex)]
        if len(names) != len(set(names)):
            # Verification reads the first value; a backend reading the last could be fed an unsigned one. Names
            # compared as lenient backends read them (``openid`` and ``%20openid`` are one name to PHP).
            return reject(flow, ex, "duplicate_param", 400)
        if flow.request.headers.get("content-encoding", "identity").strip().lower() != "identity":
            # Signatures cover the bytes WeChat sent; it never compresses callbacks.
            return reject(flow, ex, "unsupported_content_encoding", 415)
        allowed = ex.route.content_types
        if flow.request.method != "GET" and allowed is not None:
            ctype = flow.request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if ctype not in allowed:
                return reject(flow, ex, "unsupported_content_type", 415)
        return None
