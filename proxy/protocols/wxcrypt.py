"""The Official Account / WeCom AES envelope: ``msg_signature``, decryption, encryption and encrypted replies.

PROTOCOLS.md §1.3 (identical for WeCom, §2)::

    AESKey = base64(EncodingAESKey + "="); IV = AESKey[:16]
    plain  = random16 || uint32_be(len(msg)) || msg || receiveid, PKCS#7-padded to 32-byte blocks (pad 1..32)
    Encrypt = base64(AES-256-CBC(plain)); msg_signature = sha1(sorted(token, timestamp, nonce, Encrypt))

A standard 16-byte PKCS#7 unpadder rejects every message with pad 17..32, and the official samples check neither
the pad bytes nor the length field; here every pad byte and the length bound are checked, and the trailing
receiveid (AppID, corpid, suiteid or "" for robots) is compared in constant time. With several keys (rotation)
the one that opens the message is reported. Errors are :class:`Rejected` with closed reasons: ``bad_msg_signature``,
``bad_base64``, ``bad_length``, ``bad_padding`` and the caller's receiveid reason (``wrong_app_id`` /
``wrong_receive_id``). No secret and no plaintext ever appears in an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.protocols import xmlmsg
from proxy.protocols.base import Rejected, Reply

BLOCK = 32
RANDOM_LEN = 16
XML_CONTENT_TYPE = "application/xml; charset=utf-8"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
_KEY_RE = re.compile(r"^[A-Za-z0-9]{43}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
# How far a key got opening a message: the reason of the key that got furthest is the one reported.
_PROGRESS = {"bad_padding": 0, "bad_length": 1}


@dataclass(frozen=True, slots=True)
class AesKey:
    """One decoded EncodingAESKey and the id it is reported under ("current", "previous")."""

    key_id: str
    key: bytes = field(repr=False)

    @classmethod
    def decode(cls, key_id: str, encoding_aes_key: str) -> AesKey:
        """Decode the 43-character EncodingAESKey; raise ValueError (without echoing it) if malformed."""
        if not _KEY_RE.match(encoding_aes_key):
            raise ValueError("an EncodingAESKey is exactly 43 letters and digits")
        return cls(key_id, base64.b64decode(encoding_aes_key + "="))


@dataclass(frozen=True, slots=True)
class Opened:
    """A decrypted envelope: the message bytes, the receiveid found in it and the key that opened it."""

    message: bytes = field(repr=False)
    receive_id: str
    key_id: str


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """What sealing a reply to one request needs (ids, never the secrets themselves)."""

    token_id: str
    aes_key_id: str
    timestamp: str
    nonce: str
    json: bool = False  # WeCom robots: JSON envelope instead of XML


def sha1_signature(*parts: str) -> str:
    """``lowercase_hex(sha1(concat(sorted(parts))))``: the MP ``signature`` and every ``msg_signature``."""
    joined = "".join(sorted(parts)).encode("utf-8", "surrogatepass")
    return hashlib.sha1(joined).hexdigest()  # noqa: S324 - the protocol's algorithm


def signature_text(given: str) -> str:
    """A sent signature as it is compared: blanks around it dropped, hex in lower case. Replay keys are built from
    this form too, or each spelling of one captured request (``sig%20``, ``sig%09``, ``SIG``) would be new to the
    replay cache while verifying alike."""
    return given.strip().lower()


def match_token(tokens: Sequence[tuple[str, str]], given: str, parts: Sequence[str], reason: str) -> str:
    """The id of the token whose ``sha1_signature(token, *parts)`` equals ``given``; else raise ``reason``."""
    given = signature_text(given)
    if not _HEX40.match(given):
        raise Rejected(reason, 403)
    matched = ""
    for key_id, token in tokens:
        # Every token is compared so timing does not reveal which one (or whether any) matched.
        if hmac.compare_digest(sha1_signature(token, *parts).encode(), given.encode()) and not matched:
            matched = key_id
    if not matched:
        raise Rejected(reason, 403)
    return matched


def pad(data: bytes) -> bytes:
    n = BLOCK - len(data) % BLOCK
    return data + bytes([n]) * n


def unpad(data: bytes) -> bytes:
    """Strip 32-byte-block PKCS#7 padding, checking that the pad value is 1..32 and every pad byte equals it."""
    n = data[-1] if data else 0
    if not 1 <= n <= BLOCK or n > len(data):
        raise Rejected("bad_padding", 403)
    if not hmac.compare_digest(data[-n:], bytes([n]) * n):
        raise Rejected("bad_padding", 403)
    return data[:-n]


def _cipher(key: bytes) -> Cipher[modes.CBC]:
    return Cipher(algorithms.AES(key), modes.CBC(key[:16]))


def encrypt(key: bytes, message: bytes, receive_id: str, random16: bytes) -> str:
    """``base64(AES-CBC(pad(random16 || len || message || receive_id)))``."""
    if len(random16) != RANDOM_LEN:
        raise ValueError("the random prefix is 16 bytes")
    plain = random16 + len(message).to_bytes(4, "big") + message + receive_id.encode()
    enc = _cipher(key).encryptor()
    return base64.b64encode(enc.update(pad(plain)) + enc.finalize()).decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("bad_base64", 403) from None


