"""The user in a log line is a keyed hash: without the key, an openid cannot be found by hashing a list."""

from __future__ import annotations

import hashlib
import hmac
import logging

import pytest

from proxy.config import Secret
from proxy.observability.logs import UserRef

OPENID = "oS3cr3tUser000000000000001"
KEY = "0123456789abcdef0123456789abcdef"


def test_the_hash_is_hmac_sha256_under_the_configured_key() -> None:
    ref = UserRef.from_config(Secret(KEY))
    expected = hmac.new(KEY.encode(), OPENID.encode(), hashlib.sha256).hexdigest()[:16]
    assert ref({"FromUserName": OPENID}) == expected
    assert ref({"openid": OPENID}) == ref({"payer.openid": OPENID}) == expected
    assert expected != hashlib.sha256(OPENID.encode()).hexdigest()[:16]  # the guessable plain hash
    assert ref({"Content": "hi"}) == ""
    assert UserRef.from_config(Secret(KEY))({"openid": OPENID}) == expected  # replicas sharing the key agree


def test_without_a_key_each_process_has_its_own_random_key_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "wxgate"):
        a, b = UserRef.from_config(None), UserRef.from_config(None)
    assert not a.configured
    assert a({"openid": OPENID}) != b({"openid": OPENID})
    assert hashlib.sha256(OPENID.encode()).hexdigest()[:16] not in (
        a({"openid": OPENID}),
        b({"openid": OPENID}),
    )
    assert any("do not correlate across replicas or restarts" in r.getMessage() for r in caplog.records)


def test_the_key_never_shows() -> None:
    assert KEY not in repr(UserRef.from_config(Secret(KEY)))


def test_a_reload_keeps_the_key_unless_it_changed() -> None:
    unset = UserRef.from_config(None)
    assert unset.rekeyed(None) is unset  # no new random key (and no new hashes) on every reload
    keyed = unset.rekeyed(Secret(KEY))
    assert keyed.configured and keyed.rekeyed(Secret(KEY)) is keyed
    other = keyed.rekeyed(Secret("fedcba9876543210fedcba9876543210"))
    assert other({"openid": OPENID}) != keyed({"openid": OPENID})
    assert not keyed.rekeyed(None).configured
