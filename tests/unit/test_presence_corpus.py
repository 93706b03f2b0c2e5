"""Presence core against the replay corpus: every case with ``expected_presentity``.

For each case the rows are built from the case's payload with the per-package entry points
(the production routes call ``kazoo_pua_publish_dialoginfo/_presence/_mwi``), then every fact is
checked: row columns, write mode, ``expires``, ``body_exact`` and each ``body_contains`` fact
(a ``null`` fact means the attribute must be absent), and the body's schema validity.

Where the corpus records the C module's output and we deliberately differ
(docs/compat-presence.md), the fact is translated, never skipped:

* ``expires`` 0 -> ``now + default_expires`` (an absolute, future time);
* ``direction`` "(empty attribute)" -> no ``direction`` attribute;
* ``tuple_id`` that is not an xs:ID -> the id :func:`tuple_id` derives from it;
* presence ``entity`` ``user@realm`` -> ``sip:user@realm``;
* ``sender`` and ``expires`` facts carry explanations in parentheses: the first word is the value.

``written_when`` / ``skip_when`` are conditions of the Kamailio script (watcher counts, flags);
the core's own condition is checked instead: :func:`dispatch` (``kazoo_pua_publish``) writes only
for ``Event-Name`` "update" with a known ``Event-Package``. Unknown fact keys fail the test, so
a new kind of fact cannot pass unchecked.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from kazoo_amqp.core.presence import PACKAGES, FlushScope, PresentityUpdate, build_update, dispatch
from kazoo_amqp.core.presence.dialoginfo import DIALOG_STATES
from kazoo_amqp.core.presence.pidf import tuple_id

NOW = 1_700_000_000
DEFAULT_EXPIRES = 3600

DI = "{urn:ietf:params:xml:ns:dialog-info}"
PIDF = "{urn:ietf:params:xml:ns:pidf}"
DM = "{urn:ietf:params:xml:ns:pidf:data-model}"
RPID = "{urn:ietf:params:xml:ns:pidf:rpid}"

#: Fact keys that describe the Kamailio script, not the row (see the module docstring).
SCRIPT_KEYS = {"written_when", "skip_when", "refresh", "then"}
#: The fast-pickup cookie is a script rewrite of the Call-ID before the PUA call.
SCRIPT_SUFFIX = "_when_fast_pickup_cookies_enabled"

_MWI_GRAMMAR = re.compile(
    r"Messages-Waiting: (?:yes|no)\r\n(?:Message-Account: [A-Za-z][A-Za-z0-9+.-]*:[!-~]+\r\n)?"
    r"(?:Voice-Message: [0-9]+/[0-9]+ \([0-9]+/[0-9]+\)\r\n)"
)


@pytest.fixture(scope="module")
def schemas(shared_dir: Path) -> dict[str, etree.XMLSchema]:
    folder = shared_dir / "schemas"
    return {
        "dialog": etree.XMLSchema(etree.parse(str(folder / "dialog-info.xsd"))),
        "presence": etree.XMLSchema(etree.parse(str(folder / "pidf.xsd"))),
    }


@pytest.fixture(scope="module")
def cases(shared_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((shared_dir / "corpus").glob("*.json")):
        case = json.loads(path.read_text(encoding="utf-8"))
        if "expected_presentity" in case:
            found.append((path.name, case))
    if not found:
        pytest.skip("no corpus case with expected_presentity in the shared folder")
    return found


def load_payload(case: dict[str, Any]) -> dict[str, Any]:
    if case.get("payload") is not None:
        payload = case["payload"]
    elif case.get("payload_raw") is not None:
        payload = json.loads(case["payload_raw"])
    elif case.get("payload_raw_b64") is not None:
        # Invalid UTF-8 survives as lone surrogates, which the core replaces with U+FFFD.
        raw = base64.b64decode(case["payload_raw_b64"]).decode("utf-8", "surrogateescape")
        payload = json.loads(raw)
    else:
        raise AssertionError("case has no payload")
    assert isinstance(payload, dict)
    return payload


class Facts:
    """Checks one case's facts and collects every mismatch."""

    def __init__(self, name: str, schemas: dict[str, etree.XMLSchema]) -> None:
        self.name = name
        self.schemas = schemas
        self.errors: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.errors.append(f"{self.name}: {what}")

    # ------------------------------------------------------------------ rows and bodies

    def build(self, package: str, payload: dict[str, Any]) -> tuple[PresentityUpdate, Any]:
        row = build_update(package, payload, now=NOW, default_expires=DEFAULT_EXPIRES)
        self.expect(row.event == package, f"event {row.event!r} != {package!r}")
        self.expect(row.expires > NOW, f"{package}: expires {row.expires} is not in the future")
        if package == "message-summary":
            self.expect(bool(_MWI_GRAMMAR.fullmatch(row.body)), f"MWI body {row.body!r}")
            return row, None
        root = etree.fromstring(row.body.encode("utf-8"))
        schema = self.schemas[package]
        self.expect(schema.validate(root), f"{package} body invalid: {schema.error_log}")
        if package == "dialog":
            state = root.findtext(f"{DI}dialog/{DI}state")
            self.expect(state in DIALOG_STATES, f"dialog state {state!r} is not RFC 4235")
        return row, root

    def package(self, package: str, payload: dict[str, Any], facts: dict[str, Any]) -> None:
        row, root = self.build(package, payload)
        for key, value in facts.items():
            if key in SCRIPT_KEYS or key.endswith(SCRIPT_SUFFIX):
                continue
            if key == "also_presence_package":
                self.package("presence", payload, value)
            elif key == "event":
                self.expect(row.event == value, f"event {row.event!r} != {value!r}")
            elif key in ("username", "domain", "etag"):
                actual = getattr(row, key)
                self.expect(actual == value, f"{package} {key} {actual!r} != {value!r}")
            elif key == "sender":
                expected = str(value).split()[0]
                self.expect(row.sender == expected, f"sender {row.sender!r} != {expected!r}")
            elif key == "expires":
                self.expires(package, row, value, payload)
            elif key == "db_write":
                self.db_write(row, value)
            elif key == "presentity_uri":
                self.expect(row.presentity_uri == value, f"uri {row.presentity_uri!r}")
            elif key == "body_exact":
                self.expect(row.body == value, f"{package} body {row.body!r} != {value!r}")
            elif key == "body":
                pass  # prose about the C body; validity is checked in build()
            elif key == "body_contains":
                for fact, expected in value.items():
                    if not fact.endswith(SCRIPT_SUFFIX):
                        self.body_fact(package, row, root, fact, expected)
            elif root is not None and key in BODY_FACTS[package]:
                self.body_fact(package, row, root, key, value)
            else:
                self.expect(False, f"unknown {package} fact {key!r}: extend this test")

    def expires(self, package: str, row: PresentityUpdate, fact: Any, payload: Any) -> None:
        text = str(fact).strip()
        relative = re.fullmatch(r"now \+ (\d+)( seconds?)?", text)
        if relative:
            expected = NOW + int(relative.group(1))
        elif fact == 0 or text.startswith("0 ") or text == "0":
            # C stores 0 (never served with startup_mode=1): we store an absolute future time.
            expected = NOW + DEFAULT_EXPIRES
        else:
            self.expect(False, f"unknown expires fact {fact!r}")
            return
        self.expect(row.expires == expected, f"{package} expires {row.expires} != {expected}")

    def db_write(self, row: PresentityUpdate, fact: str) -> None:
        if fact.startswith("REPLACE"):
            expected = FlushScope.ETAG
        elif fact.startswith("DELETE"):
            expected = FlushScope.PRESENTITY
        else:
            self.expect(False, f"unknown db_write fact {fact!r}")
            return
        self.expect(row.flush is expected, f"flush {row.flush} != {expected} ({fact})")

    def body_fact(
        self, package: str, row: PresentityUpdate, root: Any, fact: str, value: Any
    ) -> None:
        getter = BODY_FACTS[package].get(fact) if root is not None else None
        if getter is None:
            self.expect(False, f"unknown {package} body fact {fact!r}: extend this test")
            return
        actual = getter(root)
        if value is None or value == "(empty attribute)":
            # null: absent. "(empty attribute)" is C's direction="": we leave the attribute out.
            self.expect(actual is None, f"{package} {fact} should be absent, got {actual!r}")
            return
        if package == "presence" and fact == "tuple_id":
            value = tuple_id(value)  # the Call-ID, turned into an xs:ID when it is not one
        elif package == "presence" and fact == "entity":
            token = str(value).split()[0]
            value = token if token.startswith("sip:") else f"sip:{token}"
            if "@" not in value:
                value += f"@{row.domain}"
        elif package == "presence" and fact == "activity":
            value = re.findall(r"<rpid:([a-z-]+)/>", value)
        self.expect(actual == value, f"{package} {fact}: {actual!r} != {value!r}")


