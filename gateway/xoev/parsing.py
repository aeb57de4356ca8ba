"""Hardened parsing of untrusted XML.

Two layers, so that one mistake does not open the door:

1. pre-checks on the raw bytes: size, UTF-8 only (strictly decoded), and any ``<!DOCTYPE`` in the
   prolog is refused before a parser sees it (no DTD means no entity declarations, no parameter
   entities, no external subset);
2. lxml with a hardened parser (no entity substitution, no network, no DTD loading, no huge trees,
   a resolver that refuses every external resource), driven through pull events so that depth,
   element count, attribute and text sizes are enforced *while* parsing and the parse aborts early.
   A DOCTYPE that somehow reached the parser is refused again afterwards.

Every refusal is an :class:`XmlRejected` with a stable ``code`` (documented in docs/xoev.md).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Any, cast

from lxml import etree

REJECT_CODES: frozenset[str] = frozenset(
    {
        "too-large",  # document larger than max_bytes
        "encoding",  # not UTF-8, or invalid UTF-8
        "doctype",  # a DOCTYPE (DTD, entity declarations, external subset) is present
        "entity",  # reference to an entity that is not one of the five predefined ones
        "external-resource",  # the parser tried to load an external resource
        "too-deep",  # element nesting deeper than max_depth
        "too-many-elements",  # more than max_elements elements
        "attribute-too-large",  # an attribute value longer than max_attribute_chars
        "text-too-large",  # a text node longer than max_text_chars
        "syntax",  # not well-formed
        "timeout",  # validation took longer than the configured bound
    }
)

_CHUNK = 64 * 1024
_BOMS_NOT_UTF8 = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff", b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = b"\xef\xbb\xbf"
# Whitespace, XML declaration / processing instructions and comments may precede the root element.
_PROLOG_ITEM = re.compile(rb"[ \t\r\n]+|<\?.*?\?>|<!--.*?-->", re.DOTALL)
_XML_DECL_ENCODING = re.compile(rb"<\?xml[^>]*?\bencoding\s*=\s*[\"']([A-Za-z0-9._-]*)[\"']")
_UTF8_NAMES = frozenset({b"utf-8", b"utf8"})


@dataclass(frozen=True, slots=True)
class ParseLimits:
    max_bytes: int = 20_000_000
    max_depth: int = 256
    max_elements: int = 500_000
    max_attribute_chars: int = 65_536
    # libxml2 itself refuses text nodes above 10 MB without huge_tree; this is the lower, own bound.
    max_text_chars: int = 10_000_000


DEFAULT_LIMITS = ParseLimits()


class XmlRejected(Exception):
    """An XML document was refused before or during parsing (never a schema validation issue)."""

    def __init__(self, code: str, message: str, line: int | None = None) -> None:
        self.code = code
        self.message = message
        self.line = line
        where = f" (line {line})" if line is not None else ""
        super().__init__(f"{code}: {message}{where}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses process boundaries (validation workers); the default reduce loses the fields.
        return (XmlRejected, (self.code, self.message, self.line))


class _RefuseResolver(etree.Resolver):
    """Refuses every external resource (DTD, entity, XInclude) the parser might ask for."""

    def resolve(self, system_url: str, public_id: str, context: object) -> Any:  # type: ignore[override]
        raise XmlRejected("external-resource", "external resources are never loaded")


def hardened_parser_options() -> dict[str, Any]:
    """lxml parser options shared by every parser that reads untrusted XML."""
    return {
        "resolve_entities": False,
        "no_network": True,
        "load_dtd": False,
        "dtd_validation": False,
        "huge_tree": False,
        "attribute_defaults": False,
        "collect_ids": False,
        "recover": False,
        "remove_comments": False,
        "remove_pis": False,
    }


def parse_xml(data: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> etree._ElementTree:
    """Parse untrusted XML bytes into an lxml tree or raise :class:`XmlRejected`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("parse_xml() takes bytes")
    data = bytes(data)
    if len(data) > limits.max_bytes:
        raise XmlRejected("too-large", f"document has {len(data)} bytes, the limit is {limits.max_bytes}")
    if not data.strip():
        raise XmlRejected("syntax", "empty document", 1)
    check_encoding(data)
    reject_doctype(data)
    return parse_with_limits(data, limits)


def check_encoding(data: bytes) -> None:
    """Accept UTF-8 only (XÖV messages are UTF-8): no UTF-16/32, no other declared encoding."""
    if data.startswith(_BOMS_NOT_UTF8) or data[:4] in (b"\x00<\x00?", b"<\x00?\x00", b"\x00\x00\x00<"):
        raise XmlRejected("encoding", "only UTF-8 documents are accepted (found a UTF-16/32 marker)", 1)
    head = data[:512]
    match = _XML_DECL_ENCODING.match(head[3:] if head.startswith(_UTF8_BOM) else head)
    if match and match.group(1).lower() not in _UTF8_NAMES:
        declared = match.group(1).decode("ascii", "replace")
        raise XmlRejected("encoding", f"only UTF-8 documents are accepted (declared: {declared})", 1)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    for start in range(0, len(data), _CHUNK):
        try:
            decoder.decode(data[start : start + _CHUNK], final=start + _CHUNK >= len(data))
        except UnicodeDecodeError as exc:
            offset = start + exc.start
            raise XmlRejected(
                "encoding", f"invalid UTF-8 at byte offset {offset}", data.count(b"\n", 0, offset) + 1
            ) from None


