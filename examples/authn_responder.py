"""A Kazoo API served from Python: the ``authn_req`` responder (Kazoo's directory).

Kamailio asks ``registrar`` / ``authn.endpoint.req.<encoded realm>`` for the password of a
REGISTERing (or INVITEing) device and waits for ``authn_resp`` (or ``authn_err``) on its own
``Server-ID`` through the ``targeted`` exchange (spec/kazoo-usage.md §7.1). This routes file makes
kazoo-amqp answer those queries; Kamailio with the C ``kazoo`` module, another kazoo-amqp node
or ``kazoo-amqp query`` can be the requester.

Run it with ``routes = "authn_responder.py"`` in the config. Returning a dict answers the query:
``Msg-ID`` is copied from the request, ``Event-Category`` (``directory``) too, ``Event-Name``
becomes ``authn_resp`` unless the dict says otherwise, and App-Name/App-Version/Node/Server-ID
are added like for any publish. ``kz.reply(...)`` does the same from inside a route.
"""

from __future__ import annotations

import logging

from kazoo_amqp import Router

router = Router()
log = logging.getLogger("authn")

EXCHANGE = "registrar"
#: Every responder node consumes from one shared queue, so requests are spread over them.
QUEUE = "authn-responders"

#: Where a real service would look in its database.
USERS = {
    ("alice", "example.net"): {"password": "s3cret", "account_id": "0a1b2c3d4e5f"},
    ("bob", "example.net"): {"password": "hunter2", "account_id": "0a1b2c3d4e5f"},
}


@router.route("kazoo:mod-init")
def init(kz):
    kz.subscribe(
        {
            "exchange": EXCHANGE,
            "type": "topic",
            "queue": QUEUE,
            "routing": ["authn.endpoint.req.*", "authn.req.*"],  # Kazoo 5.x and 4.3 keys
            "no_ack": 0,
            "wait_for_consumer_ack": 1,
        }
    )


@router.route("kazoo:consumer-event-directory-authn-req")
def authn_req(kz):
    user, realm = kz.json("Auth-User"), kz.json("Auth-Realm")
    found = USERS.get((user, realm))
    if found is None:
        log.info("authn_req for unknown %s@%s (Method %s)", user, realm, kz.json("Method"))
        return {"Event-Name": "authn_err"}
    return {
        "Auth-Password": found["password"],
        "Auth-Method": "password",
        "Custom-Channel-Vars": {
            "Account-ID": found["account_id"],
            "Authorizing-Type": "device",
            "Username": user,
            "Realm": realm,
        },
    }
