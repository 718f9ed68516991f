"""``wxgate outbox``: inspect and replay the outbox and its dead letters in the configured store.

Works while the sidecar runs (the store is shared; leases keep the worker and the CLI from colliding).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable, Sequence

from proxy.config import Config
from proxy.pipeline.outbox import Delivery
from proxy.stores import open_store
from proxy.stores.base import OutboxItem, Store


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    """``wxgate outbox …``; ``parents`` (the ``-c`` option) go on ``outbox`` and on each of its subcommands."""
    o = sub.add_parser(
        "outbox", help="list, show, replay or purge outbox items and dead letters", parents=parents
    )
    osub = o.add_subparsers(dest="outbox_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return osub.add_parser(name, help=help, parents=parents)

    ls = command("list", "queued items (or dead letters with --dead)")
    ls.add_argument("--dead", action="store_true")
    ls.add_argument("--limit", type=int, default=100)
    show = command("show", "one item, queued or dead")
    show.add_argument("id")
    show.add_argument("--body", action="store_true", help="include the message body")
    rp = command(
        "replay",
        "redeliver now: a dead letter back into the queue (attempts and age start over), or a queued item early",
    )
    g = rp.add_mutually_exclusive_group(required=True)
    g.add_argument("id", nargs="?")
    g.add_argument("--all", action="store_true", help="every dead letter")
    pg = command("purge", "delete items for good")
    pg.add_argument("--dead", action="store_true", help="dead letters instead of queued items")
    g = pg.add_mutually_exclusive_group(required=True)
    g.add_argument("id", nargs="?")
    g.add_argument("--all", action="store_true")


def _row(item: OutboxItem, now: float) -> str:
    due = max(item.next_at - now, 0.0)
    return (
        f"{item.id}  {item.route:<12} attempts={item.attempts:<3} age={now - item.created_at:>8.1f}s "
        f"due_in={due:>7.1f}s  {item.last_error}"
    )


async def run(config: Config, args: argparse.Namespace) -> int:
    store = open_store(config.store)
    await store.open()
    try:
        return await _COMMANDS[args.outbox_command](store, args, time.time())
    finally:
        await store.close()


async def _list(store: Store, args: argparse.Namespace, now: float) -> int:
    items = await store.outbox_list(dead=args.dead, limit=args.limit)
    stats = await store.outbox_stats(now)
    print(f"queued={stats.depth} dead={stats.dead} oldest_age={stats.oldest_age:.1f}s")
    for item in items:
        print(_row(item, now))
    return 0


async def _show(store: Store, args: argparse.Namespace, now: float) -> int:
    item = await store.outbox_get(args.id)
    if item is None:
        print(f"no outbox item {args.id}")
        return 1
    d = Delivery.decode(item.payload)
    shown = {
        "id": item.id,
        "route": item.route,
        "attempts": item.attempts,
        "created_at": item.created_at,
        "next_at": item.next_at,
        "last_error": item.last_error,
        "method": d.method,
        "path": d.path_query,
        "headers": d.headers,
        "body_bytes": len(d.body),
    }
    if args.body:
        shown["body"] = d.body.decode("utf-8", "replace")
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


async def _replay(store: Store, args: argparse.Namespace, now: float) -> int:
    if args.all:
        n = await store.outbox_revive(None, now)
    else:
        queued = await store.outbox_get(args.id)
        if queued is None:
            print(f"no outbox item {args.id}")
            return 1
        n = await store.outbox_revive(args.id, now)
        if n == 0:  # a queued item: make it due now (an operator's nudge costs it no attempt)
            await store.outbox_defer(args.id, now, queued.last_error)
            n = 1
    print(f"replaying {n} item(s)")
    return 0


async def _purge(store: Store, args: argparse.Namespace, now: float) -> int:
    n = await store.outbox_purge(dead=args.dead, item_id=None if args.all else args.id)
    print(f"purged {n} item(s)")
    return 0


_COMMANDS: dict[str, Callable[[Store, argparse.Namespace, float], Awaitable[int]]] = {
    "list": _list,
    "show": _show,
    "replay": _replay,
    "purge": _purge,
}
