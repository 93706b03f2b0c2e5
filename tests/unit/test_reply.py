"""Replies from routes: ``kz.reply`` / ``kz.areply`` / a returned dict (core/message.py,
workers/context.py, workers/child.py), without a broker."""

from __future__ import annotations

from typing import Any

import pytest

from kazoo_amqp.core.message import build_reply, reply_name, reply_to
from kazoo_amqp.errors import UsageError
from kazoo_amqp.workers.context import Kz
from tests.unit.test_context import FakeServices

REQUEST = {
    "Event-Category": "directory",
    "Event-Name": "authn_req",
    "Msg-ID": "m-1",
    "Server-ID": "consumer://1/kamailio@sip1-<1>-targeted-0",
}


def _rows(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    return {"argvalues": [r[1:] for r in rows], "ids": [r[0] for r in rows]}


@pytest.mark.parametrize(
    ("request_name", "expected"),
    **_rows([
        ("authn", "authn_req", "authn_resp"),
        ("search", "search_req", "search_resp"),
        ("channel-status", "channel_status_req", "channel_status_resp"),
        ("not-a-request", "reg_success", None),
        ("bare-suffix", "_req", "_resp"),
    ]),
)  # fmt: skip
def test_reply_name_follows_kazoo(request_name: str, expected: str | None) -> None:
    assert reply_name(request_name) == expected


def test_reply_copies_msg_id_and_derives_the_names() -> None:
    doc = build_reply(REQUEST, {"Auth-Password": "s3cret"})
    assert doc == {
        "Event-Category": "directory",
        "Event-Name": "authn_resp",
        "Auth-Password": "s3cret",
        "Msg-ID": "m-1",
    }


def test_payload_names_win_over_the_derived_ones() -> None:
    doc = build_reply(REQUEST, {"Event-Name": "authn_err", "Event-Category": "x"})
    assert (doc["Event-Category"], doc["Event-Name"]) == ("x", "authn_err")


def test_reply_key_is_the_server_id_in_every_form() -> None:
    for sid in ("kamailio@h-<1>-targeted-0", "kamailio@sbc1-default<86.21873.4>",
                "consumer://2/kazoo_apps@kz2-<0.14872.0>-9c1f0d2e"):  # fmt: skip
        assert reply_to({**REQUEST, "Server-ID": sid}) == (sid, "m-1")
    assert reply_to({**REQUEST, "Msg-ID": 42}) == (REQUEST["Server-ID"], "42")


@pytest.mark.parametrize(
    ("change", "missing"),
    **_rows([
        ("no-server-id", {"Server-ID": None}, "Server-ID"),
        ("empty-server-id", {"Server-ID": ""}, "Server-ID"),
        ("no-msg-id", {"Msg-ID": None}, "Msg-ID"),
    ]),
)  # fmt: skip
def test_reply_outside_a_query_names_what_is_missing(change: dict[str, Any], missing: str) -> None:
    request = {k: v for k, v in {**REQUEST, **change}.items() if v is not None}
    with pytest.raises(UsageError, match=f"no {missing}"):
        reply_to(request)


def test_a_different_msg_id_in_the_reply_is_refused() -> None:
    with pytest.raises(UsageError, match="leave Msg-ID out"):
        build_reply(REQUEST, {"Msg-ID": "other"})
    assert build_reply(REQUEST, {"Msg-ID": "m-1"})["Msg-ID"] == "m-1"


def test_kz_reply_publishes_to_targeted_with_the_server_id() -> None:
    services = FakeServices()
    kz = Kz(services, payload=dict(REQUEST))  # type: ignore[arg-type]
    assert kz.reply({"Auth-Password": "x"}, "h=1") == {"call": "publish"}
    kz.reply('{"Event-Name": "search_partial_resp"}', confirm=True)
    (_, ex, rk, doc, headers), (_, _, _, doc2, _, confirm) = services.calls
    assert (ex, rk, headers) == ("targeted", REQUEST["Server-ID"], "h=1")
    assert doc["Event-Name"] == "authn_resp" and doc["Msg-ID"] == "m-1"
    assert doc2["Event-Name"] == "search_partial_resp" and confirm == ("confirm", True)


async def test_kz_areply_uses_the_async_publish() -> None:
    services = FakeServices()
    kz = Kz(services, payload=dict(REQUEST))  # type: ignore[arg-type]
    assert await kz.areply({"a": 1}) == {"call": "apublish"}
    assert services.calls[0][1:3] == ("targeted", REQUEST["Server-ID"])


def test_kz_reply_on_an_event_is_a_usage_error() -> None:
    kz = Kz(FakeServices(), payload={"Event-Category": "presence"})  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="no Server-ID and no Msg-ID"):
        kz.reply({"a": 1})
    with pytest.raises(UsageError, match="JSON object"):
        Kz(FakeServices(), payload=dict(REQUEST)).reply(b"[1]")  # type: ignore[arg-type]
