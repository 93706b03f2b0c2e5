"""Presence core: the §15.9 PUA vectors, row semantics and hostile input.

Bodies the C module writes validly are compared byte for byte with §15.9; where the C body is
invalid (docs/compat-presence.md) the test asserts the exact difference. Every XML body is
parsed with lxml and validated against the RFC schemas from the shared folder; message-summary
bodies are checked against the RFC 3842 grammar and Kamailio's presence_mwi check.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from kazoo_amqp.core.presence import (
    CONTENT_TYPES,
    PACKAGES,
    FlushScope,
    PresentityUpdate,
    build_update,
    dispatch,
    presentity_key,
)
from kazoo_amqp.core.presence import xml as pxml
from kazoo_amqp.core.presence.dialoginfo import DIALOG_STATES
from kazoo_amqp.core.presence.fields import get_int, get_str
from kazoo_amqp.core.presence.mwi import build_message_summary
from kazoo_amqp.core.presence.pidf import tuple_id
from kazoo_amqp.errors import MissingField, UsageError

NOW = 1_700_000_000
DEFAULT_EXPIRES = 3600

DI = "{urn:ietf:params:xml:ns:dialog-info}"
PIDF = "{urn:ietf:params:xml:ns:pidf}"
DM = "{urn:ietf:params:xml:ns:pidf:data-model}"
RPID = "{urn:ietf:params:xml:ns:pidf:rpid}"

# --------------------------------------------------------------------------- validation helpers

#: RFC 3842 section 5 grammar (HCOLON = *WSP ":" SWS; SLASH/LPAREN/RPAREN allow SWS).
_SWS = r"[ \t]*"
_MWI_GRAMMAR = re.compile(
    rf"Messages-Waiting{_SWS}:{_SWS}(?:yes|no)\r\n"
    rf"(?:Message-Account{_SWS}:{_SWS}[A-Za-z][A-Za-z0-9+.-]*:[!-~]+\r\n)?"
    rf"(?:(?:voice|fax|pager|multimedia|text|none)-message{_SWS}:{_SWS}"
    rf"[0-9]+{_SWS}/{_SWS}[0-9]+(?:{_SWS}\({_SWS}[0-9]+{_SWS}/{_SWS}[0-9]+{_SWS}\))?\r\n)*",
    re.IGNORECASE,
)
#: Kamailio presence_mwi's PUBLISH check: one SP/TAB after the colon, then printable ASCII lines.
_MWI_KAMAILIO = re.compile(r"Messages-Waiting[ \t]*:[ \t](?:yes|no)\r\n(?:[ -~]*\r\n)*")
_NCNAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@pytest.fixture(scope="module")
def schemas(shared_dir: Path) -> dict[str, etree.XMLSchema]:
    folder = shared_dir / "schemas"
    return {
        "dialog": etree.XMLSchema(etree.parse(str(folder / "dialog-info.xsd"))),
        "presence": etree.XMLSchema(etree.parse(str(folder / "pidf.xsd"))),
    }


def check_body(update: PresentityUpdate, schemas: dict[str, etree.XMLSchema]) -> Any:
    """Assert the row and body are valid for their package; return the parsed root (XML)."""
    for column in (update.username, update.domain, update.etag, update.sender, update.body):
        column.encode("utf-8")  # no lone surrogate
        assert not _XML_INVALID.search(column), column[:200]
    assert update.event in PACKAGES
    if update.event == "message-summary":
        assert _MWI_GRAMMAR.fullmatch(update.body), update.body
        assert _MWI_KAMAILIO.fullmatch(update.body), update.body
        return None
    root = etree.fromstring(update.body.encode("utf-8"))
    schema = schemas[update.event]
    assert schema.validate(root), (schema.error_log, update.body[:2000])
    if update.event == "dialog":
        for dialog in root.iter(f"{DI}dialog"):
            assert dialog.findtext(f"{DI}state") in DIALOG_STATES
            assert dialog.get("direction") in (None, "initiator", "recipient")
            assert dialog.get("id")
    else:
        for person in root.iter(f"{DM}person"):  # dm:person id is an xs:ID (RFC 4479)
            assert _NCNAME.fullmatch(person.get("id") or "")
            assert person.get("id") != root.find(f"{PIDF}tuple").get("id")
    return root


# --------------------------------------------------------------------------- §15.9 vectors


def j(text: str) -> dict[str, Any]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


PUA1 = j(
    '{"Event-Name":"update","Event-Package":"presence","From":"sip:1000@example.com",'
    '"From-User":"1000","From-Realm":"example.com","To":"sip:1000@example.com","To-User":"1000",'
    '"State":"confirmed","Call-ID":"abc123@host","Expires":3600}'
)
_PIDF_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?><presence xmlns="urn:ietf:params:xml:ns:pidf" '
    'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
    'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" '
    'xmlns:c="urn:ietf:params:xml:ns:pidf:cipid" entity="1000"> <tuple '
)
_PERSON = (
    '<dm:person xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
    'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" id="1">'
)
PUA1_C = (
    f'{_PIDF_HEAD}xmlns="urn:ietf:params:xml:ns:pidf" id="abc123@host"><status><basic>open'
    '</basic></status></tuple><note xmlns="urn:ietf:params:xml:ns:pidf">On the Phone</note>'
    f"{_PERSON}<rpid:activities><rpid:on-the-phone/></rpid:activities><dm:note>On the Phone"
    "</dm:note></dm:person></presence>"
)
PUA2 = j(
    '{"Event-Name":"update","Event-Package":"presence","From":"sip:1000@example.com",'
    '"From-User":"1000","From-Realm":"example.com","To-User":"1000","State":"offline",'
    '"Switch-URI":"sip:10.0.0.5:5060"}'
)
PUA2_C = (
    f'{_PIDF_HEAD}xmlns="urn:ietf:params:xml:ns:pidf" id=""><status><basic>closed</basic>'
    '</status></tuple><note xmlns="urn:ietf:params:xml:ns:pidf">Offline</note>'
    f"{_PERSON}<rpid:activities></rpid:activities><dm:note>Offline</dm:note></dm:person>"
    "</presence>"
)
PUA3 = j('{"Event-Name":"update","Event-Package":"presence","From-User":"1000","State":"early"}')
PUA4 = j(
    '{"Event-Name":"update","Event-Package":"message-summary","From":"sip:1000@example.com",'
    '"From-User":"1000","From-Realm":"example.com","Messages-Waiting":"yes",'
    '"Message-Account":"sip:1000@example.com","Messages-New":2,"Messages-Saved":5,'
    '"Messages-Urgent":0,"Messages-Urgent-Saved":1,"Call-ID":"mwi-1",'
    '"Sender-URI":"sip:vm@example.com"}'
)
PUA4_C = (
    "Messages-Waiting: yes\r\nMessage-Account: sip:1000@example.com\r\nVoice-Message: 2/5 (0/1)\r\n"
)
PUA5 = j('{"Event-Name":"update","Event-Package":"message-summary"}')
PUA5_C = "Messages-Waiting: \r\nMessage-Account: \r\nVoice-Message: / (/)\r\n"
PUA6 = j(
    '{"Event-Name":"update","Event-Package":"dialog","From":"sip:1000@example.com",'
    '"From-User":"1000","From-Realm":"example.com","To":"sip:2000@example.com","To-User":"2000",'
    '"To-Realm":"example.com","Call-ID":"call-id","Dialog-ID":"dialog-id","From-Tag":"ftg",'
    '"To-Tag":"ttg","Direction":"initiator","State":"confirmed","Expires":120}'
)
_DI_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?><dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"'
    ' version="1" state="full" entity="sip:1000@example.com">'
)
_LOCAL = '<local><identity display="1000">sip:1000@example.com</identity>'
_REMOTE = '<remote><identity display="2000">sip:2000@example.com</identity>'
_T1 = '<target uri="sip:1000@example.com"/>'
_T2 = '<target uri="sip:2000@example.com"/>'
PUA6_C = (
    f'{_DI_HEAD}<dialog id="dialog-id" call-id="call-id" local-tag="ftg" remote-tag="ttg" '
    f'direction="initiator"><state>confirmed</state>{_LOCAL}{_T1}</local>{_REMOTE}{_T2}</remote>'
    "</dialog></dialog-info>"
)
PUA7 = {
    k: v for k, v in PUA6.items() if k not in ("From-Tag", "To-Tag", "Dialog-ID", "Direction")
} | {"State": "early"}
PUA7_C = (
    f'{_DI_HEAD}<dialog id="call-id" call-id="call-id"   direction=""><state>early</state>'
    f"{_LOCAL}{_T1}</local>{_REMOTE}{_T2}</remote></dialog></dialog-info>"
)
PUA8 = {k: v for k, v in PUA6.items() if k not in ("To-Tag", "Dialog-ID")} | {
    "Direction": "recipient",
    "State": "terminated",
}
PUA8_C = (
    f'{_DI_HEAD}<dialog id="call-id" call-id="call-id" local-tag="ftg"  direction="recipient">'
    f"<state>terminated</state>{_LOCAL}</local>{_REMOTE}</remote></dialog></dialog-info>"
)
PUA9 = j(
    '{"Event-Name":"update","Event-Package":"dialog","From":"sip:1000@example.com",'
    '"From-User":"1000","From-Realm":"example.com","To":"sip:2000@example.com",'
    '"State":"terminated"}'
)
PUA9_C = (
    f'{_DI_HEAD} <dialog call-id="76001e23e09704ea9e1257ebea85e1f3" direction="initiator">'
    "<state>terminated</state></dialog></dialog-info>"
)
PUA10 = PUA6 | {
    "Presentity": "sip:park1@example.com",
    "Presentity-User": "park1",
    "Presentity-Realm": "example.com",
    "Flush-Level": 1,
}


def update(payload: dict[str, Any], **kwargs: Any) -> PresentityUpdate:
    result = dispatch(payload, now=NOW, **kwargs)
    assert result is not None
    return result


def invalid_against(body: str, schemas: dict[str, etree.XMLSchema], package: str) -> bool:
    return not schemas[package].validate(etree.fromstring(body.encode()))


def test_pua1_presence_confirmed(schemas: dict[str, etree.XMLSchema]) -> None:
    row = update(PUA1)
    assert invalid_against(PUA1_C, schemas, "presence")  # id="abc123@host" is not an xs:ID
    # Only the three invalid values differ from the C body.
    assert row.body == (
        PUA1_C.replace('entity="1000"', 'entity="sip:1000@example.com"')
        .replace('id="abc123@host"', 'id="tabc123_40host"')
        .replace('id="1"', 'id="p1"')
    )
    assert (row.event, row.domain, row.username, row.etag, row.sender) == (
        "presence",
        "example.com",
        "1000",
        "abc123@host",
        "sip:1000@example.com",
    )
    assert (row.received_time, row.expires, row.priority) == (NOW, NOW + 3600, 0)
    assert row.flush is FlushScope.PRESENTITY  # C reset=1
    assert row.content_type == "application/pidf+xml"
    check_body(row, schemas)


def test_pua2_presence_offline_without_call_id(schemas: dict[str, etree.XMLSchema]) -> None:
    row = update(PUA2)
    assert invalid_against(PUA2_C, schemas, "presence")  # id="" is not an xs:ID
    assert row.body == (
        PUA2_C.replace('entity="1000"', 'entity="sip:1000@example.com"')
        .replace('id=""', 'id="no-call-id"')
        .replace('id="1"', 'id="p1"')
    )
    assert (row.etag, row.sender) == ("", "sip:10.0.0.5:5060")
    assert row.expires == NOW + DEFAULT_EXPIRES  # C: 0, never served with startup_mode=1
    assert row.flush is FlushScope.PRESENTITY
    check_body(row, schemas)


@pytest.mark.parametrize(
    ("state", "note", "activity", "basic"),
    [
        ("early", "Busy", "busy", "open"),
        ("confirmed", "On the Phone", "on-the-phone", "open"),
        ("offline", "Offline", None, "closed"),
        ("terminated", "Available", None, "open"),
        ("Confirmed", "Available", None, "open"),  # exact, case-sensitive, like C
        ("online", "Available", None, "open"),
    ],
)
def test_presence_state_mapping(
    schemas: dict[str, etree.XMLSchema],
    state: str,
    note: str,
    activity: str | None,
    basic: str,
) -> None:
    root = check_body(update(PUA1 | {"State": state}), schemas)
    assert root.findtext(f"{PIDF}tuple/{PIDF}status/{PIDF}basic") == basic
    assert root.findtext(f"{PIDF}note") == note
    assert root.findtext(f"{DM}person/{DM}note") == note
    children = [etree.QName(c).localname for c in root.find(f"{DM}person/{RPID}activities")]
    assert children == ([activity] if activity else [])


def test_pua3_presence_validation() -> None:
    with pytest.raises(MissingField) as caught:
        dispatch(PUA3, now=NOW)
    assert caught.value.field == "To-User"
    message = str(caught.value)
    assert message.startswith("presence update needs 'To-User'")
    assert "From-Realm" in message  # ours: a row without a domain is never served
    assert "Event-Package='presence'" in message


@pytest.mark.parametrize("missing", ["From-User", "To-User", "State", "From-Realm"])
def test_presence_required_fields(missing: str) -> None:
    for absent in ({k: v for k, v in PUA1.items() if k != missing}, PUA1 | {missing: ""}):
        with pytest.raises(MissingField) as caught:
            update(absent)
        assert caught.value.field == missing


def test_pua4_mwi(schemas: dict[str, etree.XMLSchema]) -> None:
    row = update(PUA4)
    assert row.body == PUA4_C  # byte for byte
    assert (row.event, row.domain, row.username, row.etag) == (
        "message-summary",
        "example.com",
        "1000",
        "mwi-1",
    )
    assert row.sender == "sip:vm@example.com"  # C stores From (bug): sip:1000@example.com
    assert row.expires == NOW + DEFAULT_EXPIRES  # C: 0
    assert row.flush is FlushScope.PRESENTITY
    assert row.content_type == "application/simple-message-summary"
    check_body(row, schemas)
    no_sender = update({k: v for k, v in PUA4.items() if k != "Sender-URI"})
    assert no_sender.sender == "sip:1000@example.com"


def test_pua5_mwi_empty() -> None:
    with pytest.raises(MissingField) as caught:
        update(PUA5)  # C writes a row with empty username and domain
    assert caught.value.field == "From-User"
    assert "message-summary update needs 'From-User'" in str(caught.value)
    # The body alone: C's is not RFC 3842 (no yes/no, empty account, "/ (/)").
    assert not _MWI_GRAMMAR.fullmatch(PUA5_C)
    assert build_message_summary(PUA5) == "Messages-Waiting: no\r\nVoice-Message: 0/0 (0/0)\r\n"


@pytest.mark.parametrize(
    ("fields", "body"),
    [
        ({"Messages-New": 3}, "Messages-Waiting: yes\r\nVoice-Message: 3/0 (0/0)\r\n"),
        ({"Messages-Urgent": "1"}, "Messages-Waiting: yes\r\nVoice-Message: 0/0 (1/0)\r\n"),
        (
            {"Messages-Waiting": "YES", "Messages-New": "2", "Messages-Saved": "007"},
            "Messages-Waiting: yes\r\nVoice-Message: 2/007 (0/0)\r\n",
        ),
        (
            {"Messages-Waiting": True, "Messages-New": -4, "Messages-Saved": 2.7},
            "Messages-Waiting: yes\r\nVoice-Message: 0/2 (0/0)\r\n",
        ),
        (
            {"Messages-Waiting": "no", "Messages-New": "5 new", "Messages-Saved": None},
            "Messages-Waiting: no\r\nVoice-Message: 5/0 (0/0)\r\n",
        ),
        (
            {"Message-Account": "sip:bob smith@example.com\r\nX: y"},
            "Messages-Waiting: no\r\nMessage-Account: sip:bob%20smith@example.com%0D%0AX:%20y\r\n"
            "Voice-Message: 0/0 (0/0)\r\n",
        ),
        (
            {"Message-Account": "1000@example.com"},  # not an absolute URI: line left out
            "Messages-Waiting: no\r\nVoice-Message: 0/0 (0/0)\r\n",
        ),
    ],
)
def test_mwi_body_repairs(fields: dict[str, Any], body: str) -> None:
    assert build_message_summary(fields) == body
    assert _MWI_GRAMMAR.fullmatch(body)
    assert _MWI_KAMAILIO.fullmatch(body)


def test_pua6_dialog_full(schemas: dict[str, etree.XMLSchema]) -> None:
    row = update(PUA6)
    assert row.body == PUA6_C  # byte for byte
    assert (row.event, row.domain, row.username, row.etag, row.sender) == (
        "dialog",
        "example.com",
        "1000",
        "call-id",
        "sip:call-id",
    )
    assert row.expires == NOW + 120
    assert row.flush is FlushScope.ETAG  # Flush-Level 0: upsert on the etag
    assert row.content_type == "application/dialog-info+xml"
    check_body(row, schemas)


def test_pua7_dialog_without_direction(schemas: dict[str, etree.XMLSchema]) -> None:
    row = update(PUA7)
    assert invalid_against(PUA7_C, schemas, "dialog")  # direction="" is not in the enumeration
    assert row.body == PUA7_C.replace('   direction=""', "")
    check_body(row, schemas)


def test_pua8_dialog_without_targets(schemas: dict[str, etree.XMLSchema]) -> None:
    row = update(PUA8, include_entity=False)
    assert row.body == PUA8_C  # byte for byte, C spacing included
    check_body(row, schemas)


def test_pua9_dialog_without_call_id(schemas: dict[str, etree.XMLSchema]) -> None:
    row = update(PUA9)
    assert invalid_against(PUA9_C, schemas, "dialog")  # <dialog> without the required id
    # The real data instead of the fixed dummy: an id, no call-id attribute, no hard-coded one.
    assert row.body == (
        f'{_DI_HEAD}<dialog id="no-call-id"><state>terminated</state>{_LOCAL}{_T1}</local>'
        '<remote><identity display="">sip:2000@example.com</identity>'
        f"{_T2}</remote></dialog></dialog-info>"
    )
    assert (row.sender, row.etag, row.username, row.domain) == ("sip:", "", "1000", "example.com")
    check_body(row, schemas)
    with_direction = update(PUA9 | {"Direction": "recipient", "Dialog-ID": "d1"})
    assert '<dialog id="d1" direction="recipient">' in with_direction.body
    check_body(with_direction, schemas)


def test_pua10_dialog_presentity(schemas: dict[str, etree.XMLSchema]) -> None:
    row = update(PUA10)
    root = check_body(row, schemas)
    assert root.get("entity") == "sip:park1@example.com"
    assert (row.username, row.domain) == ("park1", "example.com")
    assert row.flush is FlushScope.PRESENTITY  # Flush-Level 1: C reset=1
    assert row.presentity_uri == "sip:park1@example.com"
    for drop in ("Presentity-User", "Presentity-Realm", "Presentity"):
        partial = update({k: v for k, v in PUA10.items() if k != drop})
        assert (partial.username, partial.domain) == ("1000", "example.com")
        assert 'entity="sip:1000@example.com"' in partial.body


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5, "2", 4.0])
def test_pua11_flush_levels_stay_within_the_presentity(level: Any) -> None:
    # C: 2 wipes the domain's dialog rows, 3 every dialog row, 4 the whole table.
    assert update(PUA6 | {"Flush-Level": level}).flush is FlushScope.PRESENTITY


@pytest.mark.parametrize("level", [0, -1, "0", "x", None])
def test_flush_level_zero_or_unusable_is_etag(level: Any) -> None:
    assert update(PUA6 | {"Flush-Level": level}).flush is FlushScope.ETAG


@pytest.mark.parametrize(
    "change",
    [
        {"Event-Name": "Update"},
        {"Event-Package": "Dialog"},
        {"Event-Name": "dialog_update"},
        {"Event-Name": None},
        {"Event-Package": "presence.winfo"},
    ],
)
def test_pua12_dispatch_is_exact_and_case_sensitive(change: dict[str, Any]) -> None:
    payload = {k: v for k, v in (PUA6 | change).items() if v is not None}
    assert dispatch(payload, now=NOW) is None  # C: return 1, nothing written
    # The per-package entry point (kazoo_pua_publish_dialoginfo) skips the checks.
    assert build_update("dialog", payload, now=NOW).body == PUA6_C


def test_dispatch_each_package() -> None:
    assert update(PUA1).event == "presence"
    assert update(PUA4).event == "message-summary"
    assert update(PUA6).event == "dialog"


# --------------------------------------------------------------------------- row rules


@pytest.mark.parametrize(
    ("expires", "expected"),
    [
        (120, NOW + 120),
        ("3600", NOW + 3600),
        (" 60s", NOW + 60),
        (30.9, NOW + 30),
        (0, None),  # C writes 0 for these: never served with Kamailio's startup_mode=1
        (-5, None),
        ("abc", None),
        (None, None),
        (2**40, 2**31 - 1),  # int32 column
    ],
)
def test_expires_is_absolute_and_in_the_future(expires: Any, expected: int | None) -> None:
    payload = PUA6 | {"Expires": expires}
    assert update(payload).expires == (NOW + DEFAULT_EXPIRES if expected is None else expected)
    assert build_update("dialog", payload, now=NOW, default_expires=60).expires == (
        NOW + 60 if expected is None else expected
    )


def test_bad_arguments() -> None:
    with pytest.raises(UsageError, match="unknown presence package 'Dialog'"):
        build_update("Dialog", PUA6, now=NOW)
    with pytest.raises(UsageError, match="default_expires"):
        build_update("dialog", PUA6, now=NOW, default_expires=0)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({k: v for k, v in PUA6.items() if k != "From"}, "From"),
        (PUA6 | {"To": ""}, "To"),
        (PUA6 | {"State": None}, "State"),
        ({k: v for k, v in PUA6.items() if k != "From-Realm"}, "From-Realm"),
    ],
)
def test_dialog_required_fields(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(MissingField) as caught:
        update(payload)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"dialog update needs {field!r} (")
    assert "Call-ID='call-id'" in str(caught.value)


def test_dialog_sender_and_etag_rules() -> None:
    assert update(PUA6 | {"Switch-URI": "sip:10.0.1.21:11000"}).sender == "sip:10.0.1.21:11000"
    both = PUA6 | {"Switch-URI": "sip:sw", "Sender-URI": "sip:se"}
    assert update(both).sender == "sip:se"
    assert update(PUA6 | {"ETag": "e1"}).etag == "e1"
    assert update(PUA1 | {"Switch-URI": "sip:sw"}).sender == "sip:sw"


def test_presentity_key_and_uri() -> None:
    row = update(PUA6)
    assert presentity_key(row) == ("1000", "example.com", "dialog")
    assert row.presentity_uri == "sip:1000@example.com"
    assert presentity_key(update(PUA6 | {"Call-ID": "other"})) == presentity_key(row)
    assert set(CONTENT_TYPES) == set(PACKAGES)


def test_tuple_ids() -> None:
    assert tuple_id("aa045e635a9532261d7bef7fd561735e") == "aa045e635a9532261d7bef7fd561735e"
    assert tuple_id("3e7a2d6c-5b1f") == "t3e7a2d6c-5b1f"
    assert tuple_id("abc123@host") == "tabc123_40host"
    assert tuple_id("a_b@c") == "ta_5Fb_40c"  # injective: '_' itself is escaped
    assert tuple_id("") == "no-call-id"
    # A Call-ID equal to the person id must not duplicate the xs:ID.
    assert 'id="p2"' in update(PUA1 | {"Call-ID": "p1"}).body


def test_json_c_field_reads() -> None:
    payload: dict[str, Any] = {
        "n": None,
        "b": True,
        "i": 42,
        "o": {"a": [1, "x/y"], "b": {}},
        "l": [],
    }
    assert [get_str(payload, k) for k in ("missing", "n", "b", "i", "l")] == [
        "",
        "",
        "true",
        "42",
        "[ ]",
    ]
    assert get_str(payload, "o") == '{ "a": [ 1, "x\\/y" ], "b": { } }'
    assert get_int({"x": "12abc"}, "x") == 12
    assert get_int({"x": "-7"}, "x") == -7
    assert get_int({"x": 2**40}, "x") == 2**31 - 1
    assert get_int({"x": [1]}, "x") == 0
    assert get_int({}, "x") == 0
    assert get_int({"x": "9" * 10_000}, "x") == 2**31 - 1  # strtoll saturates
    assert get_int({"x": " -" + "9" * 10_000}, "x") == -(2**31)


# --------------------------------------------------------------------------- hostile input

HOSTILE: list[Any] = [
    'Bob "the builder"',
    "O'Brien",
    "<script>alert(1)</script>",
    "a & b &amp; &#0; &unknown;",
    "]]>",
    "<![CDATA[x]]>",
    "Zoë 😀 Ünïcödé 中文",
    "nul\x00byte",
    "ctl\x01\x08\x0b\x0c\x1f\x7f\x85",
    "tab\tlf\ncr\r",
    "lone \ud800 surrogate \udfff",
    "\ufffe\uffff",
    "%zz %4 % #a#b [::1]",
    "sip:1000@[2001:db8::1]:5060",
    "x" * 10_000,
    "9" * 10_000,
    '<&">' * 2_500,
    "😀" * 10_000,
    12,
    -1,
    1.5,
    True,
    {"nested": ["</dialog>", None]},
    [],
]

DIALOG_FIELDS = [
    "Presentity",
    "Presentity-User",
    "Presentity-Realm",
    "From",
    "From-User",
    "From-Realm",
    "From-URI",
    "To",
    "To-User",
    "To-Realm",
    "To-URI",
    "Call-ID",
    "Dialog-ID",
    "From-Tag",
    "To-Tag",
    "Direction",
    "State",
    "ETag",
    "Sender-URI",
    "Switch-URI",
    "Expires",
    "Flush-Level",
]
PRESENCE_FIELDS = [
    "From",
    "From-User",
    "From-Realm",
    "To",
    "To-User",
    "To-Realm",
    "Call-ID",
    "From-Tag",
    "To-Tag",
    "Direction",
    "State",
    "ETag",
    "Sender-URI",
    "Switch-URI",
    "Expires",
]
MWI_FIELDS = [
    "From",
    "From-User",
    "From-Realm",
    "To",
    "Call-ID",
    "Messages-Waiting",
    "Messages-New",
    "Messages-Saved",
    "Messages-Urgent",
    "Messages-Urgent-Saved",
    "Message-Account",
    "ETag",
    "Sender-URI",
    "Expires",
]
BASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "presence": (PUA1, PRESENCE_FIELDS),
    "dialog": (PUA10 | {"Sender-URI": "sip:vm@x"}, DIALOG_FIELDS),
    "message-summary": (PUA4, MWI_FIELDS),
}
HOSTILE_CASES = [
    pytest.param(package, field, index, id=f"{package}-{field}-{index}")
    for package, (_, fields) in BASES.items()
    for field in fields
    for index in range(len(HOSTILE) + 1)  # the last index removes the field
]


@pytest.mark.parametrize(("package", "field", "index"), HOSTILE_CASES)
def test_hostile_values_give_valid_bodies_or_missing_field(
    schemas: dict[str, etree.XMLSchema], package: str, field: str, index: int
) -> None:
    base, _ = BASES[package]
    if index == len(HOSTILE):
        payload = {k: v for k, v in base.items() if k != field}
    else:
        payload = base | {field: HOSTILE[index]}
    for include_entity in (True, False):
        try:
            row = build_update(package, payload, now=NOW, include_entity=include_entity)
        except MissingField as error:
            assert error.field
            assert f"{package} update needs {error.field!r}" in str(error)
            continue
        root = check_body(row, schemas)
        assert row.expires > NOW
        value = get_str(payload, field)
        if root is not None and package == "dialog" and field in ("From-User", "To-User"):
            side = "local" if field == "From-User" else "remote"
            display = root.find(f"{DI}dialog/{DI}{side}/{DI}identity").get("display")
            assert display == pxml.clean(value)  # quotes and markup survive as data
        if package == "dialog" and field in ("Call-ID", "From-Tag", "To-Tag") and value:
            attribute = {"Call-ID": "call-id", "From-Tag": "local-tag", "To-Tag": "remote-tag"}
            assert root.find(f"{DI}dialog").get(attribute[field]) == pxml.clean(value)


def test_hostile_entity_and_identity_are_uris(schemas: dict[str, etree.XMLSchema]) -> None:
    payload = PUA6 | {"From": 'sip:"Bob" <bob@example.com>', "From-User": "bob smith#1"}
    row = update(payload)
    root = check_body(row, schemas)
    identity = root.find(f"{DI}dialog/{DI}local/{DI}identity")
    assert identity.text == "sip:%22Bob%22%20%3Cbob@example.com%3E"
    assert identity.get("display") == "bob smith#1"
    presence = update(PUA1 | {"From-User": "bob smith#1", "From-Realm": "[::1]"})
    entity = check_body(presence, schemas).get("entity")
    assert entity == "sip:bob%20smith%231@%5B::1%5D"
    assert presence.username == "bob smith#1"  # the row keeps the raw key


def test_row_columns_are_cleaned() -> None:
    row = update(PUA6 | {"Call-ID": "a\x00b\ud800", "Sender-URI": "sip:\x01"})
    assert row.etag == "a\ufffdb\ufffd"
    assert row.sender == "sip:\ufffd"


def test_uri_and_text_helpers() -> None:
    assert pxml.uri("sip:1000@example.com") == "sip:1000@example.com"
    assert pxml.uri("sip:a%41%zz") == "sip:a%41%25zz"
    assert pxml.attr('a"b<c>&d\te') == "a&quot;b&lt;c&gt;&amp;d&#9;e"
    assert pxml.text("]]>\r") == "]]&gt;&#13;"
    assert pxml.clean("\x00\ud800ok\ufffe") == "\ufffd\ufffdok\ufffd"


def test_dialog_state_outside_rfc_becomes_terminated(schemas: dict[str, etree.XMLSchema]) -> None:
    for state in ("offline", "online", "Confirmed", "ringing"):
        root = check_body(update(PUA6 | {"State": state}), schemas)
        assert root.findtext(f"{DI}dialog/{DI}state") == "terminated"
    for state in sorted(DIALOG_STATES):
        root = check_body(update(PUA6 | {"State": state}), schemas)
        assert root.findtext(f"{DI}dialog/{DI}state") == state
