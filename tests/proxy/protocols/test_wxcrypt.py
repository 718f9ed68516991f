"""The MP/WeCom AES envelope (PROTOCOLS.md §1.3): public vectors, 32-byte padding, bounds, rotation, round trips."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from proxy.protocols import wxcrypt
from proxy.protocols.base import Rejected, Reply
from tests.proxy.protocols import vectors as v

MP = wxcrypt.AesKey.decode("current", v.MP_KEY)


def raw_encrypt(key: bytes, plain: bytes) -> str:
    """AES-CBC with the envelope's IV but no padding of ours: lets tests build malformed plaintexts."""
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


def test_v5_deterministic_encryption_and_reply_signature() -> None:
    encrypted = wxcrypt.encrypt(MP.key, v.V5_MSG.encode(), v.V5_APP_ID, v.V5_RANDOM)
    assert encrypted == v.V5_ENCRYPT
    assert wxcrypt.sha1_signature(v.V5_TOKEN, v.V5_TS, v.V5_NONCE, encrypted) == v.V5_MSG_SIGNATURE


def test_v6_pad_byte_21_which_a_16_byte_unpadder_refuses() -> None:
    encrypted = wxcrypt.encrypt(MP.key, b"hello", v.V5_APP_ID, v.V5_RANDOM)
    assert encrypted == v.V6_ENCRYPT
    opened = wxcrypt.decrypt([MP], v.V6_ENCRYPT, [v.V5_APP_ID])
    assert opened.message == b"hello"
    assert opened.receive_id == v.V5_APP_ID


@pytest.mark.parametrize(
    ("key", "token", "ts", "nonce", "encrypted", "signature", "receive_id", "contains"),
    [
        (
            v.MP_KEY,
            v.V4_TOKEN,
            v.V4_TS,
            v.V4_NONCE,
            v.V4_ENCRYPT,
            v.V4_MSG_SIGNATURE,
            v.V4_APP_ID,
            b"abcdteT",
        ),
        (
            v.MP_KEY,
            v.V5_TOKEN,
            v.V5B_TS,
            v.V5B_NONCE,
            v.V5B_ENCRYPT,
            v.V5B_MSG_SIGNATURE,
            v.V5_APP_ID,
            b"hello",
        ),
        (
            v.V7_KEY,
            v.V7_TOKEN,
            v.V7_TS,
            v.V7_NONCE,
            v.V7_ECHOSTR,
            v.V7_MSG_SIGNATURE,
            v.V7_CORP_ID,
            v.V7_REPLY,
        ),
        (v.V7_KEY, v.V7_TOKEN, v.V8_TS, v.V8_NONCE, v.V8_ENCRYPT, v.V8_MSG_SIGNATURE, v.V7_CORP_ID, b"hello"),
        (
            v.V9_KEY,
            v.V9_TOKEN,
            v.V9_GET_TS,
            v.V9_GET_NONCE,
            v.V9_ECHOSTR,
            v.V9_GET_SIGNATURE,
            v.V9_CORP_ID,
            b"12884",
        ),
        (
            v.V9_KEY,
            v.V9_TOKEN,
            v.V9_POST_TS,
            v.V9_POST_NONCE,
            v.V9_ENCRYPT,
            v.V9_POST_SIGNATURE,
            v.V9_CORP_ID,
            b"1456",
        ),
        (
            v.V10_KEY,
            v.V10_TOKEN,
            v.V10_TS,
            v.V10_NONCE,
            v.V10_ECHOSTR,
            v.V10_MSG_SIGNATURE,
            v.V10_CORP_ID,
            b"5927",
        ),
    ],
    ids=["V4", "V5b", "V7", "V8", "V9-get", "V9-post", "V10"],
)
def test_public_vectors_signature_and_decryption(
    key: str,
    token: str,
    ts: str,
    nonce: str,
    encrypted: str,
    signature: str,
    receive_id: str,
    contains: bytes,
) -> None:
    assert wxcrypt.match_token([("current", token)], signature, (ts, nonce, encrypted), "bad_msg_signature")
    opened = wxcrypt.decrypt([wxcrypt.AesKey.decode("current", key)], encrypted, [receive_id])
    assert contains in opened.message


