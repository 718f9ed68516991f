"""``wxgate lookup``: what happened to one notification, found by an id the operator has.

The store keeps dedup records under hashed keys an operator cannot rebuild (a Pay key holds the
``transaction_id`` *and* its ``trade_state``; an event without an id is keyed by a digest), so the first claim
of a notification also files it under a hashed alias per id its protocol lists (``lookup_fields``:
:mod:`proxy.pipeline.lookup_note`). This command rebuilds those aliases from the ids it is given, on the route
named by ``--route`` or on every route whose protocol carries that id, and prints what the store knows: the
dedup record (state, attempts, first seen, lease, trace id, the cached reply) and any outbox item or dead letter
of the same key. Reply and message bodies stay out unless ``--show-content``; secrets never appear.

Exit status: 0 found, 1 not found, 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy.config import Config, ConfigError
from proxy.pipeline.lookup_note import alias_key
from proxy.pipeline.outbox import Delivery
from proxy.pipeline.replies import decode_reply
from proxy.pipeline.routes import build_route
from proxy.stores import open_store
from proxy.stores.base import Inspection, OutboxItem, Store

OUTBOX_SCAN = 100_000  # items (queued, then dead) looked through for the notification's key

# option -> the field groups it may stand for (a protocol's ``lookup_fields`` says which one it files)
SINGLE_IDS: dict[str, tuple[str, ...]] = {
    "msg_id": ("MsgId", "MsgID", "msgid"),
    "transaction_id": ("transaction_id",),
    "out_trade_no": ("out_trade_no",),
    "refund_id": ("refund_id",),
    "out_refund_no": ("out_refund_no",),
}

STATES = {
    "in_flight": "in flight: a delivery holds the claim and the backend call may still run",
    "released": "released: the last delivery failed; the sender's retry or the outbox takes it next",
    "done": "done: the backend took it; retries get the cached reply",
}


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    p = sub.add_parser(
        "lookup",
        help="find one notification by its MsgId, FromUserName + CreateTime, transaction_id, out_trade_no, "
        "refund_id or out_refund_no and show its state in the store",
        parents=parents,
    )
    p.add_argument("--route", help="only this route (default: every route whose protocol carries the id)")
    p.add_argument("--msg-id", help="MP/Mini Program/WeCom MsgId (or MsgID), WeCom robot msgid")
    p.add_argument("--from", dest="from_user", help="FromUserName (with --create-time): events without an id")
    p.add_argument("--create-time", help="CreateTime (Unix seconds, as in the message), with --from")
    p.add_argument("--transaction-id", help="WeChat Pay transaction_id")
    p.add_argument("--out-trade-no", help="WeChat Pay out_trade_no (the merchant's order number)")
    p.add_argument("--refund-id", help="WeChat Pay refund_id")
    p.add_argument("--out-refund-no", help="WeChat Pay out_refund_no")
    p.add_argument("--show-content", action="store_true", help="include the cached reply and message bodies")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")


def candidates(args: argparse.Namespace) -> list[tuple[tuple[str, str], ...]]:
    """The field-value groups the arguments stand for; ValueError when they name no notification."""
    found: list[tuple[tuple[str, str], ...]] = []
    for option, names in SINGLE_IDS.items():
        if value := getattr(args, option):
            found.extend(((name, value),) for name in names)
    if bool(args.from_user) != bool(args.create_time):
        raise ValueError("--from and --create-time go together")
    if args.from_user:
        found.append((("FromUserName", args.from_user), ("CreateTime", args.create_time)))
    if not found:
        raise ValueError(
            "give an id: --msg-id, --from with --create-time, --transaction-id, --out-trade-no, …"
        )
    return found


@dataclass
class Found:
    route: str
    protocol: str
    by: str
    key: str
    record: Inspection | None
    outbox: list[tuple[OutboxItem, bool]] = field(default_factory=list)  # (item, dead)


async def find(store: Store, config: Config, args: argparse.Namespace) -> list[Found]:
    groups = candidates(args)
    routes = [r for r in config.routes if args.route in (None, r.name)]
    if not routes:
        raise ConfigError(f"no route named {args.route!r}")
    found: dict[str, Found] = {}
    for route in routes:
        runtime = build_route(config, route)
        for pairs in groups:
            if tuple(name for name, _ in pairs) not in runtime.protocol.lookup_fields:
                continue
            key = await store.resolve(alias_key(route.name, pairs))
            if key is not None and key not in found:
                by = " + ".join(f"{name}={value}" for name, value in pairs)
                found[key] = Found(route.name, runtime.protocol_name, by, key, await store.inspect(key))
    if found:
        await _attach_outbox(store, found)
    return list(found.values())


async def _attach_outbox(store: Store, found: dict[str, Found]) -> None:
    for dead in (False, True):
        for item in await store.outbox_list(dead=dead, limit=OUTBOX_SCAN):
            try:
                key = Delivery.decode(item.payload).dedup_key
            except (ValueError, KeyError):
                continue
            if key in found:
                found[key].outbox.append((item, dead))


def _when(ts: float | None, now: float) -> str | None:
    if ts is None:
        return None
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    delta = ts - now
    return f"{stamp} (in {delta:.0f} s)" if delta >= 0 else f"{stamp} ({-delta:.0f} s ago)"


def _reply(blob: bytes, show: bool) -> dict[str, Any]:
    try:
        reply = decode_reply(blob)
    except (ValueError, KeyError):
        return {"unreadable": True, "bytes": len(blob)}
    shown: dict[str, Any] = {"status": reply.status, "kind": reply.kind, "bytes": len(reply.body)}
    if show:
        shown["body"] = reply.body.decode("utf-8", "replace")
    return shown


def _outbox(item: OutboxItem, dead: bool, show: bool) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "id": item.id,
        "dead_letter": dead,
        "attempts": item.attempts,
        "created_at": item.created_at,
        "next_at": None if dead else item.next_at,
        "last_error": item.last_error,
    }
    try:
        delivery = Delivery.decode(item.payload)
    except (ValueError, KeyError):
        return shown
    if traceparent := delivery.headers.get("traceparent"):
        shown["trace_id"] = traceparent.split("-")[1] if traceparent.count("-") == 3 else ""
    if show:
        shown["body"] = delivery.body.decode("utf-8", "replace")
    return shown


def as_dict(f: Found, show: bool) -> dict[str, Any]:
    r = f.record
    record: dict[str, Any] | None = None
    if r is not None:
        record = {
            "state": r.state,
            "attempts": r.attempt,
            "first_seen": r.first_seen,
            "lease_until": r.lease_until,
            "expires_at": r.expires_at,
            "trace_id": r.trace_id,
            "reply": _reply(r.reply, show) if r.reply is not None else None,
        }
    return {
        "route": f.route,
        "protocol": f.protocol,
        "found_by": f.by,
        "dedup_key": f.key.rsplit(":", 1)[1][:16],  # as the JSON log line's dedup_key shows it
        "record": record,
        "outbox": [_outbox(item, dead, show) for item, dead in f.outbox],
    }


def render(d: dict[str, Any], now: float) -> str:
    lines = [
        f"route {d['route']} ({d['protocol']}), found by {d['found_by']}",
        f"  dedup key    {d['dedup_key']} (the backend's X-Wxgate-Dedup-Key, the log line's dedup_key)",
    ]
    r = d["record"]
    if r is None:
        lines.append("  record       expired (only its outbox entries remain)")
    else:
        lines += [
            f"  state        {STATES.get(r['state'], r['state'])}",
            f"  first seen   {_when(r['first_seen'], now) or 'not recorded'}",
            f"  attempts     {r['attempts']} (deliveries seen: the first, sender retries and redeliveries)",
            f"  trace id     {r['trace_id'] or 'not recorded (tracing off)'}",
        ]
        if r["lease_until"] is not None:
            lines.append(f"  lease until  {_when(r['lease_until'], now)}")
        if (reply := r["reply"]) is not None:
            body = f": {reply['body']!r}" if "body" in reply else " (--show-content prints it)"
            lines.append(
                f"  reply        {reply.get('status')} {reply.get('kind')}, {reply['bytes']} bytes{body}"
            )
        lines.append(f"  forgotten    {_when(r['expires_at'], now) or 'never'}")
    if not d["outbox"]:
        lines.append("  outbox       nothing queued, no dead letter")
    for o in d["outbox"]:
        what = "dead letter " if o["dead_letter"] else "outbox       "
        due = "" if o["dead_letter"] else f", next due {_when(o['next_at'], now)}"
        lines.append(f" {what} {o['id']}: {o['attempts']} redelivery attempts{due}")
        lines.append(f"               last error: {o['last_error'] or '-'}")
        if "body" in o:
            lines.append(f"               body: {o['body']!r}")
    return "\n".join(lines)


async def run(config: Config, args: argparse.Namespace) -> int:
    try:
        candidates(args)
    except ValueError as e:
        print(f"wxgate lookup: {e}", file=sys.stderr)
        return 2
    async with open_store(config.store) as store:
        found = await find(store, config, args)
    shown = [as_dict(f, args.show_content) for f in found]
    if args.json:
        print(json.dumps({"found": shown}, indent=2, ensure_ascii=False))
    elif not shown:
        scope = f"route {args.route}" if args.route else "any route"
        print(f"not found on {scope}: no live record has that id (unknown, expired, or older than lookup)")
    else:
        now = time.time()
        print("\n\n".join(render(d, now) for d in shown))
    return 0 if shown else 1
