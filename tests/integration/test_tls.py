"""TLS termination: senders see our certificate, plain HTTP is refused (or allowed), SIGHUP rotates the
certificate without dropping open connections."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPSConnection
from pathlib import Path

import pytest
from cryptography import x509

from proxy.tools import sender
from tests.integration.conftest import ENV, TOKEN, mp_route
from tests.support.certs import Authority, authority, server_cert
from tests.support.procs import ROOT, WXGATE, Backend, Sidecar, http, wait_until

pytestmark = pytest.mark.integration
PATH = "/wechat/callback"


@pytest.fixture(scope="module")
def ca() -> Authority:
    return authority()


@pytest.fixture(scope="module")
def files(tmp_module: Path, ca: Authority) -> tuple[Path, Path]:
    cert, key = tmp_module / "tls.crt", tmp_module / "tls.key"
    server_cert(ca, cert, key)
    return cert, key


@pytest.fixture(scope="module")
def sidecar(tmp_module: Path, backend: Backend, files: tuple[Path, Path]) -> Iterator[Sidecar]:
    tls = {"cert_file": str(files[0]), "key_file": str(files[1])}
    s = Sidecar(
        tmp_module, {"upstream": backend.url, "tls": tls, "routes": [mp_route()]}, env=ENV, name="tls"
    )
    s.start()
    yield s
    assert s.stop() == 0


def client_context(ca: Authority, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.pem().decode())
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


_open: list[HTTPSConnection] = []


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def connect(s: Sidecar, ctx: ssl.SSLContext) -> HTTPSConnection:
    conn = HTTPSConnection("localhost", s.port, context=ctx, timeout=10)
    _open.append(conn)
    conn.connect()
    return conn


def post(conn: HTTPConnection, req: sender.Request) -> tuple[int, bytes]:
    conn.request(req.method, req.path_query, req.body, req.headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def text(msg_id: int) -> sender.Request:
    return sender.mp_message(PATH, TOKEN, sender.mp_text("gh_tls", "oUserTls", f"tls {msg_id}", msg_id))


def peer_certificate(conn: HTTPSConnection) -> x509.Certificate:
    assert isinstance(conn.sock, ssl.SSLSocket)
    der = conn.sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_verified_callback_arrives_over_https(
    sidecar: Sidecar, fresh_backend: Backend, ca: Authority
) -> None:
    conn = connect(sidecar, client_context(ca))
    status, body = post(conn, text(1))
    assert status == 200
    assert b"echo: tls 1" in body
    (received,) = fresh_backend.requests()
    assert received["headers"]["x-wxgate-verified"] == "1"


def test_the_configured_certificate_is_served_over_http11(
    sidecar: Sidecar, files: tuple[Path, Path], ca: Authority
) -> None:
    conn = connect(sidecar, client_context(ca))
    assert isinstance(conn.sock, ssl.SSLSocket)
    served = peer_certificate(conn)
    assert served == x509.load_pem_x509_certificate(files[0].read_bytes())
    assert served.issuer == ca.cert.subject  # not mitmproxy's generated CA
    assert conn.sock.selected_alpn_protocol() == "http/1.1"
    expiry = served.not_valid_after_utc.timestamp()
    assert sidecar.metric("wxgate_tls_certificate_expiry_timestamp_seconds") == expiry


def test_plain_http_on_the_tls_port_is_refused_and_never_forwarded(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    before = sidecar.metric("wxgate_requests_total", route="unmatched", code="400")
    req = text(2)
    status, body, headers = http(req.method, sidecar.url + req.path_query, req.body, req.headers)
    assert status == 400
    assert b"plain HTTP is refused" in body
    assert headers.get("connection") == "close"
    assert fresh_backend.stats()["count"] == 0
    assert sidecar.metric("wxgate_requests_total", route="unmatched", code="400") == before + 1


def test_sighup_serves_a_rotated_certificate_and_keeps_open_connections(
    sidecar: Sidecar, fresh_backend: Backend, files: tuple[Path, Path], ca: Authority
) -> None:
    ctx = client_context(ca)
    old_conn = connect(sidecar, ctx)
    assert post(old_conn, text(3))[0] == 200
    old_cert = peer_certificate(old_conn)
    old_socket = old_conn.sock

    new_cert = server_cert(ca, *files, days=20)
    sidecar.reload()

    new_conn = connect(sidecar, ctx)
    assert peer_certificate(new_conn).serial_number == new_cert.serial_number != old_cert.serial_number
    assert post(new_conn, text(4))[0] == 200
    # The connection opened before the reload is still the same socket and still served.
    assert post(old_conn, text(5))[0] == 200
    assert old_conn.sock is old_socket
    assert fresh_backend.stats()["count"] == 3
    expiry = sidecar.metric("wxgate_tls_certificate_expiry_timestamp_seconds")
    assert expiry == new_cert.not_valid_after_utc.timestamp()


def test_a_broken_certificate_file_is_rejected_on_reload_and_the_old_one_kept(
    sidecar: Sidecar, files: tuple[Path, Path], ca: Authority, tmp_path: Path
) -> None:
    other_key = tmp_path / "other.key"
    server_cert(ca, tmp_path / "other.crt", other_key)
    sidecar.reload({"tls": {"cert_file": str(files[0]), "key_file": str(other_key)}}, expect="failure")
    assert sidecar.metric("wxgate_config_last_reload_successful") == 0
    assert "does not belong to the first certificate" in sidecar.logs()
    conn = connect(sidecar, client_context(ca))
    assert peer_certificate(conn) == x509.load_pem_x509_certificate(files[0].read_bytes())
    sidecar.reload({"tls": {"cert_file": str(files[0]), "key_file": str(files[1])}})
    assert sidecar.metric("wxgate_config_last_reload_successful") == 1


def test_plain_http_can_be_allowed_and_old_tls_versions_refused(
    tmp_path: Path, backend: Backend, ca: Authority
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    server_cert(ca, cert, key)
    tls = {"cert_file": str(cert), "key_file": str(key), "plain_http": "allow", "min_version": "1.3"}
    s = Sidecar(tmp_path, {"upstream": backend.url, "tls": tls, "routes": [mp_route()]}, env=ENV)
    s.start()
    try:
        req = text(6)
        assert http(req.method, s.url + req.path_query, req.body, req.headers)[0] == 200
        assert post(connect(s, client_context(ca)), text(7))[0] == 200
        with pytest.raises(ssl.SSLError):
            connect(s, client_context(ca, max_version=ssl.TLSVersion.TLSv1_2))
    finally:
        assert s.stop() == 0


def test_check_refuses_a_key_that_does_not_belong_to_the_certificate(tmp_path: Path, ca: Authority) -> None:
    server_cert(ca, tmp_path / "a.crt", tmp_path / "a.key")
    server_cert(ca, tmp_path / "b.crt", tmp_path / "b.key")
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(f"tls:\n  cert_file: {tmp_path / 'a.crt'}\n  key_file: {tmp_path / 'b.key'}\n")
    out = subprocess.run(
        [*WXGATE, "-c", str(cfg), "check"], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert out.returncode == 2
    assert f"tls: the key in {tmp_path / 'b.key'} does not belong to the first certificate" in out.stderr


def h2_post(s: Sidecar, ca: Authority, path: str, body: bytes) -> int:
    """One POST over HTTP/2 (a client offering only h2), ``:path`` as given; the answer's status."""
    import h2.config
    import h2.connection
    import h2.events

    ctx = ssl.create_default_context(cadata=ca.pem().decode())
    ctx.set_alpn_protocols(["h2"])
    with ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", s.port), timeout=5), server_hostname="localhost"
    ) as sock:
        assert sock.selected_alpn_protocol() == "h2"
        config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "localhost"),
                (":path", path),
                ("content-type", "text/xml"),
                ("content-length", str(len(body))),
            ],
        )
        conn.send_data(stream, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        status = 0
        while True:
            data = sock.recv(65536)
            if not data:
                return status
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return status
            sock.sendall(conn.data_to_send())


@pytest.mark.parametrize(
    ("target", "msg_id"),
    [
        ("http://x/wechat/callback", 30),
        ("https://localhost/legacy", 31),
        ("*", 32),
        ("//x/wechat/callback", 33),
        ("/\t/x/wechat/callback", 34),  # a URL parser drops the tab: //x/wechat/callback (waitress, urlsplit)
    ],
)
def test_an_http2_path_that_is_a_whole_url_is_refused_and_never_forwarded(
    sidecar: Sidecar, fresh_backend: Backend, ca: Authority, target: str, msg_id: int
) -> None:
    """mitmproxy hands an HTTP/2 ``:path`` on as the request line: ``POST http://x/wechat/callback`` reached the
    backend's protected handler (which routes a whole URL by its path) as unmatched, unverified traffic."""
    forged = b"<xml><MsgType>text</MsgType><Content>FORGED</Content><MsgId>424242</MsgId></xml>"

    def refused() -> int:
        return sum(1 for line in sidecar.log_lines() if line.get("reason") == "request_target")

    before = refused()
    assert h2_post(sidecar, ca, target, forged) == 400
    assert fresh_backend.stats()["count"] == 0
    wait_until(lambda: refused() == before + 1, 5, "refused by wxgate (not by the backend's parser)")
    req = text(msg_id)  # the same client, a proper path: served
    assert h2_post(sidecar, ca, req.path_query, req.body) == 200
    assert fresh_backend.stats()["count"] == 1
