"""Example event routes: what a Kazoo-facing Kamailio proxy does with kazoo-amqp.

Bindings follow the 2600Hz production configs (spec/kazoo-usage.md): presence (dialog, presence,
MWI updates) written into Kamailio's presentity table and announced to watchers, presence resets,
registration flushes, node heartbeats, and the connection events.

Presence bindings use ``consistent-worker`` keyed on ``Call-ID`` so that every update of one call
is handled by one worker, in order (an ``early`` can never overtake its ``terminated``), and ack
after the handler so a crash cannot lose an update.
"""

from __future__ import annotations

import logging

from kazoo_amqp import Router

router = Router()
log = logging.getLogger("routes")

NODE = "sbc1.example.net"


@router.route("kazoo:mod-init")
def init(kz):
    kz.subscribe(
        {
            "exchange": "presence",
            "type": "topic",
            "queue": f"presence-dialog-{NODE}",
            "routing": ["dialog.*.*", "update.*.*", "mwi_updates.*.*"],
            "federate": True,
            "no_ack": 0,
            "wait_for_consumer_ack": 1,
            "consistent-worker": 1,
            "consistent-worker-key": "Call-ID",
        }
    )
    kz.subscribe(
        {
            "exchange": "presence",
            "type": "topic",
            "queue": f"presence-api-{NODE}",
            "routing": ["presence.reset.*.*", "presence.search_req.*"],
        }
    )
    kz.subscribe(
        {
            "exchange": "registrar",
            "type": "topic",
            "queue": f"registrar-flush-{NODE}",
            "routing": ["registration.flush.*"],
        }
    )
    kz.subscribe("nodes", "fanout", f"nodes-{NODE}", "")


@router.route("kazoo:consumer-event-presence-dialog-update")
def dialog_update(kz):
    """BLF: write the dialog-info row and NOTIFY the watchers."""
    kz.pua_publish_dialoginfo()


@router.route("kazoo:consumer-event-presence-update")
def presence_update(kz):
    kz.pua_publish_presence()


@router.route("kazoo:consumer-event-presence-mwi-update")
def mwi_update(kz):
    kz.pua_publish_mwi()


@router.route("kazoo:consumer-event-presence-reset")
def presence_reset(kz):
    """Kazoo asks us to forget a user's presence: write an 'offline'/'terminated' state."""
    user, realm = kz.json("Username"), kz.json("Realm")
    if not user or not realm:
        log.warning("presence reset without Username/Realm: %s", kz.body)
        return
    uri = f"sip:{user}@{realm}"
    kz.pua_publish_dialoginfo(
        {
            "From": uri,
            "From-User": user,
            "From-Realm": realm,
            "To": uri,
            "To-User": user,
            "State": "terminated",
            "Call-ID": f"reset-{user}@{realm}",
            "Flush-Level": 1,
        }
    )


@router.route("kazoo:consumer-event-directory-reg-flush")
def reg_flush(kz):
    log.info("registration flush for %s@%s", kz.json("Username"), kz.json("Realm"))


@router.route("kazoo:consumer-event-nodes-advertise")
def node_heartbeat(kz):
    log.debug("node %s is alive", kz.json("Node"))


@router.route("kazoo:consumer-event-connection-open", "kazoo:consumer-event-connection-closed")
def connection(kz):
    log.info("broker %s (zone %s): %s", kz.json("host"), kz.json("zone"), kz.json("Event-Name"))
