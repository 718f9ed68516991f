"""The ``wxgate`` command: run, check, send, outbox, demo-backend.

``-c/--config FILE`` goes before or after the subcommand (``wxgate -c FILE run``, ``wxgate run -c FILE``; given
twice, the later one wins). Each subcommand is one ``cmd_*`` function, found in :data:`COMMANDS`.

What a user can meet, printed on stderr without a traceback (:data:`ERRORS`), and the exit status:

* ``ConfigError``       2  ``wxgate: configuration error:`` and what is wrong (every command that reads a config)
* ``StoreUnavailable``  1  ``wxgate: cannot open the store: …`` and what to check (run, outbox)
* ``CannotListen``      1  ``wxgate: cannot listen: …``: the admin port is taken or not ours to bind (run; the
                           listener's own failure is reported by mitmproxy)
* ``UnusableOptions``   2  ``wxgate send: …`` (the command's name): options that cannot work together or with the
                           route (e.g. send without --signing-key for Pay v3)
* a usage error         2  argparse's usage line and what it did not understand
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from proxy import __version__
from proxy.config import Config, ConfigError, load_config, redacted
from proxy.observability import logs
from proxy.stores import StoreUnavailable
from proxy.tools import lookup, outbox_cli


class CannotListen(Exception):
    """The admin address is taken or not ours to bind."""


class UnusableOptions(Exception):
    """The command's options cannot work, together or with the configured route."""


ERRORS: dict[type[Exception], tuple[int, str]] = {
    # exception: (exit status, what stderr says before the exception's own message; {command}: the subcommand)
    ConfigError: (2, "wxgate: configuration error:\n"),
    StoreUnavailable: (1, "wxgate: cannot open the store: "),
    CannotListen: (1, "wxgate: cannot listen: "),
    UnusableOptions: (2, "wxgate {command}: "),
}


def _load(path: str) -> Config:
    return load_config(path, os.environ)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from proxy.cpus import resolve_workers
    from proxy.worker_role import WorkerRole

    role = WorkerRole.from_environ(os.environ)  # set when a `workers: N` supervisor started this process
    logs.setup(config.log_level, None if role is None else {"worker": role.index})
    workers = resolve_workers(config.workers)
    # An embedded store that cannot open raises StoreUnavailable (a shared one is waited for).
    try:
        if role is None and workers > 1:
            from proxy.workers import supervise

            return supervise(config, Path(args.config), workers)
        from proxy.app import serve

        return asyncio.run(serve(config, Path(args.config), role))
    except OSError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        raise CannotListen(e) from None


def cmd_check(args: argparse.Namespace) -> int:
    from proxy.reload import prepare

    if args.schema:  # the editor schema (docs/proxy.schema.json): no configuration needed
        from proxy.config.json_schema import render

        sys.stdout.write(render())
        return 0
    config = _load(args.config)
    # Build what `run` builds (route table with every key, TLS context, tracer provider, store) but open nothing.
    loaded, provider, _ = prepare(config, os.environ)
    if provider is not None:
        provider.shutdown()
    shown = redacted(config)
    # what each route runs with, its protocol's defaults included
    shown["routes"] = [
        r.effective(s) for r, s in zip(loaded.table.routes, shown.get("routes", []), strict=True)
    ]
    print(f"{args.config}: ok ({len(config.routes)} routes)")
    print(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True), end="")
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
        mode=args.mode,
        appid=args.appid or sender.RELEASE_TEST_APPID,
    )
    try:
        sender.build(route, opts)
    except (ValueError, OSError) as e:
        raise UnusableOptions(e) from None

    def show(a: sender.Attempt) -> None:
        body = a.body.decode("utf-8", "replace")
        print(f"attempt {a.number}: status {a.status or '-'} in {a.seconds * 1000:.1f} ms: {body or a.error}")
        opened = sender.open_reply(route, opts, a.body)
        if opened is not None:
            print(f"  {opened}")

    attempts = asyncio.run(
        sender.deliver(
            _base_url(config, args.url),
            lambda: sender.build(route, opts),
            retries=args.retries,
            timeout=args.timeout,
            is_accepted=sender.accepts(route, opts),
            on_attempt=show,
        )
    )
    return 0 if attempts and sender.accepts(route, opts)(attempts[-1].status, attempts[-1].body) else 1


def cmd_outbox(args: argparse.Namespace) -> int:
    return asyncio.run(outbox_cli.run(_load(args.config), args))


def cmd_lookup(args: argparse.Namespace) -> int:
    return asyncio.run(lookup.run(_load(args.config), args))


def cmd_demo_backend(args: argparse.Namespace) -> int:
    from proxy.tools import demo_backend

    return demo_backend.main(args.passed_on)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "send": cmd_send,
    "outbox": cmd_outbox,
    "lookup": cmd_lookup,
    "demo-backend": cmd_demo_backend,
}
PASSES_ON = {"demo-backend"}  # subcommands that parse their own arguments


def config_option(top: bool = False) -> argparse.ArgumentParser:
    """A parent parser with ``-c/--config``. Only the top level has a default: a subcommand's own ``-c`` is
    absent unless given (argparse copies a subcommand's values over the top level's), so the later one wins."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "-c",
        "--config",
        default="proxy.yaml" if top else argparse.SUPPRESS,
        help="configuration file (default ./proxy.yaml)",
    )
    return p


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wxgate", description="Sidecar proxy for WeChat callbacks.", parents=[config_option(top=True)]
    )
    p.add_argument("--version", action="version", version=f"wxgate {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    config = [config_option()]
    sub.add_parser("run", help="run the sidecar", parents=config)
    c = sub.add_parser(
        "check",
        help="validate the configuration and print the effective routes (secrets redacted)",
        parents=config,
    )
    c.add_argument(
        "--schema", action="store_true", help="print proxy.yaml's JSON Schema (for editors) instead"
    )
    s = sub.add_parser(
        "send",
        help="send a signed callback like the route's sender does (5 s timeout, 3 retries)",
        parents=config,
    )
    s.add_argument(
        "kind",
        nargs="?",
        default="message",
        choices=("message", "text", "event", "verify", "refund", "ticket"),
        help="message/text (default; a Channels shop: a paid order), event (--event), verify (URL verification "
        "GET), refund (Pay v2), ticket (Open Platform authorization route: component_verify_ticket, also its "
        "default; event there: an authorized notice for --appid)",
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
    s.add_argument(
        "--mode",
        choices=("plaintext", "compatible", "safe"),
        help="Official Account / Mini Program: how to push (default: safe when the route has encoding_aes_key, "
        "else plaintext); the format (json/xml) is the route's",
    )
    s.add_argument(
        "--appid",
        help="Open Platform: the authorizer whose appid fills the path's {appid} ($APPID$) (default: "
        "wx570bc396a51b8ff8, the 全网发布 test official account every messages route accepts)",
    )
    sub.add_parser("demo-backend", help="run the demo legacy backend (see --help)", add_help=False)
    outbox_cli.add_parser(sub, parents=config)
    lookup.add_parser(sub, parents=config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args, rest = p.parse_known_args(argv)
    if rest and args.command not in PASSES_ON:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.passed_on = rest
    try:
        return COMMANDS[args.command](args)
    except tuple(ERRORS) as e:
        status, prefix = next(v for kind, v in ERRORS.items() if isinstance(e, kind))
        print(prefix.format(command=args.command) + str(e), file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
