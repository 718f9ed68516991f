"""JSON bodies: strict parsing, flattening, and the labels given to backend bodies that break a contract."""

from __future__ import annotations

import pytest

from proxy.protocols.base import Rejected
from proxy.protocols.payload import describe, flatten, parse_object


def test_parse_object() -> None:
    assert parse_object(b'{"a": 1.50, "b": [1]}', numbers_as_text=True) == {"a": "1.50", "b": ["1"]}
    assert parse_object(b'{"a": 1}') == {"a": 1}
    for bad, reason in (
        (b"", "empty_body"),
        (b"[1]", "malformed_json"),
        (b'{"a": NaN}', "malformed_json"),
        (b"{", "malformed_json"),
        (b"[" * 100000, "malformed_json"),
    ):
        with pytest.raises(Rejected) as e:
            parse_object(bad)
        assert e.value.reason == reason


@pytest.mark.parametrize("as_text", [True, False])
def test_bounded_numbers_refuse_what_a_double_cannot_hold(as_text: bool) -> None:
    fine = parse_object(b'{"a": 1e308, "b": 18446744073709551615}', as_text, max_number_len=40)
    assert fine == ({"a": "1e308", "b": "18446744073709551615"} if as_text else {"a": 1e308, "b": 2**64 - 1})
    for bad in (b'{"a": 1e999999}', b'{"a": -1E309}', b'{"a": 1' + b"0" * 40 + b"}"):
        with pytest.raises(Rejected) as e:
            parse_object(bad, as_text, max_number_len=40)
        assert e.value.reason == "malformed_json"


def test_flatten() -> None:
    doc = {"a": {"b": 1, "c": {"d": True}}, "e": None, "f": [1, 2], "g": "x", "h": 2.5}
    assert flatten(doc) == {"a.b": "1", "a.c.d": "true", "e": "null", "g": "x", "h": "2.5"}
    deep: dict[str, object] = {}
    node = deep
    for _ in range(12):
        node["n"] = {}
        node = node["n"]  # type: ignore[assignment]
    with pytest.raises(Rejected):
        flatten(deep)
    with pytest.raises(Rejected):
        flatten({str(i): i for i in range(600)})


@pytest.mark.parametrize(
    ("ctype", "body", "label"),
    [
        ("", b"  ", "empty"),
        ("application/json", b'{"a":1}', "json"),
        ("text/plain", b"[1, 2]", "json"),
        ("application/json", b"{broken", "text"),
        ("text/html", b"<p>hi</p>", "html"),
        ("", b"<!DOCTYPE html><html></html>", "html"),
        ("", b"<xml/>", "xml"),
        ("text/plain", b"ok", "text"),
    ],
)
def test_describe(ctype: str, body: bytes, label: str) -> None:
    assert describe(ctype, body) == label


@pytest.mark.parametrize(
    "body",
    [
        rb'{"Content":"\ud800"}',  # a lone high surrogate
        rb'{"Content":"ok \udc00 end"}',  # a lone low surrogate
        rb'{"\ud83d":"key"}',  # in a key
        rb'{"List":[{"TemplateId":"\udfff"}]}',  # nested in an array
    ],
)
def test_a_lone_surrogate_escape_is_malformed(body: bytes) -> None:
    with pytest.raises(Rejected) as e:
        parse_object(body)
    assert (e.value.reason, e.value.status) == ("malformed_json", 400)


def test_an_escaped_surrogate_pair_and_an_escaped_backslash_u_are_text() -> None:
    assert parse_object(rb'{"Content":"\ud83d\ude00"}')["Content"] == "\U0001f600"
    assert parse_object(rb'{"Content":"\\ud800"}')["Content"] == "\\ud800"  # a backslash, then "ud800"
