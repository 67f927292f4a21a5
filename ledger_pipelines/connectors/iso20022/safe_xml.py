"""The hardened XML reading of ISO 20022 documents: a size limit checked before parsing, no DTD,
no entities, no network; the errors a whole document or one record is rejected with."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree
from lxml.etree import _Element as Element

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024


# libxml2 with every way out closed: no DTD loading, no entity substitution, no network, no huge trees
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                          remove_comments=True, remove_pis=True)


class CamtError(ValueError):
    """The document as a whole cannot be read (not XML, unsafe, not camt, too large)."""


@dataclass(frozen=True)
class RecordError:
    source: str
    reason: str
    payload: str | None = None


def _local(tag: str) -> str:
    return tag[tag.index("}") + 1:] if tag[:1] == "{" else tag


def _short(text: str | None, limit: int = 80) -> str | None:
    """A value as quoted in a reason: hostile text can be megabytes, repeated on every entry."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _safe_root(data: bytes, max_bytes: int) -> tuple[Element, str | None]:
    """Parse with every way out closed, then refuse any document type declaration.

    Entities can only be declared inside a DOCTYPE, so refusing it refuses internal and external
    entities; an undeclared entity reference is not well-formed. The parsed document is checked,
    not the bytes: a declaration can be written in any encoding libxml2 reads (UTF-16 or UTF-32,
    with or without a byte order mark). Parsing one is harmless (no entity is substituted, no DTD
    loaded, entity amplification is capped); reading on would drop the entities' text silently.
    libxml2 refuses nesting deeper than 256 elements (huge_tree off).
    """
    if len(data) > max_bytes:
        raise CamtError(f"document of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise CamtError(f"not well-formed XML: {exc}") from None
    if root is None:
        raise CamtError("not well-formed XML: empty document")
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise CamtError("unsafe XML refused: a document type declaration (DOCTYPE, and with it any entity) "
                        "is not accepted")
    tag = root.tag
    return root, tag[1:tag.index("}")] if tag[:1] == "{" else None


def _body(root: Element) -> Element:
    return root[0] if _local(root.tag) == "Document" and len(root) else root


def _namespace(el: Element) -> str | None:
    tag = el.tag
    return tag[1:tag.index("}")] if tag[:1] == "{" else None


def read_document(path) -> bytes:
    """A statement file's bytes, reading no more than the size limit allows (a larger file is refused
    before it is held in memory)."""
    with open(path, "rb") as f:
        data = f.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise CamtError(f"document larger than the {MAX_DOCUMENT_BYTES}-byte limit")
    return data