def _dialog(path: str, attribute: str | None = None) -> Any:
    def get(root: Any) -> Any:
        node = root if not path else root.find(path)
        if node is None:
            return None
        return node.get(attribute) if attribute else node.text

    return get


def _activities(root: Any) -> list[str]:
    node = root.find(f"{DM}person/{RPID}activities")
    return [etree.QName(child).localname for child in node]


_D = f"{DI}dialog"
BODY_FACTS: dict[str, dict[str, Any]] = {
    "dialog": {
        "entity": _dialog("", "entity"),
        "dialog_id": _dialog(_D, "id"),
        "call_id": _dialog(_D, "call-id"),
        "state": _dialog(f"{_D}/{DI}state"),
        "direction": _dialog(_D, "direction"),
        "local_tag": _dialog(_D, "local-tag"),
        "remote_tag": _dialog(_D, "remote-tag"),
        "local_identity": _dialog(f"{_D}/{DI}local/{DI}identity"),
        "local_identity_display": _dialog(f"{_D}/{DI}local/{DI}identity", "display"),
        "local_target_uri": _dialog(f"{_D}/{DI}local/{DI}target", "uri"),
        "remote_identity": _dialog(f"{_D}/{DI}remote/{DI}identity"),
        "remote_identity_display": _dialog(f"{_D}/{DI}remote/{DI}identity", "display"),
        "remote_target_uri": _dialog(f"{_D}/{DI}remote/{DI}target", "uri"),
    },
    "presence": {
        "entity": _dialog("", "entity"),
        "tuple_id": _dialog(f"{PIDF}tuple", "id"),
        "basic": _dialog(f"{PIDF}tuple/{PIDF}status/{PIDF}basic"),
        "note": _dialog(f"{PIDF}note"),
        "activity": _activities,
    },
    "message-summary": {},
}


