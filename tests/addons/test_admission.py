from __future__ import annotations

import ipaddress

import pytest

from addons.admission import Admission, client_ip
from proxy.pipeline.exchange import exchange
from tests.addons.conftest import mp_flow, routed, table

NETS = [ipaddress.ip_network("10.0.0.0/8")]


def test_spoofed_wxgate_headers_are_stripped_from_every_request() -> None:
    f = mp_flow()
    f.request.headers["X-Wxgate-Verified"] = "1"
    f.request.headers["x-wxgate-dedup-key"] = "forged"
    routed(f, table())
    Admission().requestheaders(f)
    assert not [h for h in f.request.headers if h.lower().startswith("x-wxgate")]


def test_underscore_spellings_of_wxgate_headers_are_stripped_too() -> None:
    # CGI, WSGI (gunicorn < 22) and PHP turn both X_Wxgate_Verified and X-Wxgate-Verified into
    # HTTP_X_WXGATE_VERIFIED: a client's underscore copy would sit beside, or replace, wxgate's own.
    f = mp_flow()
    f.request.headers["X_Wxgate_Verified"] = "1"
    f.request.headers["x-wxgate_dedup-key"] = "forged"
    routed(f, table())
    Admission().requestheaders(f)
    assert not [h for h in f.request.headers if "wxgate" in h.lower()]


@pytest.mark.parametrize(
    ("setup", "status", "reason"),
    [
        (lambda f: setattr(f.request, "method", "PUT"), 405, "method_not_allowed"),
        (lambda f: f.request.headers.__setitem__("content-length", "999999"), 413, "body_too_large"),
        # mitmproxy keeps an obsolete line fold (and NULs) inside the value; forwarded, a backend would read
        # the folded part as a header of its own, or the pool would fail the call after the claim was taken
        (lambda f: f.request.headers.__setitem__("x-note", "a\r\n b"), 400, "malformed_header"),
        (lambda f: f.request.headers.__setitem__("x-note", "a\0b"), 400, "malformed_header"),
        (lambda f: f.request.headers.__setitem__("x-big", "a" * 70_000), 431, "headers_too_large"),
    ],
)
def test_requestheaders_refusals(setup: object, status: int, reason: str) -> None:
    f = mp_flow()
    setup(f)  # type: ignore[operator]
    ex = routed(f, table())
    Admission().requestheaders(f)
    assert f.response is not None and f.response.status_code == status
    assert ex.outcome.reason == reason


def test_body_limit_applies_without_content_length() -> None:
    f = mp_flow(content="x" * 2000)
    del f.request.headers["content-length"]
    ex = routed(f, table(max_body="1k"))
    Admission().request(f)
    assert f.response is not None and f.response.status_code == 413
    assert ex.outcome.reason == "body_too_large"


@pytest.mark.parametrize(
    ("ctype", "ok"),
    [
        ("text/xml", True),
        ("application/xml; charset=utf-8", True),
        ("multipart/form-data", False),
        ("application/json", False),
    ],
)
def test_content_type(ctype: str, ok: bool) -> None:
    f = mp_flow()
    f.request.headers["content-type"] = ctype
    routed(f, table())
    Admission().request(f)
    assert (f.response is None) == ok
    if not ok:
        assert f.response is not None and f.response.status_code == 415


def test_compressed_bodies_are_refused() -> None:
    f = mp_flow()
    f.request.headers["content-encoding"] = "gzip"
    routed(f, table())
    Admission().request(f)
    assert f.response is not None and f.response.status_code == 415


