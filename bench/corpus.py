"""Request corpora: many distinct, correctly signed requests per scenario, written for wrk and the open-loop tool.

Every request of a verified route carries its own nonce and message id (the replay cache refuses a reused
signature with another body, and an exact repeat would be answered from the dedup cache instead of measuring a
first delivery). Requests are built with the project's own sender helpers (:mod:`proxy.tools.traffic`), so
they are exactly what the verifiers expect. Timestamps are "now" when the corpus is built; the harness builds
each phase's corpus right before the phase, well inside the routes' 300 s window.

File format (read by ``bench/load.lua`` and ``bench/openloop.py``): for each request, its length in bytes in
decimal, a newline, then the raw HTTP/1.1 request (``Host: bench``, ``Content-Length`` set).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.protocols import xmlmsg
from proxy.tools import traffic

MP_PATH = "/wechat/callback"
MP_SAFE_PATH = "/wechat/safe"
PAY_PATH = "/pay/v3/notify"
PASS_PATH = "/passthrough"
TOKEN = "bench-token-0123456789"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 chars, as the MP console makes them
APP_ID = "wx0123456789abcdef"
APIV3_KEY = "0123456789abcdefghijklmnopqrstuv"  # 32 bytes
MCH_ID = "1900000109"
PAY_SERIAL = 0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1
DUP_SPACING = 2000  # copies of one message are this many requests apart: retries come after the first is done


def mp_text_xml(seq: int, now: int) -> bytes:
    """A text message as WeChat pushes it (about 300 bytes), unique by ``MsgId``."""
    return xmlmsg.build(
        {
            "ToUserName": "gh_0123456789ab",
            "FromUserName": f"oBench{seq % 100_000:022d}",
            "CreateTime": now,
            "MsgType": "text",
            "Content": "Hello from the wxgate benchmark: short text",
            "MsgId": 24_000_000_000_000_000 + seq,
        }
    )


def raw(req: traffic.Outbound) -> bytes:
    head = [f"{req.method} {req.target} HTTP/1.1", "Host: bench"]
    head += [f"{k}: {v}" for k, v in req.headers]
    head.append(f"Content-Length: {len(req.body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + req.body


def mp_plain(seq: int, now: int, path: str = MP_PATH) -> bytes:
    xml = mp_text_xml(seq, now)
    return raw(
        traffic.mp_message(path, TOKEN, xml, str(now), f"n{seq:x}", openid=f"oBench{seq % 100_000:022d}")
    )


def mp_safe(seq: int, now: int) -> bytes:
    xml = mp_text_xml(seq, now)
    req = traffic.mp_message(
        MP_SAFE_PATH, TOKEN, xml, str(now), f"s{seq:x}", encoding_aes_key=AES_KEY, app_id=APP_ID
    )
    return raw(req)


@dataclass(frozen=True)
class PayKey:
    pem: bytes  # PKCS#8 private key, generated at run time (never stored in the project)

    @classmethod
    def generate(cls) -> PayKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(pem)

    def private(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.pem, None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    def certificate(self, now: float) -> bytes:
        return traffic.platform_certificate(self.private(), PAY_SERIAL, now)


def _pay_chunk(args: tuple[bytes, int, int, int]) -> list[bytes]:
    pem, start, count, now = args
    key = PayKey(pem).private()
    out = []
    for seq in range(start, start + count):
        plaintext = {
            "mchid": MCH_ID,
            "appid": APP_ID,
            "out_trade_no": f"bench{seq:012d}",
            "transaction_id": f"42000{seq:023d}",
            "trade_type": "JSAPI",
            "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功",
            "success_time": "2024-05-20T13:29:35+08:00",
            "payer": {"openid": f"oBench{seq % 100_000:022d}"},
            "amount": {"total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY"},
        }
        req = traffic.pay_v3_notify(
            PAY_PATH,
            key,
            format(PAY_SERIAL, "X"),
            APIV3_KEY,
            plaintext,
            str(now),
            f"p{seq:x}",
            notification_id=f"bench-{seq:012d}",
            resource_nonce=f"r{seq % 10**11:011d}"[:12],
        )
        out.append(raw(req))
    return out


def pay_v3(key: PayKey, start: int, count: int, now: int) -> list[bytes]:
    """RSA signing costs ~0.5 ms a request: spread over every core (the proxy is idle while this runs)."""
    workers = max(1, min(os.cpu_count() or 1, 4))
    if count < 200 or workers == 1:
        return _pay_chunk((key.pem, start, count, now))
    step = -(-count // workers)
    jobs = [(key.pem, s, min(step, start + count - s), now) for s in range(start, start + count, step)]
    with ProcessPoolExecutor(workers) as pool:
        return [r for chunk in pool.map(_pay_chunk, jobs) for r in chunk]


def duplicates(seqs: Iterable[int], now: int, copies: int = 4, spacing: int = DUP_SPACING) -> Iterator[bytes]:
    """Every message ``copies`` times, identical bytes (a sender retry), copies ``spacing`` requests apart."""
    block: list[bytes] = []
    for seq in seqs:
        block.append(mp_plain(seq, now))
        if len(block) == spacing:
            for _ in range(copies):
                yield from block
            block = []
    for _ in range(copies):
        yield from block


class Sequencer:
    """Hands out message numbers that are never reused within one benchmark run."""

    def __init__(self, start: int = 1) -> None:
        self.next = start

    def take(self, count: int) -> range:
        r = range(self.next, self.next + count)
        self.next += count
        return r


def build(scenario: str, count: int, seq: Sequencer, pay_key: PayKey | None = None) -> list[bytes]:
    """``count`` fresh requests for ``scenario`` (mp | mp_safe | pay_v3 | dup | dup_first | passthrough)."""
    now = int(time.time())
    if scenario in ("mp", "passthrough"):
        path = MP_PATH if scenario == "mp" else PASS_PATH
        return [mp_plain(s, now, path) for s in seq.take(count)]
    if scenario == "mp_safe":
        return [mp_safe(s, now) for s in seq.take(count)]
    if scenario == "pay_v3":
        assert pay_key is not None
        r = seq.take(count)
        return pay_v3(pay_key, r.start, count, now)
    if scenario == "dup":
        return list(duplicates(seq.take(max(1, count // 4)), now))
    raise ValueError(f"unknown scenario {scenario!r}")


def write(path: Path, requests: Iterable[bytes]) -> int:
    n = 0
    with path.open("wb") as f:
        for r in requests:
            f.write(b"%d\n" % len(r))
            f.write(r)
            n += 1
    return n


def read(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        length = int(data[pos:nl])
        out.append(data[nl + 1 : nl + 1 + length])
        pos = nl + 1 + length
    return out
