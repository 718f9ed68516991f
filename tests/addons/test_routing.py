from __future__ import annotations

import pytest
from mitmproxy.test import tflow

from addons.routing import Routing
from addons.start import ExchangeStart
from proxy.pipeline.exchange import exchange
from proxy.pipeline.routes import path_segments
from tests.addons.conftest import table


def test_configured_path_gets_its_route() -> None:
    f = tflow.tflow()
    f.request.path = "/wx?signature=1"
    ExchangeStart().requestheaders(f)
    Routing(table()).requestheaders(f)
    ex = exchange(f)
    assert ex is not None and ex.route is not None
    assert (ex.outcome.route, ex.outcome.protocol) == ("mp", "wechat-mp")
    assert f.response is None


def test_unknown_path_passes_through_by_default() -> None:
    f = tflow.tflow()
    f.request.path = "/elsewhere"
    ExchangeStart().requestheaders(f)
    Routing(table()).requestheaders(f)
    ex = exchange(f)
    assert ex is not None and ex.route is None
    assert ex.outcome.verdict == "passthrough"
    assert f.response is None


def test_unknown_path_is_denied_in_deny_mode() -> None:
    f = tflow.tflow()
    f.request.path = "/elsewhere"
    ExchangeStart().requestheaders(f)
    Routing(table(), "deny").requestheaders(f)
    assert f.response is not None and f.response.status_code == 404
    ex = exchange(f)
    assert ex is not None and (ex.outcome.verdict, ex.outcome.reason) == ("denied", "unknown_route")


def test_already_answered_flow_is_left_alone() -> None:
    f = tflow.tflow(resp=True)
    f.request.path = "/wx"
    ExchangeStart().requestheaders(f)
    Routing(table()).requestheaders(f)
    ex = exchange(f)
    assert ex is not None and ex.route is None


@pytest.mark.parametrize(
    "path",
    [
        "/wx/",
        "/WX",
        "//wx",
        "/%77x",
        "/%2577x",
        "/wx;jsessionid=1",
        "/./wx",
        "/a/../wx",
        "/wx.",
        "/wx.json",
        "/wx%00.jpg",
        "/wx%3Fa=1",
        "/ｗx",
        "\\wx",
        "/wx#frag",
    ],
)
def test_another_spelling_of_a_route_path_is_refused_under_that_route(path: str) -> None:
    f = tflow.tflow()
    f.request.path = path
    ExchangeStart().requestheaders(f)
    Routing(table()).requestheaders(f)
    ex = exchange(f)
    assert f.response is not None and f.response.status_code == 400
    assert ex is not None and ex.route is None  # never verified, never forwarded, never passed through
    assert (ex.outcome.route, ex.outcome.verdict, ex.outcome.reason) == (
        "mp",
        "rejected",
        "noncanonical_path",
    )


@pytest.mark.parametrize(
    "path",
    [
        "/wxa",
        "/w/x",
        "/x/wx",
        "/",
        "/elsewhere;jsessionid=1",
        "/x?next=/other",
        "/x?a=wx",
        "/x?u=http://h/wxa",
    ],
)
def test_paths_that_are_not_a_spelling_of_a_route_pass_through(path: str) -> None:
    f = tflow.tflow()
    f.request.path = path
    ExchangeStart().requestheaders(f)
    Routing(table()).requestheaders(f)
    ex = exchange(f)
    assert f.response is None and ex is not None and ex.outcome.verdict == "passthrough"


@pytest.mark.parametrize(
    "target",
    [
        "/wx/more",  # a mounted handler (Express app.use, ServeMux subtree, Spring /**)
        "/WX/a/b",
        "/index.php?s=/wx",  # ThinkPHP's path variable
        "/index.php?/wx",  # CodeIgniter's query-string routing
        "/index.php?r=%2Fwx%2F",
        "/x?route=/wx/sub",
        "/index.php/wx",  # front controllers: Laravel, Symfony, ThinkPHP, CodeIgniter, Yii
        "/app/index.php/WX/x",
        "/index.php?s=wx",  # ThinkPHP s, Yii r, Drupal q route without a leading slash
        "/index.php?r=wx",
        "/(S(abc))/wx",  # ASP.NET cookieless session
        "/(X(1)S(abc))/wx",
        "/x?a=%252Fwx",
    ],
)
def test_a_path_below_a_route_or_a_route_named_by_the_query_is_refused(target: str) -> None:
    assert table().impersonated(target) is not None


def test_a_script_route_also_claims_its_path_info() -> None:
    rt = table(path="/pay/notify.php")
    assert rt.impersonated("/pay/notify.php/anything") is not None  # PHP runs notify.php with PATH_INFO
    assert rt.impersonated("/PAY//notify.php") is not None
    assert rt.impersonated("/pay/notify") is not None
    assert rt.impersonated("/pay/other.php") is None
    assert rt.match("/pay/notify.php?x=1") is not None


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("/wechat/callback", ("wechat", "callback")),
        ("/wechat%2Fcallback", ("wechat", "callback")),
        ("/a/./b/../../wechat//callback/", ("wechat", "callback")),
        ("/../../wechat", ("wechat",)),
        ("/WeChat;v=1/CallBack;jsessionid=2", ("wechat", "callback")),
        ("/wechat/x/%252e%252e/callback", ("wechat", "callback")),
    ],
)
def test_path_segments(path: str, segments: tuple[str, ...]) -> None:
    assert path_segments(path) == segments
