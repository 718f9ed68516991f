"""Route path templates (``/open/{appid}/callback``): what a template matches, what it captures, and that every
other spelling of it is refused like a fixed path's."""

from __future__ import annotations

from typing import Any

import pytest
from mitmproxy.test import tflow

from proxy.config import parse_config
from proxy.pipeline.routes import PathTemplate, RouteTable
from tests.addons.conftest import routed

APPID = "wxba5fad812f8e6fb9"
OPEN = {
    "name": "open",
    "path": "/open/{appid}/callback",
    "protocol": "wechat-open-platform",
    "kind": "messages",
    "component_app_id": "wx134c8103faa5a59e",
    "token": "${T}",
    "encoding_aes_key": "${K}",
}
ENV = {"T": "unit-token", "K": "A" * 43}


def table(*routes: dict[str, Any]) -> RouteTable:
    return RouteTable.from_config(parse_config({"routes": list(routes or [OPEN])}, ENV))


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (f"/open/{APPID}/callback", {"appid": APPID}),
        (f"/open/{APPID}/callback?signature=1&openid=o", {"appid": APPID}),
        ("/open/wx0000000000000000/callback", {"appid": "wx0000000000000000"}),
    ],
)
def test_a_template_matches_an_appid_segment_and_captures_it(path: str, params: dict[str, str]) -> None:
    route = table().match(path)
    assert route is not None and route.name == "open"
    assert route.path_params(path) == params


def test_the_console_example_path_with_the_appid_first() -> None:
    rt = table({**OPEN, "path": "/{appid}/revice"})  # https://www.qq.com/$APPID$/revice (§A2.3)
    route = rt.match(f"/{APPID}/revice?nonce=1")
    assert route is not None and route.path_params(f"/{APPID}/revice") == {"appid": APPID}
    assert rt.match("/revice") is None and rt.impersonated(f"/{APPID.upper()}/revice") is route


def test_exact_paths_win_over_templates() -> None:
    mp = {"name": "mp", "path": f"/open/{APPID}/callback", "protocol": "wechat-mp", "token": "${T}"}
    rt = table(OPEN, mp)
    exact = rt.match(f"/open/{APPID}/callback")
    templated = rt.match("/open/wx0000000000000000/callback")
    assert exact is not None and exact.name == "mp" and exact.path_params(f"/open/{APPID}/callback") == {}
    assert templated is not None and templated.name == "open"


@pytest.mark.parametrize(
    "path",
    [
        f"/open/{APPID}/callback/",
        f"/open/{APPID.upper()}/callback",  # WXBA5FAD…
        f"/open/%77{APPID[1:]}/callback",  # %77 is w
        f"/OPEN/{APPID}/callback",
        f"/open/{APPID}/Callback",
        f"/open//{APPID}/callback",
        f"/open/{APPID};x/callback",
        f"/open/{APPID}./callback",
        f"/open/./{APPID}/callback",
        f"/open/{APPID}/callback.json",
        f"/open/{APPID}/callback/more",
        f"/index.php/open/{APPID}/callback",
        f"/x?s=/open/{APPID}/callback",
        "/open/hello/callback",  # not an appid: never the route's, never passed through
        "/open/{appid}/callback",
        "/open/wx0000000000000000000/callback",
    ],
)
def test_other_spellings_of_a_template_are_refused_as_noncanonical(path: str) -> None:
    f = tflow.tflow()
    f.request.path = path
    ex = routed(f, table())
    assert f.response is not None and f.response.status_code == 400
    assert ex.route is None and (ex.outcome.route, ex.outcome.reason) == ("open", "noncanonical_path")


@pytest.mark.parametrize(
    "path", ["/open/callback", f"/open/{APPID}", f"/open/{APPID}/other", "/elsewhere", "/open/a/b/c"]
)
def test_paths_a_template_does_not_name_pass_through(path: str) -> None:
    rt = table()
    assert rt.match(path) is None and rt.impersonated(path) is None


def test_two_templates_and_a_fixed_route_share_a_table() -> None:
    auth = {**OPEN, "name": "auth", "kind": "authorization", "path": "/open/auth"}
    other = {**OPEN, "name": "other", "path": "/platform2/{appid}/callback"}
    rt = table(OPEN, auth, other)
    hit = rt.match(f"/platform2/{APPID}/callback")
    assert hit is not None and hit.name == "other"
    assert (
        (r := rt.match("/open/auth?x=1")) is not None
        and r.name == "auth"
        and r.path_params("/open/auth") == {}
    )
    assert (r := rt.impersonated(f"/PLATFORM2/{APPID}/callback")) is not None and r.name == "other"


def test_fixed_paths_have_no_template() -> None:
    assert PathTemplate.parse("/open/auth") is None
    template = PathTemplate.parse("/a/{appid}/b")
    assert template is not None and template.canonical() == ("a", None, "b")
    assert template.capture(f"/a/{APPID}/b") == {"appid": APPID} and template.capture("/a/b") is None
