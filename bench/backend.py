"""The benchmark's backend: a minimal HTTP/1.1 keep-alive server on raw asyncio, as cheap as Python gets.

Not the demo backend (which records every request): this one only frames requests and answers. Paths under
``/pay/`` get ``204 No Content`` (the WeChat Pay v3 success reply); everything else gets a valid Official
Account passive reply (a text message), so the proxy's reply normalization and safe-mode sealing do real work.

    python bench/backend.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal

PASSIVE = (
    b"<xml><ToUserName><![CDATA[oBenchUser]]></ToUserName><FromUserName><![CDATA[gh_bench]]></FromUserName>"
    b"<CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>"
    b"<Content><![CDATA[received]]></Content></xml>"
)
OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: "
    + str(len(PASSIVE)).encode()
    + b"\r\n\r\n"
    + PASSIVE
)
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Http(asyncio.Protocol):
    """Frames requests by Content-Length (no chunked bodies: neither wrk nor the proxies send them)."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buf = self.buf + data if self.buf else data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            length = 0
            i = head.lower().find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                try:
                    length = int(head[i + 17 : j if j >= 0 else len(head)])
                except ValueError:
                    self.transport.write(BAD)
                    self.transport.close()
                    return
            total = end + 4 + length
            if len(buf) < total:
                break
            out.append(NO_CONTENT if head.split(b" ", 2)[1].startswith(b"/pay/") else OK)
            buf = buf[total:]
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bench backend listening on {host}:{port} (pid {os.getpid()})", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    gc.freeze()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