def _open(key: AesKey, raw: bytes, receive_ids: Sequence[str], mismatch: str) -> Opened:
    dec = _cipher(key.key).decryptor()
    plain = unpad(dec.update(raw) + dec.finalize())
    if len(plain) < RANDOM_LEN + 4:
        raise Rejected("bad_length", 403)
    size = int.from_bytes(plain[RANDOM_LEN : RANDOM_LEN + 4], "big")
    start = RANDOM_LEN + 4
    if size > len(plain) - start:
        raise Rejected("bad_length", 403)
    tail = plain[start + size :]
    found = False
    for rid in receive_ids:
        found |= hmac.compare_digest(tail, rid.encode())
    if not found:
        raise Rejected(mismatch, 403)
    return Opened(plain[start : start + size], tail.decode(), key.key_id)


def decrypt(
    keys: Sequence[AesKey], encrypted: str, receive_ids: Sequence[str], mismatch: str = "wrong_receive_id"
) -> Opened:
    """Open ``Encrypt`` with the first key that yields valid padding, length and receiveid."""
    if not encrypted.isascii():
        raise Rejected("bad_base64", 403)
    raw = _b64decode(encrypted)
    if not raw or len(raw) % 16:
        raise Rejected("bad_length", 403)
    failures: list[Rejected] = []
    for key in keys:
        try:
            return _open(key, raw, receive_ids, mismatch)
        except Rejected as e:
            failures.append(e)
    if not failures:
        raise Rejected("bad_padding", 403)
    # A wrong key almost always fails the padding; report the key that got furthest (the first on a tie).
    raise max(failures, key=lambda e: _PROGRESS.get(e.reason, 2))


@dataclass(frozen=True, slots=True)
class Envelope:
    """An encrypted reply: ``Encrypt`` plus its own ``MsgSignature``, ``TimeStamp`` and ``Nonce``."""

    encrypt: str
    signature: str
    timestamp: str
    nonce: str

    def to_xml(self) -> bytes:
        ts: str | int = int(self.timestamp) if self.timestamp.isdigit() else self.timestamp
        fields = {
            "Encrypt": self.encrypt,
            "MsgSignature": self.signature,
            "TimeStamp": ts,
            "Nonce": self.nonce,
        }
        return xmlmsg.build(fields)

    def to_json(self) -> bytes:
        ts: str | int = int(self.timestamp) if self.timestamp.isdigit() else self.timestamp
        doc = {"encrypt": self.encrypt, "msgsignature": self.signature, "timestamp": ts, "nonce": self.nonce}
        return json.dumps(doc, separators=(",", ":")).encode()

    def to_wxa_json(self) -> bytes:
        """The Mini Program (and Channels shop) JSON reply: capitalised keys, ``TimeStamp`` a number, ``Nonce`` a
        string (PROTOCOLS-MINI-OPEN.md §A1.3)."""
        ts: str | int = int(self.timestamp) if self.timestamp.isdigit() else self.timestamp
        doc = {"Encrypt": self.encrypt, "MsgSignature": self.signature, "TimeStamp": ts, "Nonce": self.nonce}
        return json.dumps(doc, separators=(",", ":")).encode()


def envelope(
    token: str, key: bytes, message: bytes, receive_id: str, timestamp: str, nonce: str, random16: bytes
) -> Envelope:
    encrypted = encrypt(key, message, receive_id, random16)
    return Envelope(encrypted, sha1_signature(token, timestamp, nonce, encrypted), timestamp, nonce)


def is_sealed(reply: Reply, as_json: bool, wxa: bool = False) -> bool:
    """Whether a passive reply already is an encrypted envelope (a backend that encrypts by itself); ``wxa``:
    a JSON envelope has the Mini Program's ``Encrypt`` key instead of the robots' ``encrypt``."""
    if as_json:
        try:
            doc = json.loads(reply.body)
        except (ValueError, RecursionError):
            return False
        return isinstance(doc, dict) and ("Encrypt" if wxa else "encrypt") in doc
    try:
        return "Encrypt" in xmlmsg.parse(reply.body)
    except Rejected:
        return False


def seal_reply(
    reply: Reply,
    ctx: ReplyContext,
    tokens: dict[str, str],
    keys: dict[str, AesKey],
    receive_id: str,
    random_bytes: Callable[[int], bytes],
    wxa: bool = False,
) -> Reply:
    """Encrypt a plaintext passive reply with a fresh random16; anything else passes unchanged. ``wxa``: a JSON
    reply gets the Mini Program envelope (:meth:`Envelope.to_wxa_json`) instead of the robots' one."""
    if reply.kind != "passive" or is_sealed(reply, ctx.json, wxa):
        return reply
    env = envelope(
        tokens[ctx.token_id],
        keys[ctx.aes_key_id].key,
        reply.body,
        receive_id,
        ctx.timestamp,
        ctx.nonce,
        random_bytes(RANDOM_LEN),
    )
    if ctx.json:
        body = env.to_wxa_json() if wxa else env.to_json()
        return Reply(200, body, JSON_CONTENT_TYPE, "passive", reply.normalized)
    return Reply(200, env.to_xml(), XML_CONTENT_TYPE, "passive", reply.normalized)


def seal_for(
    reply: Reply,
    context: object | None,
    tokens: Sequence[tuple[str, str]],
    keys: Sequence[AesKey],
    receive_id: str,
    random_bytes: Callable[[int], bytes],
    wxa: bool = False,
) -> Reply:
    """:func:`seal_reply` for the request whose ``Verified.seal_context`` is ``context``; a request that was not
    encrypted (no :class:`ReplyContext`) gets ``reply`` unchanged."""
    if not isinstance(context, ReplyContext):
        return reply
    by_id = {k.key_id: k for k in keys}
    return seal_reply(reply, context, dict(tokens), by_id, receive_id, random_bytes, wxa)
