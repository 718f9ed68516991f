"""``wxgate check`` builds what ``wxgate run`` builds (routes with their keys, the TLS context, the tracer provider
from ``OTEL_*``), so a configuration ``check`` passes is one ``run`` starts with; both refuse a bad one with a
short error naming the key, exit 2, never a traceback, and never a secret in what they print."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.certs import authority, server_cert
from tests.support.procs import ROOT, WXGATE, Sidecar
from tests.support.redis_servers import free_port

pytestmark = pytest.mark.integration

AES = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters, a valid EncodingAESKey
APIV3 = "0123456789abcdef0123456789abcdef"
MP = {"name": "mp", "path": "/mp", "protocol": "wechat-mp", "token": "${T}"}


def wxgate(
    tmp: Path, config: dict[str, Any], command: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    cfg = {
        "listen": f"127.0.0.1:{free_port()}",
        "admin": f"127.0.0.1:{free_port()}",
        "store": f"sqlite:///{tmp}/state.db",
        **config,
    }
    path = tmp / f"{command}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [*WXGATE, "-c", str(path), command],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "PYTHONPATH": str(ROOT), "T": "a-real-token", **env},
        cwd=ROOT,
    )


def rsa1024_certificate(tmp: Path) -> dict[str, str]:
    key = rsa.generate_private_key(65537, 1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=10))
        .sign(key, hashes.SHA256())
    )
    (tmp / "weak.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "weak.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return {"cert_file": str(tmp / "weak.pem"), "key_file": str(tmp / "weak.key")}


def _placeholder_file(tmp: Path) -> str:
    (tmp / "token").write_text("replace-with-the-official-account-token\n")
    return str(tmp / "token")


# (id, configuration (may depend on tmp), extra environment, what the error must say, what it must never show)
CASES: list[tuple[str, Any, dict[str, str], str, str | None]] = [
    ("empty token", lambda t: {"routes": [MP]}, {"T": ""}, "routes[0].token: is empty", None),
    ("blank token", lambda t: {"routes": [MP]}, {"T": "  "}, "routes[0].token: is empty", None),
    (
        "placeholder token file",
        lambda t: {
            "routes": [{**{k: v for k, v in MP.items() if k != "token"}, "token_file": _placeholder_file(t)}]
        },
        {},
        "still holds a placeholder (replace-with-",
        "replace-with-the-official",
    ),
    (
        "empty pay v2 key",
        lambda t: {
            "routes": [
                {
                    "name": "p",
                    "path": "/p",
                    "protocol": "wechat-pay-v2",
                    "api_key": "${K:-}",
                    "mch_id": "1900000001",
                }
            ]
        },
        {"K": ""},
        "routes[0].api_key: is empty",
        None,
    ),
    (
        "malformed aes key",
        lambda t: {"routes": [{**MP, "app_id": "wx0123456789abcdef", "encoding_aes_key": "${A}"}]},
        {"A": "short-aes-key-value"},
        "route mp: an EncodingAESKey is exactly 43",
        "short-aes-key-value",
    ),
    (
        "malformed whsec",
        lambda t: {
            "routes": [{"name": "sw", "path": "/sw", "protocol": "standard-webhooks", "secret": "${S}"}]
        },
        {"S": "whsec_not!base64"},
        "route sw: a Standard Webhooks secret is whsec_",
        "not!base64",
    ),
    (
        "missing pay v3 certificate",
        lambda t: {
            "routes": [
                {
                    "name": "v3",
                    "path": "/v3",
                    "protocol": "wechat-pay-v3",
                    "apiv3_key": "${K}",
                    "mch_id": "1900000001",
                    "platform_certificates": [str(t / "missing.pem")],
                }
            ]
        },
        {"K": APIV3},
        "route v3: cannot read platform certificate",
        APIV3,
    ),
    (
        "rsa-1024 tls certificate",
        lambda t: {"tls": rsa1024_certificate(t)},
        {},
        "OpenSSL refuses the certificate",
        None,
    ),
    (
        "unsupported exporter",
        lambda t: {},
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        "OTEL_TRACES_EXPORTER='zipkin'",
        None,
    ),
    (
        "unsupported otlp protocol",
        lambda t: {},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        "OTEL_EXPORTER_OTLP_PROTOCOL='grpc' is not supported",
        None,
    ),
    (
        "mistyped store url",
        lambda t: {"store": "redis://:hunter2/secret@127.0.0.1:6379/0"},
        {},
        "store: redis:// URL has an '@' after its host part",
        "hunter2",
    ),
    (
        "store url option redis cannot take",
        lambda t: {"store": "redis://:hunter2@127.0.0.1:6379/0?socket_timeout=soon"},
        {},
        "store: redis:// store URL is not usable: Invalid value for 'socket_timeout'",
        "hunter2",
    ),
    (
        "unknown store url option",
        lambda t: {"store": "redis://:hunter2@127.0.0.1:6379/0?bogus=1"},
        {},
        "store: redis:// store URL is not usable",
        "hunter2",
    ),
]


@pytest.mark.parametrize(
    ("config", "env", "message", "never"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize("command", ["check", "run"])
def test_check_and_run_refuse_the_same_configuration_without_a_traceback(
    tmp_path: Path, command: str, config: Any, env: dict[str, str], message: str, never: str | None
) -> None:
    out = wxgate(tmp_path, config(tmp_path), command, env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert ": ok (" not in out.stdout
    if never is not None:
        assert never not in out.stderr + out.stdout


def test_check_passes_what_run_serves_and_opens_nothing(tmp_path: Path) -> None:
    ca = authority()
    server_cert(ca, tmp_path / "cert.pem", tmp_path / "key.pem")
    config = {
        "tls": {"cert_file": str(tmp_path / "cert.pem"), "key_file": str(tmp_path / "key.pem")},
        "routes": [
            {**MP, "previous_token": "${OLD:-}", "app_id": "wx0123456789abcdef", "encoding_aes_key": "${A}"}
        ],
        "store": f"sqlite:///{tmp_path}/never/created/state.db",
    }
    # An exporter pointing at a port nobody listens on: check builds the provider but exports nothing.
    env = {
        "A": AES,
        "OLD": "",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    }
    out = wxgate(tmp_path, config, "check", env)
    assert out.returncode == 0, out.stderr
    assert "ok (1 routes)" in out.stdout and "a-real-token" not in out.stdout
    assert "previous_token" not in out.stdout  # empty: simply absent
    assert not (tmp_path / "never").exists()  # the store was not opened


def test_run_refuses_a_store_it_cannot_open_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    out = wxgate(tmp_path, {"store": f"sqlite:///{tmp_path}/a-file/state.db"}, "run", {})
    assert out.returncode == 1
    assert "wxgate: cannot open the store: cannot open sqlite store" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_running_sidecar_with_an_empty_secret_is_never_started(tmp_path: Path) -> None:
    """The failure mode: ``docker run -e WECHAT_TOKEN=$WECHAT_TOKEN`` with the host variable unset."""
    s = Sidecar(tmp_path, {"routes": [{**MP, "token": "${WECHAT_TOKEN}"}]}, env={"WECHAT_TOKEN": ""})
    with pytest.raises(RuntimeError, match="exited with 2"):
        s.start()
    assert s.stop() == 2
    assert "routes[0].token: is empty" in s.logs()


def test_run_reports_a_taken_admin_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = wxgate(tmp_path, {"admin": f"127.0.0.1:{taken.getsockname()[1]}"}, "run", {})
    assert out.returncode == 1
    assert "wxgate: cannot listen: [Errno 98]" in out.stderr and "address already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_check_lists_every_broken_route_and_the_certificate(tmp_path: Path) -> None:
    config = {
        "tls": rsa1024_certificate(tmp_path),
        "routes": [
            {**MP, "app_id": "wx0123456789abcdef", "encoding_aes_key": "${A}"},
            {"name": "sw", "path": "/sw", "protocol": "standard-webhooks", "secret": "${S}"},
        ],
    }
    out = wxgate(tmp_path, config, "check", {"A": "short", "S": "whsec_not!base64"})
    assert out.returncode == 2
    for problem in (
        "route mp: an EncodingAESKey",
        "route sw: a Standard Webhooks secret",
        "tls: OpenSSL refuses",
    ):
        assert problem in out.stderr
