"""The outcome record's log form: what the access line carries."""

from __future__ import annotations

from proxy.observability.outcome import Outcome


def test_as_log_keeps_set_fields_in_declaration_order_with_floats_to_the_microsecond() -> None:
    o = Outcome(
        route="mp", protocol="wechat-mp", verdict="verified", attempt=2, upstream_seconds=0.0012345678
    )
    o.status = 200
    o.duration_seconds = 0.25

    assert list(o.as_log().items()) == [
        ("route", "mp"),
        ("protocol", "wechat-mp"),
        ("verdict", "verified"),
        ("attempt", 2),
        ("upstream", "none"),
        ("upstream_seconds", 0.001235),
        ("status", 200),
        ("duration_seconds", 0.25),
    ]


def test_as_log_leaves_out_empty_strings_and_zeros() -> None:
    o = Outcome()
    assert o.as_log() == {"route": "unmatched", "protocol": "none", "verdict": "pending", "upstream": "none"}
