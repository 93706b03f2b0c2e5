"""kazoo_encode / {kz.encode} (spec §7, vectors §15.1)."""

from __future__ import annotations

import pytest

from kazoo_amqp.core.encode import encode, encode_checked
from kazoo_amqp.errors import BadRoutingKey

# (id, input bytes, output in both modes)
SAME_IN_BOTH_MODES = [
    ("E1-dots-in-host", b"sip.example.com", "sip%2Eexample%2Ecom"),
    ("E2-at-sign", b"user@domain.com", "user%40domain%2Ecom"),
    ("E3-safe-chars-kept", b"abc-DEF_123~", "abc-DEF_123~"),
    ("E4-space-is-plus", b"a b", "a+b"),
    ("E5-lone-hash-kept", b"#", "#"),
    ("E6-lone-star-kept", b"*", "*"),
    ("E7-double-hash-escaped", b"##", "%23%23"),
    ("E8-star-inside-escaped", b"a*b", "a%2Ab"),
    ("E9-hash-inside-escaped", b"a#b", "a%23b"),
    ("E10-empty", b"", ""),
    ("E11-ip-address", b"1234@10.0.0.1", "1234%4010%2E0%2E0%2E1"),
    ("E12-punctuation", b"a/b:c;d=e", "a%2Fb%3Ac%3Bd%3De"),
    ("E13-percent", b"%", "%25"),
    ("E14-plus", b"+", "%2B"),
    ("E15-quotes", b"'quote'", "%27quote%27"),
    ("E21-del", b"\x7f", "%7F"),
    ("E22-control-byte", b"\x01", "%01"),
    ("E23-several-dots", b"a.b.c", "a%2Eb%2Ec"),
    ("E24-cap-at-255", b"a" * 300, "a" * 255),
    ("E25-escape-at-254-reaches-257", b"a" * 254 + b".", "a" * 254 + "%2E"),
    ("E26-escape-at-253-then-stop", b"a" * 253 + b"..", "a" * 253 + "%2E"),
    ("E27-85-escapes", b"." * 100, "%2E" * 85),
]

# (id, input bytes, utf8-mode output, x86-mode output)
HIGH_BYTES = [
    ("E16-e-acute", "é".encode(), "%C3%A9", "%,3%*9"),
    ("E17-n-tilde", "ñ".encode(), "%C3%B1", "%,3%+1"),
    ("E18-cjk", "日".encode(), "%E6%97%A5", "%.6%)7%*5"),
    ("E19-byte-ff", b"\xff", "%FF", "%/F"),
    ("E20-byte-80", b"\x80", "%80", "%(0"),
]


@pytest.mark.parametrize(
    ("data", "expected"),
    [c[1:] for c in SAME_IN_BOTH_MODES],
    ids=[c[0] for c in SAME_IN_BOTH_MODES],
)
@pytest.mark.parametrize("mode", ["utf8", "x86"])
def test_encode_matches_vector_in_both_modes(data: bytes, expected: str, mode: str) -> None:
    """ASCII input encodes the same in both high-byte modes (§15.1)."""
    assert encode(data, high_bytes=mode) == expected  # type: ignore[arg-type]
    assert len(encode(data, high_bytes=mode)) == len(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "utf8", "x86"), [c[1:] for c in HIGH_BYTES], ids=[c[0] for c in HIGH_BYTES]
)
def test_encode_high_bytes_are_percent_hex_by_default(data: bytes, utf8: str, x86: str) -> None:
    """By default each byte >= 0x80 becomes %XX uppercase hex."""
    assert encode(data) == utf8
    assert encode(data, high_bytes="utf8") == utf8


@pytest.mark.parametrize(
    ("data", "utf8", "x86"), [c[1:] for c in HIGH_BYTES], ids=[c[0] for c in HIGH_BYTES]
)
def test_encode_x86_mode_reproduces_signed_char_quirk(data: bytes, utf8: str, x86: str) -> None:
    """high_bytes='x86' writes the high nibble as chr(0x20 + nibble), like the C module (§7)."""
    assert encode(data, high_bytes="x86") == x86


def test_encode_escapes_dot_as_percent_2E() -> None:
    """A dot is never kept: it would split the routing key."""
    assert encode("a.b") == "a%2Eb"


def test_encode_accepts_str_as_utf8() -> None:
    """A str is encoded as its UTF-8 bytes."""
    assert encode("é@x.y") == "%C3%A9%40x%2Ey"
    assert encode("é", high_bytes="x86") == "%,3%*9"


def test_encode_str_from_surrogateescape_round_trips_to_the_original_bytes() -> None:
    """A str decoded with surrogateescape encodes its original bytes."""
    assert encode(b"\xff".decode("utf-8", "surrogateescape")) == "%FF"


def test_encode_cap_is_checked_before_each_byte_for_long_non_ascii() -> None:
    """The 255 cap applies to output characters, whatever the mode."""
    out = encode("é" * 200)
    assert len(out) == 255 and out == "%C3%A9" * 42 + "%C3"
    assert len(encode("é" * 200, high_bytes="x86")) == 255


def test_encode_85_bytes_are_never_capped() -> None:
    """85 escaped bytes make exactly 255 chars: the cap is not reached before the last byte."""
    assert encode(b"/" * 85) == "%2F" * 85
    assert encode(b"/" * 86) == "%2F" * 85


def test_encode_wildcard_kept_only_when_alone() -> None:
    """# and * pass through only as the whole input."""
    assert encode("#") == "#" and encode("*") == "*"
    assert encode("#.") == "%23%2E"


def test_encode_rejects_unknown_high_bytes_mode() -> None:
    """An unknown mode is a programming error."""
    with pytest.raises(ValueError, match="high_bytes"):
        encode("é", high_bytes="arm")  # type: ignore[arg-type]


def test_encode_checked_rejects_256_bytes() -> None:
    """E28: kazoo_encode refuses inputs over 255 bytes."""
    with pytest.raises(
        BadRoutingKey, match="input to encode is 256 bytes; kazoo_encode accepts at most 255"
    ):
        encode_checked(b"a" * 256)


def test_encode_checked_counts_utf8_bytes_not_characters() -> None:
    """The limit is on bytes: 128 x 'é' is 256 bytes."""
    with pytest.raises(BadRoutingKey, match="256 bytes"):
        encode_checked("é" * 128)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a" * 255, "a" * 255),
        (b"." * 255, "%2E" * 85),
        (b"a" * 254 + b".", "a" * 254 + "%2E"),
        (b"sip.example.com", "sip%2Eexample%2Ecom"),
    ],
    ids=["255-plain", "255-dots-capped", "E25-via-kazoo-encode", "E1-via-kazoo-encode"],
)
def test_encode_checked_accepts_255_bytes_and_caps_like_encode(data: bytes, expected: str) -> None:
    """Inputs up to 255 bytes are encoded by the same algorithm, cap included."""
    assert encode_checked(data) == expected


def test_encode_checked_x86_mode() -> None:
    """kazoo_encode supports the same high-byte modes."""
    assert encode_checked("é", high_bytes="x86") == "%,3%*9"
    assert encode_checked("é") == "%C3%A9"