def test_source_allowlist_uses_forwarded_for_only_behind_trusted_proxies() -> None:
    f = mp_flow()
    f.client_conn.peername = ("10.1.2.3", 1)
    f.request.headers["x-forwarded-for"] = "198.51.100.9, 10.9.9.9"
    ex = routed(f, table(allow_cidrs=["198.51.100.0/24"]))
    Admission(NETS).requestheaders(f)
    assert f.response is None
    g = mp_flow()
    g.client_conn.peername = ("203.0.113.5", 1)  # untrusted peer: its X-Forwarded-For means nothing
    g.request.headers["x-forwarded-for"] = "198.51.100.9"
    ex = routed(g, table(allow_cidrs=["198.51.100.0/24"]))
    Admission(NETS).requestheaders(g)
    assert g.response is not None and g.response.status_code == 403
    assert ex.outcome.reason == "source_not_allowed"
    assert exchange(f) is not None


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.1", "1.2.3.4", "203.0.113.1"),
        ("10.0.0.1", "1.2.3.4", "1.2.3.4"),
        ("10.0.0.1", "1.2.3.4, 10.0.0.2", "1.2.3.4"),
        ("10.0.0.1", "", "10.0.0.1"),
        ("::ffff:10.0.0.1", "5.6.7.8", "5.6.7.8"),
    ],
)
def test_client_ip(peer: str, xff: str, expected: str) -> None:
    assert client_ip(peer, xff, NETS) == expected


def test_repeated_query_parameters_are_refused() -> None:
    f = mp_flow()
    f.request.path += "&nonce=appended"
    ex = routed(f, table())
    Admission().request(f)
    assert f.response is not None and f.response.status_code == 400
    assert ex.outcome.reason == "duplicate_param"


def test_wxgate_headers_in_several_spellings_at_once_are_all_dropped_and_the_checks_still_run() -> None:
    # Deleting by name is case-insensitive: the second spelling of a name already deleted used to raise
    # KeyError, which skipped every check after it.
    f = mp_flow()
    f.client_conn.peername = ("203.0.113.5", 1)
    f.request.headers.fields = (
        *f.request.headers.fields,
        (b"X-Wxgate-J", b"1"),
        (b"x-wxgate-j", b"2"),
        (b"X_WXGATE_J", b"3"),
        (b"X-Wxgate-Verified", b"1"),
    )
    ex = routed(f, table(allow_cidrs=["198.51.100.0/24"]))
    Admission().requestheaders(f)
    assert not [n for n, _ in f.request.headers.fields if b"wxgate" in n.lower()]
    assert f.response is not None and f.response.status_code == 403
    assert ex.outcome.reason == "source_not_allowed"


@pytest.mark.parametrize(
    ("peer", "sent", "forwarded"),
    [
        ("203.0.113.5", [b"198.51.100.9"], "203.0.113.5"),  # an untrusted client's list is replaced
        ("203.0.113.5", [], "203.0.113.5"),
        ("10.1.2.3", [b"198.51.100.9"], "198.51.100.9, 10.1.2.3"),  # a trusted proxy's is appended to
        ("10.1.2.3", [b"198.51.100.9", b"10.9.9.9"], "198.51.100.9, 10.9.9.9, 10.1.2.3"),
        ("10.1.2.3", [], "10.1.2.3"),
    ],
)
def test_x_forwarded_for_is_what_a_reverse_proxy_makes_it(
    peer: str, sent: list[bytes], forwarded: str
) -> None:
    for routed_flow in (True, False):
        f = mp_flow()
        f.client_conn.peername = (peer, 1)
        f.request.headers.fields = (
            *f.request.headers.fields,
            *((b"X-Forwarded-For", v) for v in sent),
            (b"X-Real-IP", b"198.51.100.9"),
            (b"Forwarded", b"for=198.51.100.9"),
        )
        if routed_flow:
            routed(f, table())
        else:
            f.request.path = "/legacy"
            routed(f, table())
        Admission(NETS).requestheaders(f)
        assert f.request.headers.get_all("x-forwarded-for") == [forwarded]
        trusted = peer.startswith("10.")
        assert ("x-real-ip" in f.request.headers) is trusted
        assert ("forwarded" in f.request.headers) is trusted
