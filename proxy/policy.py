"""Deadline policies (``on_backend_failure``): when wxgate acknowledges on the backend's behalf.

- ``ack``: always, at the deadline or on failure (the outbox keeps the notification);
- ``relay``: only on the sender's last expected attempt — earlier attempts ask for a retry, so a retry can
  replay the backend's real (late) passive reply;
- ``fail``: never; the failure is passed on in the protocol's form and the sender's own schedule retries.
"""

from __future__ import annotations

from proxy.exchange import Exchange

# WeChat MP/WeCom deliver a message four times at most (the first delivery and "重试三次").
LAST_ATTEMPT = {"wechat-mp": 4, "wecom": 4}


def is_last_attempt(ex: Exchange) -> bool:
    assert ex.route is not None
    return ex.outcome.attempt >= LAST_ATTEMPT.get(ex.route.protocol_name, 1)


def acknowledges(ex: Exchange) -> bool:
    """Whether a failed or late backend call is answered with the protocol's success reply."""
    assert ex.route is not None
    policy = ex.route.policy
    return policy == "ack" or (policy == "relay" and is_last_attempt(ex))
