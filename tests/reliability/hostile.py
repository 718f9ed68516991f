"""A corpus of hostile requests, as raw bytes, and a raw-socket client to send them.

Every case is something an attacker can send to a public callback URL: XML attacks (XXE, billion laughs,
quadratic blowup, deep nesting, huge attributes), broken encodings (invalid UTF-8, truncated base64, wrong
padding), oversized heads and bodies, HTTP framing conflicts (duplicate Content-Length, CL+TE), obsolete line
folds, spoofed ``X-Wxgate-*`` headers (in several spellings at once), other spellings of a route's path, and hostile
JSON on a Mini Program's routes (:data:`MINI_ROUTES`: duplicate keys, deep nesting, numbers no parser holds,
invalid UTF-8, non-objects, a body of the other format). Where a case needs to get past the signature to reach a parser, it
is signed correctly (a captured Official Account signature does not cover the body; an attacker who knows a
key is out of scope, but the parsers must hold anyway). Each case says which answers are acceptable:
``expect`` is a set of statuses (``FAIL_XML`` for WeChat Pay v2, whose documented refusal is 200 + FAIL XML).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.protocols import wechat_pay_v2, wxcrypt, xmlmsg
from proxy.tools import traffic, traffic_miniprogram
from tests.reliability.fleet import AES, APP_ID, MCH, PAY_KEY, ROUTES, TOKEN, Catalog
from tests.support.hostile_xml import (
    EXTERNAL_DTD,
    INTERNAL,
    LAUGHS,
    REPEATED_CONTAINER,
    REPEATED_IN_ONE_ITEM,
    REPEATED_LEAF,
    XXE,
    quadratic,
)

FAIL_XML = 1200  # stands for "200 with <return_code>FAIL</return_code>" in ``expect``
QUADRATIC = quadratic(20_000, 5_000)
DEEP = b"<xml>" + b"<a>" * 20_000 + b"x" + b"</a>" * 20_000 + b"</xml>"
HUGE_ATTRIBUTE = b'<xml><ToUserName a="' + b"A" * 200_000 + b'">gh</ToUserName></xml>'
BAD_UTF8 = b"<xml><ToUserName>\xff\xfe\xc3\x28</ToUserName><MsgId>1</MsgId></xml>"
DEEP_JSON = b'{"encrypt":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
# A Mini Program's push URLs (JSON and XML), beside the fleet's routes; plaintext mode is allowed, so a hostile
# body reaches the JSON parser past a signature that does not cover it.
MINI_ROUTES: list[dict[str, object]] = [
    {
        "name": f"mini-{fmt}",
        "path": f"/mini/{fmt}",
        "protocol": "wechat-miniprogram",
        "format": fmt,
        "token": "${TOKEN}",
        "app_id": APP_ID,
        "encoding_aes_key": "${AES}",
        "require_encryption": False,
        "decrypt_for_backend": True,
    }
    for fmt in ("json", "xml")
]
MINI_TEXT = b'{"ToUserName":"gh_test","FromUserName":"oUser","CreateTime":1714112445,"MsgType":"text",'
MINI_XML = b"<xml><ToUserName>gh_test</ToUserName><MsgType>text</MsgType><MsgId>1</MsgId></xml>"


def mini_text(rest: bytes) -> bytes:
    """A Mini Program customer-service text message in JSON, ending in ``rest`` (its last members)."""
    return MINI_TEXT + rest + b"}"


@dataclass(frozen=True)
class Case:
    name: str
    attack: str  # the family, for the figures
    wire: bytes
    expect: frozenset[int]


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer
    headers: dict[str, str]
    body: bytes

    @property
    def layer(self) -> str:
        """Who answered: mitmproxy's own error page, or wxgate's reply."""
        if not self.status:
            return "none"
        return "mitmproxy" if self.headers.get("server", "").startswith("mitmproxy") else "wxgate"

    @property
    def outcome(self) -> int:
        if self.status == 200 and b"<return_code><![CDATA[FAIL]]>" in self.body:
            return FAIL_XML
        return self.status


def head(method: str, target: str, headers: list[tuple[str, str]], body: bytes, length: bool = True) -> bytes:
    """A request as raw bytes; ``Content-Length`` is added unless ``length`` is False or framing is given."""
    names = {k.lower() for k, _ in headers}
    if length and not names & {"content-length", "transfer-encoding"}:
        headers = [*headers, ("Content-Length", str(len(body)))]
    lines = [f"{method} {target} HTTP/1.1", "Host: wxgate.test", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def send(port: int, wire: bytes, timeout: float = 5.0) -> Answer:
    """Write ``wire`` and read one HTTP answer (or the connection's end)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in range(0, len(wire), 65536):
            writer.write(wire[i : i + 65536])
            try:
                await writer.drain()
            except ConnectionError:
                break  # refused mid-upload: the answer is already waiting
        return await asyncio.wait_for(_read_answer(reader), timeout)
    except (TimeoutError, ConnectionError):
        return Answer(0, {}, b"")
    finally:
        writer.close()


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return Answer(status, headers, body)


def _now() -> str:
    return str(int(time.time()))


def _nonce() -> str:
    return os.urandom(6).hex()


class Corpus:
    """The cases, built against the routes of :mod:`tests.reliability.fleet`."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._aes = wxcrypt.AesKey.decode("current", AES).key

    # -- signed shells that carry a hostile part past the signature -------------------------------------------
    def mp_signed(self, body: bytes) -> bytes:
        """Official Account plaintext mode: a valid signature, which does not cover ``body``."""
        out = traffic.mp_message(ROUTES["mp"]["path"], TOKEN, body, _now(), _nonce())
        return head("POST", out.target, [("Content-Type", "text/xml")], body)

    def safe_outer(self, body: bytes, encrypt: str = "x") -> bytes:
        """Safe mode with a hostile outer body (parsed before msg_signature can be checked)."""
        ts, nonce = _now(), _nonce()
        query = {
            "signature": wxcrypt.sha1_signature(TOKEN, ts, nonce),
            "timestamp": ts,
            "nonce": nonce,
            "encrypt_type": "aes",
            "msg_signature": wxcrypt.sha1_signature(TOKEN, ts, nonce, encrypt),
        }
        return head(
            "POST", f"{ROUTES['mp-safe']['path']}?{urlencode(query)}", [("Content-Type", "text/xml")], body
        )

    def safe_encrypt(self, encrypt: str) -> bytes:
        """Safe mode, correctly signed over a hostile ``Encrypt`` value."""
        body = xmlmsg.build({"ToUserName": "gh_test", "Encrypt": encrypt})
        return self.safe_outer(body, encrypt)

    def safe_inner(self, inner: bytes, random16: bytes | None = None) -> bytes:
        """Safe mode whose decrypted message is hostile."""
        ts, nonce = _now(), _nonce()
        env = wxcrypt.envelope(TOKEN, self._aes, inner, APP_ID, ts, nonce, random16 or os.urandom(16))
        query = {
            "signature": wxcrypt.sha1_signature(TOKEN, ts, nonce),
            "timestamp": ts,
            "nonce": nonce,
            "encrypt_type": "aes",
            "msg_signature": env.signature,
        }
        body = xmlmsg.build({"ToUserName": "gh_test", "Encrypt": env.encrypt})
        return head(
            "POST", f"{ROUTES['mp-safe']['path']}?{urlencode(query)}", [("Content-Type", "text/xml")], body
        )

    def mini(
        self, message: bytes, mode: traffic_miniprogram.Mode = "plaintext", route: str = "json"
    ) -> bytes:
        """A Mini Program push of ``message`` to the ``route`` format's URL, signed (and sealed) in ``mode``."""
        fmt: traffic_miniprogram.Format = "xml" if route == "xml" else "json"
        out = traffic_miniprogram.push(
            f"/mini/{fmt}",
            TOKEN,
            message,
            _now(),
            _nonce(),
            fmt=fmt,
            mode=mode,
            encoding_aes_key=AES,
            app_id=APP_ID,
        )
        return head(out.method, out.target, list(out.headers), out.body)

    def mini_outer(self, body: bytes) -> bytes:
        """Safe mode on the JSON URL with a hostile envelope (parsed before msg_signature can be checked)."""
        wire = self.mini(mini_text(b'"Content":"x","MsgId":1'), mode="safe")
        target = wire.split(b" ", 2)[1].decode()
        return head("POST", target, [("Content-Type", "application/json")], body)

    def bad_padding(self) -> str:
        """A well-formed ciphertext whose plaintext ends in an invalid PKCS#7 pad."""
        plain = os.urandom(16) + (3).to_bytes(4, "big") + b"abc" + APP_ID.encode()
        plain += b"\x00" * (32 - len(plain) % 32)  # pad byte 0: never valid
        enc = Cipher(algorithms.AES(self._aes), modes.CBC(self._aes[:16])).encryptor()
        return base64.b64encode(enc.update(plain) + enc.finalize()).decode()

    def pay3(self, body: bytes, signature: str | None = None, probe: bool = False) -> bytes:
        """Pay v3 headers signed over ``body`` with the platform key (or a given signature)."""
        out = traffic.pay_v3_notify(
            ROUTES["pay3"]["path"],
            self.catalog._key,
            "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
            "0123456789abcdef0123456789abcdef",
            {"mchid": MCH},
            _now(),
            _nonce(),
            notification_id="EV-hostile",
            probe=probe,
        )
        headers = dict(out.headers)
        if body:  # re-sign a replacement body
            msg = f"{headers['wechatpay-timestamp']}\n{headers['wechatpay-nonce']}\n".encode() + body + b"\n"
            sig = self.catalog._key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
            headers["wechatpay-signature"] = base64.b64encode(sig).decode()
        if signature is not None:
            headers["wechatpay-signature"] = signature
        return head("POST", out.target, list(headers.items()), body or out.body)

    # -- the corpus ------------------------------------------------------------------------------------------
    def cases(self) -> list[Case]:
        mp, pay2, hooks, std, wecom = (ROUTES[r]["path"] for r in ("mp", "pay2", "hmac", "std", "wecom"))
        valid = self.catalog.request("mp", 1)
        body = valid.body
        target = valid.path_query
        xml = [("Content-Type", "text/xml")]
        bad4 = frozenset({400})
        c: list[tuple[str, str, bytes, set[int] | frozenset[int]]] = [
            # HTTP framing: mitmproxy's own parser answers
            (
                "duplicate Content-Length",
                "smuggling",
                head("POST", target, [("Content-Length", str(len(body))), ("Content-Length", "5")], body),
                {400},
            ),
            (
                "duplicate Content-Length, same value",
                "smuggling",
                head("POST", target, [("Content-Length", str(len(body)))] * 2, body),
                {400},
            ),
            (
                "Content-Length + Transfer-Encoding",
                "smuggling",
                head(
                    "POST", target, [("Content-Length", "5"), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n"
                ),
                {400},
            ),
            (
                "Transfer-Encoding + Content-Length",
                "smuggling",
                head(
                    "POST", target, [("Transfer-Encoding", "chunked"), ("Content-Length", "5")], b"0\r\n\r\n"
                ),
                {400},
            ),
            (
                "unknown Transfer-Encoding",
                "smuggling",
                head("POST", target, [("Transfer-Encoding", "xchunked")], body, length=False),
                {400},
            ),
            (
                "negative Content-Length",
                "smuggling",
                head("POST", target, [("Content-Length", "-1")], body),
                {400},
            ),
            ("malformed request line", "smuggling", b"POST /mp HTTP/1.1 extra\r\nHost: x\r\n\r\n", {400}),
            (
                "space before the colon",
                "smuggling",
                head("POST", target, [("Content-Length ", str(len(body)))], body),
                {400},
            ),
            (
                "obsolete line fold",
                "smuggling",
                head("POST", target, [*xml, ("X-Note", "a\r\n b")], body),
                {400},
            ),
            (
                "NUL in a header value",
                "smuggling",
                head("POST", target, [*xml, ("X-Note", "a\x00b")], body),
                {400},
            ),
            # sizes
            (
                "oversized header (70 KiB)",
                "oversized",
                head("POST", target, [*xml, ("X-Big", "a" * 70_000)], body),
                {431},
            ),
            (
                "10,000 headers",
                "oversized",
                head("POST", target, [*xml, *((f"X-H{i}", "v" * 8) for i in range(10_000))], body),
                {431},
            ),
            (
                "Content-Length over max_body",
                "oversized",
                head("POST", target, [*xml, ("Content-Length", "300000")], b"x" * 300_000),
                {413},
            ),
            (
                "Content-Length over body_size_limit",
                "oversized",
                head("POST", target, [*xml, ("Content-Length", "99999999999")], b""),
                {413},
            ),
            (
                "chunked body over max_body",
                "oversized",
                head("POST", target, [*xml, ("Transfer-Encoding", "chunked")], _chunked(b"<" * 300_000)),
                {413},
            ),
            (
                "chunked body over body_size_limit",
                "oversized",
                head("POST", target, [*xml, ("Transfer-Encoding", "chunked")], _chunked(b"<" * 1_200_000)),
                {413},
            ),
            (
                "gzip Content-Encoding",
                "encoding",
                head("POST", target, [*xml, ("Content-Encoding", "gzip")], body),
                {415},
            ),
            # XML, past a valid (body-less) signature
            ("XXE, external entity", "xml", self.mp_signed(XXE), bad4),
            ("internal entity", "xml", self.mp_signed(INTERNAL), bad4),
            ("billion laughs", "xml", self.mp_signed(LAUGHS), bad4),
            ("quadratic blowup", "xml", self.mp_signed(QUADRATIC), bad4),
            ("external DTD", "xml", self.mp_signed(EXTERNAL_DTD), bad4),
            ("20,000 levels of nesting", "xml", self.mp_signed(DEEP), bad4),
            ("invalid UTF-8 in XML", "encoding", self.mp_signed(BAD_UTF8), bad4),
            ("XXE in the safe-mode envelope", "xml", self.safe_outer(XXE), bad4),
            ("huge attribute (200 KB)", "xml", self.safe_outer(HUGE_ATTRIBUTE), bad4),
            ("XXE inside the ciphertext", "xml", self.safe_inner(XXE), bad4),
            ("billion laughs inside the ciphertext", "xml", self.safe_inner(LAUGHS), bad4),
            # repeated elements, one value of which a backend would read unchecked
            ("repeated top-level leaf", "repeated", self.mp_signed(REPEATED_LEAF), bad4),
            ("repeated top-level container", "repeated", self.mp_signed(REPEATED_CONTAINER), bad4),
            ("a leaf twice in one list item", "repeated", self.mp_signed(REPEATED_IN_ONE_ITEM), bad4),
            ("repeated leaf inside the ciphertext", "repeated", self.safe_inner(REPEATED_LEAF), bad4),
            (
                "Pay v2: signed notice with a second out_trade_no appended",
                "repeated",
                head("POST", pay2, xml, _appended(_paid(), b"<out_trade_no>OTHER</out_trade_no>")),
                {FAIL_XML},
            ),
            (
                "Pay v2: refund req_info repeating refund_fee",
                "repeated",
                head(
                    "POST",
                    pay2,
                    xml,
                    _refund(
                        wechat_pay_v2.encrypt_req_info(
                            PAY_KEY,
                            b"<root><refund_id>r</refund_id><refund_fee>1</refund_fee>"
                            b"<refund_fee>999</refund_fee><refund_status>SUCCESS</refund_status></root>",
                        )
                    ),
                ),
                {FAIL_XML},
            ),
            (
                "Pay v2: unsigned outer out_trade_no around a valid req_info",
                "unsigned",
                head(
                    "POST", pay2, xml, _appended(_refund(_req_info()), b"<out_trade_no>FORGED</out_trade_no>")
                ),
                {FAIL_XML},
            ),
            # JSON on a Mini Program's URLs, plaintext (past a signature that does not cover it) and sealed
            (
                "Mini Program: MsgId given twice",
                "repeated",
                self.mini(mini_text(b'"MsgId":1,"MsgId":2')),
                bad4,
            ),
            (
                "Mini Program: MsgId given twice inside the ciphertext",
                "repeated",
                self.mini(mini_text(b'"MsgId":1,"MsgId":2'), mode="safe"),
                bad4,
            ),
            (
                "Mini Program: JSON nested 50,000 deep",
                "json",
                self.mini(mini_text(b'"List":' + b"[" * 50_000 + b"]" * 50_000)),
                bad4,
            ),
            (
                "Mini Program: objects nested 9 deep inside the ciphertext",
                "json",
                self.mini(mini_text(b'"List":' + b'{"a":' * 8 + b"1" + b"}" * 8), mode="safe"),
                bad4,
            ),
            (
                "Mini Program: safe-mode envelope nested 50,000 deep",
                "json",
                self.mini_outer(
                    b'{"ToUserName":"gh_test","Encrypt":"x","a":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
                ),
                bad4,
            ),
            ("Mini Program: MsgId 1e999999", "json", self.mini(mini_text(b'"MsgId":1e999999')), bad4),
            (
                "Mini Program: MsgId 1e999999 inside the ciphertext",
                "json",
                self.mini(mini_text(b'"MsgId":1e999999'), mode="safe"),
                bad4,
            ),
            (
                "Mini Program: 100,000-digit MsgId",
                "json",
                self.mini(mini_text(b'"MsgId":' + b"7" * 100_000)),
                bad4,
            ),
            (
                "Mini Program: NaN CreateTime",
                "json",
                self.mini(mini_text(b'"MsgId":1,"CreateTime":NaN')),
                bad4,
            ),
            (
                "Mini Program: invalid UTF-8 in JSON",
                "encoding",
                self.mini(mini_text(b'"Content":"\xff\xfe\xc3\x28","MsgId":1')),
                bad4,
            ),
            (
                "Mini Program: invalid UTF-8 inside the ciphertext",
                "encoding",
                self.mini(
                    mini_text(b'"Content":"\xff\xfe","MsgId":1'),
                    mode="safe",
                ),
                bad4,
            ),
            (
                "Mini Program: a lone surrogate escape in a string",
                "encoding",
                self.mini(mini_text(b'"Content":"\\ud800","MsgId":1')),
                bad4,
            ),
            ("Mini Program: a JSON array", "json", self.mini(b"[" + mini_text(b'"MsgId":1') + b"]"), bad4),
            ("Mini Program: JSON null", "json", self.mini(b"null"), bad4),
            (
                "Mini Program: a JSON string inside the ciphertext",
                "json",
                self.mini(b'"gh_test"', mode="safe"),
                bad4,
            ),
            (
                "Mini Program: a JSON body on the XML route",
                "json",
                self.mini(mini_text(b'"MsgId":1'), route="xml"),
                bad4,
            ),
            ("Mini Program: an XML body on the JSON route", "xml", self.mini(MINI_XML), bad4),
            (
                "Mini Program: a JSON message sealed for the XML route",
                "json",
                self.mini(mini_text(b'"MsgId":1'), mode="safe", route="xml"),
                bad4,
            ),
            # envelopes
            ("truncated base64 Encrypt", "envelope", self.safe_encrypt(_ciphertext(self)[:-7]), {403}),
            (
                "Encrypt without its base64 padding",
                "envelope",
                self.safe_encrypt(_ciphertext(self).rstrip("=")),
                {403},
            ),
            (
                "Encrypt not a block multiple",
                "envelope",
                self.safe_encrypt(base64.b64encode(os.urandom(40)).decode()),
                {403},
            ),
            ("Encrypt with a bad PKCS#7 pad", "envelope", self.safe_encrypt(self.bad_padding()), {403}),
            ("non-ASCII Encrypt", "envelope", self.safe_encrypt("加密" * 20), {403}),
            (
                "robot JSON nested 50,000 deep",
                "json",
                head(
                    "POST",
                    f"{wecom}?msg_signature=a&timestamp=1&nonce=1",
                    [("Content-Type", "application/json")],
                    DEEP_JSON,
                ),
                bad4,
            ),
            (
                "Pay v3: truncated base64 signature",
                "envelope",
                self.pay3(b"", signature="c2lnbmF0dXJ"),
                {401},
            ),
            ("Pay v3: signature probe", "signature", self.pay3(b"", probe=True), {401}),
            ("Pay v3: resource with wrong base64 padding", "envelope", self.pay3(_v3_bad_resource()), {400}),
            (
                "Pay v3: JSON nested 50,000 deep (signed)",
                "json",
                self.pay3(b"[" * 50_000 + b"]" * 50_000),
                bad4,
            ),
            ("Pay v2: XXE", "xml", head("POST", pay2, xml, XXE), {FAIL_XML}),
            (
                "Pay v2: refund req_info truncated",
                "envelope",
                head(
                    "POST",
                    pay2,
                    xml,
                    _refund(wechat_pay_v2.encrypt_req_info(PAY_KEY, b"<root><a>1</a></root>")[:-5]),
                ),
                {FAIL_XML},
            ),
            (
                "Pay v2: refund req_info not base64",
                "envelope",
                head("POST", pay2, xml, _refund("%%%%")),
                {FAIL_XML},
            ),
            (
                "HMAC: form with invalid UTF-8",
                "encoding",
                head(
                    "POST",
                    f"{hooks}?timestamp={_now()}&nonce=n&sign=" + "0" * 64,
                    [("Content-Type", "application/x-www-form-urlencoded")],
                    b"id=\xff\xfe",
                ),
                bad4,
            ),
            (
                "HMAC: JSON nested 50,000 deep",
                "json",
                head(
                    "POST",
                    f"{hooks}?timestamp={_now()}&nonce=n&sign=" + "0" * 64,
                    [("Content-Type", "application/json")],
                    b'{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
                ),
                bad4,
            ),
            (
                "Standard Webhooks: signature not base64",
                "signature",
                head(
                    "POST",
                    std,
                    [
                        ("Content-Type", "application/json"),
                        ("webhook-id", "msg_1"),
                        ("webhook-timestamp", _now()),
                        ("webhook-signature", "v1,@@@@"),
                    ],
                    b"{}",
                ),
                {401},
            ),
            # spoofing and parameter pollution
            (
                "spoofed X-Wxgate-Verified, unsigned",
                "spoofing",
                head(
                    "POST",
                    mp + "?signature=0&timestamp=1&nonce=1",
                    [*xml, ("X-Wxgate-Verified", "1"), ("X-Wxgate-Protocol", "wechat-mp")],
                    body,
                ),
                {403},
            ),
            (
                "spoofed X_Wxgate_Verified, unsigned",
                "spoofing",
                head(
                    "POST", mp + "?signature=0&timestamp=1&nonce=1", [*xml, ("X_Wxgate_Verified", "1")], body
                ),
                {403},
            ),
            (
                "signature given twice",
                "spoofing",
                head("POST", target + "&signature=" + "0" * 40, xml, body),
                {400},
            ),
            # other spellings of a route's path: refused, never passed through to a lenient backend router
            *(
                (
                    f"route path spelled {spelling}",
                    "path",
                    head(
                        "POST",
                        f"{spelling}?{target.partition('?')[2]}",
                        [*xml, ("X-Wxgate-Verified", "1")],
                        body,
                    ),
                    bad4,
                )
                for spelling in (
                    f"{mp}/",
                    mp.upper(),
                    f"/{mp}",
                    "/%6Dp",
                    "/%256Dp",
                    f"{mp};jsessionid=1",
                    f"/x/..{mp}",
                    f"/.{mp}",
                    f"{mp}%2F",
                    f"{mp}.xml",
                    f"{mp}%00.jpg",
                    pay2.replace("/", "%2F"),
                    pay2.replace("/", "//"),
                )
            ),
            (
                "X-Wxgate-* in two spellings of one name, unsigned",
                "spoofing",
                head(
                    "POST",
                    mp + "?signature=0&timestamp=1&nonce=1",
                    [*xml, ("X-Wxgate-J", "1"), ("x-wxgate-j", "2"), ("X-Wxgate-Verified", "1")],
                    body,
                ),
                {403},
            ),
            (
                "invalid UTF-8 in the query",
                "encoding",
                head("POST", mp + "?signature=%ff%fe&timestamp=1&nonce=%c3%28", xml, body),
                {403},
            ),
        ]
        return [Case(name, attack, wire, frozenset(expect)) for name, attack, wire, expect in c]


def _chunked(data: bytes, size: int = 65536) -> bytes:
    parts = [
        f"{len(data[i : i + size]):x}\r\n".encode() + data[i : i + size] + b"\r\n"
        for i in range(0, len(data), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def _ciphertext(corpus: Corpus) -> str:
    """A valid ciphertext of 64 bytes: its base64 ends in "=" padding."""
    text = wxcrypt.encrypt(corpus._aes, b"<xml><a>1</a></xml>", APP_ID, os.urandom(16))
    assert text.endswith("=")
    return text


def _v3_bad_resource() -> bytes:
    notice = {
        "id": "EV-bad",
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "resource": {
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": "YWJj=",
            "nonce": "n",
            "associated_data": "",
        },
    }
    return json.dumps(notice).encode()


def _refund(req_info: str) -> bytes:
    fields: dict[str, str | int] = {
        "return_code": "SUCCESS",
        "appid": "wx1",
        "mch_id": MCH,
        "req_info": req_info,
    }
    return xmlmsg.build(fields)


def _paid() -> bytes:
    """A Pay v2 payment notice correctly signed with the route's key."""
    fields = {
        "return_code": "SUCCESS",
        "mch_id": MCH,
        "nonce_str": _nonce(),
        "result_code": "SUCCESS",
        "total_fee": "1",
        "transaction_id": "4200000000" + _nonce(),
        "out_trade_no": "T1",
    }
    return traffic.pay_v2_notify("/", PAY_KEY, fields).body


def _req_info() -> str:
    """A valid refund ``req_info`` under the route's key."""
    inner = (
        b"<root><refund_id>r"
        + _nonce().encode()
        + b"</refund_id><refund_status>SUCCESS</refund_status></root>"
    )
    return wechat_pay_v2.encrypt_req_info(PAY_KEY, inner)


def _appended(body: bytes, extra: bytes) -> bytes:
    return body.replace(b"</xml>", extra + b"</xml>")


def families(cases: list[Case]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cases:
        out[c.attack] = out.get(c.attack, 0) + 1
    return out
