"""XML attack bodies shared by the parser's unit tests and the hostile-input corpus sent over sockets."""

from __future__ import annotations

XXE = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><Content>&e;</Content></xml>'
EXTERNAL_DTD = b'<?xml version="1.0"?><!DOCTYPE xml SYSTEM "http://127.0.0.1:1/evil.dtd"><xml><a>1</a></xml>'
INTERNAL = b'<!DOCTYPE x [<!ENTITY e "INJECTED">]><xml><ToUserName>&e;</ToUserName><MsgId>1</MsgId></xml>'
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">'.encode() for i in range(1, 10)
    )
    + b"]><xml><Content>&lol9;</Content></xml>"
)


def quadratic(entity_size: int, references: int) -> bytes:
    """Quadratic blowup: one large internal entity referenced many times."""
    return (
        b'<!DOCTYPE x [<!ENTITY a "'
        + b"A" * entity_size
        + b'">]><xml><Content>'
        + b"&a;" * references
        + b"</Content></xml>"
    )


# Repeated elements: a flat {name: value} view keeps one value while a backend may read another (often the last).
REPEATED_LEAF = (
    b"<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><CreateTime>1</CreateTime>"
    b"<MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId><MsgId>2</MsgId></xml>"
)
REPEATED_CONTAINER = (
    b"<xml><MsgType>event</MsgType><ScanCodeInfo><ScanResult>a</ScanResult></ScanCodeInfo>"
    + (b"<ScanCodeInfo><ScanResult>b</ScanResult></ScanCodeInfo></xml>")
)
REPEATED_IN_ONE_ITEM = (
    b"<xml><MsgType>event</MsgType><SendPicsInfo><Count>1</Count><PicList>"
    b"<item><PicMd5Sum>a</PicMd5Sum><PicMd5Sum>b</PicMd5Sum></item></PicList></SendPicsInfo></xml>"
)
