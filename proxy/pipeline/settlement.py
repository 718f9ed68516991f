"""What happens to a notification after the backend call: the seam between forwarding, dedup and the outbox.

The forward addon calls these in order; implementations add dedup completion/release and durable outbox writes.
``before_ack`` runs before wxgate acknowledges on the backend's behalf and must make the notification durable
(raise to refuse the early acknowledgement: the sender then retries, so nothing is lost); ``in_flight`` says
whether the backend call is still running (the deadline came first) or already failed.
"""

from __future__ import annotations

from proxy.pipeline.exchange import Authenticated
from proxy.protocols.base import Reply
from proxy.upstream.client import UpstreamResult


class Settlement:
    """The default: no store. An acknowledged failure is only counted (``outcome.outbox = "unacked"``)."""

    def holding(self, ex: Authenticated) -> None:
        """``ex`` now holds a dedup claim (``ex.dedup_token``) until ``delivered`` or ``failed``."""

    async def release_held(self) -> int:
        """Shutdown: release the claims of requests whose backend call was cut short; returns how many."""
        return 0

    async def before_ack(self, ex: Authenticated, in_flight: bool) -> None:
        ex.outcome.outbox = "unacked"

    async def delivered(self, ex: Authenticated, reply: Reply, late: bool) -> None:
        if late and ex.outcome.outbox == "unacked":
            ex.outcome.outbox = ""

    async def failed(self, ex: Authenticated, result: UpstreamResult, acked: bool, late: bool) -> None:
        return None
