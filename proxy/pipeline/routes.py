"""The route table: which configured route a request belongs to, with everything built for it once at start.

Paths are fixed strings, except an Open Platform message route's template (``/open/{appid}/callback``, where the
console URL has ``$APPID$``): its ``{name}`` segment matches one segment of a request's path that is already in
canonical form and that the parameter's check accepts (:data:`PATH_PARAM_CHECKS`: an appid), and the value goes
to the protocol as ``Inbound.path_params``. Exact paths are matched first, then templates; any other spelling of
a template's path (``/OPEN/wx…/callback``, ``/open/%77x…/callback``, ``/open/wx…/callback/``) is
:meth:`RouteTable.impersonated` like a fixed path's.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, unquote

from proxy.config import Config, RouteBase, template_params
from proxy.config.schema import SECRET_KEYS, Policy, Secret
from proxy.protocols import build_protocol
from proxy.protocols.base import Protocol
from proxy.protocols.wechat_open import is_appid

# What a template segment must hold, by its name (the schema says which protocols take which names).
PATH_PARAM_CHECKS: Mapping[str, Callable[[str], bool]] = {"appid": is_appid}


@dataclass(frozen=True, slots=True)
class RouteRuntime:
    """A configured route with its protocol built and every default its configuration left unset applied from the
    protocol's class attributes (:class:`~proxy.protocols.base.Protocol`)."""

    name: str
    protocol_name: str
    config: RouteBase
    protocol: Protocol
    upstream: str  # base URL without trailing slash
    policy: Policy
    dedup_ttl: float
    methods: frozenset[str]
    content_types: frozenset[str] | None  # a POST's accepted content types; None: any
    template: PathTemplate | None = None  # the path's template segments, if it has any
    # The replay cache this route's signed requests are remembered in: shared by every route that accepts a
    # signature made with one of its secrets (set by RouteTable; its own name when it shares none).
    replay_scope: str = ""

    def path_params(self, path: str) -> dict[str, str]:
        """What this route's template captures from ``path`` (empty for a fixed path)."""
        return (self.template.capture(path) or {}) if self.template is not None else {}

    def effective(self, shown: dict[str, Any]) -> dict[str, Any]:
        """``shown`` (this route's configuration as ``wxgate check`` prints it) with the keys its configuration
        left unset filled in with the values the route runs with (the protocol's defaults)."""
        return {
            **shown,
            "methods": sorted(self.methods),
            "on_backend_failure": self.policy,
            "dedup": {**shown.get("dedup", {}), "ttl": self.dedup_ttl},
        }


def effective_policy(route: RouteBase, protocol: type[Protocol] | Protocol) -> Policy:
    """``on_backend_failure``, else the sender's default (MP/WeCom acknowledge at the deadline, users must never
    see an error; WeChat Pay is told of the failure and retries)."""
    return route.on_backend_failure or protocol.default_policy


def effective_dedup_ttl(route: RouteBase, protocol: type[Protocol] | Protocol) -> float:
    """``dedup.ttl``, else the sender's default raised to twice ``timestamp_window``: a dedup record outlives
    the replay cache, so an exact replay is never forwarded again (see ``RouteBase``)."""
    if route.dedup.ttl is not None:
        return route.dedup.ttl
    return max(protocol.default_dedup_ttl, 2 * route.timestamp_window)


def replay_scopes(routes: list[RouteRuntime]) -> dict[str, str]:
    """Each route's replay scope: routes that share a signing secret (a token, a key, a previous one during a
    rotation), directly or through another route, share one, named after the first of them by name.

    A signature covers neither the URL nor, for a plaintext Official Account message, the body: a request
    captured at one route verifies at every route with the same secret. Remembered per route, it could be
    replayed once at each of the others (a forged message under a captured ``signature`` too); remembered per
    scope, it is accepted at the route it was first seen at only (see ``addons/verify.py``)."""
    owner: dict[bytes, str] = {}  # key -> a route name holding it
    parent = {r.name: r.name for r in routes}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for r in routes:
        for secret in _signing_keys(r):
            other = owner.setdefault(secret, r.name)
            a, b = root(other), root(r.name)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[str, str] = {}
    for name in sorted(parent):
        groups.setdefault(root(name), name)
    return {name: groups[root(name)] for name in parent}


def _signing_keys(route: RouteRuntime) -> tuple[bytes, ...]:
    keys = route.protocol.signing_keys()
    if keys is not None:
        return keys
    values = (getattr(route.config, key, None) for key in SECRET_KEYS)
    return tuple(v.reveal().encode() for v in values if isinstance(v, Secret) and v.reveal())


def build_route(config: Config, route: RouteBase) -> RouteRuntime:
    protocol = build_protocol(route)
    return RouteRuntime(
        name=route.name,
        protocol_name=protocol.name,
        config=route,
        protocol=protocol,
        upstream=config.upstream_for(route),
        policy=effective_policy(route, protocol),
        dedup_ttl=effective_dedup_ttl(route, protocol),
        methods=frozenset(route.methods or protocol.default_methods),
        content_types=protocol.content_types,
        template=PathTemplate.parse(route.path),
    )


