"""Mini Program (and Channels shop) push traffic: signed and encrypted requests in each mode and format, and the
decoder for the replies they get.

The sender side of :mod:`proxy.protocols.wechat_miniprogram`, for ``wxgate send``, tests and demos; pure given its
inputs (randomness through ``random_bytes``), in the style of :mod:`proxy.tools.traffic`. Modes
(PROTOCOLS-MINI-OPEN.md §A1.2): ``plaintext`` (``signature`` only), ``compatible`` (the plaintext fields plus
``Encrypt``) and ``safe`` (``ToUserName`` and ``Encrypt``), the last two with ``encrypt_type=aes`` and
``msg_signature``. An XML push is an Official Account push on the wire
(:func:`proxy.tools.traffic.mp_message` builds the same).
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal
from urllib.parse import urlencode

from proxy.protocols import payload, wxcrypt, xmlmsg
from proxy.protocols.base import Rejected
from proxy.tools.traffic import JSON, XML, Outbound, RandomBytes, mp_url_check

Mode = Literal["plaintext", "compatible", "safe"]
Format = Literal["json", "xml"]
MODES: tuple[Mode, ...] = ("plaintext", "compatible", "safe")

url_check = mp_url_check  # GET URL verification is the Official Account's (§A1.2)


def push(
    path: str,
    token: str,
    message: bytes,
    timestamp: str,
    nonce: str,
    *,
    fmt: Format = "json",
    mode: Mode = "safe",
    encoding_aes_key: str | None = None,
    app_id: str = "",
    openid: str | None = None,
    random_bytes: RandomBytes = os.urandom,
) -> Outbound:
    """A push of ``message`` (a JSON or XML document in ``fmt``) in ``mode``; encrypted modes need
    ``encoding_aes_key`` and ``app_id`` (the mini program's AppID, the envelope's receiveid)."""
    if mode != "plaintext" and encoding_aes_key is None:
        raise ValueError(f"{mode} mode needs encoding_aes_key")
    query = {
        "signature": wxcrypt.sha1_signature(token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
    }
    if openid is not None:
        query["openid"] = openid
    headers = (("content-type", JSON if fmt == "json" else XML),)
    if mode == "plaintext" or encoding_aes_key is None:
        return Outbound("POST", f"{path}?{urlencode(query)}", headers, message)
    aes = wxcrypt.AesKey.decode("current", encoding_aes_key).key
    env = wxcrypt.envelope(token, aes, message, app_id, timestamp, nonce, random_bytes(wxcrypt.RANDOM_LEN))
    fields = _fields(message, fmt)
    outer = dict(fields) if mode == "compatible" else {"ToUserName": fields.get("ToUserName", "")}
    outer["Encrypt"] = env.encrypt
    query.update(encrypt_type="aes", msg_signature=env.signature)
    if fmt == "xml":
        body = xmlmsg.build({k: str(v) for k, v in outer.items()})
    else:
        body = json.dumps(outer, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    return Outbound("POST", f"{path}?{urlencode(query)}", headers, body)


def _fields(message: bytes, fmt: Format) -> dict[str, Any]:
    """The message's fields for the envelope beside ``Encrypt`` (none when it cannot be read: a hostile message
    is still sent, encrypted, to see it refused after decryption)."""
    try:
        doc = json.loads(message) if fmt == "json" else xmlmsg.parse(message)
    except (ValueError, RecursionError, Rejected):
        return {}
    return doc if isinstance(doc, dict) else {}


def decode_reply(body: bytes, token: str, encoding_aes_key: str, app_id: str) -> bytes:
    """What a reply says: an encrypted one (JSON ``{"Encrypt","MsgSignature","TimeStamp","Nonce"}`` or the XML
    envelope) checked against its own ``MsgSignature`` and decrypted; any other body (``success``, the xpay
    acknowledgement) as it is. ValueError if the envelope's signature or receiveid is wrong."""
    stripped = body.strip()
    fields: dict[str, str]
    if stripped[:1] == b"{":
        fields = payload.flatten(json.loads(stripped, parse_int=str))
    elif stripped[:1] == b"<":
        fields = xmlmsg.parse(stripped)
    else:
        return body
    if "Encrypt" not in fields:
        return body
    parts = (fields.get("TimeStamp", ""), fields.get("Nonce", ""), fields["Encrypt"])
    if wxcrypt.sha1_signature(token, *parts) != fields.get("MsgSignature"):
        raise ValueError("the reply's MsgSignature does not match its TimeStamp, Nonce and Encrypt")
    key = wxcrypt.AesKey.decode("current", encoding_aes_key)
    try:
        return wxcrypt.decrypt([key], fields["Encrypt"], (app_id,)).message
    except Rejected as e:
        raise ValueError(f"the reply does not decrypt for {app_id}: {e.reason}") from None
