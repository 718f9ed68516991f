"""The ``wxgate`` command line as users type it, through the installed entry point (``.venv/bin/wxgate``):
``-c FILE`` before or after the subcommand (the later one wins), the demo backend only as the ``demo-backend``
subcommand (never because some argument's value is that word), and the errors a user meets as one line on stderr
with their exit status, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.procs import ROOT, Sidecar
from tests.support.redis_servers import free_port

pytestmark = pytest.mark.integration

WXGATE = str(Path(sys.executable).with_name("wxgate"))
MP = {"name": "mp", "path": "/mp", "protocol": "wechat-mp", "token": "${T}"}


def wxgate(tmp: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "T": "a-real-token"}
    return subprocess.run([WXGATE, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)


def config(tmp: Path, name: str, store: str | None = None) -> Path:
    cfg = {
        "listen": f"127.0.0.1:{free_port()}",
        "admin": f"127.0.0.1:{free_port()}",
        "store": store or f"sqlite:///{tmp}/{name}.db",
        "routes": [MP],
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_entry_point_is_the_installed_one() -> None:
    assert Path(WXGATE).is_file(), "run `make .venv/.installed`: the tests call the installed wxgate"


@pytest.mark.parametrize(
    "args",
    [("-c", "good.yaml", "check"), ("check", "-c", "good.yaml"), ("check", "--config", "good.yaml")],
    ids=["before", "after", "after-long"],
)
def test_config_before_or_after_the_subcommand(tmp_path: Path, args: tuple[str, ...]) -> None:
    config(tmp_path, "good.yaml")
    out = wxgate(tmp_path, *args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("good.yaml: ok (1 routes)")


def test_the_later_config_wins(tmp_path: Path) -> None:
    config(tmp_path, "good.yaml")
    after_wins = wxgate(tmp_path, "-c", "missing.yaml", "check", "-c", "good.yaml")
    assert after_wins.returncode == 0, after_wins.stderr
    assert after_wins.stdout.startswith("good.yaml: ok")
    before_loses = wxgate(tmp_path, "-c", "good.yaml", "check", "-c", "missing.yaml")
    assert before_loses.returncode == 2
    assert before_loses.stderr == (
        "wxgate: configuration error:\nmissing.yaml: cannot read configuration (No such file or directory)\n"
    )


def test_the_default_config_is_proxy_yaml_in_the_working_directory(tmp_path: Path) -> None:
    config(tmp_path, "proxy.yaml")
    out = wxgate(tmp_path, "check")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("proxy.yaml: ok")


@pytest.mark.parametrize(
    "args",
    [
        ("outbox", "list", "-c", "o.yaml"),
        ("outbox", "-c", "o.yaml", "list"),
        ("-c", "o.yaml", "outbox", "list"),
    ],
)
def test_outbox_takes_the_config_at_every_level(tmp_path: Path, args: tuple[str, ...]) -> None:
    config(tmp_path, "o.yaml")
    out = wxgate(tmp_path, *args)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "queued=0 dead=0 oldest_age=0.0s\n"


def test_run_with_the_config_after_the_subcommand_serves(tmp_path: Path) -> None:
    sidecar = Sidecar(tmp_path, {"routes": [MP]}, env={"T": "a-real-token"})
    sidecar.args = [WXGATE, "run", "-c", str(sidecar.config_path)]
    sidecar.start()
    try:
        assert sidecar.metric("wxgate_build_info") == 1.0
    finally:
        assert sidecar.stop() == 0


def test_a_config_file_named_demo_backend_is_read_not_run(tmp_path: Path) -> None:
    config(tmp_path, "demo-backend")
    for args in (("-c", "demo-backend", "check"), ("check", "-c", "demo-backend")):
        out = wxgate(tmp_path, *args)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("demo-backend: ok (1 routes)")
        assert "demo backend listening" not in out.stdout


def test_an_option_value_equal_to_demo_backend_sends_it(tmp_path: Path) -> None:
    config(tmp_path, "proxy.yaml")
    closed = free_port()
    started = time.monotonic()
    out = wxgate(
        tmp_path, "send", "--content", "demo-backend", "--url", f"http://127.0.0.1:{closed}", "--retries", "0"
    )
    assert time.monotonic() - started < 20
    assert out.returncode == 1, out.stderr  # nothing answered: the send failed, no backend started
    assert out.stdout.startswith("attempt 1: status - in ")
    assert "demo backend listening" not in out.stdout


def test_demo_backend_is_the_subcommand_and_takes_its_own_options(tmp_path: Path) -> None:
    out = wxgate(tmp_path, "-c", "/etc/wxgate/proxy.yaml", "demo-backend", "--help")
    assert out.returncode == 0
    assert out.stdout.startswith("usage: wxgate demo-backend [-h] [--listen LISTEN] [--mode MODE]")
    bad = wxgate(tmp_path, "demo-backend", "--listen", "127.0.0.1:http")
    assert bad.returncode == 2
    assert "argument --listen: '127.0.0.1:http' is not host:port" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_options_of_another_subcommand_are_refused(tmp_path: Path) -> None:
    out = wxgate(tmp_path, "check", "--mode", "down")
    assert out.returncode == 2
    assert out.stderr.endswith("wxgate: error: unrecognized arguments: --mode down\n")


def test_a_store_that_cannot_open_is_one_line_for_outbox(tmp_path: Path) -> None:
    config(tmp_path, "o.yaml", store="sqlite:///proc/no-such-dir/state.db")
    out = wxgate(tmp_path, "outbox", "list", "-c", "o.yaml")
    assert out.returncode == 1
    assert out.stderr.startswith("wxgate: cannot open the store: cannot open sqlite store /proc/no-such-dir")
    assert "Traceback" not in out.stderr


def test_a_send_that_cannot_be_built_is_one_line(tmp_path: Path) -> None:
    v3 = {
        "name": "pay",
        "path": "/pay",
        "protocol": "wechat-pay-v3",
        "mch_id": "1900000001",
        "apiv3_key": "${K}",
        "public_keys": [{"id": "PUB_KEY_ID_0001", "file": str(tmp_path / "pub.pem")}],
    }
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(65537, 2048).public_key()
    (tmp_path / "pub.pem").write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cfg = tmp_path / "pay.yaml"
    cfg.write_text(yaml.safe_dump({"listen": "127.0.0.1:1", "store": "sqlite://:memory:", "routes": [v3]}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "K": "0123456789abcdef0123456789abcdef"}
    out = subprocess.run(
        [WXGATE, "send", "-c", str(cfg)], capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("wxgate send: Pay v3 notices are signed with WeChat Pay's private key")
    assert out.stdout == ""