def test_v10_other_nonce_fails() -> None:
    with pytest.raises(Rejected) as e:
        wxcrypt.match_token(
            [("current", v.V10_TOKEN)],
            v.V10_MSG_SIGNATURE,
            (v.V10_TS, v.V10_BAD_NONCE, v.V10_ECHOSTR),
            "bad_msg_signature",
        )
    assert e.value.reason == "bad_msg_signature"


def test_wechatpy_reply_encryption_vector() -> None:
    key = wxcrypt.AesKey.decode("current", v.V10_KEY).key
    env = wxcrypt.envelope(
        v.V10_TOKEN, key, v.WECHATPY_REPLY, v.V10_CORP_ID, "1411525903", "461056294", b"1234567890123456"
    )
    assert env.encrypt == v.WECHATPY_ENCRYPT
    assert env.signature == v.WECHATPY_MSG_SIGNATURE
    assert env.to_xml() == (
        b"<xml><Encrypt><![CDATA[" + v.WECHATPY_ENCRYPT.encode() + b"]]></Encrypt>"
        b"<MsgSignature><![CDATA[407518b7649e86ef23978113f92d27afa9296533]]></MsgSignature>"
        b"<TimeStamp>1411525903</TimeStamp><Nonce><![CDATA[461056294]]></Nonce></xml>"
    )


@pytest.mark.parametrize("msg_len", range(32))
def test_every_pad_value_1_to_32_round_trips(msg_len: int) -> None:
    # 16 random + 4 length + msg + 18-byte AppID: msg_len 0..31 covers every remainder mod 32.
    message = b"m" * msg_len
    encrypted = wxcrypt.encrypt(MP.key, message, v.V5_APP_ID, b"r" * 16)
    pad = 32 - (16 + 4 + msg_len + 18) % 32
    plain = (
        Cipher(algorithms.AES(MP.key), modes.CBC(MP.key[:16])).decryptor().update(base64.b64decode(encrypted))
    )
    assert plain[-1] == pad and 1 <= pad <= 32
    assert wxcrypt.decrypt([MP], encrypted, [v.V5_APP_ID]).message == message


def test_pad_values_seen_cover_1_to_32() -> None:
    assert {len(wxcrypt.pad(b"x" * n)) - n for n in range(64)} == set(range(1, 33))


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (b"\x00", "bad_padding"),  # pad value 0
        (b"\x21", "bad_padding"),  # pad value 33
        (bytes([5]) * 4 + b"\x04" + bytes([5]) * 4, "bad_padding"),  # one pad byte differs
    ],
)
def test_every_pad_byte_is_validated(tail: bytes, reason: str) -> None:
    body = b"r" * 16 + (5).to_bytes(4, "big") + b"hello" + v.V5_APP_ID.encode()
    plain = body + b"z" * (-(len(body) + len(tail)) % 32) + tail
    with pytest.raises(Rejected) as e:
        wxcrypt.decrypt([MP], raw_encrypt(MP.key, plain), [v.V5_APP_ID])
    assert e.value.reason == reason


@pytest.mark.parametrize(
    "plain",
    [
        b"r" * 16 + (10_000).to_bytes(4, "big") + b"hi" + b"\x0a" * 10,  # length field beyond the data
        b"r" * 10 + b"\x16" * 22,  # shorter than random16 + length once unpadded
    ],
)
def test_length_bounds_are_checked(plain: bytes) -> None:
    with pytest.raises(Rejected) as e:
        wxcrypt.decrypt([MP], raw_encrypt(MP.key, plain), [v.V5_APP_ID])
    assert e.value.reason == "bad_length"


@pytest.mark.parametrize(
    ("encrypted", "reason"),
    [
        ("not base64!", "bad_base64"),
        ("QUJD", "bad_length"),  # 3 bytes
        ("", "bad_length"),
        ("中文", "bad_base64"),
        (base64.b64encode(b"x" * 48).decode(), "bad_padding"),  # 16-aligned garbage
    ],
)
def test_malformed_ciphertext(encrypted: str, reason: str) -> None:
    with pytest.raises(Rejected) as e:
        wxcrypt.decrypt([MP], encrypted, [v.V5_APP_ID])
    assert e.value.reason == reason


