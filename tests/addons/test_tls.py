from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from addons.start import ExchangeStart
from addons.tls import TlsTermination
from proxy.config import parse_config
from proxy.pipeline.exchange import exchange
from proxy.tls import ServerCertificate, server_certificate
from tests.support.certs import authority, server_cert


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> ServerCertificate:
    d = tmp_path_factory.mktemp("tls")
    server_cert(authority(), d / "c.pem", d / "k.pem")
    tls = parse_config({"tls": {"cert_file": str(d / "c.pem"), "key_file": str(d / "k.pem")}}, {}).tls
    assert tls is not None
    return server_certificate(tls.certified_key)


def plain_flow(tls: bool = False) -> http.HTTPFlow:
    f = tflow.tflow()
    f.client_conn.timestamp_tls_setup = 1.0 if tls else None
    return f


def test_plain_http_is_refused_with_a_reason_when_tls_is_on(cert: ServerCertificate) -> None:
    f = plain_flow()
    ExchangeStart().requestheaders(f)
    TlsTermination(cert).requestheaders(f)
    assert f.response is not None and f.response.status_code == 400
    assert f.response.headers["connection"] == "close"
    ex = exchange(f)
    assert ex is not None and (ex.outcome.verdict, ex.outcome.reason) == ("denied", "plain_http")


@pytest.mark.parametrize(("plain_http", "tls"), [("allow", False), ("refuse", True)])
def test_tls_requests_and_allowed_plain_requests_pass(
    cert: ServerCertificate, plain_http: str, tls: bool
) -> None:
    f = plain_flow(tls)
    ExchangeStart().requestheaders(f)
    TlsTermination(cert, plain_http).requestheaders(f)
    assert f.response is None


def test_without_a_certificate_nothing_is_refused() -> None:
    f = plain_flow()
    ExchangeStart().requestheaders(f)
    TlsTermination(None, "refuse").requestheaders(f)
    assert f.response is None


def test_use_swaps_the_certificate_and_the_policy(cert: ServerCertificate) -> None:
    addon = TlsTermination(None)
    addon.use(cert, "refuse")
    assert addon.cert is cert
    f = plain_flow()
    addon.requestheaders(f)
    assert f.response is not None
    with pytest.raises(ValueError, match="refuse or allow"):
        addon.use(cert, "maybe")
