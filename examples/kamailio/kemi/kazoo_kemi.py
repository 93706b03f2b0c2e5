"""A KEMI Python script with the kazoo-amqp bridge's two powers (see kamailio.cfg here).

* ``kazoo:consumer-event-kemi-note`` events run ``KazooKemi.note`` inside Kamailio (it writes
  the htable ``notes``), acked after it returned;
* a MESSAGE is answered by a Kazoo-style query that suspends the transaction: the answer runs
  ``ksr_answer`` (200 with the reply's ``Say``), no answer runs ``ksr_no_answer`` (504).

Publishing and blocking queries need nothing special: ``kazoo_amqp.Client``.
"""

import json
import os
import sys

import KSR

# Site settings (the end-to-end test rewrites these lines).
SRC_DIR = "/opt/kazoo-amqp/src"  # where the kazoo_amqp package is, unless installed
CONFIG = "kazoo-amqp.toml"  # the daemon's config, relative to this file
EXCHANGE = "kemi"
NODE = "kamailio1"
BRIDGE_PORT = 5091

if SRC_DIR not in sys.path:
    sys.path.insert(0, SRC_DIR)

from kazoo_amqp.kamailio import BridgeHandler  # noqa: E402


class KazooKemi:
    def __init__(self):
        here = os.path.dirname(os.path.abspath(__file__))
        self.kz = BridgeHandler(
            os.path.join(here, CONFIG),
            routes={
                "kazoo:mod-init": self.mod_init,
                "kazoo:consumer-event-kemi-note": self.note,
            },
        )

    def child_init(self, rank):
        return 0

    # ---- event routes (run by the bridge inside Kamailio)
    def mod_init(self):
        self.kz.subscribe(json.dumps({
            "exchange": EXCHANGE, "type": "topic", "queue": f"kemi-notes-{NODE}",
            "routing": "kemi.note.*", "no_ack": 0,
        }))

    def note(self):
        event = json.loads(KSR.pv.get("$var(kzE)"))
        KSR.htable.sht_sets("notes", event["Key"], event["Value"])

    # ---- SIP
    def ksr_request_route(self, msg):
        if KSR.is_OPTIONS():
            KSR.sl.sl_send_reply(200, "Alive")
            return 1
        if not KSR.is_MESSAGE():
            KSR.sl.sl_send_reply(405, "Method Not Allowed")
            return 1
        payload = json.dumps({"Event-Category": "kemi", "Event-Name": "ask",
                              "Question": KSR.pv.get("$rb") or ""})
        self.kz.async_query(EXCHANGE, "kemi.ask", payload, "ksr_answer", "ksr_no_answer",
                            timeout_ms=1000)
        return 0

    def ksr_answer(self, msg):
        reply = json.loads(KSR.pv.get("$var(kzR)"))
        KSR.tm.t_reply(200, str(reply.get("Say", "")))
        return 1

    def ksr_no_answer(self, msg):
        KSR.tm.t_reply(504, "No Answer")
        return 1

    # ---- the bridge's plumbing
    def ksr_xhttp_event(self, msg, evname):
        if KSR.pv.get("$Rp") == BRIDGE_PORT:
            return self.kz.kazoo_http(msg)
        KSR.xhttp.xhttp_reply(404, "Not Found", "text/plain", "")
        return 1

    def ksr_htable_event(self, msg, evname):
        return self.kz.kemi_htable_event(msg, evname)


def mod_init():
    return KazooKemi()