def test_wrong_receive_id_uses_the_callers_reason() -> None:
    with pytest.raises(Rejected) as e:
        wxcrypt.decrypt([MP], v.V6_ENCRYPT, ["wx0000000000000000"], "wrong_app_id")
    assert e.value.reason == "wrong_app_id"
    assert "wx" not in str(e.value)  # no ids or content in the message


def test_rotation_reports_the_key_that_opened_and_the_furthest_failure() -> None:
    other = wxcrypt.AesKey.decode("current", "B" * 43)
    previous = wxcrypt.AesKey("previous", MP.key)
    assert wxcrypt.decrypt([other, previous], v.V6_ENCRYPT, [v.V5_APP_ID]).key_id == "previous"
    with pytest.raises(Rejected) as e:
        wxcrypt.decrypt([other, previous], v.V6_ENCRYPT, ["wx0000000000000000"])
    assert e.value.reason == "wrong_receive_id"


@pytest.mark.parametrize("bad", ["short", "a" * 42 + "=", "a" * 44, "a" * 42 + "+"])
def test_malformed_encoding_aes_key_is_a_config_error_without_echo(bad: str) -> None:
    with pytest.raises(ValueError) as e:
        wxcrypt.AesKey.decode("current", bad)
    assert bad not in str(e.value)


def test_match_token_rotation_and_garbage() -> None:
    sig = wxcrypt.sha1_signature("new", "1", "2")
    assert (
        wxcrypt.match_token([("current", "old"), ("previous", "new")], sig.upper(), ("1", "2"), "x")
        == "previous"
    )
    for bad in ("", "zz", "\ud800" * 40, sig[:-1]):
        with pytest.raises(Rejected):
            wxcrypt.match_token([("current", "new")], bad, ("1", "2"), "x")


def test_seal_reply_encrypts_plain_passive_only() -> None:
    ctx = wxcrypt.ReplyContext("current", "current", "1409304348", "xxxxxx")
    passive = Reply(200, b"<xml><Content>hi</Content></xml>", "text/xml", "passive")
    sealed = wxcrypt.seal_reply(passive, ctx, {"current": "t"}, {"current": MP}, "wxid", lambda n: b"q" * n)
    assert sealed.kind == "passive" and sealed.content_type.startswith("application/xml")
    fields = wxcrypt.xmlmsg.parse(sealed.body)
    assert fields["TimeStamp"] == "1409304348" and fields["Nonce"] == "xxxxxx"
    assert fields["MsgSignature"] == wxcrypt.sha1_signature("t", "1409304348", "xxxxxx", fields["Encrypt"])
    assert wxcrypt.decrypt([MP], fields["Encrypt"], ["wxid"]).message == passive.body
    # already sealed, and acks, pass unchanged
    assert (
        wxcrypt.seal_reply(sealed, ctx, {"current": "t"}, {"current": MP}, "wxid", lambda n: b"q" * n)
        is sealed
    )
    ack = Reply(200, b"success", "text/plain", "ack")
    assert wxcrypt.seal_reply(ack, ctx, {"current": "t"}, {"current": MP}, "wxid", lambda n: b"q" * n) is ack


@given(
    message=st.binary(max_size=300),
    key=st.text(
        st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
        min_size=43,
        max_size=43,
    ),
    receive_id=st.text(max_size=40),
    random16=st.binary(min_size=16, max_size=16),
)
def test_round_trip(message: bytes, key: str, receive_id: str, random16: bytes) -> None:
    aes = wxcrypt.AesKey.decode("current", key)
    encrypted = wxcrypt.encrypt(aes.key, message, receive_id, random16)
    opened = wxcrypt.decrypt([aes], encrypted, [receive_id])
    assert (opened.message, opened.receive_id) == (message, receive_id)


@given(encrypted=st.text(max_size=200) | st.binary(max_size=160).map(lambda b: base64.b64encode(b).decode()))
def test_decrypt_of_anything_raises_only_rejected(encrypted: str) -> None:
    try:
        wxcrypt.decrypt([MP, wxcrypt.AesKey("previous", b"k" * 32)], encrypted, [v.V5_APP_ID, ""])
    except Rejected as e:
        assert e.reason in {"bad_base64", "bad_length", "bad_padding", "wrong_receive_id"}
