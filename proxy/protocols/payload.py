"""JSON bodies and backend answers: strict parsing, flattening to ``{field: text}``, and naming what a body is.

The JSON counterpart of :mod:`proxy.protocols.xmlmsg`: robot callbacks (WeCom), Pay v3 notices and generic
webhooks carry JSON. ``NaN``/``Infinity`` are refused. With ``numbers_as_text`` numbers keep their text as sent
(``1.50`` stays ``1.50``) so that anything signed over a field's text can be re-derived. Nested objects flatten as
``parent.child``, the same shape xmlmsg produces, so dedup recipes read both alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from proxy.protocols.base import Rejected

MAX_DEPTH = 8
MAX_FIELDS = 512


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def parse_object(
    body: bytes,
    numbers_as_text: bool = False,
    *,
    max_number_len: int | None = None,
    max_depth: int | None = None,
) -> dict[str, Any]:
    """Parse a JSON object (numbers as ``str`` as written with ``numbers_as_text``); else :class:`Rejected` (400).

    A key given twice in one object is malformed: ``json.loads`` keeps the last value, a backend's parser may
    keep the first, and what is signed or checked must be what the backend reads (``{"amount":"1","amount":
    "88800"}`` verified as 88800 and reached a first-wins backend as 1). ``max_number_len`` refuses a number
    written with more characters (a 100,000-digit "id" kept as text would reach keys and logs; as an int it
    costs quadratic time) and one a double cannot hold (``1e999``, infinity to most parsers), ``max_depth``
    objects and arrays nested deeper than that (arrays included, which :func:`flatten` skips)."""
    if not body.strip():
        raise Rejected("empty_body", 400)
    number: Any = str if numbers_as_text else None
    if max_number_len is not None:
        number = _bounded_number(max_number_len, numbers_as_text)
    try:
        value = json.loads(
            body,
            parse_float=number,
            parse_int=number,
            parse_constant=_refuse_constant,
            object_pairs_hook=_unique,
        )
    except (ValueError, RecursionError):
        raise Rejected("malformed_json", 400) from None
    if not isinstance(value, dict):
        raise Rejected("malformed_json", 400, "not a JSON object")
    if b"\\u" in body and not _encodable(value):
        # "\ud800": a lone surrogate escape is valid JSON text but no character; it cannot be re-encoded for
        # a dedup key, a log line or the backend (a UTF-8 encoder raises), so it is refused here, not there.
        raise Rejected("malformed_json", 400, "a string holds a lone surrogate")
    if max_depth is not None and nesting(value) > max_depth:
        raise Rejected("malformed_json", 400, "nested too deeply")
    return value


def _encodable(value: Any) -> bool:
    """Every key and string in ``value`` is valid Unicode (no lone surrogate from a ``\\uD800`` escape)."""
    if isinstance(value, str):
        return value.isascii() or not any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_encodable(v) for v in value)
    return True


def _bounded_number(limit: int, as_text: bool) -> Any:
    def number(text: str) -> Any:
        if len(text) > limit:
            raise ValueError("number too long")
        if not any(c in text for c in ".eE"):
            return text if as_text else int(text)
        value = float(text)
        if not math.isfinite(value):  # 1e999999: short, yet infinity to a backend's parser
            raise ValueError("number out of range")
        return text if as_text else value

    return number


def nesting(value: object) -> int:
    """How deeply objects and arrays nest in a parsed JSON value (a scalar is 0, ``{}`` and ``[]`` are 1)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def scalar_text(value: object) -> str | None:
    """The text of a JSON scalar (strings unquoted, ``true``/``false``/``null``, numbers); None if not scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


def flatten(obj: Mapping[str, Any]) -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [..]}`` -> ``{"a.b": "1"}``; arrays are skipped (no dedup recipe reads them)."""
    out: dict[str, str] = {}
    _flatten(obj, "", out, 0)
    return out


def _flatten(obj: Mapping[str, Any], prefix: str, out: dict[str, str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Rejected("malformed_json", 400, "nested too deeply")
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, name + ".", out, depth + 1)
        elif (text := scalar_text(value)) is not None:
            out[name] = text
        if len(out) > MAX_FIELDS:
            raise Rejected("malformed_json", 400, "too many fields")


def describe(content_type: str, body: bytes) -> str:
    """A closed label for a backend body that breaks its contract: empty, json, html, xml or text."""
    stripped = body.strip()
    if not stripped:
        return "empty"
    if "json" in content_type or stripped[:1] in (b"{", b"["):
        try:
            json.loads(stripped)
            return "json"
        except (ValueError, RecursionError):
            pass
    if "html" in content_type or stripped[:5].lower() in (b"<!doc", b"<html"):
        return "html"
    if "xml" in content_type or stripped[:1] == b"<":
        return "xml"
    return "text"