def path_segments(target: str) -> tuple[str, ...]:
    """The segments a lenient web framework would route ``target`` by: the spelling-independent form of a path.

    Query and fragment cut; percent-decoding repeated until stable (``%252F`` is ``/`` to a server that decodes
    twice); a NUL, ``?`` or ``#`` that decoding produced ends it (C-string handlers, decode-then-split parsers); ``\\`` is ``/`` (IIS, Tomcat on Windows); Unicode
    compatibility forms folded (full-width ``／``) and case folded; ``;`` parameters dropped from every segment
    (Tomcat, Jetty, Spring: ``;jsessionid=``); empty and ``.`` segments dropped and ``..`` resolved (repeated and
    trailing slashes, dot segments); trailing dots and blanks of a segment dropped (Windows)."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    for _ in range(4):
        decoded = unquote(path, errors="surrogateescape")
        if decoded == path:
            break
        path = decoded
    for end in ("\0", "?", "#"):  # decoded, they still end the path for a server that decodes first
        path = path.split(end, 1)[0]
    path = unicodedata.normalize("NFKC", path.replace("\\", "/")).casefold()
    out: list[str] = []
    for raw in path.split("/"):
        seg = raw.split(";", 1)[0].strip()
        if seg == "..":
            if out:
                out.pop()
        elif seg not in ("", ".") and (seg := seg.rstrip(". \t")):
            out.append(seg)
    return tuple(out)


# Script files that front controllers route through (``/index.php/route``), and ASP.NET's cookieless segments.
_SCRIPTS = (
    ".php",
    ".php5",
    ".phtml",
    ".asp",
    ".aspx",
    ".ashx",
    ".jsp",
    ".do",
    ".action",
    ".cgi",
    ".pl",
    ".py",
)
_COOKIELESS = re.compile(r"\((?:[a-z]\([^)]*\))+\)")
# Query parameters front controllers take the route from: ThinkPHP s, Yii r, Drupal q, Kohana kohana_uri, ….
_ROUTING_PARAMS = frozenset({"s", "r", "q", "route", "_route", "_url", "url", "uri", "path", "kohana_uri"})


def _is_path(part: str) -> bool:
    """A query name or value that reads as a path: ``/x``, ``\\x``, or either still percent-encoded."""
    return part.startswith(("/", "\\")) or part[:3].lower() in ("%2f", "%5c")


def _stem(segments: tuple[str, ...]) -> tuple[str, ...]:
    """``segments`` without the last one's extension (Spring's suffix patterns route ``/cb.json`` to ``/cb``)."""
    if not segments:
        return segments
    return (*segments[:-1], segments[-1].split(".", 1)[0])


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A route path with template segments: ``literals`` holds each segment's text, ``None`` where a parameter
    stands; ``params`` the parameters' positions, names and checks."""

    literals: tuple[str | None, ...]
    params: tuple[tuple[int, str, Callable[[str], bool]], ...]

    @classmethod
    def parse(cls, path: str) -> PathTemplate | None:
        """The template of a configured path, or ``None`` for a fixed path."""
        if not template_params(path):
            return None
        literals: list[str | None] = []
        params = []
        for i, seg in enumerate(path.split("/")[1:]):
            if seg.startswith("{") and seg.endswith("}"):
                literals.append(None)
                params.append((i, seg[1:-1], PATH_PARAM_CHECKS[seg[1:-1]]))
            else:
                literals.append(seg)
        return cls(tuple(literals), tuple(params))

    def capture(self, path: str) -> dict[str, str] | None:
        """``{name: segment}`` when ``path`` (the query aside) is this template with every parameter segment in
        canonical form (no percent-encoding, case or ``;`` a server would fold) and accepted by its check."""
        segments = path.split("?", 1)[0].split("/")[1:]
        if len(segments) != len(self.literals):
            return None
        if any(lit is not None and seg != lit for seg, lit in zip(segments, self.literals, strict=True)):
            return None
        captured = {}
        for i, name, check in self.params:
            seg = segments[i]
            if path_segments("/" + seg) != (seg,) or not check(seg):
                return None
            captured[name] = seg
        return captured

    def canonical(self) -> tuple[str | None, ...]:
        """The template in :func:`path_segments` form, ``None`` for each parameter (which any segment fills)."""
        out: list[str | None] = []
        for lit in self.literals:
            out.extend(path_segments("/" + lit) if lit is not None else (None,))
        return tuple(out)


def _fits(pattern: tuple[str | None, ...], segments: tuple[str, ...]) -> bool:
    """Whether canonical ``segments`` name a template's canonical ``pattern``: equal (the last segment's
    extension aside), or below it, with any segment where a parameter stands."""
    if len(segments) < len(pattern):
        return False
    head = segments[: len(pattern)]
    if len(segments) == len(pattern) and pattern[-1] is not None:
        head, pattern = _stem(head), (*pattern[:-1], pattern[-1].split(".", 1)[0])
    return all(p is None or p == seg for p, seg in zip(pattern, head, strict=True))


