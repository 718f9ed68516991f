"""WeChat's flat ``<xml>…</xml>`` messages: a parser that refuses DTDs and entities, and a builder.

Every XML body wxgate reads goes through :func:`parse`, which uses defusedxml with DTDs forbidden: XXE
(the 2018 WeChat Pay SDK incident), internal entities, billion laughs and quadratic blow-up are all rejected
before any expansion happens. Nested elements are flattened as ``Parent.Child``.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element, ParseError

import defusedxml
from defusedxml.ElementTree import fromstring

from proxy.protocols.base import Rejected

MAX_DEPTH = 8  # WeChat messages nest at most 3 levels (e.g. SendPicsInfo/PicList/item)
MAX_FIELDS = 512


def parse(body: bytes, root: str | None = "xml") -> dict[str, str]:
    """Parse a WeChat XML message into flat ``{tag: text}``; raise :class:`Rejected` (400) on anything odd."""
    if not body.strip():
        raise Rejected("empty_body", 400)
    try:
        tree = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DTDForbidden:
        raise Rejected("xml_dtd_forbidden", 400, "DOCTYPE declarations are refused") from None
    except (defusedxml.EntitiesForbidden, defusedxml.ExternalReferenceForbidden):
        raise Rejected("xml_entity_forbidden", 400, "entity declarations are refused") from None
    except (ParseError, ValueError) as e:
        raise Rejected("malformed_xml", 400, type(e).__name__) from None
    if root is not None and tree.tag != root:
        raise Rejected("malformed_xml", 400, f"root element is not <{root}>")
    out: dict[str, str] = {}
    _flatten(tree, "", out, 0)
    return out


def _flatten(node: Element, prefix: str, out: dict[str, str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Rejected("malformed_xml", 400, "nested too deeply")
    for child in node:
        name = f"{prefix}{child.tag}"
        if len(child):
            _flatten(child, name + ".", out, depth + 1)
        else:
            out.setdefault(name, child.text or "")
        if len(out) > MAX_FIELDS:
            raise Rejected("malformed_xml", 400, "too many fields")


def cdata(text: str) -> str:
    # "]]>" cannot appear inside CDATA: split it across two sections.
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def build(fields: dict[str, str | int], root: str = "xml") -> bytes:
    """Build a flat WeChat XML message; ints are written bare, strings as CDATA."""
    parts = [f"<{root}>"]
    for k, v in fields.items():
        parts.append(f"<{k}>{v}</{k}>" if isinstance(v, int) else f"<{k}>{cdata(v)}</{k}>")
    parts.append(f"</{root}>")
    return "".join(parts).encode()
