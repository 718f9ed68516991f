from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from proxy.config import ConfigError, parse_config
from proxy.tls import select_alpn, server_certificate
from tests.support.certs import authority, server_cert


def tls_config(cert: Path, key: Path) -> dict[str, object]:
    return {"tls": {"cert_file": str(cert), "key_file": str(key)}}


def test_a_matching_pair_loads_with_its_expiry(tmp_path: Path) -> None:
    cert = server_cert(authority(), tmp_path / "c.pem", tmp_path / "k.pem", days=3)
    cfg = parse_config(tls_config(tmp_path / "c.pem", tmp_path / "k.pem"), {})
    assert cfg.tls is not None and cfg.tls.plain_http == "refuse" and cfg.tls.min_version == "1.2"
    loaded = server_certificate(cfg.tls.certified_key)
    assert loaded.not_after == cert.not_valid_after_utc.timestamp()
    assert loaded.subject == "CN=localhost"


def test_each_file_is_read_once_and_what_was_checked_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = authority()
    first = server_cert(ca, tmp_path / "c.pem", tmp_path / "k.pem", days=3)
    reads: list[str] = []
    read_bytes = Path.read_bytes

    def counted(path: Path) -> bytes:
        reads.append(path.name)
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", counted)
    cfg = parse_config(tls_config(tmp_path / "c.pem", tmp_path / "k.pem"), {})
    assert cfg.tls is not None
    # a renewal landing between validation and the context build is not mixed into it
    renewed = server_cert(ca, tmp_path / "c.pem", tmp_path / "k.pem", days=30)
    loaded = server_certificate(cfg.tls.certified_key, cfg.tls.min_version)
    assert sorted(reads) == ["c.pem", "k.pem"]
    assert (
        loaded.not_after == first.not_valid_after_utc.timestamp() != renewed.not_valid_after_utc.timestamp()
    )


def test_config_errors_name_the_key_and_the_file(tmp_path: Path) -> None:
    ca = authority()
    server_cert(ca, tmp_path / "a.pem", tmp_path / "a.key")
    server_cert(ca, tmp_path / "b.pem", tmp_path / "b.key")
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    cases = {
        (tmp_path / "missing.pem", tmp_path / "a.key"): "tls.cert_file: cannot read certificate file",
        (tmp_path / "a.key", tmp_path / "a.key"): "tls.cert_file: "
        + str(tmp_path / "a.key")
        + " holds no PEM",
        (tmp_path / "a.pem", tmp_path / "a.pem"): "tls.key_file: "
        + str(tmp_path / "a.pem")
        + " holds no PEM",
        (tmp_path / "a.pem", encrypted): "is encrypted; wxgate needs the PEM private key unencrypted",
        (tmp_path / "a.pem", tmp_path / "b.key"): "does not belong to the first certificate",
    }
    for (cert, key), message in cases.items():
        with pytest.raises(ConfigError) as e:
            parse_config(tls_config(cert, key), {})
        assert message in str(e.value), (cert, key, str(e.value))


@pytest.mark.parametrize(
    ("offers", "chosen"),
    [([b"h2", b"http/1.1"], b"http/1.1"), ([b"h2"], b"h2"), ([b"spdy/3"], SSL.NO_OVERLAPPING_PROTOCOLS)],
)
def test_alpn_prefers_http11(offers: list[bytes], chosen: object) -> None:
    assert select_alpn(None, offers) == chosen  # type: ignore[arg-type]
