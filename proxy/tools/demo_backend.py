"""A plaintext-only legacy backend for demos and tests, which misbehaves on demand and counts what it got.

Modes (``--mode`` or ``POST /_demo/mode`` with the mode as body):
``passive`` (default: a text passive reply echoing the message; see below for Mini Programs and the Open Platform),
``transfer`` (a Mini Program user message handed to customer service), ``success``, ``empty``, ``json``, ``html500``,
``status201``, ``ok`` (the bare word), ``slow:N`` (sleep N seconds, then passive; ``slow:N:MODE`` then answer as MODE), ``down`` (drop the connection),
``fail`` (500 plain), ``payfail`` (Pay v2 FAIL XML), ``paysuccess`` (Pay v2 SUCCESS XML), ``v3fail`` (FAIL JSON),
``html200`` (an HTML error page with status 200), ``v3error200`` (``{"code":"ERROR"}`` JSON with status 200).
``GET /_demo/stats`` returns ``{"count": N, "requests": [...]}`` (each with the ``mode`` that answered it);
``POST /_demo/reset`` clears them.

Answers are plaintext (wxgate seals them). In ``passive`` mode the sender (wxgate's ``X-Wxgate-Protocol`` header)
decides: a Mini Program's JSON push gets ``success`` (an XML one the echo); an Open Platform authorization event
(ticket, authorized, …) ``success``, and the platform's message URL the 全网发布 release-test answers: text
``TESTCOMPONENT_MSG_TYPE_TEXT`` a passive text ``TESTCOMPONENT_MSG_TYPE_TEXT_callback``, ``QUERY_AUTH_CODE:…`` an
empty body, an event a passive text ``<Event>from_callback``. In ``transfer`` mode a Mini Program (or Channels
shop) user message gets the one passive reply documented for it, ``transfer_customer_service``, in the body's
format (JSON or XML); events, and a sealed push this backend cannot read, get ``success``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from proxy.protocols import xmlmsg
from proxy.protocols.base import Rejected


def passive_text(msg: dict[str, str], content: str) -> bytes:
    return xmlmsg.build(
        {
            "ToUserName": msg.get("FromUserName", ""),
            "FromUserName": msg.get("ToUserName", ""),
            "CreateTime": int(time.time()),
            "MsgType": "text",
            "Content": content,
        }
    )


FIXED: dict[str, tuple[int, str, bytes]] = {  # mode: (status, content type, body)
    "success": (200, "text/plain", b"success"),
    "empty": (200, "text/plain", b""),
    "ok": (200, "text/plain", b"ok"),
    "json": (200, "application/json", b'{"errcode":0,"errmsg":"ok"}'),
    "html500": (500, "text/html", b"<html><body><h1>500 Internal Server Error</h1></body></html>"),
    "status201": (201, "text/plain", b"created"),
    "fail": (500, "text/plain", b"backend failed"),
    "payfail": (200, "text/xml", b"<xml><return_code><![CDATA[FAIL]]></return_code></xml>"),
    "paysuccess": (
        200,
        "text/xml",
        b"<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>",
    ),
    "v3fail": (500, "application/json", b'{"code":"FAIL","message":"busy"}'),
    "html200": (200, "text/html", b"<!DOCTYPE html><html><body><h1>Server Error</h1></body></html>"),
    "v3error200": (200, "application/json", b'{"code":"ERROR","message":"db down"}'),
}


def _passive(request: web.Request, body: bytes) -> web.Response:
    """A text passive reply echoing the message (``success`` when the body is no WeChat XML); Mini Program and
    Open Platform pushes as the module docstring says."""
    protocol = request.headers.get("x-wxgate-protocol", "")
    if protocol == "wechat-miniprogram" and body.lstrip()[:1] == b"{":
        return web.Response(text="success")
    try:
        msg = xmlmsg.parse(body)
    except Rejected:
        return web.Response(text="success")
    if protocol == "wechat-open-platform":
        return _open_platform(msg)
    return _text(msg, f"echo: {msg.get('Content', msg.get('Event', ''))}")


def _text(msg: dict[str, str], content: str) -> web.Response:
    return web.Response(body=passive_text(msg, content), content_type="application/xml")


def _transfer(request: web.Request, body: bytes) -> web.Response:
    """A user message is handed to customer service (the one passive reply documented for it), in its format."""
    try:
        msg = json.loads(body) if body.lstrip()[:1] == b"{" else xmlmsg.parse(body)
    except (ValueError, Rejected):
        return web.Response(text="success")
    if not isinstance(msg, dict) or msg.get("MsgType", "event") == "event":
        return web.Response(text="success")  # events, and a sealed push this plaintext backend cannot read
    reply: dict[str, str | int] = {
        "ToUserName": str(msg.get("FromUserName", "")),
        "FromUserName": str(msg.get("ToUserName", "")),
        "CreateTime": int(time.time()),
        "MsgType": "transfer_customer_service",
    }
    if body.lstrip()[:1] == b"{":
        return web.json_response(reply)
    return web.Response(body=xmlmsg.build(reply), content_type="application/xml")


def _open_platform(msg: dict[str, str]) -> web.Response:
    """A third-party platform's URLs: authorization events ``success``, messages the 全网发布 release test."""
    if "InfoType" in msg or "AppId" in msg:  # the authorization URL (sealed or not)
        return web.Response(text="success")
    content = msg.get("Content", "")
    if msg.get("MsgType") == "event":
        return _text(msg, f"{msg.get('Event', '')}from_callback")
    if content == "TESTCOMPONENT_MSG_TYPE_TEXT":
        return _text(msg, "TESTCOMPONENT_MSG_TYPE_TEXT_callback")
    if content.startswith("QUERY_AUTH_CODE:"):  # "5秒内返回空串": the code goes to api_query_auth instead
        return web.Response(text="")
    return _text(msg, f"echo: {content}")


