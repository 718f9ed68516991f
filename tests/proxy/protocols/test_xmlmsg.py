"""The WeChat XML parser: hostile bodies, limits, and a differential test against the parser it replaced."""

from __future__ import annotations

from collections.abc import Callable
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import pytest
from defusedxml.ElementTree import fromstring
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.protocols import xmlmsg
from proxy.protocols.base import Rejected
from proxy.protocols.xmlmsg import MAX_DEPTH, MAX_FIELDS
from tests.support.hostile_xml import EXTERNAL_DTD, INTERNAL, LAUGHS, XXE, quadratic

# -- the previous parser, kept as the reference --------------------------------------------------------------


def reference_parse(body: bytes, root: str | None = "xml") -> dict[str, str]:
    """``xmlmsg.parse`` as it was (defusedxml's ElementTree with DTDs forbidden, then a flattening pass), plus
    the refusal of repeated elements written over the tree: no two children of the root share a name, and no
    element has two leaf children of one name; and of mixed content (text beside child elements)."""
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
    _reference_flatten(tree, "", out, 0)
    return out


def _reference_flatten(node: Element, prefix: str, out: dict[str, str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Rejected("malformed_xml", 400, "nested too deeply")
    tags = [child.tag for child in node]
    leaves = [child.tag for child in node if not len(child)]
    if len(set(tags) if not depth else set(leaves)) < (len(tags) if not depth else len(leaves)):
        raise Rejected("malformed_xml", 400, "repeated element")
    if len(node) and ((node.text or "").strip() or any((child.tail or "").strip() for child in node)):
        raise Rejected("malformed_xml", 400, "text beside child elements")
    for child in node:
        name = f"{prefix}{child.tag}"
        if len(child):
            _reference_flatten(child, name + ".", out, depth + 1)
        else:
            out.setdefault(name, child.text or "")
        if len(out) > MAX_FIELDS:
            raise Rejected("malformed_xml", 400, "too many fields")


Outcome = list[tuple[str, str]] | tuple[str, int]


def outcome(parse: Callable[[bytes, str | None], dict[str, str]], body: bytes, root: str | None) -> Outcome:
    """The fields in document order, or the rejection's reason and status."""
    try:
        return list(parse(body, root).items())
    except Rejected as e:
        return (e.reason, e.status)


def reference_outcome(body: bytes, root: str | None) -> Outcome:
    try:
        return outcome(reference_parse, body, root)
    except LookupError:
        # The one deliberate difference: an encoding name Python does not know (or a codec that is not a text
        # encoding, such as "base64") in the XML declaration escaped the old parser as LookupError: a 500.
        return ("malformed_xml", 400)


def fields(body: bytes, root: str | None = "xml") -> dict[str, str]:
    """The new parser's answer, after checking the reference gives the same one."""
    got = outcome(xmlmsg.parse, body, root)
    assert got == reference_outcome(body, root)
    assert isinstance(got, list)
    return dict(got)


def refused(body: bytes, root: str | None = "xml") -> str:
    """The new parser's rejection reason, after checking the reference refuses the same way."""
    with pytest.raises(Rejected) as caught:
        xmlmsg.parse(body, root)
    assert caught.value.status == 400
    assert reference_outcome(body, root) == (caught.value.reason, 400)
    return caught.value.reason


# -- hostile bodies ------------------------------------------------------------------------------------------

PARAMETER_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><xml><a>1</a></xml>'
)
PUBLIC_DTD = (
    b'<!DOCTYPE xml PUBLIC "-//W3C//DTD XHTML 1.0//EN" "http://127.0.0.1:1/x.dtd"><xml><a>1</a></xml>'
)
UNPARSED = b'<!DOCTYPE x [<!NOTATION n SYSTEM "n"><!ENTITY u SYSTEM "file:///etc/passwd" NDATA n>]><xml/>'
QUADRATIC = quadratic(50_000, 50_000)
PLAIN_DOCTYPE = b"<!DOCTYPE xml><xml><a>1</a></xml>"


@pytest.mark.parametrize(
    "body",
    [XXE, PARAMETER_ENTITY, EXTERNAL_DTD, PUBLIC_DTD, INTERNAL, UNPARSED, LAUGHS, QUADRATIC, PLAIN_DOCTYPE],
    ids=["xxe", "parameter-entity", "external-dtd", "public-dtd", "internal-entity", "unparsed-entity",
         "billion-laughs", "quadratic-blowup", "doctype-without-entities"],
)  # fmt: skip
def test_any_doctype_is_refused(body: bytes) -> None:
    assert refused(body) == "xml_dtd_forbidden"


@pytest.mark.parametrize("body", [LAUGHS, QUADRATIC, XXE])
def test_the_doctype_is_refused_before_its_internal_subset_is_read(body: bytes) -> None:
    # Cut the body inside the internal subset and append what would be a syntax error: the refusal still names
    # the DOCTYPE, so parsing stopped at "[" and no declaration was read, let alone expanded.
    cut = body[: body.index(b"[") + 1] + b"<!ENTITY broken <<<"
    assert refused(cut) == "xml_dtd_forbidden"


def test_entities_are_refused_even_if_a_doctype_got_through(monkeypatch: pytest.MonkeyPatch) -> None:
    # The entity and external-reference handlers are a second line behind the DOCTYPE handler.
    monkeypatch.setattr(xmlmsg, "_refuse_doctype", lambda *_: None)
    for body in (XXE, PARAMETER_ENTITY, INTERNAL, UNPARSED, LAUGHS, QUADRATIC):
        with pytest.raises(Rejected) as caught:
            xmlmsg.parse(body)
        assert caught.value.reason == "xml_entity_forbidden", body[:40]
    monkeypatch.setattr(xmlmsg, "_refuse_entity", lambda *_: None)
    with pytest.raises(Rejected) as caught:
        xmlmsg.parse(XXE)
    assert caught.value.reason == "xml_entity_forbidden"  # the reference to the SYSTEM entity
    # Parameter entities are never parsed, so the external DTD is never asked for.
    assert xmlmsg.parse(EXTERNAL_DTD) == {"a": "1"}


def test_undefined_entity_is_malformed() -> None:
    assert refused(b"<xml><Content>&foo;</Content></xml>") == "malformed_xml"


def test_predefined_entities_and_character_references_are_expanded() -> None:
    body = b"<xml><Content>&lt;&amp;&gt;&quot;&apos; &#20320;&#x597D;</Content></xml>"
    assert fields(body) == {"Content": "<&>\"' 你好"}


def test_deep_nesting_is_refused() -> None:
    body = b"<xml>" + b"<a>" * 350_000 + b"x" + b"</a>" * 350_000 + b"</xml>"
    assert len(body) > 2_000_000
    assert refused(body) == "malformed_xml"


@pytest.mark.parametrize("depth", range(MAX_DEPTH - 1, MAX_DEPTH + 4))
def test_depth_limit(depth: int) -> None:
    # The root is at depth 0; a leaf may sit at MAX_DEPTH + 1, but nothing below it.
    body = b"<xml>" + b"<a>" * depth + b"x" + b"</a>" * depth + b"</xml>"
    if depth <= MAX_DEPTH + 1:
        assert fields(body) == {".".join(["a"] * depth): "x"}
    else:
        assert refused(body) == "malformed_xml"


@pytest.mark.parametrize("count", [MAX_FIELDS - 1, MAX_FIELDS, MAX_FIELDS + 1])
def test_field_limit_counts_distinct_names(count: int) -> None:
    items = b"".join(f"<i><F{i}>{i}</F{i}></i><i><F0>again</F0></i>".encode() for i in range(count))
    body = b"<xml><L>" + items + b"</L></xml>"
    if count <= MAX_FIELDS:
        assert len(fields(body)) == count
    else:
        assert refused(body) == "malformed_xml"


@pytest.mark.parametrize(
    "body",
    [
        b"<xml><a>1</a>",  # truncated
        b"<xml><a>1</a></x",
        b"<xml><a><![CDATA[1]]",
        b"<xml><a>1</b></xml>",  # mismatched
        b"<xml><a>1</a></xml><xml/>",  # two roots
        b"<xml><a>1</a></xml>trailing",
        b"<xml><a>1</a></xml><!DOCTYPE x>",
        b"<xml><a>\xff\xfe\xc3\x28</a></xml>",  # invalid UTF-8
        b"<xml><a>\x00</a></xml>",
        b"<xml><a>&#0;</a></xml>",
        b"<xml><a>&#xD800;</a></xml>",
        b"<xml><a>1]]>2</a></xml>",
        b"<xml><a b='1' b='2'>1</a></xml>",
        b' <?xml version="1.0"?><xml/>',  # declaration not at the start
        b"just text",
        b"<",
        b'{"json": true}',
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    assert refused(body) == "malformed_xml"


@pytest.mark.parametrize("body", [b"", b"   ", b"\r\n\t "])
def test_empty_body(body: bytes) -> None:
    assert refused(body) == "empty_body"


# -- what a parse returns ------------------------------------------------------------------------------------

MP_TEXT = (
    b"<xml>\n    <ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>"
    b"\n    <FromUserName><![CDATA[oABCD1234efgh5678ijkl9012mnop]]></FromUserName>"
    b"\n    <CreateTime>1700000000</CreateTime>\n    <MsgType><![CDATA[text]]></MsgType>"
    b"\n    <Content><![CDATA[hello, world]]></Content>\n    <MsgId>1234567890123456</MsgId>\n</xml>"
)


def test_mp_text_message() -> None:
    assert fields(MP_TEXT) == {
        "ToUserName": "gh_0123456789ab",
        "FromUserName": "oABCD1234efgh5678ijkl9012mnop",
        "CreateTime": "1700000000",
        "MsgType": "text",
        "Content": "hello, world",
        "MsgId": "1234567890123456",
    }


def test_nested_elements_are_flattened() -> None:
    body = (
        b"<xml><MsgType>event</MsgType><SendPicsInfo><Count>2</Count><PicList>"
        b"<item><PicMd5Sum>aaa</PicMd5Sum></item><item><PicMd5Sum>bbb</PicMd5Sum></item>"
        b"</PicList></SendPicsInfo></xml>"
    )
    assert fields(body) == {
        "MsgType": "event",
        "SendPicsInfo.Count": "2",
        "SendPicsInfo.PicList.item.PicMd5Sum": "aaa",  # the first occurrence wins
    }


def test_an_element_with_children_records_only_its_children() -> None:
    body = b"<xml><a>\n  <b>1</b>\n\t<c/> </a>\n<d><a>leaf</a><e><f>x</f></e><e>y</e></d></xml>"
    assert fields(body) == {"a.b": "1", "a.c": "", "d.a": "leaf", "d.e.f": "x", "d.e": "y"}


@pytest.mark.parametrize(
    "body",
    [
        b"<xml><total_fee>888800<x/></total_fee></xml>",  # text, then a child: total_fee.x to wxgate
        b"<xml><total_fee><x/>888800</total_fee></xml>",  # a child, then text
        b"<xml><a><b>1</b>between<c/></a></xml>",
        b"<xml><a>1</a>tail</xml>",  # text of the root beside its children
        b"<xml>head<a>1</a></xml>",
        b"<xml><List><a>1</a></List><List><a>2</a>x</List></xml>",
    ],
)
def test_text_beside_child_elements_is_malformed(body: bytes) -> None:
    assert refused(body) == "malformed_xml"


# -- repeated elements ---------------------------------------------------------------------------------------

SIGNED_THEN_APPENDED = (
    b"<xml><out_trade_no>1</out_trade_no><total_fee>1</total_fee><out_trade_no>2</out_trade_no></xml>"
)


@pytest.mark.parametrize(
    "body",
    [
        SIGNED_THEN_APPENDED,  # the flat dict kept "1"; a backend reading the last value got "2"
        b"<xml><a>1</a><a>1</a></xml>",  # even with the same value
        b"<xml><a/><a>1</a></xml>",
        b"<xml><a>1</a><a><b>2</b></a></xml>",  # a top-level leaf and a container of one name
        b"<xml><c><b>1</b></c><c><b>2</b></c></xml>",  # a top-level container repeated
        b"<xml><SendPicsInfo><Count>1</Count><Count>2</Count></SendPicsInfo></xml>",  # a leaf twice in one parent
        b"<xml><L><item><Title>a</Title><Title>b</Title></item></L></xml>",
        b"<xml><L><item><Title>a</Title></item><item><Title>b</Title><Title>c</Title></item></L></xml>",
    ],
)
def test_a_repeated_element_that_could_shadow_a_value_is_malformed(body: bytes) -> None:
    assert refused(body) == "malformed_xml"
    with pytest.raises(Rejected):
        xmlmsg.parse(body, lists=False)


LISTS = [
    # MP: several pictures sent from the menu
    b"<xml><MsgType>event</MsgType><SendPicsInfo><Count>2</Count><PicList>"
    b"<item><PicMd5Sum>aaa</PicMd5Sum></item><item><PicMd5Sum>bbb</PicMd5Sum></item>"
    b"</PicList></SendPicsInfo></xml>",
    # MP: subscribe_msg_sent_event with two List entries
    b"<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><CreateTime>1</CreateTime>"
    b"<MsgType>event</MsgType><Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent>"
    b"<List><TemplateId>t1</TemplateId><MsgID>1</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List>"
    b"<List><TemplateId>t2</TemplateId><MsgID>2</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List>"
    b"</SubscribeMsgSentEvent></xml>",
    # WeCom: an approval with two records and two notified users
    b"<xml><ToUserName>ww</ToUserName><MsgType>event</MsgType><Event>sys_approval_change</Event><ApprovalInfo>"
    b"<SpNo>1</SpNo><SpRecord><SpStatus>1</SpStatus><Details><Approver><UserId>a</UserId></Approver></Details>"
    b"</SpRecord><SpRecord><SpStatus>2</SpStatus><Details><Approver><UserId>b</UserId></Approver></Details>"
    b"</SpRecord><Notifyer><UserId>c</UserId></Notifyer><Notifyer><UserId>d</UserId></Notifyer></ApprovalInfo></xml>",
]


@pytest.mark.parametrize(
    "body", LISTS, ids=["SendPicsInfo", "subscribe_msg_sent_event", "sys_approval_change"]
)
def test_lists_of_containers_are_accepted_and_refused_where_each_field_is_checked(body: bytes) -> None:
    assert fields(body)  # the first item's values are the ones recorded
    with pytest.raises(Rejected) as e:
        xmlmsg.parse(body, lists=False)
    assert e.value.reason == "malformed_xml"


def test_without_lists_a_message_must_be_flat() -> None:
    assert xmlmsg.parse(b"<xml><a>1</a>\n<d>3</d></xml>", lists=False) == {"a": "1", "d": "3"}
    with pytest.raises(Rejected) as e:
        xmlmsg.parse(b"<xml><a><b>1</b></a><d>3</d></xml>", lists=False)
    assert e.value.reason == "malformed_xml"
    assert xmlmsg.parse(b"<xml><a><b>1</b></a><d>3</d></xml>") == {"a.b": "1", "d": "3"}


def test_leaf_text_joins_text_cdata_and_references_and_skips_comments_and_pis() -> None:
    body = b"<xml><a>1<!-- c -->2<?pi data?>3<![CDATA[<&]]>4&lt;<![CDATA[]]]]><![CDATA[>]]>\r\n</a></xml>"
    assert fields(body) == {"a": "123<&4<]]>\n"}


def test_root_text_and_empty_root() -> None:
    assert fields(b"<xml>only text</xml>") == {}
    assert fields(b"<xml/>") == {}


def test_attributes_are_ignored() -> None:
    body = b"<xml id='1'><a x=\"&lt;\" y='2'>v</a><b c='d'/></xml>"
    assert fields(body) == {"a": "v", "b": ""}


def test_namespaces_are_spelled_as_elementtree_spells_them() -> None:
    body = (
        b'<xml xmlns:p="http://a.b/ns"><p:a><p:b>1</p:b></p:a><c xmlns="urn:x.y"><d>2</d></c>'
        b"<xml:lang>zh</xml:lang></xml>"
    )
    assert fields(body) == {
        "{http://a.b/ns}a.{http://a.b/ns}b": "1",
        "{urn:x.y}c.{urn:x.y}d": "2",
        "{http://www.w3.org/XML/1998/namespace}lang": "zh",
    }
    assert refused(b"<xml><p:a>1</p:a></xml>") == "malformed_xml"  # undeclared prefix
    assert refused(b"<xml><a p:b='1'>1</a></xml>") == "malformed_xml"
    assert refused(b"<xml><?p:i x?></xml>") == "malformed_xml"  # a colon in a PI target
    assert refused(b'<xml xmlns="urn:x"><a>1</a></xml>') == "malformed_xml"  # the root is {urn:x}xml
    assert fields(b'<xml xmlns="urn:x"><a>1</a></xml>', root=None) == {"{urn:x}a": "1"}


def test_root_element_is_checked() -> None:
    assert refused(b"<root><a>1</a></root>") == "malformed_xml"
    assert fields(b"<root><a>1</a></root>", root="root") == {"a": "1"}
    assert refused(b"<xml><a>1</a></xml>", root="root") == "malformed_xml"
    assert fields(b"<anything><a>1</a></anything>", root=None) == {"a": "1"}


def test_prolog_and_epilog() -> None:
    body = (
        b'\xef\xbb\xbf<?xml version="1.0" standalone="yes"?>\n<!-- hi --><?pi?>\n'
        b"<xml><a>1</a></xml>\n<!-- bye -->\n"
    )
    assert fields(body) == {"a": "1"}


def test_declared_encodings() -> None:
    # Single-byte encodings are decoded through Python's codecs, as before.
    latin = '<?xml version="1.0" encoding="ISO-8859-1"?><xml><a>café</a></xml>'.encode("latin-1")
    assert fields(latin) == {"a": "café"}
    assert fields('<?xml version="1.0" encoding="UTF-16"?><xml><a>你好</a></xml>'.encode("utf-16")) == {
        "a": "你好"
    }
    assert fields("<xml><a>你好</a></xml>".encode("utf-16")) == {"a": "你好"}  # from the byte-order mark
    # A UTF-8 body that says it is Latin-1 is read as Latin-1, as before.
    assert fields('<?xml version="1.0" encoding="ISO-8859-1"?><xml><a>é</a></xml>'.encode()) == {"a": "Ã©"}
    # Expat cannot use multi-byte encodings other than UTF-8/UTF-16: GBK bodies were and are refused.
    gbk = '<?xml version="1.0" encoding="GBK"?><xml><a>你好</a></xml>'.encode("gbk")
    assert refused(gbk) == "malformed_xml"
    assert refused(b'<?xml version="1.0" encoding="ascii"?><xml><a>\xc3\xa9</a></xml>') == "malformed_xml"


@pytest.mark.parametrize("encoding", ["x-no-such-encoding", "base64", "rot13", "mbcs"])
def test_an_encoding_python_cannot_decode_with_is_malformed(encoding: str) -> None:
    body = f'<?xml version="1.0" encoding="{encoding}"?><xml><a>1</a></xml>'.encode()
    with pytest.raises(LookupError):  # the old parser let this out
        reference_parse(body)
    with pytest.raises(Rejected) as caught:
        xmlmsg.parse(body)
    assert (caught.value.reason, caught.value.status) == ("malformed_xml", 400)


def test_rejection_details_carry_no_content() -> None:
    for body in (b"<xml><a>secret-token</b></xml>", b'<?xml version="1.0" encoding="secret-token"?><xml/>'):
        with pytest.raises(Rejected) as caught:
            xmlmsg.parse(body)
        assert "secret" not in str(caught.value)


@given(
    st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), st.text() | st.integers())
)
def test_build_then_parse_round_trips(message: dict[str, str | int]) -> None:
    valid = {k: v for k, v in message.items() if isinstance(v, int) or _xml_chars(v)}
    assert xmlmsg.parse(xmlmsg.build(valid)) == {
        k: str(v).replace("\r\n", "\n").replace("\r", "\n") for k, v in valid.items()
    }


def _xml_chars(text: str) -> bool:
    return all(
        c in "\t\n\r" or " " <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd" or c >= "\U00010000" for c in text
    )


# -- differential test against the reference -----------------------------------------------------------------

# Element names from a small alphabet so that names repeat. Each document draws its own pools: most use only
# well-formed names and attributes; some also get a "p:" prefix (which needs the root's xmlns:p declaration),
# a default namespace, a duplicated attribute.
NAMES = ["ToUserName", "MsgId", "Content", "item", "a", "b", "x-1.y", "中文"]
ATTRIBUTES = ["", "", "", "", ' id="1"', " a='x&amp;y'"]
HOSTILE_NAMES = ["p:a", "p:item"]
HOSTILE_ATTRIBUTES = [' xmlns="http://e.x/ns"', ' p:z="1"', ' id="1" id="2"']
CHARS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from("\t\n\r <>&'\"]")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


PIECES = st.one_of(
    st.text(CHARS, max_size=12).map(_escape),
    st.lists(st.text(CHARS, max_size=6) | st.sampled_from(["]]>", "]]", "]", "<![CDATA["]), max_size=4)
    .map("".join)
    .map(xmlmsg.cdata),
    st.sampled_from(["&lt;", "&amp;", "&gt;", "&quot;", "&apos;", "&#20320;", "&#x597D;", "&#10;", "&#13;"]),
    st.sampled_from(["<!-- c -->", "<!---->", "<?pi data?>", " ", "\n    ", "\r\n", "\r"]),
)
LEAF_CONTENT = st.lists(PIECES, max_size=5).map("".join)
BETWEEN = st.sampled_from(["", "", "\n  ", " ", "text", "<!-- c -->", "<?pi?>", "&amp;", "<![CDATA[x]]>"])


@st.composite
def element(
    draw: st.DrawFn, spine: int, names: st.SearchStrategy[str], attributes: st.SearchStrategy[str]
) -> str:
    """An element; when ``spine`` > 0, one chain of descendants goes ``spine`` levels below it."""
    name, attribute = draw(names), draw(attributes)
    if spine <= 0 and draw(st.integers(0, 4)):
        if draw(st.integers(0, 5)):
            return f"<{name}{attribute}>{draw(LEAF_CONTENT)}</{name}>"
        return f"<{name}{attribute}/>"
    children = [draw(element(0, names, attributes)) for _ in range(draw(st.integers(0, 3)))]
    if spine > 0:
        children.insert(draw(st.integers(0, len(children))), draw(element(spine - 1, names, attributes)))
    inner = "".join(draw(BETWEEN) + child for child in children) + draw(BETWEEN)
    return f"<{name}{attribute}>{inner}</{name}>"


DECLARATIONS = st.sampled_from(
    [""] * 20
    + [
        '<?xml version="1.0"?>',
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<?xml version='1.0' encoding='utf-8' standalone='yes'?>",
        '<?xml version="1.0" encoding="ISO-8859-1"?>',
        '<?xml version="1.0" encoding="UTF-16"?>',
        '<?xml version="1.0" encoding="GBK"?>',
        '<?xml version="1.0" encoding="x-unknown"?>',
    ]
)


def _encode(document: str, declaration: str) -> bytes:
    if "UTF-16" in declaration:
        return document.encode("utf-16")
    if "ISO-8859-1" in declaration:
        return document.encode("latin-1", "xmlcharrefreplace")
    if "GBK" in declaration:
        return document.encode("gbk", "xmlcharrefreplace")
    return document.encode()


ONE_IN_SIX = st.sampled_from([False] * 5 + [True])
ONE_IN_TEN = st.sampled_from([False] * 9 + [True])


@st.composite
def document(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A WeChat-like document, mostly well-formed, and the root name to ask for."""
    prefixed = draw(ONE_IN_SIX)
    names = st.sampled_from(NAMES + (HOSTILE_NAMES if prefixed else []))
    attributes = st.sampled_from(ATTRIBUTES + (HOSTILE_ATTRIBUTES if draw(ONE_IN_TEN) else []))
    root = draw(st.sampled_from(["xml"] * 20 + ["root", "p:xml"]))
    declared = ' xmlns:p="http://a.b/ns"'  # a URI with dots: names are split on dots only between elements
    root_attributes = draw(
        st.sampled_from(["", declared, declared] if prefixed else [""] * 6 + [declared, ' xmlns="urn:d"'])
    )
    spine = draw(st.integers(0, MAX_DEPTH + 2))  # the deepest element at depth spine + 1 (the root is at 0)
    children = [draw(element(0, names, attributes)) for _ in range(draw(st.integers(0, 6)))]
    children.insert(draw(st.integers(0, len(children))), draw(element(spine, names, attributes)))
    inner = "".join(draw(BETWEEN) + child for child in children) + draw(BETWEEN)
    declaration = draw(DECLARATIONS)
    prolog = draw(st.sampled_from(["", "", "", "\n", "<!-- c -->\n", "<?pi?>"] * 2 + ["<!DOCTYPE xml>"]))
    epilog = draw(st.sampled_from(["", "", "\n", "<!-- c -->", "<?pi?>\n"] * 2 + ["junk", "<xml/>"]))
    text = f"{declaration}{prolog}<{root}{root_attributes}>{inner}</{root}>{epilog}"
    body = _encode(text, declaration)
    if not declaration and draw(ONE_IN_SIX):
        body = b"\xef\xbb\xbf" + body
    mutation = draw(st.sampled_from(["none"] * 12 + ["truncate", "flip", "insert"]))
    if mutation == "truncate":
        body = body[: draw(st.integers(0, len(body)))]
    elif mutation == "flip" and body:
        i = draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([body[i] ^ draw(st.integers(1, 255))]) + body[i + 1 :]
    elif mutation == "insert":
        i = draw(st.integers(0, len(body)))
        fragment = draw(
            st.sampled_from([b"<", b"&", b"&foo;", b"]]>", b"<!DOCTYPE x>", b"<a>", b"</a>", b"\x00"])
        )
        body = body[:i] + fragment + body[i:]
    asked = draw(st.sampled_from([root.removeprefix("p:")] * 20 + ["xml", "root", None]))
    return body, asked


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=document())
def test_same_answer_as_the_reference(case: tuple[bytes, str | None]) -> None:
    body, root = case
    assert outcome(xmlmsg.parse, body, root) == reference_outcome(body, root)


@st.composite
def many_fields(draw: st.DrawFn) -> bytes:
    """Flat and slightly nested documents around MAX_FIELDS distinct names, with repeated names."""
    count = draw(st.integers(MAX_FIELDS - 3, MAX_FIELDS + 5))
    names = [f"F{i}" for i in range(count)]
    for _ in range(draw(st.integers(0, 5))):  # repeats do not count
        names.insert(draw(st.integers(0, len(names))), names[draw(st.integers(0, count - 1))])
    grouped = draw(st.sets(st.integers(0, len(names) - 1), max_size=8))  # G.Fi is a name of its own
    texts = draw(st.lists(LEAF_CONTENT, min_size=1, max_size=4))
    parts = []
    for i, name in enumerate(names):
        leaf = f"<{name}>{texts[i % len(texts)]}</{name}>"
        parts.append(f"<G>{leaf}</G>" if i in grouped else leaf)
    return ("<xml>" + "\n".join(parts) + "</xml>").encode()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(body=many_fields())
def test_field_limit_same_answer_as_the_reference(body: bytes) -> None:
    assert outcome(xmlmsg.parse, body, "xml") == reference_outcome(body, "xml")
