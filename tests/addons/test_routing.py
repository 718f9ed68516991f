from __future__ import annotations

from mitmproxy.test import tflow

from addons.routing import Routing
from proxy.exchange import exchange
from tests.addons.conftest import table


def test_configured_path_gets_its_route() -> None:
    f = tflow.tflow()
    f.request.path = "/wx?signature=1"
    Routing(table()).requestheaders(f)
    ex = exchange(f)
    assert ex is not None and ex.route is not None
    assert (ex.outcome.route, ex.outcome.protocol) == ("mp", "wechat-mp")
    assert f.response is None


def test_unknown_path_passes_through_by_default() -> None:
    f = tflow.tflow()
    f.request.path = "/elsewhere"
    Routing(table()).requestheaders(f)
    ex = exchange(f)
    assert ex is not None and ex.route is None
    assert ex.outcome.verdict == "passthrough"
    assert f.response is None


def test_unknown_path_is_denied_in_deny_mode() -> None:
    f = tflow.tflow()
    f.request.path = "/elsewhere"
    Routing(table(), "deny").requestheaders(f)
    assert f.response is not None and f.response.status_code == 404
    ex = exchange(f)
    assert ex is not None and (ex.outcome.verdict, ex.outcome.reason) == ("denied", "unknown_route")


def test_already_answered_flow_is_left_alone() -> None:
    f = tflow.tflow(resp=True)
    f.request.path = "/wx"
    Routing(table()).requestheaders(f)
    ex = exchange(f)
    assert ex is not None and ex.route is None
