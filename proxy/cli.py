"""The ``wxgate`` command: run, check, send, demo-backend."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from proxy import __version__
from proxy.config import Config, ConfigError, load_config, redacted
from proxy.observability import logs
from proxy.tools import outbox_cli


def _load(path: str) -> Config:
    return load_config(path, os.environ)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    logs.setup(config.log_level)
    from proxy.cpus import resolve_workers
    from proxy.stores import StoreUnavailable
    from proxy.worker_role import WorkerRole

    role = WorkerRole.from_environ(os.environ)  # set when a `workers: N` supervisor started this process
    workers = resolve_workers(config.workers)
    try:
        if role is None and workers > 1:
            from proxy.workers import supervise

            return supervise(config, Path(args.config), workers)
        from proxy.app import serve

        return asyncio.run(serve(config, Path(args.config), role))
    except StoreUnavailable as e:  # an embedded store that cannot open (a shared one is waited for)
        print(f"wxgate: cannot open the store: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        # The admin port taken or not ours to bind (the listener's own failure is reported by mitmproxy).
        print(f"wxgate: cannot listen: {e}", file=sys.stderr)
        return 1


def cmd_check(args: argparse.Namespace) -> int:
    from proxy.reload import prepare

    config = _load(args.config)
    # Build what `run` builds (route table with every key, TLS context, tracer provider, store) but open nothing.
    _, provider, _ = prepare(config, os.environ)
    if provider is not None:
        provider.shutdown()
    print(f"{args.config}: ok ({len(config.routes)} routes)")
    print(yaml.safe_dump(redacted(config), sort_keys=False, allow_unicode=True), end="")
    return 0


def _base_url(config: Config, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    host, port = config.listen_addr
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"  # noqa: S104


def cmd_send(args: argparse.Namespace) -> int:
    from proxy.tools import sender

    config = _load(args.config)
    routes = [r for r in config.routes if args.route in (None, r.name)]
    if not routes:
        raise ConfigError(f"no route named {args.route!r} in {args.config}")
    route = routes[0]
    opts = sender.SendOptions(
        kind=args.kind,
        content=args.content,
        user=args.user,
        event=args.event,
        event_key=args.event_key,
        message_id=str(args.msg_id or secrets.randbelow(10**18)),
        tamper=args.tamper,
        probe=args.probe,
        signing_key=args.signing_key,
        serial=args.serial,
    )
    try:
        sender.build(route, opts)
    except (ValueError, OSError) as e:
        print(f"wxgate send: {e}", file=sys.stderr)
        return 2

    def show(a: sender.Attempt) -> None:
        body = a.body.decode("utf-8", "replace")
        print(f"attempt {a.number}: status {a.status or '-'} in {a.seconds * 1000:.1f} ms: {body or a.error}")

    attempts = asyncio.run(
        sender.deliver(
            _base_url(config, args.url),
            lambda: sender.build(route, opts),
            retries=args.retries,
            timeout=args.timeout,
            on_attempt=show,
        )
    )
    return 0 if attempts and sender.accepted(attempts[-1].status, attempts[-1].body) else 1


def cmd_outbox(args: argparse.Namespace) -> int:
    return asyncio.run(outbox_cli.run(_load(args.config), args))


def cmd_demo_backend(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from proxy.tools import demo_backend

    return demo_backend.main(list(rest))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wxgate", description="Sidecar proxy for WeChat callbacks.")
    p.add_argument("--version", action="version", version=f"wxgate {__version__}")
    p.add_argument("-c", "--config", default="proxy.yaml", help="configuration file (default ./proxy.yaml)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the sidecar")
    sub.add_parser(
        "check", help="validate the configuration and print the effective routes (secrets redacted)"
    )
    s = sub.add_parser(
        "send", help="send a signed callback like the route's sender does (5 s timeout, 3 retries)"
    )
    s.add_argument(
        "kind",
        nargs="?",
        default="message",
        choices=("message", "text", "event", "verify", "refund"),
        help="message/text (default), event, verify (URL verification GET), refund (Pay v2)",
    )
    s.add_argument("--route", help="route name (default: the first route)")
    s.add_argument("--url", help="base URL of the sidecar (default: from listen)")
    s.add_argument("--content", default="hello from wxgate send")
    s.add_argument("--user", default="oDemoUser")
    s.add_argument("--event", default="subscribe")
    s.add_argument("--event-key", default="")
    s.add_argument("--msg-id", type=int)
    s.add_argument("--retries", type=int, default=3)
    s.add_argument("--timeout", type=float, default=5.0)
    s.add_argument("--tamper", action="store_true", help="change one signed character (expect a rejection)")
    s.add_argument("--probe", action="store_true", help="Pay v3: a WECHATPAY/SIGNTEST/ signature probe")
    s.add_argument("--signing-key", type=Path, help="Pay v3: PEM private key matching a key the route trusts")
    s.add_argument(
        "--serial", help="Pay v3: the Wechatpay-Serial to send (default: the route's first key id)"
    )
    sub.add_parser("demo-backend", help="run the demo legacy backend (see --help)", add_help=False)
    outbox_cli.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "demo-backend" in argv:
        i = argv.index("demo-backend")
        return cmd_demo_backend(argparse.Namespace(), argv[i + 1 :])
    args = parser().parse_args(argv)
    handlers = {"run": cmd_run, "check": cmd_check, "send": cmd_send, "outbox": cmd_outbox}
    try:
        return handlers[args.command](args)
    except ConfigError as e:
        print(f"wxgate: configuration error:\n{e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
