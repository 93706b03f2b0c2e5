"""Property-based fuzzing of the pure core (issue 8): every input either works or raises a typed
:class:`~kazoo_amqp.errors.KazooError`; nothing else escapes, nothing hangs.

Run more examples with ``KAZOO_FUZZ_EXAMPLES=20000 pytest tests/fuzz``.
"""

from __future__ import annotations

import os
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from kazoo_amqp.core import encode as enc
from kazoo_amqp.core import jsonc, jsonpath
from kazoo_amqp.core.config import settings_from_mapping
from kazoo_amqp.core.framing import FrameDecoder, encode_frame
from kazoo_amqp.core.headers import parse_headers
from kazoo_amqp.core.presence.presentity import build_update
from kazoo_amqp.core.subscription import parse_subscription
from kazoo_amqp.errors import KazooError, MissingField

EXAMPLES = int(os.environ.get("KAZOO_FUZZ_EXAMPLES", "300"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Text that includes what breaks parsers: lone surrogates, NUL, control characters, quotes.
nasty_text = st.text(
    alphabet=st.one_of(
        st.characters(),  # every code point, lone surrogates included
        st.sampled_from(list('{}[]"\'\\:,.%$<>&;=/ \t\r\n\x00')),
    ),
    max_size=200,
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), nasty_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(nasty_text, inner, max_size=5)
    ),
    max_leaves=30,
)


def _typed_or_ok(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except KazooError:
        return None


@fuzz
@given(st.one_of(nasty_text, st.binary(max_size=300)))
def test_lenient_json_parse_returns_a_value_or_a_typed_error(data: str | bytes) -> None:
    _typed_or_ok(jsonc.loads, data)


@fuzz
@given(st.integers(min_value=1, max_value=200_000), st.sampled_from(["[", "{\"a\":", "[{\"b\":"]))
def test_deeply_nested_json_is_a_typed_error_not_a_recursion_error(depth: int, opener: str) -> None:
    _typed_or_ok(jsonc.loads, opener * depth)


@fuzz
@given(json_values)
def test_serialised_documents_parse_back(value: Any) -> None:
    try:
        text = jsonc.dumps(value)
    except KazooError:
        return
    _typed_or_ok(jsonc.loads, text)


@fuzz
@given(json_values, nasty_text)
def test_json_paths_never_raise_untyped(doc: Any, path: str) -> None:
    _typed_or_ok(jsonpath.kazoo_json, doc, path)
    _typed_or_ok(jsonpath.kz_json, doc, path)
    _typed_or_ok(jsonpath.kz_json_count, doc, path)
    _typed_or_ok(jsonpath.json_keys, doc, path)


@fuzz
@given(st.one_of(nasty_text, st.binary(max_size=300)))
def test_encode_never_raises_untyped(data: str | bytes) -> None:
    _typed_or_ok(enc.encode, data)


@fuzz
@given(nasty_text)
def test_header_strings_never_raise_untyped(text: str) -> None:
    _typed_or_ok(parse_headers, text)


@fuzz
@given(st.one_of(nasty_text, json_values))
def test_subscription_descriptions_are_parsed_or_typed_errors(desc: Any) -> None:
    if isinstance(desc, (str, dict)):
        _typed_or_ok(parse_subscription, desc)


SUB_KEYS = ["exchange", "type", "queue", "routing", "exclusive", "federate", "no_ack",
            "wait_for_consumer_ack", "consistent-worker", "consistent-worker-key",
            "event_key", "event_subkey", "auto_delete", "durable", "prefetch", "exchanges",
            "queue-args", "exchange-args"]


@fuzz
@given(st.dictionaries(st.sampled_from(SUB_KEYS), json_values, max_size=10))
def test_subscription_fields_of_any_type_are_parsed_or_typed_errors(desc: dict[str, Any]) -> None:
    _typed_or_ok(parse_subscription, desc)


CONFIG_KEYS = ["node_hostname", "amqp_connection", "amqp_query_timeout_sec",
               "amqp_query_timeout_micro", "amqp_consumer_processes", "amqp_consumer_workers",
               "amqp_heartbeats", "amqp_max_channels", "pua_mode", "db_url", "socket",
               "routes", "amqp_primary_zone", "amqp_consumer_event_key",
               "single_consumer_on_reconnect"]


@fuzz
@given(
    st.dictionaries(st.one_of(st.sampled_from(CONFIG_KEYS), nasty_text), json_values, max_size=8)
)
def test_config_tables_of_any_shape_load_or_raise_config_errors(data: dict[str, Any]) -> None:
    _typed_or_ok(settings_from_mapping, data, base_dir="/tmp", default_app_version="t")


@fuzz
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_frame_decoder_any_byte_stream_gives_frames_or_a_typed_error(chunks: list[bytes]) -> None:
    d = FrameDecoder(max_frame=1024)
    for chunk in chunks:
        try:
            d.feed(chunk)
        except KazooError:
            return
    assert d.buffered <= 1024 + 8


@fuzz
@given(st.lists(st.binary(max_size=200), max_size=10), st.data())
def test_frame_decoder_any_split_yields_the_same_frames(frames: list[bytes], data: Any) -> None:
    stream = b"".join(encode_frame(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    d, out, last = FrameDecoder(), [], 0
    for cut in [*cuts, len(stream)]:
        out += d.feed(stream[last:cut])
        last = cut
    assert out == frames


PRESENCE_FIELDS = ["From", "To", "From-Tag", "To-Tag", "Call-ID", "State", "Direction",
                   "Expires", "Event-Package", "Switch-URI", "From-Realm", "From-User",
                   "Messages-New", "Messages-Saved", "Messages-Urgent", "Messages-Urgent-Saved",
                   "Message-Account", "Presentity", "Presentity-User", "Presentity-Realm",
                   "Status", "Flush-Level", "Target-Call-ID", "Callee-ID-Name", "Caller-ID-Name",
                   "Caller-ID-Number", "Callee-ID-Number", "Event-Name", "Event-Category"]
field_values = st.one_of(nasty_text, st.integers(), st.none(), st.booleans(),
                         st.sampled_from(["sip:a@b", "early", "confirmed", "terminated",
                                          "initiator", "recipient", "0", "-1", "3600"]))


@fuzz
@given(
    st.sampled_from(["dialog", "presence", "message-summary"]),
    st.dictionaries(st.sampled_from(PRESENCE_FIELDS), field_values, max_size=20),
)
def test_presence_payloads_give_well_formed_bodies_or_typed_errors(
    package: str, payload: dict[str, Any]
) -> None:
    try:
        update = build_update(package, payload, now=1_800_000_000)
    except MissingField:
        return
    except KazooError:
        return
    if package == "message-summary":
        assert "Messages-Waiting" in update.body
        return
    etree.fromstring(update.body.encode("utf-8"))  # well-formed XML; schema tests live elsewhere


def test_fuzz_alphabet_covers_the_ascii_printables() -> None:
    # Guard against a narrowed strategy silently weakening every test above.
    assert set(string.punctuation) & set('{}[]"\'\\:,.%$<>&;=/')


pytestmark = pytest.mark.fuzz