def reject_doctype(data: bytes) -> None:
    """Refuse a DOCTYPE in the prolog before any parser processes it."""
    pos = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    while match := _PROLOG_ITEM.match(data, pos):
        pos = match.end()
    if data[pos : pos + 9].upper() == b"<!DOCTYPE":
        raise XmlRejected(
            "doctype",
            "DOCTYPE declarations (DTDs, entity declarations) are not accepted",
            data.count(b"\n", 0, pos) + 1,
        )


def parse_with_limits(data: bytes, limits: ParseLimits) -> etree._ElementTree:
    """The second layer: lxml pull parsing with limits enforced per event (no byte pre-checks)."""
    parser = etree.XMLPullParser(events=("start", "end"), **hardened_parser_options())
    parser.resolvers.add(_RefuseResolver())
    depth = 0
    count = 0
    max_attr = limits.max_attribute_chars
    max_text = limits.max_text_chars
    try:
        for start in range(0, len(data), _CHUNK):
            parser.feed(data[start : start + _CHUNK])
            for event, item in parser.read_events():
                elem = cast(etree._Element, item)
                if event == "start":
                    count += 1
                    depth += 1
                    if depth > limits.max_depth:
                        raise XmlRejected(
                            "too-deep", f"element nesting exceeds {limits.max_depth} levels", source_line(elem)
                        )
                    if count > limits.max_elements:
                        raise XmlRejected(
                            "too-many-elements",
                            f"document has more than {limits.max_elements} elements",
                            source_line(elem),
                        )
                    _check_text(elem.getprevious(), "tail", max_text)  # complete once the next sibling starts
                    for value in elem.attrib.values():
                        if len(value) > max_attr:
                            raise XmlRejected(
                                "attribute-too-large",
                                f"an attribute value has {len(value)} characters, the limit is {max_attr}",
                                source_line(elem),
                            )
                else:
                    depth -= 1
                    _check_text(elem, "text", max_text)
                    if len(elem):
                        _check_text(elem[-1], "tail", max_text)
        root = parser.close()
    except etree.XMLSyntaxError as exc:
        raise _syntax_rejection(exc, parser) from None
    tree: etree._ElementTree = root.getroottree()
    docinfo = tree.docinfo
    if getattr(docinfo, "doctype", "") or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise XmlRejected("doctype", "DOCTYPE declarations (DTDs, entity declarations) are not accepted", 1)
    return tree


def _check_text(elem: etree._Element | None, which: str, limit: int) -> None:
    if elem is None:
        return
    text = elem.text if which == "text" else elem.tail
    if text is not None and len(text) > limit:
        raise XmlRejected(
            "text-too-large", f"a text node has {len(text)} characters, the limit is {limit}", source_line(elem)
        )


def source_line(elem: etree._Element) -> int | None:
    line = elem.sourceline
    return line if isinstance(line, int) and line > 0 else None


# libxml2 error type names -> our codes (anything else is "syntax").
_LIBXML2_CODES = {
    "ERR_UNDECLARED_ENTITY": "entity",
    "WAR_UNDECLARED_ENTITY": "entity",
    "ERR_ENTITY_LOOP": "entity",
    "ERR_ENTITY_PE_INTERNAL": "entity",
    "ERR_ENTITYREF_SEMICOL_MISSING": "entity",
    "ERR_UNPARSED_ENTITY": "entity",
    "ERR_EXT_ENTITY_STANDALONE": "entity",
    "ERR_INVALID_CHAR": "encoding",
    "ERR_INVALID_ENCODING": "encoding",
    "ERR_UNKNOWN_ENCODING": "encoding",
    "ERR_UNSUPPORTED_ENCODING": "encoding",
    "ERR_DOCTYPE_NOT_FINISHED": "doctype",
}


def _syntax_rejection(exc: etree.XMLSyntaxError, parser: etree.XMLPullParser) -> XmlRejected:
    # The feed parser sometimes reports a generic message; its feed_error_log has the real first error.
    entries = [e for e in parser.feed_error_log if e.level >= etree.ErrorLevels.ERROR]
    if entries:
        first = entries[0]
        message, line, type_name = first.message, first.line or None, first.type_name
    else:
        message, line, type_name = str(exc.msg), exc.lineno or None, ""
    code = _LIBXML2_CODES.get(type_name, "syntax")
    if "Excessive depth" in message:
        code = "too-deep"
    elif "huge" in message.lower() or "too long" in message.lower():
        code = "text-too-large"
    return XmlRejected(code, message.strip(), line)
