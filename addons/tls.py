"""TLS termination: serve the configured certificate to senders, and refuse plain HTTP on a TLS listener.

mitmproxy's reverse mode accepts TLS and plain HTTP on one port (it looks at the first bytes). This addon runs
before mitmproxy's ``TlsConfig`` and hands it an OpenSSL connection built from our certificate, so the
generated-CA certificates of mitmproxy are never shown. With ``tls.plain_http: refuse``, a plain request is
answered ``400`` (the sender's console shows why) and its connection closed. Owns ``tls.plain_http``; the
certificate is loaded by :mod:`proxy.tls`. :meth:`use` swaps both at once on a reload: new handshakes get the
new certificate, open connections keep theirs.
"""

from __future__ import annotations

from mitmproxy import http, tls
from OpenSSL import SSL

from proxy.pipeline.exchange import exchange
from proxy.reload import Loaded
from proxy.tls import ServerCertificate

PLAIN_HTTP_REFUSED = b"This port speaks HTTPS: plain HTTP is refused. Use an https:// URL.\n"


class TlsTermination:
    def __init__(self, cert: ServerCertificate | None = None, plain_http: str = "refuse") -> None:
        self.use(cert, plain_http)

    def use(self, cert: ServerCertificate | None, plain_http: str) -> None:
        if plain_http not in ("refuse", "allow"):
            raise ValueError("plain_http must be refuse or allow")
        # One tuple, swapped in one assignment: a handshake never sees one setting of the old and one of the new.
        self._state = (cert, plain_http == "refuse" and cert is not None)

    def reconfigure(self, loaded: Loaded) -> None:
        """A reloaded certificate (or ``plain_http``) serves the next handshake; open connections keep theirs."""
        tls = loaded.config.tls
        self.use(loaded.tls, tls.plain_http if tls else "refuse")

    @property
    def cert(self) -> ServerCertificate | None:
        return self._state[0]

    def tls_start_client(self, tls_start: tls.TlsData) -> None:
        cert = self._state[0]
        if cert is None or tls_start.ssl_conn is not None:
            return
        conn = SSL.Connection(cert.context)
        conn.set_accept_state()
        tls_start.ssl_conn = conn

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if not self._state[1] or flow.client_conn.tls_established:
            return
        if (ex := exchange(flow)) is not None:
            ex.outcome.verdict = "denied"
            ex.outcome.reason = "plain_http"
            ex.outcome.reply_kind = "reject"
        flow.response = http.Response.make(
            400, PLAIN_HTTP_REFUSED, {"content-type": "text/plain; charset=utf-8", "connection": "close"}
        )
