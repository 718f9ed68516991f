"""What ``wxgate send`` makes of a reply from a Mini Program, Channels shop or Open Platform route.

The reply is read as the sender reads it: an encrypted one (JSON ``Encrypt``/``MsgSignature``/``TimeStamp``/
``Nonce`` or the XML envelope) is checked against its own ``MsgSignature`` and opened with the route's key for the
receiveid WeChat expects (the mini program's appid, the platform's component appid), and its plaintext shown.
:func:`accepted` says whether WeChat would take the answer and stop retrying:

- a Mini Program or shop: status 200 and ``success``, an empty body, or a reply in the route's format that opens
  (an ``xpay_*`` acknowledgement only with ``ErrCode`` 0);
- an Open Platform authorization URL: exactly ``success``;
- an Open Platform message URL: status 200 and ``success``, empty, or a passive reply sealed for the component.

Other routes have no rule here (``None``): :func:`proxy.tools.sender.accepted` decides.
"""

from __future__ import annotations

import json

from proxy.config import RouteBase, WechatMiniProgramRoute, WechatOpenPlatformRoute
from proxy.protocols.base import Rejected
from proxy.tools import traffic_miniprogram, traffic_open

ACKS = (b"", b"success")


def read(route: RouteBase, body: bytes) -> bytes | None:
    """The plaintext of an encrypted reply (``body`` itself when it is not encrypted); ``None`` for routes with
    no rule here. ValueError when the reply's signature or receiveid is wrong."""
    if isinstance(route, WechatMiniProgramRoute):
        if route.encoding_aes_key is None:
            return body
        key = route.encoding_aes_key.reveal()
        try:
            return traffic_miniprogram.decode_reply(body, route.token.reveal(), key, route.app_id or "")
        except Rejected as e:  # an envelope that does not parse
            raise ValueError(f"the reply is not {route.format.upper()}: {e.reason}") from None
    if isinstance(route, WechatOpenPlatformRoute):
        token, key = route.token.reveal(), route.encoding_aes_key.reveal()
        return traffic_open.decode_reply(body, token, key, route.component_app_id)
    return None


def accepted(route: RouteBase, status: int, body: bytes) -> bool | None:
    """Whether the sender of ``route`` takes this reply (see the module docstring); ``None``: no rule here."""
    if isinstance(route, WechatOpenPlatformRoute) and route.kind == "authorization":
        return status == 200 and body == b"success"
    if not isinstance(route, WechatMiniProgramRoute | WechatOpenPlatformRoute):
        return None
    if status != 200:
        return False
    stripped = body.strip()
    if stripped in ACKS:
        return True
    expected = b"{" if isinstance(route, WechatMiniProgramRoute) and route.format == "json" else b"<"
    if stripped[:1] != expected:
        return False
    try:
        plain = read(route, body)
    except ValueError:
        return False
    return expected == b"<" or _err_code(plain or b"") in (None, 0)


def _err_code(document: bytes) -> int | None:
    """``ErrCode`` of a JSON answer (an ``xpay_*`` acknowledgement), ``None`` when it carries none."""
    try:
        doc = json.loads(document)
    except ValueError:
        return None
    code = doc.get("ErrCode") if isinstance(doc, dict) else None
    return code if isinstance(code, int) else None
