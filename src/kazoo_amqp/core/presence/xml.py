"""Tiny XML helpers for the presence bodies: escaping, XML 1.0 character cleaning, URIs, xs:ID.

The bodies are built from the C module's string templates rather than with ElementTree, so a
plain value (no markup characters) gives a body byte-identical to the C one, while any value
still gives well-formed XML:

* :func:`clean` replaces what XML 1.0 forbids (C0 controls other than TAB/LF/CR, lone
  surrogates, U+FFFE, U+FFFF) with U+FFFD. The result always encodes as UTF-8.
* :func:`text` and :func:`attr` escape ``&``, ``<`` and ``>``; :func:`attr` also escapes ``"``
  (every attribute is double-quoted, so ``'`` stays as it is, as in the C output) and writes
  TAB/LF/CR as character references so attribute-value normalisation cannot change them.
* :func:`uri` percent-encodes what may not appear in an RFC 3986 URI, so ``xs:anyURI`` values
  (``entity``, ``<identity>``) stay valid whatever the payload holds (libxml2's ``anyURI`` check
  rejects e.g. ``%zz``, a second ``#``, or ``[::1]`` in a ``sip:`` URI).
* :func:`xml_id` maps any text to a valid ``xs:ID`` (NCName).
"""

from __future__ import annotations

import re

__all__ = ["URI_SAFE", "attr", "clean", "is_ncname", "percent_encode", "text", "uri", "xml_id"]

REPLACEMENT = "\ufffd"

_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)

#: Characters kept as they are in a URI: RFC 3986 unreserved, gen-delims except ``#[]`` and
#: sub-delims. ``#`` (a second one breaks the URI), ``[``/``]`` (only valid around an IP literal
#: in an ``//authority``, which SIP URIs do not have) and everything else are percent-encoded.
URI_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?@!$&'()*+,;="
)
_HEX = frozenset("0123456789ABCDEFabcdef")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")

_NCNAME_ASCII = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")
_ID_KEEP = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")


def clean(value: str) -> str:
    """``value`` with every character XML 1.0 does not allow replaced by U+FFFD."""
    return _INVALID_XML.sub(REPLACEMENT, value)


def text(value: str) -> str:
    """``value`` ready to be element content."""
    return clean(value).translate(_TEXT_ESCAPES)


def attr(value: str) -> str:
    """``value`` ready to go between double quotes as an attribute value."""
    return clean(value).translate(_ATTR_ESCAPES)


def uri(value: str) -> str:
    """``value`` as a valid RFC 3986 URI reference (for ``xs:anyURI`` values).

    Characters outside :data:`URI_SAFE` are percent-encoded (:func:`percent_encode`). Without a
    scheme, a ``:`` before the first ``/`` or ``?`` is encoded too, since it would otherwise be
    read as one (RFC 3986 §4.2). Plain SIP URIs (``sip:1000@example.com``) are unchanged.
    """
    encoded = percent_encode(value)
    if _SCHEME.match(encoded):
        return encoded
    end = min((i for i in (encoded.find("/"), encoded.find("?")) if i >= 0), default=len(encoded))
    return encoded[:end].replace(":", "%3A") + encoded[end:]


def percent_encode(value: str, *, safe: frozenset[str] = URI_SAFE) -> str:
    """``value`` with every character outside ``safe`` percent-encoded (its UTF-8 bytes).

    A ``%`` already followed by two hex digits is kept, so an encoded value is not encoded
    twice; any other ``%`` becomes ``%25``.
    """
    value = clean(value)
    out: list[str] = []
    for index, char in enumerate(value):
        if char in safe or (char == "%" and _is_hex2(value[index + 1 : index + 3])):
            out.append(char)
        else:
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8")))
    return "".join(out)


def _is_hex2(pair: str) -> bool:
    return len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX


def is_ncname(value: str) -> bool:
    """True when ``value`` is an ASCII NCName, hence a valid ``xs:ID``."""
    return _NCNAME_ASCII.fullmatch(value) is not None


def xml_id(value: str, *, prefix: str, empty: str) -> str:
    """A valid ``xs:ID`` for ``value``: ``value`` itself when it is an ASCII NCName.

    Otherwise ``prefix`` followed by ``value`` with every byte outside ``[A-Za-z0-9.-]`` written
    as ``_XX`` (``_`` itself included, so two such values never share an id), e.g. ``abc@host``
    -> ``tabc_40host`` with prefix ``t``. ``empty`` is returned for ``""``. ``prefix`` and
    ``empty`` must be NCNames. Ids only have to be unique within one document, which holds a
    single tuple, so a clash with an NCName value that passed through unchanged is harmless.
    """
    if not value:
        return empty
    if is_ncname(value):
        return value
    encoded = "".join(
        char if char in _ID_KEEP else "".join(f"_{b:02X}" for b in char.encode("utf-8"))
        for char in clean(value)
    )
    return prefix + encoded
