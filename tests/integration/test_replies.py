"""Routes answer queries on the real RabbitMQ: our ``Client.query`` on one node, the responder
routes (``examples/authn_responder.py``, ``kz.reply``, ``kz.areply``) on another."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kazoo_amqp import QueryTimeout
from tests.integration.daemon_harness import REPO, DaemonProcess, unique

pytestmark = pytest.mark.broker

EXAMPLE = REPO / "examples" / "authn_responder.py"

EXTRA_ROUTES = """

@router.route("kazoo:consumer-event-directory-search-req")
def search(kz):
    # Kazoo's multi-part answer: partial replies, then the final one returned
    kz.reply({"Event-Name": "search_partial_resp", "Part": 1})
    return {"Users": ["alice"]}


@router.route("kazoo:consumer-event-directory-async-req")
async def async_req(kz):
    await kz.areply({"Async": True})


@router.route("kazoo:consumer-event-directory-silent-req")
def silent(kz):
    pass  # silence is an answer: the requester times out
"""


def responder_routes(exchange: str, queue: str) -> str:
    text = EXAMPLE.read_text().replace("from __future__ import annotations\n", "")
    text = text.replace('EXCHANGE = "registrar"', f"EXCHANGE = {exchange!r}")
    text = text.replace('QUEUE = "authn-responders"', f"QUEUE = {queue!r}")
    text = text.replace('"authn.req.*"]', '"authn.req.*", "directory.#"]')
    assert exchange in text and queue in text
    return text + EXTRA_ROUTES


@pytest.fixture
def nodes(tmp_path: Path, rabbitmq: object) -> Iterator[tuple[DaemonProcess, str]]:
    exchange, queue = unique("kzt.registrar"), unique("kzt.authn")
    (tmp_path / "responder").mkdir()
    (tmp_path / "requester").mkdir()
    responder = DaemonProcess(tmp_path / "responder", responder_routes(exchange, queue), workers=2)
    requester = DaemonProcess(tmp_path / "requester", "", workers=1)
    with responder, requester:
        yield requester, exchange


def test_example_responder_answers_client_query(nodes: tuple[DaemonProcess, str]) -> None:
    requester, exchange = nodes
    request = {"Event-Category": "directory", "Event-Name": "authn_req", "Method": "REGISTER",
               "Auth-User": "alice", "Auth-Realm": "example.net"}  # fmt: skip
    with requester.client() as c:
        reply = c.query(exchange, "authn.endpoint.req.example%2Enet", request, timeout_ms=5000)
        unknown = c.query(exchange, "authn.req.example%2Enet",
                          {**request, "Auth-User": "mallory"}, timeout_ms=5000)  # fmt: skip
    assert reply["Event-Category"] == "directory" and reply["Event-Name"] == "authn_resp"
    assert reply["Auth-Password"] == "s3cret"
    assert reply["Custom-Channel-Vars"]["Account-ID"] == "0a1b2c3d4e5f"
    assert reply["App-Name"] == "kamailio" and reply["Node"].startswith("kamailio@test-")
    assert reply["Node"] != f"kamailio@{requester.node}"  # the responder node answered
    assert reply["Server-ID"].startswith("consumer://1/kamailio@")  # the responder's own
    assert unknown["Event-Name"] == "authn_err"


def test_reply_kz_reply_and_areply_and_silence(nodes: tuple[DaemonProcess, str]) -> None:
    requester, exchange = nodes
    base = {"Event-Category": "directory", "Msg-ID": unique("m")}
    with requester.client() as c:
        search = c.query(exchange, "directory.search", {**base, "Event-Name": "search_req"},
                         timeout_ms=5000)  # fmt: skip
        areply = c.query(exchange, "directory.async", {"Event-Category": "directory",
                         "Event-Name": "async_req"}, timeout_ms=5000)  # fmt: skip
        with pytest.raises(QueryTimeout):
            c.query(exchange, "directory.silent", {"Event-Category": "directory",
                    "Event-Name": "silent_req"}, timeout_ms=500)  # fmt: skip
    # the first reply carrying the Msg-ID ends the query: the partial one
    assert search["Event-Name"] == "search_partial_resp" and search["Msg-ID"] == base["Msg-ID"]
    assert areply["Event-Name"] == "async_resp" and areply["Async"] is True
