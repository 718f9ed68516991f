"""The rejection budget: which sources have failed verification too often to be worth verifying for a while.

A source is a client address as admission computes it (``trusted_proxies``-aware), an IPv6 address taken as its
/64 (one subscriber's allocation: counting each address would let one attacker spread over 2^64 budgets and
flush the table). A source that fails verification ``failures`` times within ``per`` (a window opened by its
first failure) is *blocked* for ``block``: its requests are answered 429 without verification work.

A source that has passed verification is never blocked: it is remembered as a passing source and its failures
are no longer counted. That keeps WeChat's own addresses (and a load balancer's, when ``trusted_proxies`` is not
set) out of reach of an attacker who shares them; the trade-off is that an attacker sending from an address that
also carries genuine callbacks is never blocked (it is still verified and refused, as without a budget).

Memory is bounded: failing and passing sources are kept in two LRU tables of ``sources`` entries each, so a
flood of failing addresses evicts only other failing addresses, never a passing one.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from proxy.config import RejectionBudgetConfig


def source_of(client: str) -> str:
    """The budget's key for a client address: the address, or its /64 for IPv6 (an unparsable one as it is)."""
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return client


@dataclass(slots=True)
class _Failing:
    since: float  # when the current window opened
    failures: int = 0
    blocked_until: float = 0.0


class RejectionLedger:
    """Counts verification results by source; :meth:`blocked` says whether to spare a source's verification."""

    def __init__(self, config: RejectionBudgetConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._failing: OrderedDict[str, _Failing] = OrderedDict()
        self._passing: OrderedDict[str, None] = OrderedDict()

    def blocked(self, client: str) -> bool:
        entry = self._failing.get(source_of(client))
        return entry is not None and entry.blocked_until > self.clock()

    def failed(self, client: str) -> bool:
        """Count one verification failure; ``True`` when it used up the source's budget (blocked from now)."""
        source = source_of(client)
        if source in self._passing:
            self._passing.move_to_end(source)
            return False
        now = self.clock()
        entry = self._failing.get(source)
        if entry is None or now - entry.since > self.config.per:
            entry = _Failing(now)
        entry.failures += 1
        self._failing[source] = entry
        self._failing.move_to_end(source)
        if len(self._failing) > self.config.sources:
            self._failing.popitem(last=False)
        if entry.failures >= self.config.failures and entry.blocked_until <= now:
            entry.blocked_until = now + self.config.block
            entry.since, entry.failures = entry.blocked_until, 0  # counting starts again when the block ends
            return True
        return False

    def passed(self, client: str) -> None:
        """A request from ``client`` passed verification: the source is never blocked while remembered."""
        source = source_of(client)
        self._failing.pop(source, None)
        self._passing[source] = None
        self._passing.move_to_end(source)
        if len(self._passing) > self.config.sources:
            self._passing.popitem(last=False)

    def blocked_sources(self) -> int:
        now = self.clock()
        return sum(1 for e in self._failing.values() if e.blocked_until > now)
