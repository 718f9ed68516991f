"""Fixtures that run real processes: the demo backend and wxgate itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import Backend

TOKEN = "integration-token"
ENV = {"WX_TOKEN": TOKEN}


def pay_v3_route(cert: Path, mch_id: str, **over: Any) -> dict[str, Any]:
    """A WeChat Pay v3 route at ``/pay/v3`` trusting the platform certificate file ``cert`` (APIv3 key ``${V3}``)."""
    return {
        "name": "pay3",
        "path": "/pay/v3",
        "protocol": "wechat-pay-v3",
        "apiv3_key": "${V3}",
        "mch_id": mch_id,
        "platform_certificates": [str(cert)],
        **over,
    }


def pay_v2_route(mch_id: str, **over: Any) -> dict[str, Any]:
    """A WeChat Pay v2 route at ``/pay/v2`` (API key ``${PAY}``)."""
    return {
        "name": "pay2",
        "path": "/pay/v2",
        "protocol": "wechat-pay-v2",
        "api_key": "${PAY}",
        "mch_id": mch_id,
        **over,
    }


def mp_route(**over: Any) -> dict[str, Any]:
    return {"name": "mp", "path": "/wechat/callback", "protocol": "wechat-mp", "token": "${WX_TOKEN}", **over}


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("integration")


@pytest.fixture(scope="module")
def backend(tmp_module: Path) -> Iterator[Backend]:
    b = Backend(tmp_module)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def fresh_backend(backend: Backend) -> Backend:
    backend.set_mode("passive")
    from tests.support.procs import http

    http("POST", backend.url + "/_demo/reset")
    return backend