class RouteTable:
    """Exact-path lookup (WeChat callback URLs are fixed strings; query strings are ignored), then templates,
    and the spellings of those paths that a backend framework may route to the same handler
    (:meth:`impersonated`)."""

    def __init__(self, routes: list[RouteRuntime]) -> None:
        scopes = replay_scopes(routes)
        routes = [replace(r, replay_scope=scopes[r.name]) for r in routes]
        self.routes = tuple(routes)
        self._by_path: dict[str, RouteRuntime] = {}
        self._by_stem: dict[tuple[str, ...], RouteRuntime] = {}
        self._prefixes: list[tuple[tuple[str, ...], RouteRuntime]] = []
        self._templates: list[tuple[PathTemplate, tuple[str | None, ...], RouteRuntime]] = []
        tokens: set[str] = set()
        for r in routes:
            if r.template is not None:
                pattern = r.template.canonical()
                self._templates.append((r.template, pattern, r))
                # a text naming it holds its last fixed segment
                tokens.add(_stem(tuple(p for p in pattern if p is not None))[-1])
                continue
            self._by_path.setdefault(r.config.path, r)
            segments = path_segments(r.config.path)
            self._by_stem.setdefault(_stem(segments), r)
            if segments:
                self._prefixes.append((segments, r))
                tokens.add(_stem(segments)[-1])
        self._tokens = frozenset(tokens)

    @classmethod
    def from_config(cls, config: Config) -> RouteTable:
        return cls([build_route(config, r) for r in config.routes])

    def match(self, path: str) -> RouteRuntime | None:
        """The route whose path is exactly ``path``'s (the query aside), else whose template it fills."""
        route = self._by_path.get(path.split("?", 1)[0])
        if route is not None or not self._templates:
            return route
        for template, _, r in self._templates:
            if template.capture(path) is not None:
                return r
        return None

    def impersonated(self, target: str) -> RouteRuntime | None:
        """The route a request target that :meth:`match` did not match could reach at a lenient backend. Such a
        request is no legacy traffic to pass through unverified:

        - its path's canonical form (:func:`path_segments`, extension of the last segment aside) equals a
          route's, or lies below it (``/wechat/callback/x``: a mounted handler — Express ``app.use``, Go's
          ``ServeMux`` subtrees, Spring ``/**`` — or a script's path info, ``/notify.php/x``);
        - the same once ASP.NET's cookieless-session segments (``/(S(x))/``) and everything up to a front
          controller script (``/index.php/wechat/callback``: Laravel, Symfony, ThinkPHP, CodeIgniter, Yii) are
          taken away;
        - a query name or value that is a path (starts with ``/``), or the value of a parameter front controllers
          route by (ThinkPHP ``s``, Yii ``r``, Drupal ``q``, …), names a route the same way."""
        path, _, query = target.partition("?")
        route = self._names(path_segments(path))
        if route is not None or not query or not self._mentions_a_route(query):
            return route
        for name, value in parse_qsl(
            query.partition("#")[0], keep_blank_values=True, errors="surrogateescape"
        ):
            routing = name.lower() in _ROUTING_PARAMS
            for part in (name, value):
                if ((routing and part is value and part) or _is_path(part)) and self._mentions_a_route(part):
                    route = self._by_path.get(part) or self._names(path_segments(part))
                    if route is not None:
                        return route
        return None

    def _mentions_a_route(self, text: str) -> bool:
        """Whether ``text``, decoded and folded as :func:`path_segments` reads it, holds the last segment of a
        route's path: a cheap test first, so a long query of other parameters (heads reach 64 KiB) costs a
        few scans of the string, not a canonical form per parameter."""
        for _ in range(4):
            if "%" not in text:
                break
            text = unquote(text, errors="surrogateescape")
        folded = unicodedata.normalize("NFKC", text).casefold() if not text.isascii() else text.lower()
        return any(token in folded for token in self._tokens)

    def _names(self, segments: tuple[str, ...]) -> RouteRuntime | None:
        route = self._named(segments)
        if route is not None:
            return route
        # What a front controller or ASP.NET routes by: cookieless-session segments out, the path after the
        # last script segment (``index.php``) in.
        inner = tuple(seg for seg in segments if not _COOKIELESS.fullmatch(seg))
        scripts = [i for i, seg in enumerate(inner) if seg.endswith(_SCRIPTS)]
        if scripts:
            inner = inner[scripts[-1] + 1 :]
        return self._named(inner) if inner != segments and inner else None

    def _named(self, segments: tuple[str, ...]) -> RouteRuntime | None:
        route = self._by_stem.get(_stem(segments))
        if route is not None:
            return route
        for prefix, r in self._prefixes:
            if segments[: len(prefix)] == prefix:
                return r
        for _, pattern, r in self._templates:
            if _fits(pattern, segments):
                return r
        return None