def _down(request: web.Request, body: bytes) -> web.Response:
    """Drop the connection without an answer."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


def _fixed(status: int, content_type: str, data: bytes) -> Callable[[web.Request, bytes], web.Response]:
    return lambda request, body: web.Response(status=status, body=data, content_type=content_type)


MODES: dict[str, Callable[[web.Request, bytes], web.Response]] = {
    "passive": _passive,
    "transfer": _transfer,
    "down": _down,
    **{mode: _fixed(*answer) for mode, answer in FIXED.items()},
}


class DemoBackend:
    def __init__(self, mode: str = "passive") -> None:
        self.mode = mode
        self.requests: list[dict[str, Any]] = []
        # Header fields as long as wxgate lets through (a request head up to 64 KiB), not aiohttp's 8 KiB.
        app = web.Application(client_max_size=4 * 1024 * 1024, handler_args={"max_field_size": 64 * 1024})
        app.router.add_get("/_demo/stats", self.stats)
        app.router.add_post("/_demo/mode", self.set_mode)
        app.router.add_post("/_demo/reset", self.reset)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.app = app

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"count": len(self.requests), "mode": self.mode, "requests": self.requests})

    async def set_mode(self, request: web.Request) -> web.Response:
        self.mode = (await request.text()).strip()
        return web.Response(text=self.mode)

    async def reset(self, request: web.Request) -> web.Response:
        self.requests.clear()
        return web.Response(text="reset")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": {
                    k.lower(): v
                    for k, v in request.headers.items()
                    if k.lower().startswith(("x-", "traceparent", "tracestate"))
                },
                "body": body.decode("utf-8", "replace"),
                "at": time.time(),
                "mode": self.mode,  # what answered it: tests tell taken requests from refused ones
            }
        )
        mode = self.mode
        if mode.startswith("slow:"):
            _, seconds, then = (mode + ":passive").split(":", 2)
            await asyncio.sleep(float(seconds))
            mode = then.split(":", 1)[0]
        return MODES.get(mode, _passive)(request, body)


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not host:port")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wxgate demo-backend", description=__doc__.splitlines()[0])
    p.add_argument(
        "--listen", type=_listen, default="127.0.0.1:9000", help="host:port (default 127.0.0.1:9000)"
    )
    p.add_argument("--mode", default="passive", help=f"one of {', '.join(MODES)}, slow:N or slow:N:MODE")
    args = p.parse_args(argv)
    host, port = args.listen
    backend = DemoBackend(args.mode)
    listening = {"msg": "demo backend listening", "listen": f"{host}:{port}", "mode": args.mode}
    print(json.dumps(listening), flush=True)
    web.run_app(backend.app, host=host, port=port, print=None, access_log=None)
    return 0
