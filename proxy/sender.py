"""``wxgate send``: a WeChat sender simulator for smoke tests and demos.

It signs requests the way WeChat does and delivers them the way WeChat does: each attempt waits at most
``timeout`` (5 s) and a message that got no valid answer is re-sent ``retries`` (3) more times with the same
MsgId. Every attempt is printed with its status, latency and body.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp

from proxy.protocols import xmlmsg
from proxy.protocols.wechat_mp import signature


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path_query: str  # path plus query string
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    status: int  # 0 when no answer arrived
    seconds: float
    body: bytes
    error: str = ""


def _query(token: str, ts: int, nonce: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    q = {"signature": signature(token, str(ts), nonce), "timestamp": str(ts), "nonce": nonce}
    return q | (extra or {})


def mp_verify_url(path: str, token: str, now: int | None = None, echostr: str | None = None) -> Request:
    """The GET WeChat sends when the server URL is saved."""
    ts = int(time.time()) if now is None else now
    q = _query(token, ts, secrets.token_hex(5), {"echostr": echostr or str(secrets.randbelow(10**19))})
    return Request("GET", f"{path}?{urlencode(q)}", {}, b"")


def mp_message(
    path: str,
    token: str,
    fields: dict[str, str | int],
    now: int | None = None,
    nonce: str | None = None,
    openid: str = "oUser",
) -> Request:
    """A plaintext-mode POST of ``fields`` as WeChat XML."""
    ts = int(time.time()) if now is None else now
    q = _query(token, ts, nonce or str(secrets.randbelow(10**10)), {"openid": openid})
    return Request("POST", f"{path}?{urlencode(q)}", {"content-type": "text/xml"}, xmlmsg.build(fields))


def mp_text(to: str, sender: str, content: str, msg_id: int, now: int | None = None) -> dict[str, str | int]:
    ts = int(time.time()) if now is None else now
    return {
        "ToUserName": to,
        "FromUserName": sender,
        "CreateTime": ts,
        "MsgType": "text",
        "Content": content,
        "MsgId": msg_id,
    }


def mp_event(to: str, sender: str, event: str, key: str = "", now: int | None = None) -> dict[str, str | int]:
    ts = int(time.time()) if now is None else now
    return {
        "ToUserName": to,
        "FromUserName": sender,
        "CreateTime": ts,
        "MsgType": "event",
        "Event": event,
        "EventKey": key,
    }


def accepted(status: int, body: bytes) -> bool:
    """What ends WeChat's retries: an answer within the timeout (MP: any 200)."""
    return status == 200


async def deliver(
    base_url: str,
    build: Callable[[], Request],
    retries: int = 3,
    timeout: float = 5.0,
    gap: float = 0.0,
    is_accepted: Callable[[int, bytes], bool] = accepted,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> list[Attempt]:
    """Deliver like WeChat: up to ``1 + retries`` attempts, each bounded by ``timeout``.

    ``build`` is called per attempt, so a retry gets a fresh timestamp/nonce/signature as WeChat's do,
    while the message itself (MsgId) stays the same.
    """
    attempts: list[Attempt] = []
    async with aiohttp.ClientSession() as session:
        for n in range(1, retries + 2):
            req = build()
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    async with session.request(
                        req.method, base_url + req.path_query, headers=req.headers, data=req.body
                    ) as resp:
                        body = await resp.read()
                a = Attempt(n, resp.status, time.perf_counter() - started, body)
            except TimeoutError:
                a = Attempt(n, 0, time.perf_counter() - started, b"", "no answer within timeout")
            except aiohttp.ClientError as e:
                a = Attempt(n, 0, time.perf_counter() - started, b"", type(e).__name__)
            attempts.append(a)
            if on_attempt is not None:
                on_attempt(a)
            if a.status and is_accepted(a.status, a.body):
                break
            await asyncio.sleep(gap)
    return attempts