def c_dispatch_writes(payload: dict[str, Any]) -> bool:
    """kazoo_pua_publish's condition (§3.5): exact, case-sensitive."""
    return payload.get("Event-Name") == "update" and payload.get("Event-Package") in PACKAGES


def mwi_as_presence(payload: dict[str, Any]) -> dict[str, Any]:
    """What the script's MWI_AS_PRESENCE rewrite hands to the PUA (case 08): the voicemail
    prefix becomes the presentity, Messages-Waiting the state, and a Direction is injected."""
    user = payload["Extended-Presence-ID"]
    uri = f"sip:{user}@{payload['From-Realm']}"
    waiting = payload.get("Messages-Waiting") == "yes"
    return payload | {
        "From": uri,
        "From-User": user,
        "To": uri,
        "To-User": user,
        "State": "confirmed" if waiting else "terminated",
        "Direction": "initiator",
    }


def test_corpus_presentity_facts(
    cases: list[tuple[str, dict[str, Any]]], schemas: dict[str, etree.XMLSchema]
) -> None:
    errors: list[str] = []
    for name, case in cases:
        facts = Facts(name, schemas)
        payload = load_payload(case)
        expected = case["expected_presentity"]
        writes = dispatch(payload, now=NOW) is not None
        facts.expect(writes == c_dispatch_writes(payload), "kazoo_pua_publish condition differs")
        if "event" in expected:
            facts.package(expected["event"], payload, expected)
        elif "packages" in expected:
            for package, package_facts in expected["packages"].items():
                facts.package(package, payload, package_facts)
                if "presentity_uri" in expected:
                    row = build_update(package, payload, now=NOW)
                    facts.expect(
                        row.presentity_uri == expected["presentity_uri"],
                        f"{package} presentity_uri {row.presentity_uri!r}",
                    )
            unknown = set(expected) - {"packages", "presentity_uri"} - SCRIPT_KEYS
            facts.expect(not unknown, f"unknown facts {sorted(unknown)}: extend this test")
        elif "action" in expected:
            # A maintenance action of the script (reset, zone loss): no PUA row at all.
            facts.expect(not writes, "a maintenance event must not produce a presentity row")
        else:
            facts.expect(False, f"unknown expected_presentity shape {sorted(expected)}")
        if "expected_presentity_mwi_as_presence" in case:
            check_mwi_as_presence(facts, payload, case["expected_presentity_mwi_as_presence"])
        errors.extend(facts.errors)
    assert not errors, "\n".join(errors)


def check_mwi_as_presence(facts: Facts, payload: dict[str, Any], expected: dict[str, Any]) -> None:
    rewritten = mwi_as_presence(payload)
    dialog, root = facts.build("dialog", rewritten)
    spec = expected["dialog"]
    facts.expect(dialog.presentity_uri == expected["presentity_uri"], "mwi-as-presence uri")
    facts.expect((dialog.username, dialog.domain) == (spec["username"], spec["domain"]), "row")
    state = root.findtext(f"{DI}dialog/{DI}state")
    facts.expect(spec["state"].startswith(state), f"mwi-as-presence state {state!r}")
    facts.expect(spec["direction"].startswith(root.find(_D).get("direction")), "direction")
    facts.expect(root.find(_D).get("call-id") == spec["call_id"], "mwi-as-presence call-id")
    _presence, proot = facts.build("presence", rewritten)
    note = proot.findtext(f"{PIDF}note")
    facts.expect(expected["presence"]["note"].startswith(note), f"note {note!r}")


def test_corpus_covers_every_package(cases: list[tuple[str, dict[str, Any]]]) -> None:
    seen: set[str] = set()
    for _name, case in cases:
        expected = case["expected_presentity"]
        if "event" in expected:
            seen.add(expected["event"])
            if "also_presence_package" in expected:
                seen.add("presence")
        seen.update(expected.get("packages", {}))
    assert seen == set(PACKAGES)
