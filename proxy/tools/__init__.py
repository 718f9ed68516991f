"""What users run beside the proxy: the sender simulator (:mod:`.sender`, ``wxgate send``; :mod:`.sender_replies`
reads what the newer senders get back), the demo backend
(:mod:`.demo_backend`), the outbox and lookup tools (:mod:`.outbox_cli`, :mod:`.lookup`), and the wire builders
they and the tests share (:mod:`.traffic`, :mod:`.traffic_miniprogram`, :mod:`.traffic_open`).

Only the command line imports this package (tests/test_layout.py); the tools may use anything below it."""

__all__ = [
    "demo_backend",
    "lookup",
    "outbox_cli",
    "sender",
    "sender_replies",
    "traffic",
    "traffic_miniprogram",
    "traffic_open",
]
