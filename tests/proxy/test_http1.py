"""The backend call's HTTP/1.1 framing: request bytes and the response parser, fed whole and byte by byte."""

from __future__ import annotations

import pytest

from proxy.upstream.http1 import BodyTooLarge, ProtocolError, Response, ResponseParser, request_bytes


def parse(raw: bytes, *, split: bool = False, head: bool = False, limit: int = 1024) -> Response | None:
    p = ResponseParser(limit, head_request=head)
    if not split:
        return p.feed(raw)
    result = None
    for i in range(len(raw)):
        result = p.feed(raw[i : i + 1])
        if result is not None:
            assert i == len(raw) - 1, "answered before the last byte"
    return result


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize(
    ("raw", "status", "body", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess", 200, b"success", True),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 200, b"", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad", 500, b"bad", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", False),
        (b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", True),  # no reason phrase
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nsucc\r\n3\r\ness\r\n0\r\n\r\n",
            200,
            b"success",
            True,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nsuccess\r\n0\r\nX-Trailer: 1\r\n\r\n",
            200,
            b"success",
            True,
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            200,
            b"ok",
            True,
        ),
    ],
)
def test_framed_answers(raw: bytes, status: int, body: bytes, keep_alive: bool, split: bool) -> None:
    r = parse(raw, split=split)
    assert r is not None
    assert (r.status, r.body, r.keep_alive) == (status, body, keep_alive)


def test_headers_are_lower_cased_and_repeats_joined() -> None:
    r = parse(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nX-A: 1\r\nx-a:  2 \r\nContent-Length: 0\r\n\r\n")
    assert r is not None
    assert dict(r.headers) == {"content-type": "text/xml", "x-a": "1, 2", "content-length": "0"}


def test_a_body_framed_by_the_connection_end_completes_at_eof() -> None:
    p = ResponseParser(1024)
    assert p.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsucc") is None
    assert p.feed(b"ess") is None
    r = p.eof()
    assert (r.status, r.body, r.keep_alive) == (200, b"success", False)


def test_a_head_answer_has_no_body_whatever_its_length_says() -> None:
    r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", head=True)
    assert r is not None and r.body == b"" and r.keep_alive


def test_extra_bytes_after_the_answer_spoil_the_connection() -> None:
    r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
    assert r is not None and r.body == b"ok" and not r.keep_alive


def test_both_framings_use_chunked_and_drop_the_connection() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    r = parse(raw)
    assert r is not None and r.body == b"ok" and not r.keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name : 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",  # superscript two: isdigit() but not a number
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
)
def test_malformed_answers_are_protocol_errors(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(raw)


def test_an_incomplete_answer_at_eof_is_an_error() -> None:
    p = ResponseParser(1024)
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    with pytest.raises(ProtocolError):
        p.eof()


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 1000 + b"\r\n3e8\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 1025,
    ],
)
def test_a_body_over_the_limit_is_refused_before_it_is_buffered(raw: bytes) -> None:
    with pytest.raises(BodyTooLarge) as e:
        parse(raw)
    assert e.value.status == 200


def test_an_endless_head_is_refused() -> None:
    with pytest.raises(ProtocolError, match="head too large"):
        parse(b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 20_000)


def test_request_bytes_put_wxgates_framing_first_and_keep_other_headers() -> None:
    raw = request_bytes(
        "POST",
        "/wx?a=1",
        "backend:9000",
        {"content-type": "text/xml", "Host": "spoofed", "content-length": "1", "x-wxgate-verified": "1"},
        b"<xml/>",
    )
    assert raw == (
        b"POST /wx?a=1 HTTP/1.1\r\nhost: backend:9000\r\ncontent-length: 6\r\ncontent-type: text/xml\r\n"
        b"x-wxgate-verified: 1\r\n\r\n<xml/>"
    )


def test_request_bytes_restore_bytes_that_were_decoded_with_surrogateescape() -> None:
    raw = request_bytes(
        "POST", "/", "b", {"x-name": b"\xe4\xbd\xa0\xff".decode("utf-8", "surrogateescape")}, b""
    )
    assert b"x-name: \xe4\xbd\xa0\xff\r\n" in raw


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\rb"])
def test_request_bytes_refuse_line_breaks_in_headers(value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        request_bytes("POST", "/", "b", {"x-a": value}, b"")
